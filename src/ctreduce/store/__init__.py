"""On-disk formats, each with one owner holding its file names, schema, writer and reader:
``store.run`` (reduction run folders), ``store.export`` (what training reads), plus the
fingerprints, locks and atomic writes they share."""
