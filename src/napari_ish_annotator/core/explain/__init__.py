"""Where in the embryo each term's evidence lies.

* :mod:`.gradcam` - Grad-CAM of the logistic ensembles (linear in the features), overlays;
* :mod:`.finetuned` - Grad-CAM through the fine-tuned multi-task head.

The names below are reached lazily (:func:`..utils.lazy.attach`): importing one module of
this package imports none of its siblings.
"""

from __future__ import annotations

from ..utils.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "gradcam": ["display_shape", "gradcam_all_terms", "gradcam_for_image", "gradcam_linear", "heat_to_rgb", "overlay"],
    "finetuned": ["gradcam_mtl"],
})
