"""Settings, results and progress records of a fine-tuning run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backbones.specs import get_spec
from ..utils.errors import InputError
from ..utils.progress import Progress

FORMAT = "ish-annotator-finetune"
FORMAT_VERSION = 1


@dataclass
class FinetuneConfig:
    """Every knob of a fine-tuning run (recorded in the checkpoint)."""

    backbone: str = "vgg16"
    weights: str = "imagenet"
    input_size: int = 224
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3                 # head learning rate (Adam)
    backbone_lr_scale: float = 0.1   # trainable trunk layers learn at lr * this
    weight_decay: float = 1e-4
    hidden: int = 512                # shared hidden layer width
    dropout: float = 0.5
    pool: int = 3                    # adaptive average pooling grid before the hidden layer
    frozen: str = "auto"             # layer name (VGG16 "17" = pool3) or module count; "auto" = the
    #                                  backbone's default (VGG16: "17"), "none", "all"
    pos_weight: str | Sequence[float] = "none"  # "none", "balanced" (n_neg/n_pos) or one value per term
    val_fraction: float = 0.2        # share of gene groups held out for validation / early stopping
    patience: int = 3                # epochs without validation improvement before stopping
    augment: bool = True             # rotation, scaling, brightness/contrast, stain-hue jitter
    rotation: float = 8.0            # degrees
    scale: float = 0.08              # +- relative scale
    flip: bool = False               # horizontal flips change anatomy in oriented BDGP images
    cache_frozen: str = "auto"       # "auto" (CPU and no augmentation), "on", "off"
    device: str = "auto"
    precision: str = "auto"          # "auto" (fp16 autocast on CUDA, fp32 elsewhere), "fp32", "fp16", "bf16"
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        if not isinstance(d["pos_weight"], str):
            d["pos_weight"] = [float(v) for v in d["pos_weight"]]
        return d

    def check(self) -> None:
        """The settings that are wrong whatever the data (InputError saying what to change)."""
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise InputError("epochs and batch size must be at least 1 and the learning rate positive")

        smallest = get_spec(self.backbone).min_input_size
        if self.input_size < smallest:
            raise InputError(f"input size {self.input_size} is too small for {self.backbone}; "
                             f"use {smallest} or more ({get_spec(self.backbone).input_size} is "
                             "its standard)")
        if self.cache_frozen not in ("auto", "on", "off"):
            raise InputError(f"cache_frozen {self.cache_frozen!r} must be 'auto', 'on' or 'off'")
        if self.cache_frozen == "on" and self.augment:
            raise InputError("caching the frozen layers needs augmentation off (augmented images "
                             "change the frozen output every epoch); turn augmentation off or "
                             "caching off")


def resolve_pos_weight(config: FinetuneConfig, Y: np.ndarray) -> np.ndarray | None:
    """Per-term weight of the positive class in the loss (None = all 1)."""
    pw = config.pos_weight
    if isinstance(pw, str):
        if pw == "none":
            return None
        if pw != "balanced":
            raise InputError(f"pos_weight {pw!r} is not 'none', 'balanced' or one number per term")
        pos = (Y == 1).sum(axis=0).astype(float)
        neg = (Y == 0).sum(axis=0).astype(float)
        return np.clip(neg / np.maximum(pos, 1.0), 1.0, 100.0).astype(np.float32)
    arr = np.asarray(pw, dtype=np.float32)
    if arr.shape != (Y.shape[1],) or not np.all(arr > 0):
        raise InputError(f"pos_weight needs {Y.shape[1]} positive numbers (one per term)")
    return arr


@dataclass
class FinetuneResult:
    """What a finished (or early-stopped) run returns; the checkpoint holds the same facts."""

    checkpoint: Path
    history: list[dict]
    best_epoch: int
    best_score: float | None
    selection: str              # "val_auc", "val_loss" or "train_loss"
    stopped_early: bool
    metrics: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # for the user, e.g. terms a continued run added or dropped


class FinetuneProgress(Progress):
    """A :class:`Progress` that also carries structured numbers for live plots.

    Attributes (set by :func:`progress`): ``kind`` ("load", "cache", "batch", "epoch"),
    ``epoch`` (1-based), ``batch`` (1-based), ``loss``, ``val_auc`` and, for ``kind ==
    "epoch"``, ``record`` (the history entry just appended); ``member`` (0-based) while an
    ensemble trains.
    """


def progress(done: int, total: int, message: str, **info: Any) -> FinetuneProgress:
    p = FinetuneProgress(done, total, message)
    for key in ("kind", "epoch", "batch", "loss", "val_auc", "record", "member"):
        setattr(p, key, info.get(key))
    return p
