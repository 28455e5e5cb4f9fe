"""CT archives to try ctreduce on: :mod:`.phantom` (synthetic CT written as DICOM, NIfTI or NRRD) and
:mod:`.real_ct` (two real chest CTs, downloaded once). Tests, benchmarks, the demo and experiments use them."""
