"""Training data for fine-tuning: labels, the validation split, images in memory, augmentation.

The split, the "term has both classes" rule and the fingerprint are the package's single ones
(:mod:`..splits`, :mod:`..metrics`, :mod:`..manifest`); images go through :mod:`..preprocess`, as for feature extraction.

Images are read once, through the same :mod:`..preprocess` path as feature extraction, and kept
as ``uint8`` (``3 * S * S`` bytes each). On CPU the frozen prefix of the trunk dominates the
cost; when it gets no augmentation its output never changes, so :class:`FrozenCache` holds it
(validation images always, training images when ``cache_frozen`` says so). An ensemble's
members start from the same weights and freeze the same layers, so they share one
:class:`TrainingImages` and its cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.manifest import training_fingerprint  # noqa: F401 - the one training fingerprint
from ..features.preprocess import as_rgb, border_colour, resize_uint8
from ..learn.metrics import has_both_classes, trainable_terms
from ..learn.splits import validation_split
from ..utils.errors import InputError
from ..utils.progress import ProgressGen
from .config import FinetuneConfig, progress

if TYPE_CHECKING:  # pragma: no cover
    import torch

CACHE_FP16_BYTES = 1 << 30  # frozen-output caches larger than this are kept as float16


def check_labels(images: Sequence, Y: np.ndarray, vocabulary: Sequence[str]) -> np.ndarray:
    """``Y`` as int8 after the checks that make training meaningful (InputError otherwise)."""
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape != (len(images), len(vocabulary)):
        raise InputError(f"label matrix has shape {Y.shape}, expected ({len(images)}, "
                         f"{len(vocabulary)}) = (images, vocabulary terms); pass one row per image")
    if not np.isin(Y, (-1, 0, 1)).all():
        raise InputError("labels must be 1 (present), 0 (absent) or -1 (unknown)")
    if len(images) < 2:
        raise InputError("fine-tuning needs at least two labelled images; label more images")
    Y = Y.astype(np.int8)
    if not has_both_classes(Y).any():
        raise InputError("no term has both a present and an absent label; label at least one "
                         "positive and one negative image for some term")
    return Y


def image_names(images: Sequence) -> list[str | Path]:
    """Names for the fingerprint: the path, or ``arrayN`` for an in-memory image."""
    return [im if not isinstance(im, np.ndarray) else f"array{i}" for i, im in enumerate(images)]


@dataclass(frozen=True)
class Split:
    """Which images train and which validate (no group on both sides)."""

    train: np.ndarray
    val: np.ndarray
    val_groups: tuple[str, ...]


def make_split(groups: Sequence | np.ndarray | None, Y: np.ndarray, fraction: float, seed: int) -> Split:
    """The validation split of one run (:func:`..splits.validation_split`: gene-grouped,
    seeded); InputError if the training part cannot train any term."""
    n = len(Y)
    arr = np.array([str(g) for g in (groups if groups is not None else np.arange(n))])
    if len(arr) != n:
        raise InputError(f"{len(arr)} group labels for {n} images; pass one group (gene) per image")
    train_idx, val_idx = validation_split(arr, Y, fraction, seed)
    if not trainable_terms(Y[train_idx]):
        raise InputError("after holding out a validation set no term has both classes in the "
                         "training part; label more images or lower the validation fraction")
    return Split(train_idx, val_idx, tuple(sorted({str(g) for g in arr[val_idx]})))


@dataclass
class TrainingImages:
    """The resized ``uint8`` images of a run, and frozen-trunk outputs computed from them.

    ``frozen_key`` names the frozen trunk whose outputs :attr:`frozen` holds (weights id and
    depth); a trainer with another frozen trunk clears the cache before use.
    """

    pixels: torch.Tensor           # (n, 3, S, S) uint8
    frozen: dict[int, torch.Tensor] = field(default_factory=dict)
    frozen_key: tuple | None = None

    @property
    def size(self) -> int:
        return int(self.pixels.shape[-1])

    def fill(self) -> list[int]:
        """Median border colour of all images: the fill for rotated/shrunk corners."""
        return list(border_colour(self.pixels.permute(0, 2, 3, 1).numpy()))

    def frozen_cache(self, key: tuple) -> dict[int, torch.Tensor]:
        """The cache of frozen outputs for the frozen trunk ``key`` (emptied if it was another)."""
        if self.frozen_key != key:
            self.frozen.clear()
            self.frozen_key = key
        return self.frozen


def iter_load_images(images: Sequence, size: int) -> ProgressGen[TrainingImages]:
    """Read, decode and resize every image once (the shared preprocessing path)."""
    import torch

    n = len(images)
    pixels = torch.empty((n, 3, size, size), dtype=torch.uint8)
    for i, im in enumerate(images):
        pixels[i] = resize_uint8(as_rgb(im), size)
        if i % 8 == 7 or i == n - 1:
            yield progress(i + 1, n, f"loading images {i + 1}/{n}", kind="load")
    return TrainingImages(pixels)


def augmenter(config: FinetuneConfig, fill: list[int]) -> Callable:
    """Rotation, shift, scale, brightness/contrast and stain-colour jitter; flips only if asked.

    No flips by default: BDGP images are oriented anterior-left, dorsal-up and a flip changes
    anatomy.
    """
    from torchvision.transforms import v2

    steps = [
        v2.RandomAffine(degrees=config.rotation, translate=(0.04, 0.04),
                        scale=(1 - config.scale, 1 + config.scale), fill=fill),
        # brightness/contrast for staining and exposure; saturation + small hue for stain colour
        v2.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.1, hue=0.03),
    ]
    if config.flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def channels_last_for(device: torch.device) -> bool:
    """Train channels-last (the GPUs' native convolution layout) on CUDA only: on the CPU the
    results stay exactly what they were."""
    return device.type == "cuda"


def batch_augmenter(config: FinetuneConfig, fill: list[int], device: torch.device) -> Callable:
    """The augmentation of a ``(B, 3, S, S)`` uint8 batch on ``device``.

    On the CPU each image goes through :func:`augmenter`, as before. On a GPU one image at a
    time launches dozens of tiny kernels per image (the first H200 run: 80 img/s), so the same
    kinds of steps run for the whole batch at once, each image with its own random draw
    (:func:`augment_batch`).
    """
    import torch

    if device.type == "cpu":
        one = augmenter(config, fill)
        return lambda x: torch.stack([one(xi) for xi in x])
    return lambda x: augment_batch(x, config.rotation, config.scale, fill, config.flip)


def augment_batch(x: torch.Tensor, rotation: float, scale: float, fill: Sequence[int],
                  flip: bool = False, jitter: float = 1.0, shift: float = 0.04) -> torch.Tensor:
    """Per-image random rotation (+-``rotation`` degrees), shift (+-``shift`` of the side),
    scale (+-``scale``),
    brightness/contrast (+-15 %), saturation (+-10 %) and stain hue (+-0.03 turn, a rotation
    about the grey axis), as :func:`augmenter`'s ranges, for a square uint8 batch in one go;
    corners are filled with ``fill``. ``jitter`` scales the colour ranges (0: none)."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    dev = x.device

    def draw(half: float, centre: float = 0.0) -> torch.Tensor:
        return centre + (torch.rand(b, device=dev) * 2 - 1) * half

    angle = draw(rotation) * (math.pi / 180)
    zoom = draw(scale, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    move = torch.stack([draw(2 * shift), draw(2 * shift)], dim=1)  # in [-1, 1] units
    theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    if flip:
        theta[:, :, 0] *= torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)[:, None]
    theta = torch.cat([theta, -(theta @ move[:, :, None])], dim=2)
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    ones = torch.ones((b, 1, h, w), device=dev)
    both = F.grid_sample(torch.cat([x.float(), ones], 1), grid, mode="nearest",
                         padding_mode="zeros", align_corners=False)
    colour = torch.tensor([float(v) for v in fill], device=dev).view(1, 3, 1, 1)
    y = both[:, :3] + (1 - both[:, 3:]) * colour
    weights = torch.tensor([0.2989, 0.587, 0.114], device=dev).view(1, 3, 1, 1)
    y = (y * draw(0.15 * jitter, 1.0).view(b, 1, 1, 1)).clamp(0, 255)  # brightness
    grey = (y * weights).sum(1, keepdim=True)
    c = draw(0.15 * jitter, 1.0).view(b, 1, 1, 1)  # contrast, about the image's mean grey
    y = (c * y + (1 - c) * grey.mean(dim=(2, 3), keepdim=True)).clamp(0, 255)
    s = draw(0.1 * jitter, 1.0).view(b, 1, 1, 1)  # saturation
    y = (s * y + (1 - s) * (y * weights).sum(1, keepdim=True)).clamp(0, 255)
    turn = draw(0.03 * jitter) * (2 * math.pi)  # hue: Rodrigues rotation about (1, 1, 1)
    k = torch.ones(3, 3, device=dev) / 3
    cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], device=dev, dtype=torch.float32)
    rot = (torch.cos(turn).view(b, 1, 1) * (torch.eye(3, device=dev) - k) + k
           + torch.sin(turn).view(b, 1, 1) * cross / math.sqrt(3))
    y = torch.einsum("bij,bjhw->bihw", rot, y)
    return y.round_().clamp_(0, 255).to(torch.uint8)
