"""Checkpoint I/O: atomic writes, checked reads, rebuilding the network for inference.

A checkpoint holds only tensors and plain containers, loadable with
``torch.load(weights_only=True)``. Its ``"backbone_state_dict"`` has the trunk's own layout, so
it is accepted wherever ``--weights FILE`` is (``core.backbones`` reads it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backbones.devices import resolve_device
from ..backbones.specs import get_spec
from ..backbones.weights import empty_trunk
from ..features.preprocess import as_rgb, normalise, resize_uint8
from ..utils.arrays import MAX_INPUT_SIZE, model_budget, over_budget, torch_load
from ..utils.errors import InputError
from ..utils.files import atomic_path
from .config import FORMAT, FinetuneConfig, FinetuneResult
from .network import build_head, make_network

if TYPE_CHECKING:  # pragma: no cover
    import torch


def atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary file renamed over ``path``: a reader never sees half a file."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def cpu_state(module: torch.nn.Module) -> dict:
    """A detached CPU copy of a module's state dict (what a checkpoint stores)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def is_ensemble(ckpt: dict) -> bool:
    """Does the checkpoint hold K fine-tuned networks (``finetune --ensemble K``)?"""
    return isinstance(ckpt.get("ensemble"), dict)


def load_checkpoint(path: str | Path) -> dict:
    """Read and check a fine-tuning checkpoint: torch's zip format with stored records within
    the memory budget, ``weights_only=True``, then its fields (:func:`check_fields`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("fine-tuning checkpoint not found; check the path", path=path)
    ckpt = torch_load(path, "checkpoint", "pass a file written by 'ish-annotator finetune' or "
                      "re-run fine-tuning")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"not a fine-tuning checkpoint (no format {FORMAT!r}); pass a file "
                         "written by 'ish-annotator finetune'", path=path)
    for key in ("backbone", "backbone_state_dict", "head_state_dict", "vocabulary", "head"):
        if key not in ckpt:
            raise InputError(f"checkpoint lacks {key!r}; it is incomplete - re-run fine-tuning",
                             path=path)
    check_fields(ckpt, path)
    return ckpt


def _number(value: object, kind: type, low: float, high: float) -> bool:
    ok_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    return (ok_type and not isinstance(value, bool) and math.isfinite(float(value))  # type: ignore[arg-type]
            and low <= float(value) <= high)  # type: ignore[arg-type]


def check_fields(ckpt: dict, path: Path | None = None) -> None:
    """The plain fields a received checkpoint declares, checked before they size anything:
    names, vocabulary, head sizes within the memory budget, input size, normalisation."""
    def bad(what: str) -> InputError:
        return InputError(f"the checkpoint's {what}; it is damaged or not from this tool - "
                          "re-run fine-tuning", path=path)

    if not isinstance(ckpt["backbone"], str):
        raise bad("backbone is not a name")
    vocab = ckpt["vocabulary"]
    if not isinstance(vocab, (list, tuple)) or not all(isinstance(t, str) for t in vocab) \
            or not 0 < len(vocab) <= 100_000:
        raise bad("vocabulary is not a list of term names")
    h = ckpt["head"]
    if not isinstance(h, dict) or not all(k in h for k in ("in_features", "hidden", "dropout",
                                                            "pool")):
        raise bad("head is not a mapping of in_features, hidden, dropout and pool")
    if not (_number(h["in_features"], int, 1, 1 << 20) and _number(h["hidden"], int, 1, 1 << 20)
            and _number(h["pool"], int, 1, 64) and _number(h["dropout"], float, 0.0, 1.0)):
        raise bad(f"head declares impossible sizes ({str(h)[:120]})")
    n = int(h["in_features"]) * int(h["pool"]) ** 2 * int(h["hidden"]) + \
        int(h["hidden"]) * (len(vocab) + 1)
    if 4 * n > model_budget():
        raise over_budget(4 * n, "the checkpoint's head", path)
    if "input_size" in ckpt and not _number(ckpt["input_size"], int, 1, MAX_INPUT_SIZE):
        raise bad(f"input size {str(ckpt['input_size'])[:20]} is outside 1..{MAX_INPUT_SIZE}")
    norm = ckpt.get("normalisation") or {}
    if not isinstance(norm, dict):
        raise bad("normalisation is not a mapping")
    for key in ("mean", "std"):
        v = norm.get(key)
        if v is not None and not (isinstance(v, (list, tuple)) and len(v) == 3 and all(
                _number(x, float, -1e6 if key == "mean" else 1e-12, 1e6) for x in v)):
            raise bad(f"normalisation {key} is {str(v)[:60]}, not 3 finite numbers"
                      f"{' above 0' if key == 'std' else ''}")
    scale = norm.get("pixel_scale")
    if scale is not None and not _number(scale, float, 1e-12, 1e6):
        raise bad(f"normalisation pixel_scale is {str(scale)[:20]}, not a positive number")


def stored_result(state: dict, out: Path) -> FinetuneResult:
    """The result a finished checkpoint describes (resuming it has nothing left to do)."""
    m = state.get("metrics", {})
    split = state.get("split", {})
    return FinetuneResult(
        checkpoint=out, history=list(state.get("history", [])),
        best_epoch=int(m.get("best_epoch", state.get("epoch", 0))),
        best_score=m.get("best_score"), selection=m.get("selection", "val_auc"),
        stopped_early=bool(state.get("stopped_early")),
        metrics={"n_train": int(split.get("n_train", 0)), "n_val": int(split.get("n_val", 0)),
                 "cache_frozen": bool(state.get("cache_frozen", False))})


def is_finished(state: dict, config: FinetuneConfig) -> bool:
    """True if resuming ``state`` with ``config`` would train no further epoch."""
    return bool(state.get("stopped_early")) or int(state.get("epoch", 0)) >= config.epochs


def check_resumable(state: dict, config: FinetuneConfig, vocabulary: list[str],
                    fingerprint: str, out: Path) -> None:
    """InputError unless ``state`` was written by a run with this data and these settings."""
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
    for key in ("hidden", "pool", "frozen", "seed"):
        if key in saved and str(saved[key]) != str(getattr(config, key)):
            problems.append(f"{key} {saved[key]} != {getattr(config, key)}")
    if problems:
        raise InputError("cannot resume: the checkpoint was written for another run ("
                         + "; ".join(problems) + "); choose another output file or drop --resume",
                         path=out)


def _check_head_shapes(build: Any, args: tuple, state: object) -> None:
    """The head's shapes on the meta device (no memory) against the stored tensors: a head
    declaring 122,070 hidden units is refused before it is allocated."""
    import torch

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build(*args).state_dict().items()}
    if not isinstance(state, dict) or set(state) != set(expected):
        raise KeyError(f"head keys {sorted(map(str, state))[:4] if isinstance(state, dict) else state!r}")
    wrong = [k for k, v in state.items() if not isinstance(v, torch.Tensor)
             or tuple(v.shape) != expected[k]]
    if wrong:
        raise ValueError(f"head tensor {wrong[0]} does not have shape {expected[wrong[0]]}")


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
        return normalise(resize_uint8(rgb, self.input_size), self.mean, self.std, self.pixel_scale)

    def predict_proba(self, images: Sequence[str | Path | np.ndarray], batch_size: int = 8) -> np.ndarray:
        """``(n, T)`` sigmoid outputs of the multi-task head."""
        import torch

        self.network.eval()
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            x = torch.stack([self.preprocess(as_rgb(im)) for im in chunk]).to(self.device)
            out.append(self.predict_batch(x))
        return np.concatenate(out) if out else np.zeros((0, len(self.vocabulary)), np.float32)

    def predict_batch(self, x: torch.Tensor) -> np.ndarray:
        """``(B, T)`` probabilities for an already preprocessed batch."""
        import torch

        self.network.eval()
        with torch.no_grad():
            return torch.sigmoid(self.network(x.to(self.device))).float().cpu().numpy()


def load_finetuned(checkpoint: str | Path | dict, device: str = "cpu") -> FinetunedModel:
    """Rebuild the trunk + multi-task head from a checkpoint, ready for inference.

    An ensemble checkpoint (see :mod:`.ensemble`) gives its representative member, the one
    ``--weights`` uses; :func:`.ensemble.load_ensemble` gives all members.
    """
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    spec = get_spec(ckpt["backbone"])
    trunk = empty_trunk(spec.name)  # architecture only; every weight comes from the checkpoint
    try:
        trunk.load_state_dict(ckpt["backbone_state_dict"])
        h = ckpt["head"]
        args = (int(h["in_features"]), len(ckpt["vocabulary"]), int(h["hidden"]),
                float(h["dropout"]), int(h["pool"]))
        _check_head_shapes(build_head, args, ckpt["head_state_dict"])
        head = build_head(*args)
        head.load_state_dict(ckpt["head_state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"the checkpoint's weights do not fit a {ckpt['backbone']} network with "
                         f"its recorded head ({first}); it is damaged or from another version - "
                         "re-run fine-tuning") from exc
    net = make_network(trunk, head).to(resolve_device(device)).eval()
    norm = ckpt.get("normalisation", {})
    return FinetunedModel(
        network=net, backbone=ckpt["backbone"], vocabulary=list(ckpt["vocabulary"]),
        input_size=int(ckpt.get("input_size", spec.input_size)),
        mean=tuple(norm.get("mean", spec.mean)), std=tuple(norm.get("std", spec.std)),
        pixel_scale=float(norm.get("pixel_scale", spec.pixel_scale)),
        frozen=int(ckpt.get("frozen", 0)),
        layers={name: layer.index for name, layer in spec.layers.items()},
        checkpoint=ckpt,
    )
