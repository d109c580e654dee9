"""GPU check: extraction throughput from image files, AMP fine-tuning, Grad-CAM, CUDA vs CPU.

Writes ``OUT/gpu.json`` and ``OUT/gpu.md`` (rewritten after every step, so a run cut short
still leaves what it measured). Every measurement is guarded: one that fails is recorded with
its error and the others still run; a global time budget skips what would not fit.

* **extraction** - images/s END TO END from image files on disk (synthetic 320x128 stained
  embryos written as BMP first): decoding in ``DataLoader`` worker processes (the extractor's
  CUDA default), the layer's trunk in fp32/fp16/bf16, features rounded to float16 and copied
  into a float16 matrix, as ``ish-annotator train/predict`` do (no feature cache). VGG16 layer
  21 (seeded random weights: speed does not depend on them) and EfficientNet-Lite0 (its
  default layer, packaged ImageNet weights when installed) at a few batch sizes; plus VGG16
  with decoding threads instead of processes, and the network alone on a batch already on the
  GPU (the ceiling the file pipeline is measured against).
* **agreement** - features on the GPU vs the CPU in fp32 (cosine per image, target >= 0.999),
  and the probabilities of a small logistic-ensemble model fitted on CPU features, applied to
  GPU features (max absolute difference).
* **fine-tuning** - one epoch of multi-task fine-tuning of VGG16 with fp16 autocast and a
  gradient scaler (``precision auto`` on CUDA); the checkpoint must load on the CPU.
* **Grad-CAM** - latency per image of the logistic head's map (all terms, one forward pass)
  and of the fine-tuned network's map (one backward pass), median of repeats; GPU vs CPU maps.

    python benchmarks/bench_gpu.py --out gpu-out              # CUDA machine, < 8 min in all
    python benchmarks/bench_gpu.py --out smoke --cpu-smoke    # tiny sizes on the CPU (seconds)

Without CUDA it runs the CPU smoke sizes (and says so), so the script is testable anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

TARGET_VGG16_IMAGES_PER_S = 3000  # issue 13: H100, VGG16 layer 21, end to end from files
TERMS = ("ventral nerve cord", "brain", "embryonic midgut", "dorsal epidermis")


@dataclass(frozen=True)
class Settings:
    """Sizes of one run: the GPU defaults, or :meth:`smoke` for the CPU."""

    device: str = "cuda"
    n_images: int = 4000
    image_size: tuple[int, int] = (128, 320)  # (H, W) of the files
    input_size: int = 224
    batch_sizes: tuple[int, ...] = (64, 128, 256)
    precisions: tuple[str, ...] = ("fp16", "bf16", "fp32")
    backbones: tuple[str, ...] = ("vgg16", "efficientnet_lite0")
    decode_workers: int | None = None  # None: the extractor's default for the device
    agreement_images: int = 32
    model_images: int = 48
    ft_images: int = 512
    ft_batch: int = 32
    ft_frozen: str = "auto"  # the defaults of ish-annotator finetune
    ft_augment: bool = True
    ft_hidden: int = 512
    gradcam_repeats: int = 20
    budget_s: float = 330.0
    needs_scale: float = 1.0  # scales each step's expected duration for the budget check

    @classmethod
    def smoke(cls, budget_s: float = 120.0) -> Settings:
        from napari_ish_annotator.core.features.preprocess import cpu_has_native_bf16

        return cls(device="cpu", n_images=8, image_size=(40, 100), input_size=32,
                   batch_sizes=(4,), precisions=("fp32", "bf16") if cpu_has_native_bf16()
                   else ("fp32",), decode_workers=2, agreement_images=4, model_images=8,
                   ft_images=8, ft_batch=4, ft_frozen="24", ft_augment=False, ft_hidden=16,
                   gradcam_repeats=1, budget_s=budget_s, needs_scale=0.1)


@dataclass
class Recorder:
    """Runs guarded steps against a deadline; keeps and writes the results after each."""

    out: Path
    budget_s: float
    needs_scale: float = 1.0
    meta: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def step(self, name: str, fn: Callable[[], dict], needs_s: float = 5.0) -> dict | None:
        """Run ``fn`` (returns a dict of figures) unless under ``needs_s`` seconds are left."""
        needs_s *= self.needs_scale
        if self.left() < needs_s:
            self.steps[name] = {"status": "skipped",
                                "reason": f"time budget: {self.left():.0f} s left, needs ~{needs_s:.0f} s"}
            print(f"[skip] {name}: time budget", flush=True)
            self.write()
            return None
        start = time.perf_counter()
        try:
            result = fn()
            record = {"status": "ok", **result}
        except Exception as exc:  # noqa: BLE001 - one failure must not stop the others
            tail = traceback.format_exc().strip().splitlines()[-6:]
            record = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                      "traceback": tail}
            result = None
        record["seconds"] = round(time.perf_counter() - start, 3)
        self.steps[name] = record
        figure = _headline(record)
        print(f"[{record['status']}] {name} ({record['seconds']:.1f} s){figure}", flush=True)
        self.write()
        return result

    def report(self) -> dict:
        meta = dict(self.meta, total_seconds=round(time.perf_counter() - self.t0, 1))
        return {"meta": meta, "target": _target(self.steps, meta), "steps": self.steps}

    def write(self) -> None:
        report = self.report()
        self.out.mkdir(parents=True, exist_ok=True)
        for name, text in (("gpu.json", json.dumps(report, indent=1, default=str)),
                           ("gpu.md", markdown(report))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, self.out / name)


def _headline(record: dict) -> str:
    if record["status"] == "error":
        return f": {record['error']}"
    for key in ("images_per_s", "min_cosine", "max_abs_diff", "epoch_seconds", "median_ms"):
        if key in record:
            return f": {key} {record[key]}"
    return ""


def _target(steps: dict, meta: dict) -> dict:
    rates = [s["images_per_s"] for name, s in steps.items()
             if name.startswith("extract/vgg16/") and s.get("status") == "ok"
             and str(s.get("decode", "")).startswith("processes")]
    best = max(rates) if rates else None
    on_gpu = meta.get("device_type") == "cuda"
    return {"vgg16_layer21_images_per_s": best, "target_images_per_s": TARGET_VGG16_IMAGES_PER_S,
            "met": (best >= TARGET_VGG16_IMAGES_PER_S) if (best is not None and on_gpu) else None,
            "note": "end to end from image files; target is for one H100" if on_gpu
            else "CPU smoke run: the target does not apply"}


# --------------------------------------------------------------------------- markdown

def markdown(report: dict) -> str:
    """The report as a short markdown page: settings, extraction table, other figures."""
    meta, steps, target = report["meta"], report["steps"], report["target"]
    lines = ["# GPU check", "",
             f"Device: {meta.get('device_name', '?')} ({meta.get('mode', '?')}); torch "
             f"{meta.get('torch', '?')}, CUDA {meta.get('cuda', '-')}, {meta.get('cpu_count', '?')} "
             f"CPU cores; {meta.get('total_seconds', '?')} s in all.", ""]
    best = target.get("vgg16_layer21_images_per_s")
    verdict = {True: "met", False: "NOT met", None: "n/a"}[target.get("met")]
    lines += [f"VGG16 layer 21, end to end from files: best {best if best is not None else '-'} "
              f"images/s (target >= {target['target_images_per_s']} on an H100: {verdict}; "
              f"{target['note']}).", "",
              "| backbone | layer | weights | precision | batch | decode | images/s | status |",
              "|---|---|---|---|---:|---|---:|---|"]
    for name, s in steps.items():
        if not name.startswith(("extract/", "model-only/")):
            continue
        parts = name.split("/")
        if s.get("status") != "ok":
            lines.append(f"| {parts[1]} | | | {parts[2] if len(parts) > 2 else ''} | | | | "
                         f"{s['status']}: {s.get('error') or s.get('reason', '')} |")
            continue
        rate = s["images_per_s"]
        lines.append(f"| {s['backbone']} | {s['layer']} | {s['weights']} | {s['precision']} | "
                     f"{s['batch_size']} | {s['decode']} | {rate:.{0 if rate >= 100 else 2}f} "
                     "| ok |")
    lines += ["", "| measurement | status | figures |", "|---|---|---|"]
    skip_keys = {"status", "traceback", "seconds"}
    for name, s in steps.items():
        if name.startswith(("extract/", "model-only/")):
            continue
        figures = "; ".join(f"{k} {v}" for k, v in s.items()
                            if k not in skip_keys and not isinstance(v, (dict, list)))
        lines.append(f"| {name} | {s['status']} | {figures} ({s.get('seconds', 0)} s) |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- data

def write_images(folder: Path, settings: Settings, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """Synthetic stained embryos as BMP files: a few dozen distinct renderings, each file
    made unique by two corner pixels (so nothing could be shared between files)."""
    from PIL import Image

    from napari_ish_annotator.core.synthetic.embryos import make_embryo

    rng = np.random.default_rng(seed)
    n_base = min(40, settings.n_images)
    bases, labels = [], []
    for i in range(n_base):
        present = rng.random(len(TERMS)) < 0.4
        present[i % len(TERMS)] = True  # every term has positives ...
        present[(i + 2) % len(TERMS)] = False  # ... and negatives
        labels.append(present.astype(np.int8))
        bases.append(make_embryo([t for t, p in zip(TERMS, present, strict=True) if p], TERMS,
                                 rng, size=settings.image_size)[0])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(settings.n_images):
        img = bases[i % n_base].copy()
        img[0, 0] = (i % 256, (i // 256) % 256, 7)
        paths.append(folder / f"emb{i:05d}.bmp")
        Image.fromarray(img).save(paths[-1])
    Y = np.stack([labels[i % n_base] for i in range(settings.n_images)])
    return paths, Y


# --------------------------------------------------------------------------- measurements

def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _extractor(loaded, settings: Settings, precision: str, batch: int, device: str | None = None,
               decode_workers: int | None = -1):
    from napari_ish_annotator.core.features.extractor import (
        ExtractorConfig,
        FeatureExtractor,
    )

    config = ExtractorConfig(backbone=loaded.spec.name, weights=loaded.weights,
                             input_size=settings.input_size, device=device or settings.device,
                             precision=precision, batch_size=batch)
    workers = settings.decode_workers if decode_workers == -1 else decode_workers
    return FeatureExtractor(config, loaded=loaded, decode_workers=workers)


def measure_extraction(loaded, paths: list[Path], settings: Settings, precision: str, batch: int,
                       decode_workers: int | None = -1) -> dict:
    """images/s over all files, after a warm-up of two batches (cuDNN picks its kernels)."""
    from napari_ish_annotator.core.features.decoding import _mp_context

    fx = _extractor(loaded, settings, precision, batch, decode_workers=decode_workers)
    fx.extract(paths[:2 * batch])
    out = np.empty((len(paths), fx.dim), np.float16)
    _sync(settings.device)
    t = time.perf_counter()
    X = fx.extract(paths, out=out)
    _sync(settings.device)
    seconds = time.perf_counter() - t
    if not np.isfinite(X[:: max(1, len(paths) // 16)]).all():
        raise RuntimeError("non-finite features")
    return {"backbone": loaded.spec.name, "layer": fx.layer, "weights": loaded.weights_id,
            "precision": fx.precision, "batch_size": batch, "channels_last": fx.channels_last,
            "decode": (f"processes x{fx.decode_workers} ({_mp_context()})" if fx.decode_workers
                       else "threads x2"),
            "images": len(paths), "extract_seconds": round(seconds, 3),
            "images_per_s": round(len(paths) / seconds, 1)}


def measure_model_only(loaded, settings: Settings, precision: str, batch: int) -> dict:
    """The trunk alone on a batch already on the device: the ceiling for the file pipeline."""
    import torch

    fx = _extractor(loaded, settings, precision, batch)
    x = torch.randn(batch, 3, settings.input_size, settings.input_size).to(fx.device)
    for _ in range(3):
        fx.activation(x)
    _sync(settings.device)
    reps = 10 if settings.device == "cuda" else 2
    t = time.perf_counter()
    for _ in range(reps):
        fx.activation(x)
    _sync(settings.device)
    seconds = time.perf_counter() - t
    return {"backbone": loaded.spec.name, "layer": fx.layer, "weights": loaded.weights_id,
            "precision": fx.precision, "batch_size": batch, "decode": "none (tensor on device)",
            "images_per_s": round(reps * batch / seconds, 1)}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def measure_feature_agreement(loaded, paths, settings: Settings, reference: np.ndarray,
                              precision: str) -> dict:
    X = _extractor(loaded, settings, precision, 16).extract(paths)
    cos = cosines(X, reference)
    return {"backbone": loaded.spec.name, "precision": precision, "images": len(paths),
            "min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6),
            "threshold": 0.999, "pass": bool(cos.min() >= 0.999)}


def fit_small_model(X: np.ndarray, Y: np.ndarray, loaded, settings: Settings):
    from napari_ish_annotator.core.features.extractor import ExtractorConfig
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.core.workflow import iter_fit_bundle

    config = ExtractorConfig(backbone=loaded.spec.name, weights=loaded.weights,
                             input_size=settings.input_size, device="cpu", precision="fp32")
    return drive(iter_fit_bundle(X, Y, list(TERMS), config, EnsembleConfig(n_members=5)))


def measure_probability_agreement(bundle, loaded, paths, settings: Settings,
                                  X_cpu: np.ndarray) -> dict:
    fx = _extractor(loaded, settings, "auto", 16)
    X_dev = fx.extract(paths)
    p_cpu = bundle.classifier.predict_proba(X_cpu)
    p_dev = bundle.classifier.predict_proba(X_dev)
    diff = np.abs(p_cpu - p_dev)
    return {"precision": fx.precision, "images": len(paths), "terms": len(TERMS),
            "max_abs_diff": round(float(diff.max()), 6), "mean_abs_diff": round(float(diff.mean()), 6),
            "votes_changed": int(((p_cpu >= 0.5) != (p_dev >= 0.5)).sum())}


def measure_finetune(paths, Y, settings: Settings, out: Path) -> dict:
    from napari_ish_annotator.core.finetune import (
        FinetuneConfig,
        iter_finetune,
        load_checkpoint,
        load_finetuned,
    )
    from napari_ish_annotator.core.utils.progress import drive

    config = FinetuneConfig(backbone="vgg16", weights="random", input_size=settings.input_size,
                            epochs=1, batch_size=settings.ft_batch, frozen=settings.ft_frozen,
                            augment=settings.ft_augment, hidden=settings.ft_hidden,
                            val_fraction=0.2, device=settings.device, precision="auto")
    t = time.perf_counter()
    result = drive(iter_finetune(paths, Y, list(TERMS), config, out))
    total = time.perf_counter() - t
    record = result.history[0]
    ckpt = load_checkpoint(out)
    model = load_finetuned(out, device="cpu")  # a GPU checkpoint must load on a CPU
    p = model.predict_proba(paths[:2])
    if not (np.isfinite(record["train_loss"]) and np.isfinite(p).all()):
        raise RuntimeError(f"non-finite loss or probabilities (loss {record['train_loss']})")
    n_train = result.metrics["n_train"]
    return {"backbone": "vgg16", "images": len(paths), "n_train": n_train,
            "batch_size": settings.ft_batch, "input_size": settings.input_size,
            "frozen": settings.ft_frozen, "augment": settings.ft_augment,
            "amp": "fp16 autocast + GradScaler" if "scaler_state_dict" in ckpt else "off",
            "epoch_seconds": round(record["seconds"], 2),
            "train_images_per_s": round(n_train / record["seconds"], 1),
            "total_seconds_incl_loading": round(total, 2),
            "train_loss": round(float(record["train_loss"]), 4),
            "val_auc": record["val_auc"], "checkpoint_loads_on_cpu": True}


def _median_ms(fn: Callable[[], Any], repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return round(1000 * float(np.median(times)), 2)


def measure_gradcam_linear(bundle, loaded, image: np.ndarray, settings: Settings) -> dict:
    from napari_ish_annotator.core.explain.gradcam import gradcam_all_terms

    fx = _extractor(loaded, settings, "auto", 1)
    cpu = _extractor(loaded, settings, "fp32", 1, device="cpu")
    maps_dev, _ = gradcam_all_terms(bundle, fx, image)
    maps_cpu, _ = gradcam_all_terms(bundle, cpu, image)
    return {"head": "logistic ensembles (all terms, one forward pass)", "precision": fx.precision,
            "image": "x".join(map(str, image.shape[:2])), "terms": len(TERMS),
            "median_ms": _median_ms(lambda: gradcam_all_terms(bundle, fx, image),
                                    settings.gradcam_repeats, settings.device),
            "cpu_median_ms": _median_ms(lambda: gradcam_all_terms(bundle, cpu, image), 2, "cpu")
            if settings.device != "cpu" else None,
            "max_abs_diff_vs_cpu": round(float(np.abs(maps_dev - maps_cpu).max()), 5)}


def measure_gradcam_mtl(checkpoint: Path, image: np.ndarray, settings: Settings) -> dict:
    from napari_ish_annotator.core.explain.finetuned import gradcam_mtl
    from napari_ish_annotator.core.finetune import load_finetuned

    model = load_finetuned(checkpoint, device=settings.device)
    maps_dev = gradcam_mtl(model, image)
    ms = _median_ms(lambda: gradcam_mtl(model, image), settings.gradcam_repeats, settings.device)
    cpu = model if settings.device == "cpu" else load_finetuned(checkpoint, device="cpu")
    maps_cpu = gradcam_mtl(cpu, image)
    return {"head": "fine-tuned multi-task network (backward pass)", "terms": len(TERMS),
            "median_ms": ms, "max_abs_diff_vs_cpu": round(float(np.abs(maps_dev - maps_cpu).max()), 5)}


# --------------------------------------------------------------------------- main

def environment(settings: Settings, mode: str) -> dict:
    import torch

    from napari_ish_annotator.core.features.decoding import default_decode_workers

    cuda = settings.device == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    else:  # tiny CPU sizes: one thread, no OpenMP stalls on a busy machine
        torch.set_num_threads(1)
    return {
        "mode": mode, "device_type": settings.device,
        "device_name": torch.cuda.get_device_name(0) if cuda else (platform.processor() or "CPU"),
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(), "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "decode_workers": settings.decode_workers if settings.decode_workers is not None
        else default_decode_workers(settings.device),
        "settings": asdict(settings), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run(settings: Settings, out: Path, mode: str) -> dict:
    """Every measurement in order of importance; returns the report (also written to ``out``)."""
    from napari_ish_annotator.core.backbones.weights import (
        imagenet_weights_available,
        load_backbone,
    )

    rec = Recorder(out, settings.budget_s, settings.needs_scale)
    rec.meta = environment(settings, mode)
    rec.write()
    work = Path(tempfile.mkdtemp(prefix="ish-gpu-check-"))
    state: dict[str, Any] = {}

    def files() -> dict:
        t = time.perf_counter()
        state["paths"], state["Y"] = write_images(work / "images", settings)
        return {"files": len(state["paths"]), "format": "BMP",
                "size": f"{settings.image_size[1]}x{settings.image_size[0]} (W x H)",
                "write_seconds": round(time.perf_counter() - t, 2)}

    rec.step("images", files, needs_s=1)
    if "paths" not in state:
        return rec.report()
    paths, Y = state["paths"], state["Y"]
    effnet_weights = ("imagenet" if imagenet_weights_available("efficientnet_lite0")
                      else "random")
    loaders = {"vgg16": lambda: load_backbone("vgg16", "random", seed=0),
               "efficientnet_lite0": lambda: load_backbone("efficientnet_lite0", effnet_weights)}
    loaded: dict[str, Any] = {}
    for name in settings.backbones:
        rec.step(f"load/{name}", lambda n=name: {
            "weights": loaded.setdefault(n, loaders[n]()).weights_id}, needs_s=1)

    def extraction(backbone: str, precisions, batches, workers: int | None = -1,
                   tag: str = "") -> None:
        if backbone not in loaded:
            return
        for precision in precisions:
            for batch in batches:
                name = f"extract/{backbone}/{precision}/b{batch}{tag}"
                if settings.device == "cpu" and precision == "fp16":
                    rec.steps[name] = {"status": "skipped", "reason": "fp16 is for GPUs"}
                    continue
                rec.step(name, lambda p=precision, b=batch: measure_extraction(
                    loaded[backbone], paths, settings, p, b, workers), needs_s=20)

    first, rest = settings.precisions[:1], settings.precisions[1:]
    extraction("vgg16", first, settings.batch_sizes)  # the target's figure first

    # agreement of features and of a small model's probabilities, GPU vs CPU fp32
    if "vgg16" in loaded:
        vgg = loaded["vgg16"]
        sub = paths[:settings.agreement_images]
        model_paths, model_Y = paths[:settings.model_images], Y[:settings.model_images]

        def cpu_reference() -> dict:
            cpu = replace(settings, device="cpu")
            state["X_cpu"] = _extractor(vgg, cpu, "fp32", 16).extract(model_paths)
            state["bundle"] = fit_small_model(state["X_cpu"], model_Y, vgg, settings)
            return {"images": len(model_paths), "terms": len(TERMS)}

        rec.step("cpu-reference/vgg16", cpu_reference, needs_s=30)
        if "X_cpu" in state:
            ref = state["X_cpu"][:len(sub)]
            for precision in settings.precisions:
                if settings.device == "cpu" and precision == "fp16":
                    continue
                rec.step(f"agreement/features/vgg16/{precision}", lambda p=precision:
                         measure_feature_agreement(vgg, sub, settings, ref, p), needs_s=10)
            rec.step("agreement/probabilities/vgg16", lambda: measure_probability_agreement(
                state["bundle"], vgg, model_paths, settings, state["X_cpu"]), needs_s=10)

    ft_out = work / "finetuned.pt"
    n_ft = min(settings.ft_images, len(paths))
    rec.step("finetune/vgg16/1-epoch", lambda: measure_finetune(paths[:n_ft], Y[:n_ft], settings,
                                                                ft_out), needs_s=60)
    from napari_ish_annotator.core.data.images import read_rgb

    image = read_rgb(paths[0])
    if "bundle" in state:
        rec.step("gradcam/logistic-head", lambda: measure_gradcam_linear(
            state["bundle"], loaded["vgg16"], image, settings), needs_s=15)
    if ft_out.exists():
        rec.step("gradcam/fine-tuned", lambda: measure_gradcam_mtl(ft_out, image, settings),
                 needs_s=15)

    # the rest of the extraction matrix, then the variants that explain it
    extraction("vgg16", rest, settings.batch_sizes)
    if "efficientnet_lite0" in loaded and "efficientnet_lite0" in settings.backbones:
        eff = loaded["efficientnet_lite0"]
        sub = paths[:settings.agreement_images]
        rec.step("cpu-reference/efficientnet_lite0", lambda: {"images": len(state.setdefault(
            "ref_eff", _extractor(eff, replace(settings, device="cpu"), "fp32", 16).extract(sub)))},
            needs_s=10)
        ref_eff = state.get("ref_eff")
        for precision in settings.precisions if ref_eff is not None else ():
            if settings.device == "cpu" and precision == "fp16":
                continue
            rec.step(f"agreement/features/efficientnet_lite0/{precision}", lambda p=precision:
                     measure_feature_agreement(eff, sub, settings, ref_eff, p), needs_s=10)
    extraction("efficientnet_lite0", settings.precisions, settings.batch_sizes)
    middle = settings.batch_sizes[len(settings.batch_sizes) // 2]
    extraction("vgg16", first, (middle,), workers=0, tag="/threads")
    if "vgg16" in loaded:
        for batch in settings.batch_sizes[-1:]:
            rec.step(f"model-only/vgg16/{first[0]}/b{batch}", lambda b=batch: measure_model_only(
                loaded["vgg16"], settings, first[0], b), needs_s=10)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    rec.write()
    return rec.report()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop starting measurements after this many seconds (default: 330 on "
                         "a GPU, 120 for the CPU smoke run)")
    ap.add_argument("--n-images", type=int, default=None, help="image files to write")
    ap.add_argument("--backbones", default=None,
                    help="comma-separated subset of vgg16,efficientnet_lite0")
    ap.add_argument("--precisions", default=None, help="comma-separated subset of fp16,bf16,fp32")
    args = ap.parse_args(argv)

    import torch

    if args.cpu_smoke or not torch.cuda.is_available():
        mode = "cpu-smoke" if args.cpu_smoke else "cpu-smoke (no CUDA GPU found)"
        settings = Settings.smoke()
    else:
        mode, settings = "gpu", Settings()
    if args.budget_s is not None:
        settings = replace(settings, budget_s=args.budget_s)
    if args.n_images is not None:
        settings = replace(settings, n_images=max(args.n_images, 8))
    if args.backbones:
        settings = replace(settings, backbones=tuple(args.backbones.split(",")))
    if args.precisions:
        settings = replace(settings, precisions=tuple(args.precisions.split(",")))
    print(f"bench_gpu: {mode}, writing {args.out}/gpu.json and gpu.md", flush=True)
    threads = torch.get_num_threads()
    try:
        report = run(settings, args.out, mode)
    finally:
        torch.set_num_threads(threads)  # the smoke run sets 1; callers (tests) keep theirs
    failed = [name for name, s in report["steps"].items() if s["status"] == "error"]
    print(markdown(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
