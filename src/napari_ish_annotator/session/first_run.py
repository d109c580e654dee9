"""Which network a new user starts on: the paper's VGG16 when its ImageNet weights are here,
else EfficientNet-Lite0 from the ``[offline]`` extra, as ``ish-annotator demo`` does.

Decided from files only (see :mod:`..core.backbones.hub_files`), so the Model panel can ask
on the GUI thread when it opens, without the seconds torch takes to import.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.backbones.hub_files import OFFLINE_BACKBONE, weights_cached
from ..core.backbones.specs import get_spec
from .results import SessionSettings

PAPER_BACKBONE = "vgg16"


@dataclass(frozen=True)
class FirstRunChoice:
    """The settings to start on (None: keep them), a few words saying why (beside the
    Backbone box, so the panel still fits 1366x768) and the whole story (their tooltip)."""

    values: dict | None
    note: str
    detail: str


def first_run_model(settings: SessionSettings) -> FirstRunChoice | None:
    """None when the settings are not the untouched default (VGG16, ImageNet) or its weights
    are cached; else the offline network (or, without it, what to choose instead)."""
    if settings.backbone != PAPER_BACKBONE or settings.weights != "imagenet":
        return None
    if weights_cached(PAPER_BACKBONE):
        return None
    if weights_cached(OFFLINE_BACKBONE):
        return FirstRunChoice(
            {"backbone": OFFLINE_BACKBONE, "layer": str(get_spec(OFFLINE_BACKBONE).default_layer)},
            "VGG16 weights absent",
            "VGG16's ImageNet weights are not on this computer (torch hub's cache), so the "
            "panel uses EfficientNet-Lite0, whose weights come with the [offline] extra; choose "
            "vgg16 once its weights are downloaded.")
    return FirstRunChoice(
        None, "weights absent",
        "VGG16's ImageNet weights are not on this computer (torch hub's cache): choose random "
        "weights or a weights file (File…), or install the [offline] extra for "
        "EfficientNet-Lite0.")


def back_to_paper(values: dict) -> dict:
    """Settings a user changes while the first-run choice stands: the offline network stood
    in only for VGG16's missing ImageNet weights, so other weights (random, a file) go back to
    VGG16 (a layer VGG16 lacks becomes its default)."""
    weights = str(values.get("weights", "imagenet")).strip() or "imagenet"
    if weights == "imagenet" or values.get("backbone", OFFLINE_BACKBONE) != OFFLINE_BACKBONE:
        return values
    spec = get_spec(PAPER_BACKBONE)
    out = dict(values, backbone=PAPER_BACKBONE)
    if str(out.get("layer", "")) not in spec.layers:
        out["layer"] = str(spec.default_layer)
    return out
