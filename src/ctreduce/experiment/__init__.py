"""``ctreduce experiment``: the paper's grid of reduce -> export -> pretrain -> finetune, cached stage by stage.

:mod:`.runner` validates the experiment file and runs the missing stages; :mod:`.table` turns the grid's
rows into the results table, speed-ups and plots. The folder's layout is :mod:`ctreduce.store.experiment`'s.
"""
