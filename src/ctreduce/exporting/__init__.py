"""Exporting a run's kept slices as a training set (a PNG folder or one uint8 array).

:mod:`.from_run` exports a finished run folder, reading the kept slices from their sources again. What an
export folder holds on disk is :mod:`ctreduce.store.export`'s.
"""
