"""Input data: images (decoding + pixel budget), the manifest CSV, the one input listing, vocabularies."""
