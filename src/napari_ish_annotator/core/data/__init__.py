"""Input data: what an image is, which files are inputs, manifests and vocabularies.

* :mod:`.budget` - the pixel budget (``--max-pixels``) and its checks;
* :mod:`.headers` - reading an image's header (format, size) before any pixel is decoded;
* :mod:`.images` - decoding to RGB (every decoder through :func:`.images.open_image`), the
  supported suffixes;
* :mod:`.inputs` - the one input listing (files, folders, manifests; was ``opening.py``) and
  which files in a folder are images (:func:`.inputs.list_images`);
* :mod:`.manifest` - the manifest CSV (:class:`Dataset`, :class:`Sample`) and its fingerprint;
* :mod:`.vocabulary` - the default controlled vocabulary and the developmental stages.

The names below are reached lazily (:func:`..utils.lazy.attach`): importing one module of
this package imports none of its siblings.
"""

from __future__ import annotations

from ..utils.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "budget": ["DEFAULT_MAX_PIXELS", "max_pixels", "parse_pixels", "pixel_budget"],
    "images": ["SUPPORTED_SUFFIXES", "SUPPORTED_TEXT", "array_to_rgb", "check_image",
               "check_image_path", "has_image_suffix", "open_image", "read_rgb", "vet_image"],
    "headers": ["ImageHeader", "read_header"],
    "inputs": ["collect_inputs", "is_hidden", "iter_images", "iter_scan_inputs", "list_images", "scan_inputs"],
    "manifest": ["Dataset", "Sample", "is_manifest", "parse_vocabulary", "read_manifest", "read_manifest_genes", "read_manifest_images", "training_fingerprint", "write_manifest"],
    "vocabulary": ["STAGE_RANGES", "all_default_terms", "default_vocabulary", "resolve_stage", "term_statistics"],
})
