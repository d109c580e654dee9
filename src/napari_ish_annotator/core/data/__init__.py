"""Input data: what an image is, which files are inputs, manifests and vocabularies.

* :mod:`.images` - decoding to RGB, the supported suffixes, the pixel budget, content hashes;
* :mod:`.inputs` - the one input listing (files, folders, manifests; was ``opening.py``);
* :mod:`.manifest` - the manifest CSV (:class:`Dataset`, :class:`Sample`) and its fingerprint;
* :mod:`.vocabulary` - the default controlled vocabulary and the developmental stages.

The names below are reached lazily (:func:`..utils.lazy.attach`): importing one module of
this package imports none of its siblings.
"""

from __future__ import annotations

from ..utils.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "images": ["DEFAULT_MAX_PIXELS", "SUPPORTED_SUFFIXES", "SUPPORTED_TEXT", "array_to_rgb", "check_image", "check_image_path", "content_hash", "has_image_suffix", "is_hidden", "list_images", "max_pixels", "parse_pixels", "pixel_budget", "read_rgb"],
    "inputs": ["collect_inputs", "iter_scan_inputs", "scan_inputs"],
    "manifest": ["Dataset", "Sample", "is_manifest", "parse_vocabulary", "read_manifest", "read_manifest_genes", "read_manifest_images", "training_fingerprint", "write_manifest"],
    "vocabulary": ["STAGE_RANGES", "all_default_terms", "default_vocabulary", "resolve_stage", "term_statistics"],
})
