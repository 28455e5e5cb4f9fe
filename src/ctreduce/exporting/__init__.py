"""Exporting a run's kept slices as a training set (a PNG folder or one uint8 array).

:mod:`.from_run` exports a finished run folder, reading the kept slices from their sources again;
:mod:`.onepass` is ``ctreduce.reduce``, which with ``export=`` assembles the export from the parts the run's workers
wrote. What an export folder holds on disk is :mod:`ctreduce.store.export`'s.
"""
