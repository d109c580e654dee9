"""napari-ish-annotator: annotate Drosophila embryo ISH images with anatomical terms.

Kept deliberately light: importing the package must not import torch, Qt or napari, so
the CLI starts fast and the core stays usable in notebooks and on headless machines.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
