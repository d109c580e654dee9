"""napari dock widgets: thin views over :mod:`napari_ish_annotator.core`."""
