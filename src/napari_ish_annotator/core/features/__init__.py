"""Feature extraction: the one preprocessing path, decoding ahead, the extractor, cache, dask."""
