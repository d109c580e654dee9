"""Ensembles of fine-tuned networks (``finetune --ensemble K``): one checkpoint file, K members.

Member ``m`` is an ordinary run with seed ``config.seed + m``: another head initialisation,
batch order, augmentation and dropout, and another set of validation genes (the gene-grouped
split is seeded). All members start from the same base weights and share the loaded images and
the frozen-layer cache, so K members cost K times the trainable part only.

File layout (still ``torch.load(weights_only=True)``, still format ``ish-annotator-finetune``):
the top level is a complete checkpoint of the *representative* member - the one with the best
validation score - so everything that reads a single checkpoint (``--weights CKPT`` in
train/evaluate/predict, ``evaluate --compare``, :func:`load_finetuned`) uses that member
unchanged. ``ckpt["ensemble"]`` holds ``{"k", "representative", "members": [K checkpoints]}``;
the representative's tensors are stored once (torch deduplicates shared storages). Optimizer
states are dropped: an assembled ensemble is final.

While training, member ``m`` is written to ``OUT.member<m>.pt`` beside ``OUT`` (atomically,
after every epoch); the ensemble file is assembled when all K are done and the part files are
removed. ``resume`` continues the part files of an interrupted run; on an assembled ensemble it
returns the stored result when the data, settings and K match (more epochs: start a new file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..features.preprocess import as_rgb, normalise, resize_uint8
from ..utils.errors import InputError
from ..utils.progress import ProgressGen, drive
from .checkpoint import (
    FinetunedModel,
    atomic_save,
    check_resumable,
    is_ensemble,
    load_checkpoint,
    load_finetuned,
    stored_result,
)
from .config import FinetuneConfig, FinetuneProgress, FinetuneResult, progress
from .data import iter_load_images
from .starting import load_base
from .trainer import iter_finetune, prepare

if TYPE_CHECKING:  # pragma: no cover
    from ..data.manifest import Dataset

_DROP = ("optimizer_state_dict", "scaler_state_dict", "latest_backbone_state_dict",
         "latest_head_state_dict")


@dataclass(frozen=True)
class EnsembleProbabilities:
    """Per-image, per-term probabilities of an ensemble: their mean and their spread."""

    mean: np.ndarray     # (n, T) mean of the members' sigmoid outputs
    std: np.ndarray      # (n, T) standard deviation across members (0 for a single network)
    members: np.ndarray  # (K, n, T) every member's output


@dataclass(frozen=True)
class EnsembleResult:
    """What ``iter_finetune_ensemble`` returns: the file and each member's run."""

    checkpoint: Path
    members: tuple[FinetuneResult, ...]
    representative: int

    @property
    def best_scores(self) -> list[float | None]:
        return [m.best_score for m in self.members]


@dataclass
class FinetunedEnsemble:
    """K loaded fine-tuned networks over one vocabulary; a single checkpoint is K = 1."""

    members: list[FinetunedModel]
    representative: int = 0

    @property
    def vocabulary(self) -> list[str]:
        return self.members[0].vocabulary

    @property
    def backbone(self) -> str:
        return self.members[0].backbone

    def predict_proba(self, images: Sequence[str | Path | np.ndarray], batch_size: int = 8) -> EnsembleProbabilities:
        """Mean and spread (std) over members of the multi-task heads' probabilities.

        Each image is decoded once; members with the same input size and normalisation (all of
        an ensemble trained by ``finetune --ensemble``) share one preprocessed batch.
        """
        import torch

        n, T = len(images), len(self.vocabulary)
        out = np.zeros((len(self.members), n, T), np.float32)
        for start in range(0, n, batch_size):
            rgbs = [as_rgb(im) for im in images[start:start + batch_size]]
            batches: dict[tuple, torch.Tensor] = {}
            for k, m in enumerate(self.members):
                key = (m.input_size, m.mean, m.std, m.pixel_scale)
                if key not in batches:
                    batches[key] = normalise(torch.stack([resize_uint8(r, m.input_size) for r in rgbs]),
                                             m.mean, m.std, m.pixel_scale)
                out[k, start:start + len(rgbs)] = m.predict_batch(batches[key])
        return EnsembleProbabilities(mean=out.mean(axis=0), std=out.std(axis=0), members=out)


def load_ensemble(checkpoint: str | Path | dict, device: str = "cpu") -> FinetunedEnsemble:
    """All members of an ensemble checkpoint (a single checkpoint gives an ensemble of one)."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    if not is_ensemble(ckpt):
        return FinetunedEnsemble([load_finetuned(ckpt, device)], 0)
    ens = ckpt["ensemble"]
    members = [load_finetuned(m, device) for m in ens["members"]]
    if len({tuple(m.vocabulary) for m in members}) != 1:
        raise InputError("the ensemble's members have different vocabularies; the file is "
                         "damaged - re-run fine-tuning", path=None if isinstance(checkpoint, dict)
                         else Path(checkpoint))
    return FinetunedEnsemble(members, int(ens.get("representative", 0)))


def member_path(out: Path, m: int) -> Path:
    """Where member ``m`` trains before the ensemble file is assembled."""
    return out.with_name(f"{out.stem}.member{m}{out.suffix or '.pt'}")


def member_config(config: FinetuneConfig, m: int) -> FinetuneConfig:
    return replace(config, seed=config.seed + m)


def _relabel(p: Any, m: int, k: int) -> FinetuneProgress:
    """A member's progress as a share of the whole ensemble's."""
    frac = p.done / max(p.total, 1)
    q = progress(int(round((m + frac) * 1000)), k * 1000, f"member {m + 1}/{k}: {p.message}",
                 member=m)
    for key in ("kind", "epoch", "batch", "loss", "val_auc", "record"):
        setattr(q, key, getattr(p, key, None))
    return q


def _stored(ckpt: dict, out: Path, config: FinetuneConfig, k: int, vocabulary: list[str],
            fingerprint: str) -> EnsembleResult:
    ens = ckpt["ensemble"]
    if int(ens.get("k", 0)) != k:
        raise InputError(f"cannot resume: the file holds an ensemble of {ens.get('k')} networks, "
                         f"not {k}; choose another output file or drop --resume", path=out)
    results = []
    for m, member in enumerate(ens["members"]):
        mcfg = member_config(config, m)
        check_resumable(member, mcfg, vocabulary, fingerprint, out)
        if not member.get("stopped_early") and int(member.get("epoch", 0)) < config.epochs:
            raise InputError(f"the ensemble in this file is complete ({member.get('epoch')} "
                             f"epochs); resume only continues interrupted runs - write the "
                             "longer run to another file", path=out)
        results.append(stored_result(member, out))
    return EnsembleResult(out, tuple(results), int(ens.get("representative", 0)))


def assemble(parts: Sequence[Path], out: Path) -> int:
    """Write the ensemble file from finished member checkpoints; returns the representative."""
    members = []
    for path in parts:
        ckpt = load_checkpoint(path)
        members.append({key: v for key, v in ckpt.items() if key not in _DROP})
    scores = [m.get("metrics", {}).get("best_score") for m in members]
    ranked = [(s if s is not None else -np.inf, -i) for i, s in enumerate(scores)]
    rep = -max(ranked)[1]
    top = dict(members[rep])
    top["ensemble"] = {"k": len(members), "representative": rep, "members": members,
                       "seeds": [int(m["config"]["seed"]) for m in members],
                       "val_groups": [list(m.get("split", {}).get("val_groups", [])) for m in members],
                       "best_scores": scores}
    atomic_save(top, out)
    return rep


def iter_finetune_ensemble(
    images: Sequence[str | Path | np.ndarray],
    Y: np.ndarray,
    vocabulary: Sequence[str],
    config: FinetuneConfig,
    out: str | Path,
    k: int,
    groups: Sequence | np.ndarray | None = None,
    resume: bool = False,
    fingerprint: str | None = None,
) -> ProgressGen[EnsembleResult]:
    """Train ``k`` networks (seeds ``config.seed + m``) into one ensemble checkpoint ``out``."""
    if int(k) < 2:
        raise InputError(f"an ensemble needs at least 2 networks, got {k}; for one network "
                         "leave --ensemble out")
    Y, vocabulary, out, fingerprint = prepare(images, Y, vocabulary, config, out, fingerprint)
    if resume and out.exists():
        ckpt = load_checkpoint(out)
        if not is_ensemble(ckpt):
            raise InputError("cannot resume: this file holds a single fine-tuned network, not an "
                             "ensemble; choose another output file or drop --resume", path=out)
        return _stored(ckpt, out, config, k, vocabulary, fingerprint)
    parts = [member_path(out, m) for m in range(k)]
    data = None
    results = []
    for m, part in enumerate(parts):
        mcfg = member_config(config, m)
        resuming = resume and part.exists()
        # the same base weights for every member (random weights too: the base seed)
        loaded = None if resuming else load_base(config, resuming=False)
        if data is None:
            data = yield from iter_load_images(images, config.input_size)
        gen = iter_finetune(images, Y, vocabulary, mcfg, part, groups=groups, resume=resuming,
                            fingerprint=fingerprint, loaded=loaded, data=data)
        try:
            while True:
                yield _relabel(next(gen), m, k)
        except StopIteration as stop:
            results.append(stop.value)
        finally:
            gen.close()
    rep = assemble(parts, out)
    for part in parts:
        part.unlink(missing_ok=True)
    results = [replace(r, checkpoint=out) for r in results]
    return EnsembleResult(out, tuple(results), rep)


def iter_finetune_ensemble_dataset(dataset: Dataset, config: FinetuneConfig, out: str | Path,
                                   k: int, resume: bool = False) -> ProgressGen[EnsembleResult]:
    """:func:`iter_finetune_ensemble` on a manifest :class:`Dataset` (genes as groups)."""
    return iter_finetune_ensemble(dataset.paths, dataset.labels().astype(np.int8),
                                  dataset.vocabulary, config, out, k, groups=dataset.groups(),
                                  resume=resume, fingerprint=dataset.fingerprint())


def finetune_ensemble(images, Y, vocabulary, config: FinetuneConfig, out, k: int,
                      progress=None, cancel=None, **kwargs: Any) -> EnsembleResult:
    """Blocking wrapper around :func:`iter_finetune_ensemble`."""
    return drive(iter_finetune_ensemble(images, Y, vocabulary, config, out, k, **kwargs),
                 progress, cancel)
