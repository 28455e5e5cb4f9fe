"""Self-supervised pre-training on reduced CT data: SwAV, MoCo v2 and SparK (Lightning)."""
