"""Synthetic BDGP-like embryos with known ground truth, and simulated experiments on them.

* :mod:`.regions` - where each term's stain lies on the embryo;
* :mod:`.embryos` - rendering embryos and whole datasets (was ``synthetic.py``);
* :mod:`.simulate` - learning curves, noisy annotators and consensus trials.

The names below are reached lazily (:func:`..utils.lazy.attach`): importing one module of
this package imports none of its siblings.
"""

from __future__ import annotations

from ..utils.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "regions": ["TERM_REGIONS", "Part", "term_region"],
    "embryos": ["BDGP_STAIN_RGB", "generate_dataset", "iter_generate_dataset", "make_embryo", "random_pose", "sample_label_sets", "slugify"],
    "simulate": ["consensus_trial", "learning_curve", "noisy_annotators", "synthetic_features"],
})
