"""The trainer: the epoch loop with validation, early stopping and a checkpoint per epoch.

:func:`iter_finetune` checks the inputs, loads weights and images and hands a
:class:`Trainer` the rest. Training is a progress generator: closing it between batches
(napari ``worker.quit()``, Ctrl-C in the CLI) leaves the last complete, atomically written
checkpoint intact. Validation scores the held-out genes with the per-term AUC (unknown labels
masked); the best epoch's weights are what the checkpoint offers, the latest ones are kept
beside them for ``resume``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backbones.devices import resolve_device
from ..data.manifest import training_fingerprint
from ..features.preprocess import normalise, resolve_precision, torch_dtype
from ..learn.metrics import defined_mean, per_term_auc
from ..utils.errors import InputError
from ..utils.progress import ProgressGen, drive
from .checkpoint import (
    atomic_save,
    check_resumable,
    cpu_state,
    is_finished,
    load_checkpoint,
    stored_result,
)
from .config import (
    FORMAT,
    FORMAT_VERSION,
    FinetuneConfig,
    FinetuneResult,
    progress,
    resolve_pos_weight,
)
from .data import (
    CACHE_FP16_BYTES,
    Split,
    TrainingImages,
    batch_augmenter,
    channels_last_for,
    check_labels,
    image_names,
    iter_load_images,
    make_split,
)
from .network import build_head, make_network, masked_bce, resolve_frozen, trunk_out_channels
from .starting import WarmStart, apply_head, check_complete, load_base, load_warm_start

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..backbones.weights import LoadedBackbone
    from ..data.manifest import Dataset


def amp_dtype(config: FinetuneConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: the shared precision rules, with fp32 (no autocast) as the CPU default."""
    precision = resolve_precision(config.precision, device, cpu_auto_bf16=False)
    return None if precision == "fp32" else torch_dtype(precision)


class Trainer:
    """One run: network, optimiser, loss, the best epoch so far; :meth:`iter_train` runs it."""

    def __init__(self, config: FinetuneConfig, vocabulary: list[str], Y: np.ndarray,
                 data: TrainingImages, split: Split, loaded: LoadedBackbone, out: Path,
                 fingerprint: str, device: torch.device, state: dict | None = None,
                 init: WarmStart | None = None) -> None:
        import torch

        self.config, self.vocabulary, self.Y, self.data, self.split = config, vocabulary, Y, data, split
        self.out, self.device = out, device
        trunk = loaded.module
        if state is not None:  # resume: the normalisation the run started with
            norm = state["normalisation"]
            self.mean, self.std = tuple(norm["mean"]), tuple(norm["std"])
            self.pixel_scale = float(norm.get("pixel_scale", 1.0))
            weights_id = state.get("base_weights_id", "")
        elif init is not None:  # continued: the checkpoint's weights and normalisation
            self.mean, self.std, self.pixel_scale = init.mean_std_scale()
            weights_id = f"finetuned-sha256:{init.provenance['sha256']}"
            trunk.load_state_dict(init.backbone_state)
        else:
            self.mean, self.std = tuple(loaded.mean), tuple(loaded.std)
            self.pixel_scale = float(loaded.pixel_scale)
            weights_id = loaded.weights_id
        self.n_frozen = n_frozen = resolve_frozen(loaded, config.frozen)
        if n_frozen and not hasattr(trunk, "__getitem__"):
            raise InputError(f"backbone {config.backbone} cannot be split at a frozen depth; use frozen 'none'")

        in_features = trunk_out_channels(trunk, data.size)
        torch.manual_seed(config.seed)
        self.trunk = trunk
        self.head = build_head(in_features, len(vocabulary), config.hidden, config.dropout, config.pool)
        if init is not None and state is None:
            apply_head(self.head, init, vocabulary)
        self.net = make_network(trunk, self.head).to(device)
        self.channels_last = channels_last_for(device)  # CUDA: the convolutions' own layout
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.frozen_part = trunk[:n_frozen] if n_frozen else torch.nn.Identity()
        self.trainable = trunk[n_frozen:] if n_frozen < len(trunk) else torch.nn.Identity()
        for p in self.frozen_part.parameters():
            p.requires_grad_(False)
        groups = [{"params": list(self.head.parameters()), "lr": config.lr, "name": "head"}]
        backbone_params = list(self.trainable.parameters())
        if backbone_params:
            groups.append({"params": backbone_params, "lr": config.lr * config.backbone_lr_scale,
                           "name": "backbone"})
        self.optimizer = torch.optim.Adam(groups, weight_decay=config.weight_decay)
        self.amp = amp_dtype(config, device)
        # fp16 gradients underflow without loss scaling, on any GPU (CUDA or MPS)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)

        pos_w = resolve_pos_weight(config, Y[split.train])
        self.pos_weight = torch.from_numpy(pos_w).to(device) if pos_w is not None else None
        self.Y_t = torch.from_numpy(Y.astype(np.float32))
        self.use_cache = n_frozen > 0 and (config.cache_frozen == "on" or (
            config.cache_frozen == "auto" and not config.augment and device.type == "cpu"))
        self.augment = batch_augmenter(config, data.fill(), device) if config.augment else None
        self.cache = data.frozen_cache((weights_id, n_frozen, self.mean, self.std, self.pixel_scale))

        self.history: list[dict] = []
        self.start_epoch = 0
        self.best: dict = {"epoch": 0, "score": None, "backbone": None, "head": None,
                           "per_term": None, "val_loss": None}
        self.bad_epochs = 0
        self.stopped_early = False
        self.selection = "val_auc" if len(split.val) else "train_loss"
        if state is not None:
            self._restore(state)
        self.meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "backbone": config.backbone,
            "base_weights": config.weights if state is None else state.get("base_weights", config.weights),
            "base_weights_id": weights_id, "vocabulary": vocabulary, "frozen": n_frozen,
            "frozen_spec": str(config.frozen),
            "normalisation": {"mean": [float(v) for v in self.mean],
                              "std": [float(v) for v in self.std],
                              "pixel_scale": self.pixel_scale},
            "input_size": data.size, "keep_aspect": False, "training_fingerprint": fingerprint,
            "head": {"in_features": in_features, "hidden": config.hidden,
                     "dropout": config.dropout, "pool": config.pool},
            "config": config.to_dict(),
            "split": {"n_train": int(len(split.train)), "n_val": int(len(split.val)),
                      "val_groups": list(split.val_groups)},
            "cache_frozen": bool(self.use_cache),
        }
        if init is not None or (state or {}).get("continued_from"):
            self.meta["continued_from"] = dict(init.provenance) if init else state["continued_from"]

    # ------------------------------------------------------------------ state
    def _restore(self, state: dict) -> None:
        self.trunk.load_state_dict(state.get("latest_backbone_state_dict", state["backbone_state_dict"]))
        self.head.load_state_dict(state.get("latest_head_state_dict", state["head_state_dict"]))
        if "optimizer_state_dict" in state:
            self.optimizer.load_state_dict(state["optimizer_state_dict"])
        if "scaler_state_dict" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler_state_dict"])
        self.history = list(state.get("history", []))
        self.start_epoch = int(state.get("epoch", 0))
        m = state.get("metrics", {})
        self.best = {"epoch": int(m.get("best_epoch", self.start_epoch)), "score": m.get("best_score"),
                     "backbone": state["backbone_state_dict"], "head": state["head_state_dict"],
                     "per_term": list(m["val_auc_per_term"].values()) if m.get("val_auc_per_term") else None,
                     "val_loss": m.get("best_val_loss")}
        self.bad_epochs = int(state.get("bad_epochs", 0))
        self.stopped_early = bool(state.get("stopped_early", False))
        self.selection = m.get("selection", self.selection)

    def save(self, epoch: int) -> None:
        """Write the checkpoint: the best epoch's weights, and the latest ones for resuming."""
        best, vocabulary = self.best, self.vocabulary
        latest_b, latest_h = cpu_state(self.trunk), cpu_state(self.head)
        same = best["epoch"] == epoch
        ckpt = dict(self.meta)
        ckpt.update({
            "backbone_state_dict": latest_b if same else best["backbone"],
            "head_state_dict": latest_h if same else best["head"],
            "optimizer_state_dict": self.optimizer.state_dict(),
            "epoch": epoch, "history": self.history, "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "metrics": {"best_epoch": best["epoch"], "best_score": best["score"],
                        "selection": self.selection, "best_val_loss": best.get("val_loss"),
                        "val_auc": best["score"] if self.selection == "val_auc" else None,
                        "val_auc_per_term": dict(zip(vocabulary, best["per_term"], strict=True))
                        if best["per_term"] else None},
        })
        if self.scaler.is_enabled():
            ckpt["scaler_state_dict"] = self.scaler.state_dict()
        if not same:  # resume continues from the latest weights, users get the best ones
            ckpt["latest_backbone_state_dict"] = latest_b
            ckpt["latest_head_state_dict"] = latest_h
        else:
            best["backbone"], best["head"] = latest_b, latest_h
        atomic_save(ckpt, self.out)

    # ------------------------------------------------------------------ compute
    def _autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                              enabled=self.amp is not None)

    def _run_frozen(self, idx: np.ndarray) -> torch.Tensor:
        import torch

        x = normalise(self.data.pixels[idx].to(self.device), self.mean, self.std, self.pixel_scale)
        with torch.no_grad(), self._autocast():
            return self.frozen_part(x)

    def iter_fill_cache(self) -> ProgressGen[None]:
        """Frozen outputs of the validation images (their inputs never change), and of the
        training images when caching is on; entries already there (an ensemble's earlier
        member) are kept."""
        import torch

        order = np.concatenate([self.split.val, self.split.train]) if self.use_cache else self.split.val
        todo = np.array([i for i in order if int(i) not in self.cache], dtype=int)
        if not self.n_frozen or not len(todo):
            return
        self.frozen_part.eval()
        z0 = self._run_frozen(todo[:1])
        big = z0[0].numel() * 4 * len(self.data.pixels) > CACHE_FP16_BYTES
        store = torch.float16 if big else torch.float32
        bs = max(self.config.batch_size, 8)
        for s in range(0, len(todo), bs):
            idx = todo[s:s + bs]
            z = self._run_frozen(idx).to("cpu", store)
            for j, i in enumerate(idx):
                self.cache[int(i)] = z[j]
            k = min(s + bs, len(todo))
            yield progress(k, len(todo), f"caching frozen layers {k}/{len(todo)}", kind="cache")

    def forward(self, idx: np.ndarray, train: bool) -> torch.Tensor:
        """Logits of images ``idx`` (augmented when training), through the cache if possible."""
        import torch

        augmenting = train and self.augment is not None
        if self.n_frozen and not augmenting and all(int(i) in self.cache for i in idx):
            z = torch.stack([self.cache[int(i)] for i in idx]).to(self.device).float()
        else:
            x = self.data.pixels[idx].to(self.device)  # augment where the network runs
            if augmenting:  # a batch at once on a GPU
                x = self.augment(x)
            x = normalise(x, self.mean, self.std, self.pixel_scale)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), self._autocast():
                z = self.frozen_part(x)
            z = z.float()
        with self._autocast():
            return self.head(self.trainable(z))

    def validate(self) -> tuple[float | None, float | None, list[float] | None]:
        """``(mean AUC, loss, per-term AUC)`` on the validation genes (None without them)."""
        import torch

        val = self.split.val
        if not len(val):
            return None, None, None
        self.net.eval()
        scores, losses = [], 0.0
        bs = max(self.config.batch_size, 8)
        with torch.no_grad():
            for s in range(0, len(val), bs):
                idx = val[s:s + bs]
                logits = self.forward(idx, train=False).float()
                losses += float(masked_bce(logits, self.Y_t[idx].to(self.device), self.pos_weight)) * len(idx)
                scores.append(torch.sigmoid(logits).cpu().numpy())
        aucs = per_term_auc(self.Y[val], np.concatenate(scores))
        auc = defined_mean(aucs)  # the checkpoint keeps NaN where a term has no AUC
        per = [math.nan if a is None else float(a) for a in aucs]
        return (None if math.isnan(auc) else auc), losses / len(val), per

    def _better(self, score: float, val_loss: float | None) -> bool:
        best = self.best
        if best["score"] is None or score > best["score"] + 1e-6:
            return True
        # equal AUC (e.g. 1.0): the lower validation loss wins
        return (abs(score - best["score"]) <= 1e-6 and val_loss is not None
                and best.get("val_loss") is not None and val_loss < best["val_loss"] - 1e-6)

    def iter_epoch(self, epoch: int, done: int, total: int) -> ProgressGen[float]:
        """One pass over the training images; returns the mean training loss."""
        import torch

        config, train_idx = self.config, self.split.train
        n_batches = max(1, math.ceil(len(train_idx) / config.batch_size))
        torch.manual_seed(config.seed * 100_003 + epoch)  # augmentation/dropout: reproducible on resume
        gen = torch.Generator().manual_seed(config.seed * 7919 + epoch)
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        self.net.train()
        self.frozen_part.eval()
        run_loss, seen = 0.0, 0
        for b in range(n_batches):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            loss = masked_bce(self.forward(idx, train=True), self.Y_t[idx].to(self.device),
                              self.pos_weight)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            value = float(loss.detach())
            run_loss += value * len(idx)
            seen += len(idx)
            yield progress(done + b + 1, total, f"epoch {epoch}/{config.epochs} batch "
                           f"{b + 1}/{n_batches} loss {value:.4f}", kind="batch", epoch=epoch,
                           batch=b + 1, loss=value)
        return run_loss / max(seen, 1)

    def iter_train(self) -> ProgressGen[FinetuneResult]:
        """Cache, then epochs until ``config.epochs`` or early stopping; a checkpoint per epoch."""
        yield from self.iter_fill_cache()
        config = self.config
        n_batches = max(1, math.ceil(len(self.split.train) / config.batch_size))
        total = max(1, (config.epochs - self.start_epoch) * n_batches)
        done = 0
        for epoch in range(self.start_epoch + 1, config.epochs + 1):
            if self.stopped_early:
                break
            t0 = time.perf_counter()
            train_loss = yield from self.iter_epoch(epoch, done, total)
            done += n_batches
            val_auc, val_loss, per_term = self.validate()
            if self.selection == "val_auc" and val_auc is None and val_loss is not None:
                self.selection = "val_loss"
            score = {"val_auc": val_auc, "val_loss": None if val_loss is None else -val_loss,
                     "train_loss": -train_loss}[self.selection]
            if score is None:
                score = -train_loss
            if self._better(score, val_loss):
                self.best.update(epoch=epoch, score=score, per_term=per_term, val_loss=val_loss)
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
            record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                      "val_auc": val_auc, "seconds": time.perf_counter() - t0,
                      "lr_head": config.lr, "lr_backbone": config.lr * config.backbone_lr_scale}
            self.history.append(record)
            if len(self.split.val) and self.bad_epochs >= config.patience:
                self.stopped_early = True
            self.save(epoch)
            auc_text = "n/a" if val_auc is None else f"{val_auc:.3f}"
            yield progress(done, total, f"epoch {epoch}/{config.epochs} loss "
                           f"{train_loss:.4f} val AUC {auc_text}"
                           + (" (early stop)" if self.stopped_early else ""),
                           kind="epoch", epoch=epoch, loss=train_loss, val_auc=val_auc,
                           record=record)
        return FinetuneResult(checkpoint=self.out, history=self.history,
                              best_epoch=self.best["epoch"], best_score=self.best["score"],
                              selection=self.selection, stopped_early=self.stopped_early,
                              metrics={"n_train": int(len(self.split.train)),
                                       "n_val": int(len(self.split.val)),
                                       "cache_frozen": bool(self.use_cache)})


# --------------------------------------------------------------------------- entry points

def prepare(images: Sequence, Y: np.ndarray, vocabulary: Sequence[str], config: FinetuneConfig,
            out: str | Path, fingerprint: str | None) -> tuple[np.ndarray, list[str], Path, str]:
    """The checks every run makes before touching weights or images."""
    vocabulary = list(vocabulary)
    Y = check_labels(images, Y, vocabulary)
    config.check()
    out = Path(out)
    if out.parent and not out.parent.exists():
        raise InputError("the checkpoint's folder does not exist; create it first", path=out.parent)
    fingerprint = fingerprint or training_fingerprint(image_names(images), Y, vocabulary)
    return Y, vocabulary, out, fingerprint


def iter_finetune_dataset(dataset: Dataset, config: FinetuneConfig, out: str | Path,
                          resume: bool = False, init: str | Path | None = None
                          ) -> ProgressGen[FinetuneResult]:
    """Fine-tune on a manifest :class:`Dataset` (validation grouped by gene)."""
    return iter_finetune(dataset.paths, dataset.labels().astype(np.int8), dataset.vocabulary,
                         config, out, groups=dataset.groups(), resume=resume,
                         fingerprint=dataset.fingerprint(), init=init)


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
    data: TrainingImages | None = None,
    init: str | Path | None = None,
) -> ProgressGen[FinetuneResult]:
    """Fine-tune trunk + multi-task head; write ``out`` after every epoch; return the result.

    ``Y`` is ``(n_images, n_terms)`` with 1 present, 0 absent, -1 unknown (masked). ``groups``
    (e.g. gene per image) keeps a group on one side of the validation split. With ``resume``
    an existing ``out`` written for the same training set continues after its last epoch.
    Yields :class:`FinetuneProgress` after every batch and epoch; closing the generator there
    keeps the last complete checkpoint. A ``loaded`` backbone is trained in place; ``data``
    (images already loaded at ``config.input_size``) is reused, e.g. by an ensemble's members.
    ``init`` continues a saved checkpoint with these labels (:mod:`.continued`).
    """
    Y, vocabulary, out, fingerprint = prepare(images, Y, vocabulary, config, out, fingerprint)
    device = resolve_device(config.device)
    amp_dtype(config, device)  # precision errors before any work
    state: dict | None = None
    if resume and out.exists():
        state = load_checkpoint(out)
        check_resumable(state, config, vocabulary, fingerprint, out)
        if is_finished(state, config):
            return stored_result(state, out)
    start = load_warm_start(init, config, vocabulary) if init and state is None else None
    if loaded is None:
        loaded = load_base(config, resuming=state is not None or start is not None)
    else:
        check_complete(loaded, config)
    resolve_frozen(loaded, config.frozen)  # a bad depth fails before images are read
    split = make_split(groups, Y, config.val_fraction, config.seed)
    if data is None or data.size != config.input_size:
        data = yield from iter_load_images(images, config.input_size)
    trainer = Trainer(config, vocabulary, Y, data, split, loaded, out, fingerprint, device, state,
                      init=start)
    result = yield from trainer.iter_train()
    return replace(result, notes=start.notes) if start else result


def finetune(images, Y, vocabulary, config: FinetuneConfig, out, progress=None, cancel=None,
             **kwargs: Any) -> FinetuneResult:
    """Blocking wrapper around :func:`iter_finetune` (see :func:`core.utils.progress.drive`)."""
    return drive(iter_finetune(images, Y, vocabulary, config, out, **kwargs), progress, cancel)
