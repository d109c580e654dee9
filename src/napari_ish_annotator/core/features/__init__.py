"""Feature extraction: image -> preprocessed tensor -> trunk activations -> cached rows.

* :mod:`.preprocess` - the one preprocessing path (resize, normalise, precision);
* :mod:`.decoding` - decoding ahead of the network, in threads or processes;
* :mod:`.extractor` - :class:`FeatureExtractor` and :class:`ExtractorConfig` (was ``features.py``);
* :mod:`.cache` - the on-disk feature cache keyed by content hash and settings;
* :mod:`.distributed` - the dask executor (``[cluster]`` extra; dask imported lazily).

The names below are reached lazily (:func:`..utils.lazy.attach`): importing one module of
this package imports none of its siblings.
"""

from __future__ import annotations

from ..utils.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "preprocess": ["PRECISIONS", "RESIZE_METHOD", "as_rgb", "border_colour", "normalisation_affine", "preprocess_np", "resolve_precision", "resolve_precision_type"],
    "decoding": ["Preprocessor", "default_decode_workers"],
    "extractor": ["ExtractorConfig", "FeatureExtractor"],
    "cache": ["FeatureCache", "default_cache_dir", "signature_hash"],
    "distributed": ["ClusterAddress", "DistributedExtractor", "TLSFiles", "connect", "slurm_cluster"],
})
