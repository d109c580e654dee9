"""Where a fine-tuning run starts: the base weights (:func:`load_base`), or a saved network it
continues with new labels (``finetune --init CKPT``, :func:`load_warm_start`).

Biologists label more, then want the network they already have to learn from it instead of
starting again from ImageNet. A continued run starts from the checkpoint's best weights and
normalisation and trains on the *current* labels of every image given (old images stay in the
training set, so nothing is forgotten):

* terms the checkpoint knows keep their output units (and the shared hidden layer is kept
  whenever its shape is unchanged);
* new terms get new, freshly initialised outputs;
* terms no longer in the vocabulary are dropped, with a note.

Unlike ``--resume`` (an interrupted run, same labels) the optimiser and epoch count start anew.
The new checkpoint records which checkpoint it continued (file name, SHA-256, its training
fingerprint) - never a machine path, so it stays shareable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..backbones.weights import LoadedBackbone, load_backbone
from ..utils.errors import InputError
from ..utils.hashing import content_hash
from .checkpoint import is_ensemble, load_checkpoint
from .config import FinetuneConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["WarmStart", "load_base", "check_complete", "load_warm_start", "apply_head"]
#: the head's output layer in :func:`.network.build_head`'s Sequential
_OUT = "5"
_HIDDEN = "2"


@dataclass(frozen=True)
class WarmStart:
    """What a continued run takes from the checkpoint it continues."""

    backbone_state: dict
    head_state: dict
    vocabulary: tuple[str, ...]  # the checkpoint's terms (its output units, in order)
    normalisation: dict
    head: dict  # the checkpoint's head shape (in_features, hidden, pool)
    provenance: dict
    notes: tuple[str, ...] = field(default=())

    def mean_std_scale(self) -> tuple[tuple[float, ...], tuple[float, ...], float]:
        norm = self.normalisation
        return tuple(norm["mean"]), tuple(norm["std"]), float(norm.get("pixel_scale", 1.0))


def load_warm_start(path: str | Path, config: FinetuneConfig, vocabulary: list[str]) -> WarmStart:
    """Read ``path`` (``weights_only``) and check it can start a run of ``config``."""
    path = Path(path)
    ckpt = load_checkpoint(path)
    if is_ensemble(ckpt):
        raise InputError("is an ensemble of fine-tuned networks; continue one network: "
                         "fine-tune with --ensemble K again, or pass a single-network checkpoint",
                         path=path)
    if ckpt["backbone"] != config.backbone:
        raise InputError(f"the checkpoint is a {ckpt['backbone']} network, not {config.backbone}; "
                         f"pass --backbone {ckpt['backbone']}", path=path)
    old = [str(t) for t in ckpt["vocabulary"]]
    notes = []
    dropped = [t for t in old if t not in vocabulary]
    added = [t for t in vocabulary if t not in old]
    if dropped:
        notes.append(f"note: {len(dropped)} term(s) of the checkpoint are no longer labelled and "
                     f"are dropped: {', '.join(dropped)}")
    if added:
        notes.append(f"note: {len(added)} new term(s) get new outputs: {', '.join(added)}")
    norm = ckpt.get("normalisation") or {}
    if len(norm.get("mean", ())) != 3 or len(norm.get("std", ())) != 3:
        raise InputError("the checkpoint's normalisation is incomplete; it is damaged - pass "
                         "another checkpoint", path=path)
    provenance = {"file": path.name, "sha256": content_hash(path, "weights"),
                  "training_fingerprint": ckpt.get("training_fingerprint"),
                  "vocabulary": old, "epochs": int(ckpt.get("epoch", 0))}
    return WarmStart(ckpt["backbone_state_dict"], ckpt["head_state_dict"], tuple(old), norm,
                     dict(ckpt["head"]), provenance, tuple(notes))


def apply_head(head: torch.nn.Module, start: WarmStart, vocabulary: list[str]) -> None:
    """Copy the checkpoint's head into a freshly built one: the hidden layer when its shape
    matches, and the output unit of every term both vocabularies share."""
    import torch

    state = head.state_dict()
    old = start.head_state
    with torch.no_grad():
        for suffix in ("weight", "bias"):
            key = f"{_HIDDEN}.{suffix}"
            if key in old and old[key].shape == state[key].shape:
                state[key] = old[key].clone()
        w_key, b_key = f"{_OUT}.weight", f"{_OUT}.bias"
        hidden_kept = old.get(f"{_HIDDEN}.weight") is not None and \
            old[f"{_HIDDEN}.weight"].shape == state[f"{_HIDDEN}.weight"].shape
        if hidden_kept and w_key in old and old[w_key].shape[1] == state[w_key].shape[1]:
            index = {t: i for i, t in enumerate(start.vocabulary)}
            for j, term in enumerate(vocabulary):
                i = index.get(term)
                if i is not None and i < old[w_key].shape[0]:
                    state[w_key][j] = old[w_key][i]
                    state[b_key][j] = old[b_key][i]
    head.load_state_dict(state)


def load_base(config: FinetuneConfig, resuming: bool) -> LoadedBackbone:
    """The starting weights (architecture only when resuming: the checkpoint has every weight)."""
    loaded = load_backbone(config.backbone, "random" if resuming else config.weights, config.seed)
    check_complete(loaded, config)
    return loaded


def check_complete(loaded: LoadedBackbone, config: FinetuneConfig) -> None:
    if loaded.available_upto is not None and loaded.available_upto < len(loaded.module) - 1:
        raise InputError(f"the weights ({loaded.weights or loaded.weights_id}) cover only "
                         f"{config.backbone}'s trunk up to index {loaded.available_upto}, but "
                         "fine-tuning trains the whole trunk; pass a complete weights file")
