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

Each headline figure is printed against its target (issue 28, one H100) as a ``[target]``
line - PASS, FAIL, or N/A off a GPU - and a missed target makes the exit status 1. The
measurements live in bench_gpu_measure.py, the report in bench_gpu_report.py.

    python benchmarks/bench_gpu.py --out gpu-out              # CUDA machine, < 8 min in all
    python benchmarks/bench_gpu.py --out smoke --cpu-smoke    # tiny sizes on the CPU (seconds)

Without CUDA it runs the CPU smoke sizes (and says so), so the script is testable anywhere.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_measure import (  # noqa: E402 - the sibling modules of this script
    TERMS,
    Settings,
    _extractor,
    fit_small_model,
    measure_extraction,
    measure_feature_agreement,
    measure_finetune,
    measure_gradcam_linear,
    measure_gradcam_mtl,
    measure_model_only,
    measure_probability_agreement,
    write_images,
)
from bench_gpu_report import Recorder, markdown, target_lines  # noqa: E402


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
    lines = target_lines(report)
    print("\n".join(lines), flush=True)
    missed = [t for t in report["targets"] if t["met"] is False]
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
