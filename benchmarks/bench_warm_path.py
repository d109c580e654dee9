"""Fixed cost of small jobs: naive VGG16 forward vs ``train`` cold (empty cache) vs warm.

All three in one run, on the same synthetic 320x640 embryo PNGs (``core.synthetic``) with the
same seeded random VGG16 (speed does not depend on the weights' values):

* **naive** - in this process, ``bench_extraction._naive``: decode, resize, full torchvision
  ``vgg16`` forward (13 convs and the classifier) in fp32 at batch 1, layer 21 by a hook;
* **cold train** - ``ish-annotator train MANIFEST --weights random`` in a fresh process with an
  empty feature cache: start-up, feature extraction (truncated trunk, batched, auto precision),
  classifier fit and bundle writing, all of it;
* **warm train** - the same command again into another bundle: every feature is in the cache,
  so no network is built and torch is never imported (the script checks this with
  ``ISH_ANNOTATOR_DEBUG_IMPORTS``, which makes the CLI report at exit whether torch was loaded).

Targets (issue 11): cold >= 2.5x faster than naive, warm <= 0.15x the naive time.

    python benchmarks/bench_warm_path.py                  # 96 images (~3-5 min on 2 busy cores)
    python benchmarks/bench_warm_path.py --n-images 16    # quick look
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cli(args: list[str], env: dict) -> tuple[float, str]:
    """Wall time of one ``ish-annotator`` run in a fresh interpreter, and its stderr."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "napari_ish_annotator.cli", *args], env=env,
                          capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ish-annotator {' '.join(args)} failed:\n{proc.stderr}")
    return dt, proc.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-images", type=int, default=96)
    args = ap.parse_args(argv)

    import torch
    from bench_extraction import _naive
    from torchvision.models import vgg16

    from napari_ish_annotator.core.backbones import load_backbone
    from napari_ish_annotator.core.features import ExtractorConfig, FeatureExtractor
    from napari_ish_annotator.core.manifest import read_manifest
    from napari_ish_annotator.core.synthetic import generate_dataset

    print(f"# n_images={args.n_images}, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, cpus={os.cpu_count()}, "
          f"load_average_1min={os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        manifest = generate_dataset(Path(tmp) / "data", args.n_images, seed=0,
                                    size=(320, 640), write_masks=False)
        paths = read_manifest(manifest).paths
        loaded = load_backbone("vgg16", "random", seed=0)
        with torch.random.fork_rng(devices=[]):
            model = vgg16(weights=None).eval()
        model.features.load_state_dict(loaded.module.state_dict())
        fx = FeatureExtractor(ExtractorConfig(weights="random", precision="fp32", batch_size=1,
                                              device="cpu"), loaded=loaded)
        _naive(model, fx, paths[:1])  # warm-up: oneDNN primitives, first-touch pages
        t0 = time.perf_counter()
        _naive(model, fx, paths)
        naive = time.perf_counter() - t0
        print(f"naive full VGG16 fp32 batch 1: {naive:.1f} s", flush=True)
        del model, fx, loaded

        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), ISH_ANNOTATOR_DEBUG_IMPORTS="1")
        common = [str(manifest), "--weights", "random", "--cache", str(Path(tmp) / "cache"),
                  "--quiet"]
        cold, cold_err = _cli(["train", *common, "--out", str(Path(tmp) / "m1")], env)
        print(f"cold train (empty cache): {cold:.1f} s", flush=True)
        warm, warm_err = _cli(["train", *common, "--out", str(Path(tmp) / "m2")], env)
        print(f"warm train (all cached):  {warm:.1f} s", flush=True)
        torch_cold = "torch imported: yes" in cold_err
        torch_warm = "torch imported: yes" in warm_err

    print()
    print(f"{'run':<34} {'seconds':>8} {'vs naive':>10}")
    print(f"{'naive (full vgg16, fp32, batch 1)':<34} {naive:>8.1f} {'1.00x':>10}")
    print(f"{'cold train (empty cache)':<34} {cold:>8.1f} {naive / cold:>9.2f}x faster")
    print(f"{'warm train (all cached)':<34} {warm:>8.1f} {warm / naive:>9.3f}x the time")
    print(f"torch imported: cold {torch_cold}, warm {torch_warm}")
    ok = naive / cold >= 2.5 and warm / naive <= 0.15 and not torch_warm
    print(f"targets (cold >= 2.5x faster, warm <= 0.15x, warm without torch): "
          f"{'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
