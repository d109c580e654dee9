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

Targets (issues 11 and 19): cold >= 2.5x faster than naive, warm <= 0.15x the naive time.
The warm command runs ``--warm-repeats`` times (the shortest counts: on a shared machine it
is the least disturbed); each run's CPU seconds (user + system) are shown beside its wall
time, as they depend less on other processes. ``--breakdown`` runs the warm command once more
under cProfile and prints where its time goes (imports, reading the cache, fitting,
calibration, writing the bundle).

    python benchmarks/bench_warm_path.py                  # 96 images (~3-5 min on 2 busy cores)
    python benchmarks/bench_warm_path.py --n-images 16    # quick look
    python benchmarks/bench_warm_path.py --breakdown      # plus the warm run's profile
"""

from __future__ import annotations

import argparse
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


# what the warm run's profile is grouped into: (label, function name patterns in pstats keys)
PHASES = [
    ("features from the cache (hash + read)", ("iter_features",)),
    ("fitting the ensembles", ("iter_fit",)),
    ("calibration", ("iter_calibrate",)),
    ("writing the bundle", ("save_bundle",)),
    ("whole command", ("main",)),
]


def _cli(args: list[str], env: dict, python_args: tuple[str, ...] = ()
         ) -> tuple[float, float, str]:
    """Wall and CPU seconds of one ``ish-annotator`` run in a fresh interpreter, and its
    stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *python_args, "-m", "napari_ish_annotator.cli",
                           *args], env=env, capture_output=True, text=True, check=False)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"ish-annotator {' '.join(args)} failed:\n{proc.stderr}")
    return dt, cpu, proc.stderr


def _breakdown(profile: Path) -> list[tuple[str, float]]:
    """Cumulative seconds of each :data:`PHASES` entry in a cProfile file."""
    stats = pstats.Stats(str(profile)).stats  # type: ignore[attr-defined]
    out = []
    for label, names in PHASES:
        total = 0.0
        for (filename, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.items():
            if func in names and "napari_ish_annotator" in filename and (
                    func != "main" or filename.endswith("cli/__init__.py")):
                total += ct
        out.append((label, total))
    return out


def _import_seconds(importtime: str) -> tuple[float, list[tuple[str, float]]]:
    """Total seconds of top-level imports in ``-X importtime`` output, and the largest ones."""
    top = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if name.strip() and not name[1:].startswith(" ") and cumulative.strip().isdigit():
            top.append((name.strip(), int(cumulative) / 1e6))
    return sum(t for _, t in top), sorted(top, key=lambda x: -x[1])[:6]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-images", type=int, default=96)
    ap.add_argument("--warm-repeats", type=int, default=3)
    ap.add_argument("--breakdown", action="store_true", help="profile one more warm run")
    args = ap.parse_args(argv)

    import torch
    from bench_extraction import _naive
    from torchvision.models import vgg16

    from napari_ish_annotator.core.backbones.weights import load_backbone
    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.features.extractor import (
        ExtractorConfig,
        FeatureExtractor,
    )
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

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
        cold, cold_cpu, cold_err = _cli(["train", *common, "--out", str(Path(tmp) / "m1")], env)
        print(f"cold train (empty cache): {cold:.1f} s ({cold_cpu:.1f} CPU s)", flush=True)
        warms = []
        for r in range(max(1, args.warm_repeats)):
            warms.append(_cli(["train", *common, "--out", str(Path(tmp) / f"m2-{r}")], env))
            print(f"warm train (all cached):  {warms[-1][0]:.2f} s ({warms[-1][1]:.2f} CPU s)",
                  flush=True)
        warm, warm_cpu, warm_err = min(warms)
        torch_cold = "torch imported: yes" in cold_err
        torch_warm = any("torch imported: yes" in w[2] for w in warms)
        phases = imports = None
        if args.breakdown:
            prof = Path(tmp) / "warm.prof"
            _cli(["train", *common, "--out", str(Path(tmp) / "m3")], env,
                 ("-m", "cProfile", "-o", str(prof)))
            phases = _breakdown(prof)
            _, _, imp_err = _cli(["train", *common, "--out", str(Path(tmp) / "m4")], env,
                                 ("-X", "importtime"))
            imports = _import_seconds(imp_err)

    print()
    print(f"{'run':<34} {'seconds':>8} {'vs naive':>10}")
    print(f"{'naive (full vgg16, fp32, batch 1)':<34} {naive:>8.1f} {'1.00x':>10}")
    print(f"{'cold train (empty cache)':<34} {cold:>8.1f} {naive / cold:>9.2f}x faster")
    print(f"{'warm train (all cached), best':<34} {warm:>8.2f} {warm / naive:>9.3f}x the time "
          f"({warm_cpu:.2f} CPU s; all runs {', '.join(f'{w[0]:.2f}' for w in warms)} s)")
    print(f"torch imported: cold {torch_cold}, warm {torch_warm}")
    if phases:
        print("\nwarm run under cProfile (seconds, profiler overhead included):")
        for label, sec in phases:
            print(f"  {label:<40} {sec:>6.2f}")
        print(f"imports of a warm run (-X importtime, separate run): {imports[0]:.2f} s; largest: "
              + ", ".join(f"{name} {sec:.2f}" for name, sec in imports[1]))
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    ok = naive / cold >= 2.5 and warm / naive <= 0.15 and not torch_warm
    print(f"targets (cold >= 2.5x faster, warm <= 0.15x, warm without torch): "
          f"{'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
