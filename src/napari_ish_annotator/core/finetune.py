"""Multi-task fine-tuning of the pretrained trunk on the user's labelled images (TL+MTL).

The paper's second stage: put a shared hidden layer and one sigmoid output per controlled-
vocabulary term on top of the pretrained CNN, train everything after a frozen prefix with the
sum of the per-term binary cross-entropies, then use the *fine-tuned* layer-21 activations as
features for the per-term logistic ensembles. The checkpoint written here is accepted wherever
``--weights FILE`` is (``core.backbones`` reads its ``"backbone_state_dict"``), so the TL+MTL
pipeline is simply the TL pipeline with other weights.

Design points (why):

* Unknown labels (``-1``: a biologist confirmed only some terms of an image) are masked out of
  the loss, so they give neither loss nor gradient - guessing them as absent would teach the
  network wrong negatives.
* The head pools the trunk output onto a coarse ``pool x pool`` grid instead of one global
  average: many terms differ only by position (anterior vs posterior midgut primordium).
* No flips by default: BDGP images are oriented anterior-left, dorsal-up and a flip changes
  anatomy.
* On CPU the frozen prefix (everything before pool3 by default) dominates the cost. When it gets
  no augmentation its output never changes, so ``cache_frozen`` computes it once and each epoch
  only runs the trainable part (trade-off: no image augmentation, and memory of
  ``n_images x C x H x W`` values at the frozen depth).
* Training is a progress generator: closing it between batches (napari ``worker.quit()``,
  Ctrl-C in the CLI) leaves the last complete, atomically written checkpoint intact.
* The checkpoint holds only tensors and plain containers, loadable with
  ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError
from .io import atomic_path
from .progress import Progress, ProgressGen, drive

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .backbones import LoadedBackbone
    from .manifest import Dataset

FORMAT = "ish-annotator-finetune"
FORMAT_VERSION = 1
_CACHE_FP16_BYTES = 1 << 30  # frozen-output caches larger than this are kept as float16


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


class FinetuneProgress(Progress):
    """A :class:`Progress` that also carries structured numbers for live plots.

    Attributes (set by :func:`_progress`): ``kind`` ("load", "cache", "batch", "epoch"),
    ``epoch`` (1-based), ``batch`` (1-based), ``loss``, ``val_auc`` and, for ``kind ==
    "epoch"``, ``record`` (the history entry just appended).
    """


def _progress(done: int, total: int, message: str, **info: Any) -> FinetuneProgress:
    p = FinetuneProgress(done, total, message)
    for key in ("kind", "epoch", "batch", "loss", "val_auc", "record"):
        setattr(p, key, info.get(key))
    return p


# --------------------------------------------------------------------------- network


def build_head(in_features: int, n_terms: int, hidden: int, dropout: float, pool: int) -> torch.nn.Sequential:
    """Pool -> flatten -> shared hidden FC (ReLU, dropout) -> one logit per term."""
    from torch import nn

    return nn.Sequential(
        nn.AdaptiveAvgPool2d(pool),
        nn.Flatten(),
        nn.Linear(in_features * pool * pool, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, n_terms),
    )


def resolve_frozen(loaded: LoadedBackbone, frozen: str | int | None) -> int:
    """Number of leading trunk modules to freeze.

    ``"17"`` (a layer name of the backbone spec, paper numbering for VGG16) freezes everything up
    to and including that layer, i.e. ``features[:17]`` = up to pool3. A plain number that is not
    a layer name counts modules; ``"none"``/``0`` freezes nothing, ``"all"`` the whole trunk,
    ``"auto"`` the backbone spec's ``frozen_default`` or else its shallowest named layer (VGG16:
    "17").
    """
    n = len(loaded.module)
    text = str(frozen if frozen is not None else "none").strip().lower()
    if text == "auto":  # the backbone's own default, else its shallowest named layer (VGG16: "17")
        default = getattr(loaded.spec, "frozen_default", None)
        if default is None and loaded.spec.layers:
            default = min(loaded.spec.layers.values(), key=lambda spec: spec.index).name
        text = str(default or "none").lower()
    if text in ("none", "", "0"):
        return 0
    if text == "all":
        return n
    if text in loaded.spec.layers:
        return loaded.spec.layers[text].index + 1
    if text.isdigit() and 0 <= int(text) <= n:
        return int(text)
    names = ", ".join(sorted(loaded.spec.layers, key=lambda s: (len(s), s)))
    raise InputError(f"frozen depth {frozen!r} is not a layer of {loaded.spec.name} ({names}), "
                     f"a module count 0-{n}, 'auto', 'none' or 'all'; pick one of those")


def _trunk_out_channels(trunk: torch.nn.Module, input_size: int) -> int:
    import torch

    with torch.no_grad():
        p = next(trunk.parameters())
        out = trunk(torch.zeros(1, 3, input_size, input_size, dtype=p.dtype, device=p.device))
    return int(out.shape[1])


def _make_network(trunk: torch.nn.Sequential, head: torch.nn.Sequential) -> torch.nn.Module:
    from torch import nn

    class MTLNetwork(nn.Module):
        """Trunk (same state-dict layout as the backbone) followed by the multi-task head."""

        def __init__(self) -> None:
            super().__init__()
            self.trunk = trunk
            self.head = head

        def forward(self, x):  # noqa: D102
            return self.head(self.trunk(x))

    return MTLNetwork()


@dataclass
class FinetunedModel:
    """A loaded fine-tuned network for inference, Grad-CAM and inspection."""

    network: Any                 # torch.nn.Module with .trunk and .head
    backbone: str
    vocabulary: list[str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_scale: float
    frozen: int
    layers: dict[str, int]       # backbone layer name -> trunk index
    checkpoint: dict

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """``H x W x 3`` uint8 -> ``(3, S, S)`` normalised float, as during training."""
        return _normalise(_resize_uint8(rgb, self.input_size)[None], self.mean, self.std,
                          self.pixel_scale)[0]

    def predict_proba(self, images: Sequence[str | Path | np.ndarray], batch_size: int = 8) -> np.ndarray:
        """``(n, T)`` sigmoid outputs of the multi-task head."""
        import torch

        from .images import read_rgb

        self.network.eval()
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            x = torch.stack([self.preprocess(im if isinstance(im, np.ndarray) else read_rgb(im))
                             for im in chunk]).to(self.device)
            with torch.no_grad():
                out.append(torch.sigmoid(self.network(x)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.vocabulary)), np.float32)


# --------------------------------------------------------------------------- images


def _resize_uint8(rgb: np.ndarray, size: int) -> torch.Tensor:
    """``H x W x 3`` uint8 -> ``(3, size, size)`` uint8, resized exactly as ``features.py`` does."""
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    rgb = np.ascontiguousarray(rgb)
    if not rgb.flags.writeable:  # decoded images may be read-only; torch wants writable memory
        rgb = rgb.copy()
    t = torch.from_numpy(rgb).permute(2, 0, 1)
    if tuple(t.shape[1:]) != (size, size):
        t = TF.resize(t, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return t


def _normalise(x_uint8: torch.Tensor, mean, std, pixel_scale: float = 1.0) -> torch.Tensor:
    import torch

    x = x_uint8.float() * (pixel_scale / 255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def _augmenter(config: FinetuneConfig, fill: list[int]) -> Callable:
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


def _border_colour(images: torch.Tensor) -> list[int]:
    """Median colour of the image borders: the fill for rotated/shrunk corners (pale background)."""
    import torch

    border = torch.cat([images[:, :, 0, :], images[:, :, -1, :], images[:, :, :, 0],
                        images[:, :, :, -1]], dim=2)  # (N, 3, 4S)
    return [int(v) for v in border.permute(1, 0, 2).reshape(3, -1).float().median(dim=1).values]


# --------------------------------------------------------------------------- helpers


def _check_labels(images: Sequence, Y: np.ndarray, vocabulary: Sequence[str]) -> np.ndarray:
    Y = np.asarray(Y)
    if Y.ndim != 2 or Y.shape != (len(images), len(vocabulary)):
        raise InputError(f"label matrix has shape {Y.shape}, expected ({len(images)}, "
                         f"{len(vocabulary)}) = (images, vocabulary terms); pass one row per image")
    if not np.isin(Y, (-1, 0, 1)).all():
        raise InputError("labels must be 1 (present), 0 (absent) or -1 (unknown)")
    if len(images) < 2:
        raise InputError("fine-tuning needs at least two labelled images; label more images")
    Y = Y.astype(np.int8)
    if not ((Y == 1).any(axis=0) & (Y == 0).any(axis=0)).any():
        raise InputError("no term has both a present and an absent label; label at least one "
                         "positive and one negative image for some term")
    return Y


def training_fingerprint(images: Sequence[str | Path], Y: np.ndarray, vocabulary: Sequence[str]) -> str:
    """sha256 over (file name, label row) pairs and the vocabulary: identifies the training set."""
    h = hashlib.sha256()
    h.update("\x1f".join(vocabulary).encode())
    for path, row in zip(images, np.asarray(Y, dtype=np.int8), strict=True):
        h.update(b"\x1e" + Path(path).name.encode() + b"\x1f" + row.tobytes())
    return h.hexdigest()


def _split(groups: np.ndarray, Y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gene-grouped train/validation split (no gene in both); empty validation if impossible."""
    n = len(groups)
    if fraction <= 0 or len(np.unique(groups)) < 2:
        return np.arange(n), np.zeros(0, dtype=int)
    from sklearn.model_selection import GroupShuffleSplit

    best = None
    for attempt in range(20):  # prefer a split whose validation part can score an AUC
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed + attempt)
        tr, va = next(splitter.split(np.zeros(n), groups=groups))
        if best is None:
            best = (tr, va)
        yv = Y[va]
        if ((yv == 1).any(axis=0) & (yv == 0).any(axis=0)).any() and (Y[tr] == 1).any():
            return np.sort(tr), np.sort(va)
    return np.sort(best[0]), np.sort(best[1])


def _pos_weight(config: FinetuneConfig, Y: np.ndarray) -> np.ndarray | None:
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


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over terms of the binary cross-entropy, mean over images; targets ``-1`` are ignored.

    Unknown entries are replaced by 0 before the loss (so garbage there cannot produce NaN) and
    multiplied by a zero mask, so they contribute neither loss nor gradient.
    """
    import torch
    import torch.nn.functional as F

    mask = (targets >= 0).to(logits.dtype)
    safe = torch.where(targets >= 0, targets, torch.zeros_like(targets)).to(logits.dtype)
    per = F.binary_cross_entropy_with_logits(logits.float(), safe.float(), reduction="none",
                                             pos_weight=pos_weight)
    return (per * mask).sum() / max(int(logits.shape[0]), 1)


def mean_auc(Y: np.ndarray, scores: np.ndarray) -> tuple[float, list[float]]:
    """Mean ROC AUC over terms whose known labels have both classes (NaN if none)."""
    from sklearn.metrics import roc_auc_score

    per = []
    for t in range(Y.shape[1]):
        known = Y[:, t] >= 0
        y = Y[known, t]
        if (y == 1).any() and (y == 0).any():
            per.append(float(roc_auc_score(y, scores[known, t])))
        else:
            per.append(float("nan"))
    finite = [a for a in per if not math.isnan(a)]
    return (float(np.mean(finite)) if finite else float("nan")), per


def _atomic_save(obj: dict, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _cpu_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def load_checkpoint(path: str | Path) -> dict:
    """Read and check a fine-tuning checkpoint (``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError("fine-tuning checkpoint not found; check the path", path=path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file for the user
        raise InputError(f"cannot read the checkpoint ({type(exc).__name__}: {exc}); it is "
                         "corrupt or not a torch file - re-run fine-tuning", path=path) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"not a fine-tuning checkpoint (no format {FORMAT!r}); pass a file "
                         "written by 'ish-annotator finetune'", path=path)
    for key in ("backbone", "backbone_state_dict", "head_state_dict", "vocabulary", "head"):
        if key not in ckpt:
            raise InputError(f"checkpoint lacks {key!r}; it is incomplete - re-run fine-tuning",
                             path=path)
    return ckpt


def load_finetuned(checkpoint: str | Path | dict, device: str = "cpu") -> FinetunedModel:
    """Rebuild the trunk + multi-task head from a checkpoint, ready for inference."""
    from .backbones import load_backbone, resolve_device

    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    loaded = load_backbone(ckpt["backbone"], "random", 0)  # architecture only; weights below
    trunk = loaded.module
    try:
        trunk.load_state_dict(ckpt["backbone_state_dict"])
        h = ckpt["head"]
        head = build_head(int(h["in_features"]), len(ckpt["vocabulary"]), int(h["hidden"]),
                          float(h["dropout"]), int(h["pool"]))
        head.load_state_dict(ckpt["head_state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"the checkpoint's weights do not fit a {ckpt['backbone']} network with "
                         f"its recorded head ({first}); it is damaged or from another version - "
                         "re-run fine-tuning") from exc
    net = _make_network(trunk, head).to(resolve_device(device)).eval()
    norm = ckpt.get("normalisation", {})
    return FinetunedModel(
        network=net, backbone=ckpt["backbone"], vocabulary=list(ckpt["vocabulary"]),
        input_size=int(ckpt.get("input_size", loaded.spec.input_size)),
        mean=tuple(norm.get("mean", loaded.mean)), std=tuple(norm.get("std", loaded.std)),
        pixel_scale=float(norm.get("pixel_scale", loaded.spec.pixel_scale)),
        frozen=int(ckpt.get("frozen", 0)),
        layers={name: spec.index for name, spec in loaded.spec.layers.items()},
        checkpoint=ckpt,
    )


# --------------------------------------------------------------------------- training


def iter_finetune_dataset(dataset: Dataset, config: FinetuneConfig, out: str | Path,
                          resume: bool = False) -> ProgressGen[FinetuneResult]:
    """Fine-tune on a manifest :class:`Dataset` (validation grouped by gene)."""
    return iter_finetune(dataset.paths, dataset.labels().astype(np.int8), dataset.vocabulary,
                         config, out, groups=dataset.groups(), resume=resume,
                         fingerprint=dataset.fingerprint())


def iter_finetune(
    images: Sequence[str | Path | np.ndarray],
    Y: np.ndarray,
    vocabulary: Sequence[str],
    config: FinetuneConfig,
    out: str | Path,
    groups: Sequence | np.ndarray | None = None,
    resume: bool = False,
    fingerprint: str | None = None,
    loaded: LoadedBackbone | None = None,
) -> ProgressGen[FinetuneResult]:
    """Fine-tune trunk + multi-task head; write ``out`` after every epoch; return the result.

    ``Y`` is ``(n_images, n_terms)`` with 1 present, 0 absent, -1 unknown (masked). ``groups``
    (e.g. gene per image) keeps a group on one side of the validation split. With ``resume``
    an existing ``out`` written for the same training set continues after its last epoch.
    Yields :class:`FinetuneProgress` after every batch and epoch; closing the generator there
    keeps the last complete checkpoint. A ``loaded`` backbone is trained in place.
    """
    import torch

    from .backbones import load_backbone, resolve_device

    vocabulary = list(vocabulary)
    Y = _check_labels(images, Y, vocabulary)
    if config.epochs < 1 or config.batch_size < 1 or config.lr <= 0:
        raise InputError("epochs and batch size must be at least 1 and the learning rate positive")
    if config.input_size < 32:
        raise InputError(f"input size {config.input_size} is too small; use 32 or more (224 as in the paper)")
    if config.cache_frozen not in ("auto", "on", "off"):
        raise InputError(f"cache_frozen {config.cache_frozen!r} must be 'auto', 'on' or 'off'")
    if config.cache_frozen == "on" and config.augment:
        raise InputError("caching the frozen layers needs augmentation off (augmented images change "
                         "the frozen output every epoch); turn augmentation off or caching off")
    out = Path(out)
    if out.parent and not out.parent.exists():
        raise InputError("the checkpoint's folder does not exist; create it first", path=out.parent)
    paths_for_fp = [im if not isinstance(im, np.ndarray) else f"array{i}" for i, im in enumerate(images)]
    fingerprint = fingerprint or training_fingerprint(paths_for_fp, Y, vocabulary)
    device = resolve_device(config.device)
    precision = str(config.precision or "auto").strip().lower()
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise InputError(f"unknown precision {config.precision!r}; use auto, fp32, fp16 or bf16")
    if precision == "fp16" and device.type == "cpu":
        raise InputError("precision fp16 is for GPUs; on the CPU use fp32 (or bf16 if the CPU "
                         "supports it)")

    state: dict | None = None
    if resume and out.exists():
        state = load_checkpoint(out)
        _check_resumable(state, config, vocabulary, fingerprint, out)
        if state.get("stopped_early") or int(state.get("epoch", 0)) >= config.epochs:
            m = state.get("metrics", {})  # nothing left to do: report the stored run
            return FinetuneResult(
                checkpoint=out, history=list(state.get("history", [])),
                best_epoch=int(m.get("best_epoch", state.get("epoch", 0))),
                best_score=m.get("best_score"), selection=m.get("selection", "val_auc"),
                stopped_early=bool(state.get("stopped_early")),
                metrics={"n_train": int(state.get("split", {}).get("n_train", 0)),
                         "n_val": int(state.get("split", {}).get("n_val", 0)),
                         "cache_frozen": bool(state.get("cache_frozen", False))})

    if loaded is None:
        # when resuming, the checkpoint provides every weight; no need to fetch ImageNet weights
        loaded = load_backbone(config.backbone, "random" if state else config.weights, config.seed)
    if loaded.available_upto is not None and loaded.available_upto < len(loaded.module) - 1:
        raise InputError(f"the weights ({loaded.weights or loaded.weights_id}) cover only "
                         f"{config.backbone}'s trunk up to index {loaded.available_upto}, but "
                         "fine-tuning trains the whole trunk; pass a complete weights file")
    trunk = loaded.module
    if state is not None:
        norm = state["normalisation"]
        mean, std = tuple(norm["mean"]), tuple(norm["std"])
        pixel_scale = float(norm.get("pixel_scale", 1.0))
        weights_id = state.get("base_weights_id", "")
    else:
        mean, std = tuple(loaded.mean), tuple(loaded.std)
        pixel_scale = float(getattr(loaded, "pixel_scale", loaded.spec.pixel_scale))
        weights_id = loaded.weights_id
    n_frozen = resolve_frozen(loaded, config.frozen)
    if n_frozen and not hasattr(trunk, "__getitem__"):
        raise InputError(f"backbone {config.backbone} cannot be split at a frozen depth; use frozen 'none'")

    groups_arr = np.asarray(groups if groups is not None else np.arange(len(images)), dtype=object)
    groups_arr = np.array([str(g) for g in groups_arr])
    train_idx, val_idx = _split(groups_arr, Y, config.val_fraction, config.seed)
    if not ((Y[train_idx] == 1).any(axis=0) & (Y[train_idx] == 0).any(axis=0)).any():
        raise InputError("after holding out a validation set no term has both classes in the "
                         "training part; label more images or lower the validation fraction")

    # ---- images into memory once, resized (uint8 keeps memory at 3*S*S bytes per image)
    from .images import read_rgb

    S = config.input_size
    n = len(images)
    pixels = torch.empty((n, 3, S, S), dtype=torch.uint8)
    for i, im in enumerate(images):
        rgb = im if isinstance(im, np.ndarray) else read_rgb(im)
        pixels[i] = _resize_uint8(rgb, S)
        if i % 8 == 7 or i == n - 1:
            yield _progress(i + 1, n, f"loading images {i + 1}/{n}", kind="load")

    in_features = _trunk_out_channels(trunk, S)
    torch.manual_seed(config.seed)
    head = build_head(in_features, len(vocabulary), config.hidden, config.dropout, config.pool)
    net = _make_network(trunk, head).to(device)
    frozen_part = trunk[:n_frozen] if n_frozen else torch.nn.Identity()
    trainable_trunk = trunk[n_frozen:] if n_frozen < len(trunk) else torch.nn.Identity()
    for p in frozen_part.parameters():
        p.requires_grad_(False)
    backbone_params = [p for p in trainable_trunk.parameters()]
    groups_opt = [{"params": list(head.parameters()), "lr": config.lr, "name": "head"}]
    if backbone_params:
        groups_opt.append({"params": backbone_params, "lr": config.lr * config.backbone_lr_scale,
                           "name": "backbone"})
    optimizer = torch.optim.Adam(groups_opt, weight_decay=config.weight_decay)

    amp_dtype = None
    if precision == "fp16" or (precision == "auto" and device.type == "cuda"):
        amp_dtype = torch.float16
    elif precision == "bf16":
        amp_dtype = torch.bfloat16
    # fp16 gradients underflow without loss scaling, on any GPU (CUDA or MPS)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    history: list[dict] = []
    start_epoch = 0
    best: dict = {"epoch": 0, "score": None, "backbone": None, "head": None, "per_term": None}
    bad_epochs = 0
    stopped_early = False
    if state is not None:
        latest_b = state.get("latest_backbone_state_dict", state["backbone_state_dict"])
        latest_h = state.get("latest_head_state_dict", state["head_state_dict"])
        trunk.load_state_dict(latest_b)
        head.load_state_dict(latest_h)
        if "optimizer_state_dict" in state:
            optimizer.load_state_dict(state["optimizer_state_dict"])
        if "scaler_state_dict" in state and scaler.is_enabled():
            scaler.load_state_dict(state["scaler_state_dict"])
        history = list(state.get("history", []))
        start_epoch = int(state.get("epoch", 0))
        m = state.get("metrics", {})
        best = {"epoch": int(m.get("best_epoch", start_epoch)), "score": m.get("best_score"),
                "backbone": state["backbone_state_dict"], "head": state["head_state_dict"],
                "per_term": list(m["val_auc_per_term"].values()) if m.get("val_auc_per_term") else None,
                "val_loss": m.get("best_val_loss")}
        bad_epochs = int(state.get("bad_epochs", 0))
        stopped_early = bool(state.get("stopped_early", False))

    pos_w = _pos_weight(config, Y[train_idx])
    pos_w_t = torch.from_numpy(pos_w).to(device) if pos_w is not None else None
    Y_t = torch.from_numpy(Y.astype(np.float32))

    use_cache = n_frozen > 0 and (config.cache_frozen == "on" or (
        config.cache_frozen == "auto" and not config.augment and device.type == "cpu"))
    augment = _augmenter(config, _border_colour(pixels)) if config.augment else None

    def run_frozen(idx: np.ndarray) -> torch.Tensor:
        x = _normalise(pixels[idx].to(device), mean, std, pixel_scale)
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                             enabled=amp_dtype is not None):
            return frozen_part(x)

    # ---- frozen-output caches: validation always (its inputs never change), training if asked
    cache: dict[int, torch.Tensor] = {}
    to_cache = np.concatenate([val_idx, train_idx]) if use_cache else val_idx
    if n_frozen and len(to_cache):
        frozen_part.eval()
        z0 = run_frozen(to_cache[:1])
        store_dtype = torch.float16 if (z0[0].numel() * 4 * len(to_cache) > _CACHE_FP16_BYTES) else torch.float32
        bs = max(config.batch_size, 8)
        for s in range(0, len(to_cache), bs):
            idx = to_cache[s:s + bs]
            z = run_frozen(idx).to("cpu", store_dtype)
            for j, i in enumerate(idx):
                cache[int(i)] = z[j]
            yield _progress(min(s + bs, len(to_cache)), len(to_cache),
                            f"caching frozen layers {min(s + bs, len(to_cache))}/{len(to_cache)}",
                            kind="cache")

    def forward_batch(idx: np.ndarray, train: bool) -> torch.Tensor:
        if n_frozen and all(int(i) in cache for i in idx):
            z = torch.stack([cache[int(i)] for i in idx]).to(device).float()
        else:
            x = pixels[idx].to(device)  # augment where the network runs (GPU if present)
            if train and augment is not None:
                x = torch.stack([augment(xi) for xi in x])
            x = _normalise(x, mean, std, pixel_scale)
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                                 enabled=amp_dtype is not None):
                z = frozen_part(x)
            z = z.float()
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            return head(trainable_trunk(z))

    def validate() -> tuple[float | None, float | None, list[float] | None]:
        if not len(val_idx):
            return None, None, None
        net.eval()
        scores, losses = [], 0.0
        with torch.no_grad():
            for s in range(0, len(val_idx), max(config.batch_size, 8)):
                idx = val_idx[s:s + max(config.batch_size, 8)]
                logits = forward_batch(idx, train=False).float()
                losses += float(masked_bce(logits, Y_t[idx].to(device), pos_w_t)) * len(idx)
                scores.append(torch.sigmoid(logits).cpu().numpy())
        auc, per = mean_auc(Y[val_idx], np.concatenate(scores))
        return (None if math.isnan(auc) else auc), losses / len(val_idx), per

    n_train = len(train_idx)
    n_batches = max(1, math.ceil(n_train / config.batch_size))
    total = max(1, (config.epochs - start_epoch) * n_batches)
    done = 0
    selection = "val_auc" if len(val_idx) else "train_loss"
    base_meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "backbone": config.backbone,
        "base_weights": config.weights if state is None else state.get("base_weights", config.weights),
        "base_weights_id": weights_id, "vocabulary": vocabulary, "frozen": n_frozen,
        "frozen_spec": str(config.frozen),
        "normalisation": {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
                          "pixel_scale": pixel_scale},
        "input_size": S, "keep_aspect": False, "training_fingerprint": fingerprint,
        "head": {"in_features": in_features, "hidden": config.hidden, "dropout": config.dropout,
                 "pool": config.pool},
        "config": config.to_dict(),
        "split": {"n_train": int(n_train), "n_val": int(len(val_idx)),
                  "val_groups": sorted({str(g) for g in groups_arr[val_idx]})},
        "cache_frozen": bool(use_cache),
    }
    if state is not None:
        selection = state.get("metrics", {}).get("selection", selection)

    def save(epoch: int) -> None:
        latest_b, latest_h = _cpu_state(trunk), _cpu_state(head)
        same = best["epoch"] == epoch
        ckpt = dict(base_meta)
        ckpt.update({
            "backbone_state_dict": latest_b if same else best["backbone"],
            "head_state_dict": latest_h if same else best["head"],
            "optimizer_state_dict": optimizer.state_dict(),
            "epoch": epoch, "history": history, "bad_epochs": bad_epochs,
            "stopped_early": stopped_early,
            "metrics": {"best_epoch": best["epoch"], "best_score": best["score"],
                        "selection": selection, "best_val_loss": best.get("val_loss"),
                        "val_auc": best["score"] if selection == "val_auc" else None,
                        "val_auc_per_term": dict(zip(vocabulary, best["per_term"], strict=True))
                        if best["per_term"] else None},
        })
        if scaler.is_enabled():
            ckpt["scaler_state_dict"] = scaler.state_dict()
        if not same:  # resume continues from the latest weights, users get the best ones
            ckpt["latest_backbone_state_dict"] = latest_b
            ckpt["latest_head_state_dict"] = latest_h
        if same:
            best["backbone"], best["head"] = latest_b, latest_h
        _atomic_save(ckpt, out)

    epoch = start_epoch
    for epoch in range(start_epoch + 1, config.epochs + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        torch.manual_seed(config.seed * 100_003 + epoch)  # augmentation/dropout: reproducible on resume
        gen = torch.Generator().manual_seed(config.seed * 7919 + epoch)
        order = train_idx[torch.randperm(n_train, generator=gen).numpy()]
        net.train()
        frozen_part.eval()
        run_loss, seen = 0.0, 0
        for b in range(n_batches):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            logits = forward_batch(idx, train=True)
            loss = masked_bce(logits, Y_t[idx].to(device), pos_w_t)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_value = float(loss.detach())
            run_loss += loss_value * len(idx)
            seen += len(idx)
            done += 1
            yield _progress(done, total, f"epoch {epoch}/{config.epochs} batch {b + 1}/{n_batches} "
                            f"loss {loss_value:.4f}", kind="batch", epoch=epoch, batch=b + 1,
                            loss=loss_value)
        train_loss = run_loss / max(seen, 1)
        val_auc, val_loss, per_term = validate()
        if selection == "val_auc" and val_auc is None and val_loss is not None:
            selection = "val_loss"
        score = {"val_auc": val_auc, "val_loss": None if val_loss is None else -val_loss,
                 "train_loss": -train_loss}[selection]
        if score is None:
            score = -train_loss
        tie_better = (best["score"] is not None and abs(score - best["score"]) <= 1e-6
                      and val_loss is not None and best.get("val_loss") is not None
                      and val_loss < best["val_loss"] - 1e-6)  # equal AUC (e.g. 1.0): lower loss wins
        if best["score"] is None or score > best["score"] + 1e-6 or tie_better:
            best.update(epoch=epoch, score=score, per_term=per_term, val_loss=val_loss)
            bad_epochs = 0
        else:
            bad_epochs += 1
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                  "val_auc": val_auc, "seconds": time.perf_counter() - t0,
                  "lr_head": config.lr, "lr_backbone": config.lr * config.backbone_lr_scale}
        history.append(record)
        if len(val_idx) and bad_epochs >= config.patience:
            stopped_early = True
        save(epoch)
        auc_text = "n/a" if val_auc is None else f"{val_auc:.3f}"
        yield _progress(done, total, f"epoch {epoch}/{config.epochs} loss {train_loss:.4f} "
                        f"val AUC {auc_text}" + (" (early stop)" if stopped_early else ""),
                        kind="epoch", epoch=epoch, loss=train_loss, val_auc=val_auc, record=record)
    return FinetuneResult(checkpoint=out, history=history, best_epoch=best["epoch"],
                          best_score=best["score"], selection=selection,
                          stopped_early=stopped_early,
                          metrics={"n_train": int(n_train), "n_val": int(len(val_idx)),
                                   "cache_frozen": bool(use_cache)})


def _check_resumable(state: dict, config: FinetuneConfig, vocabulary: list[str],
                     fingerprint: str, out: Path) -> None:
    problems = []
    if state["backbone"] != config.backbone:
        problems.append(f"backbone {state['backbone']} != {config.backbone}")
    if list(state["vocabulary"]) != vocabulary:
        problems.append("different vocabulary")
    if state.get("training_fingerprint") != fingerprint:
        problems.append("different training images or labels")
    if int(state.get("input_size", -1)) != config.input_size:
        problems.append(f"input size {state.get('input_size')} != {config.input_size}")
    saved = state.get("config", {})
    for key in ("hidden", "pool", "frozen"):
        if key in saved and str(saved[key]) != str(getattr(config, key)):
            problems.append(f"{key} {saved[key]} != {getattr(config, key)}")
    if problems:
        raise InputError("cannot resume: the checkpoint was written for another run ("
                         + "; ".join(problems) + "); choose another output file or drop --resume",
                         path=out)


def finetune(images, Y, vocabulary, config: FinetuneConfig, out, progress=None, cancel=None,
             **kwargs: Any) -> FinetuneResult:
    """Blocking wrapper around :func:`iter_finetune` (see :func:`core.progress.drive`)."""
    return drive(iter_finetune(images, Y, vocabulary, config, out, **kwargs), progress, cancel)


# --------------------------------------------------------------------------- Grad-CAM


def gradcam_mtl(model: FinetunedModel | str | Path | dict, image_rgb: np.ndarray,
                terms: Sequence[str] | None = None, layer: str | None = None) -> np.ndarray:
    """Grad-CAM through the fine-tuned network's own term outputs: ``(T, H_img, W_img)`` in [0, 1].

    One forward pass; the trunk runs up to ``layer`` (default: the backbone's default layer, 21
    for VGG16) and that activation ``A`` becomes the tensor we differentiate against directly
    (module backward hooks break on torchvision VGG's in-place ReLUs). The gradients of all
    term logits are taken in one batched autograd call. Each map is scaled by its term's
    predicted probability (as in ``core.gradcam``), so absent terms stay dark.
    """
    import torch
    import torch.nn.functional as F

    from .backbones import get_spec

    if not isinstance(model, FinetunedModel):
        model = load_finetuned(model)
    spec = get_spec(model.backbone)
    layer = str(layer or spec.default_layer)
    if layer not in model.layers:
        raise InputError(f"layer {layer!r} is not a layer of {model.backbone}; use one of "
                         f"{', '.join(model.layers)}")
    terms = list(terms) if terms is not None else list(model.vocabulary)
    unknown = [t for t in terms if t not in model.vocabulary]
    if unknown:
        raise InputError(f"term(s) {', '.join(unknown)} not in the checkpoint's vocabulary "
                         f"({', '.join(model.vocabulary)})")
    cols = [model.vocabulary.index(t) for t in terms]
    k = model.layers[layer]
    trunk, head = model.network.trunk, model.network.head
    model.network.eval()
    x = model.preprocess(image_rgb)[None].to(model.device)
    with torch.no_grad():
        a = trunk[:k + 1](x)
    a = a.detach().requires_grad_(True)
    logits = head(trunk[k + 1:](a.clone()))[0, cols]  # clone: later in-place ReLUs must not hit the leaf
    eye = torch.eye(len(cols), device=a.device, dtype=logits.dtype)
    try:
        (grads,) = torch.autograd.grad(logits, a, grad_outputs=eye, is_grads_batched=True)
        grads = grads[:, 0]                                   # (T, C, h, w)
    except RuntimeError:  # an op without a batching rule: fall back to one call per term
        grads = torch.stack([torch.autograd.grad(logits[i], a, retain_graph=True)[0][0]
                             for i in range(len(cols))])
    weights = grads.mean(dim=(2, 3), keepdim=True)            # (T, C, 1, 1)
    cam = F.relu((weights * a.detach()[0][None]).sum(dim=1))  # (T, h, w)
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
    prob = torch.sigmoid(logits.detach()).view(-1, 1, 1)
    cam = cam / peak * prob
    H, W = image_rgb.shape[:2]
    up = F.interpolate(cam[None].float(), size=(H, W), mode="bilinear", align_corners=False)[0]
    return up.clamp(0, 1).cpu().numpy().astype(np.float32)
