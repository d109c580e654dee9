"""How training cost grows with the number of images, up to the paper's 7,564 (VGG16 layer 21).

For each n, a fresh child process (so its peak resident memory is its own):

1. gets the feature matrix the pipeline would use (``pipeline.feature_matrix``: in memory up to
   1 GiB, else a float16 memory-mapped scratch file after a free-disk-space check) and fills it
   with random non-negative float16 features of the real shape, 512x28x28 = 401,408 per image.
   **Extraction is replaced by this fill** - running VGG16 on 7,564 images takes hours on a
   laptop and its cost is linear in n (see ``bench_extraction.py``); what is measured
   honestly is everything after it, on a matrix of the real size and type;
2. fits the per-term ensembles (``pipeline.iter_fit_bundle``: Gram matrix streamed over the
   matrix in column blocks, dual fits, one more streamed pass to recover the weights);
3. writes the model bundle.

Prints seconds per step and the child's peak resident set size (``ru_maxrss``).

    python benchmarks/bench_scale.py --quick          # 100 and 1,000 images (~5 min)
    python benchmarks/bench_scale.py --quick --memmap-above 0   # same, features memory-mapped
    python benchmarks/bench_scale.py                  # 100, 1,000 and 7,564 (needs ~7 GB disk)
    python benchmarks/bench_scale.py --sizes 2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIM = 512 * 28 * 28  # VGG16 layer 21 at 224 px


def child(n: int, n_terms: int, members: int, folder: Path, memmap_above: float | None) -> dict:
    import numpy as np

    from napari_ish_annotator.core import workflow as pipeline
    from napari_ish_annotator.core.features.extractor import ExtractorConfig
    from napari_ish_annotator.core.learn.bundle import save_bundle
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.utils.files import release_pages
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.core.workflow import feature_matrix, iter_fit_bundle

    if memmap_above is not None:
        pipeline.MEMMAP_BYTES = int(memmap_above * 2**30)

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    X = feature_matrix(n, DIM, folder)
    for r0 in range(0, n, 64):  # ReLU-like features: about half zero, the rest positive
        r1 = min(n, r0 + 64)
        block = rng.standard_normal((r1 - r0, DIM), dtype=np.float32)
        np.maximum(block, 0, out=block)
        X[r0:r1] = block
        release_pages(X)  # as pipeline.iter_features does after each batch
        del block
    t_fill = time.perf_counter() - t0
    Y = (rng.random((n, n_terms)) < 0.25).astype(np.int8)
    Y[rng.random((n, n_terms)) < 0.1] = -1  # some unknown labels, as in real data
    Y[0], Y[1] = 1, 0  # every term has a positive and a negative
    t0 = time.perf_counter()
    bundle = drive(iter_fit_bundle(X, Y, [f"term {i}" for i in range(n_terms)],
                                   ExtractorConfig(weights="random"),
                                   EnsembleConfig(n_members=members)))
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    save_bundle(folder / "model", bundle)
    t_save = time.perf_counter() - t0
    return {"n": n, "memmap": isinstance(X, np.memmap), "matrix_gib": n * DIM * 2 / 2**30,
            "memmap_above_gib": pipeline.MEMMAP_BYTES / 2**30, "fill_s": t_fill, "fit_s": t_fit,
            "save_s": t_save,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000,7564")
    ap.add_argument("--quick", action="store_true", help="only 100 and 1,000 images")
    ap.add_argument("--terms", type=int, default=10)
    ap.add_argument("--ensemble", type=int, default=11)
    ap.add_argument("--memmap-above", type=float, default=None, metavar="GIB",
                    help="memory-map feature matrices above this size (default: the "
                         "pipeline's 1 GiB; 0 = always, to measure the memmap path at small n)")
    ap.add_argument("--folder", type=Path, default=None, help="scratch folder (default: temp)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.terms, args.ensemble, args.folder,
                                   args.memmap_above)))
        return 0
    sizes = [100, 1000] if args.quick else [int(s) for s in args.sizes.split(",")]
    print(f"# VGG16 layer 21 ({DIM:,} float16 values per image), {args.terms} terms x "
          f"{args.ensemble} members; extraction replaced by random features written into the "
          f"pipeline's feature matrix; cpus={os.cpu_count()}, "
          f"load_average_1min={os.getloadavg()[0]:.2f}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.folder) as tmp:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--terms", str(args.terms),
                 "--ensemble", str(args.ensemble), "--folder", tmp,
                 *([] if args.memmap_above is None else ["--memmap-above",
                                                         str(args.memmap_above)])],
                env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"n={n}: failed:\n{proc.stderr}", file=sys.stderr)
            return 1
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"n={n}: fit {row['fit_s']:.1f} s, peak RSS {row['peak_rss_gib']:.2f} GiB",
              flush=True)
    print()
    print(f"{'images':>7} {'features':>9} {'storage':>8} {'fill s':>7} {'fit s':>7} "
          f"{'save s':>7} {'fit s/img':>10} {'peak RSS':>9}")
    for r in rows:
        print(f"{r['n']:>7,} {r['matrix_gib']:>7.2f}Gi {'memmap' if r['memmap'] else 'RAM':>8} "
              f"{r['fill_s']:>7.1f} {r['fit_s']:>7.1f} {r['save_s']:>7.1f} "
              f"{1000 * r['fit_s'] / r['n']:>8.1f}ms {r['peak_rss_gib']:>7.2f}Gi")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
