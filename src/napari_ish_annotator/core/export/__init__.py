"""Trained models out to other ecosystems (bioimage.io).

* :mod:`.model` - :class:`ExportableModel` from a bundle or a fine-tuning checkpoint;
* :mod:`.network` - the exported torch network (torch at import: reach it through this face
  or import it where torch is wanted);
* :mod:`.packages` - the bioimageio extra, test runs of a written package, running one;
* :mod:`.received` - vetting a received package before anything reads it;
* :mod:`.rebuild` - a received package of ours rebuilt from this installation's code;
* :mod:`.bioimageio` - :func:`export_bioimageio`, the package writer.

The names below are reached lazily (:func:`..utils.lazy.attach`): importing one module of
this package imports none of its siblings.
"""

from __future__ import annotations

from ..utils.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "model": ["ExportableModel", "load_exportable"],
    "network": ["TermNetwork", "build_network"],
    "packages": ["predict_package", "require_bioimageio", "run_package_test"],
    "received": ["ReceivedPackage", "vet_package"],
    "rebuild": ["rebuild_network"],
    "bioimageio": ["ExportOptions", "export_bioimageio", "iter_export_bioimageio"],
})
