"""The GPU check's measurements (benchmarks/bench_gpu.py): its sizes, the image files and
one function per figure, each returning a dict of figures."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    ft_images: int = 1024  # several batches of 128, so the first (cuDNN tuning) does not dominate
    ft_batch: int = 128  # issue 28: a batch that fills the GPU (the first run used 32)
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
    from napari_ish_annotator.core.finetune.checkpoint import load_finetuned

    model = load_finetuned(checkpoint, device=settings.device)
    maps_dev = gradcam_mtl(model, image)
    ms = _median_ms(lambda: gradcam_mtl(model, image), settings.gradcam_repeats, settings.device)
    cpu = model if settings.device == "cpu" else load_finetuned(checkpoint, device="cpu")
    maps_cpu = gradcam_mtl(cpu, image)
    return {"head": "fine-tuned multi-task network (backward pass)", "terms": len(TERMS),
            "median_ms": ms, "max_abs_diff_vs_cpu": round(float(np.abs(maps_dev - maps_cpu).max()), 5)}
