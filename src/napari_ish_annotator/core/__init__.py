"""Science and I/O of napari-ish-annotator. Nothing here imports Qt or napari."""
