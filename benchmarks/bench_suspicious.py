#!/usr/bin/env python
"""Suspicious labels: does ``ish-annotator suspicious``'s ranking find labels known to be wrong?

Renders BDGP-shaped synthetic stage 13-16 embryos (label sets drawn from the real FlyExpress
annotation table; see bench_decision.py, whose feature cache it shares), flips a known share of
the (image, term) labels at random, computes the gene-grouped out-of-fold probabilities
(:func:`core.learn.review.iter_out_of_fold_probabilities`) from the *flipped* labels, and
reports precision at k (k = the number of flips) of:

* **|label - p|, calibrated** - the command's rule (:func:`core.learn.review.rank_suspicious`);
* **|label - p|, raw members' mean** - without Platt scaling, to see what calibration adds;
* **random** - a random order (expected precision = the flipped share).

    python benchmarks/bench_suspicious.py                  # after bench_decision.py: ~2 min
    python benchmarks/bench_suspicious.py --n 80 --size 96x192 --repeats 1
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="embryos (bench_decision's training set)")
    ap.add_argument("--size", default="128x256", help="image HxW")
    ap.add_argument("--flip", type=float, default=0.05, help="share of labels flipped")
    ap.add_argument("--repeats", type=int, default=3, help="seeded flips averaged")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ish-bench-review"))
    args = ap.parse_args(argv)

    from bench_decision import render

    from napari_ish_annotator.core.data.vocabulary import default_vocabulary
    from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
    from napari_ish_annotator.core.learn.ensembles import iter_gram
    from napari_ish_annotator.core.learn.folds import iter_out_of_fold
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.learn.review import (
        iter_out_of_fold_probabilities,
        rank_suspicious,
    )
    from napari_ish_annotator.core.utils.progress import drive

    h, w = (int(x) for x in args.size.split("x"))
    vocabulary = default_vocabulary("13-16")
    t0 = time.perf_counter()
    data = render(args.work / f"train{args.n}-{h}x{w}", args.n, args.seed + 1, (h, w),
                  vocabulary)
    config = ExtractorConfig(backbone=args.backbone, weights=args.weights, device="cpu",
                             seed=args.seed)
    X = FeatureExtractor(config, cache_dir=args.work / "cache").extract(data.paths)
    t_data = time.perf_counter() - t0
    Y, groups = data.labels().astype(np.int8), data.groups()
    cfg = EnsembleConfig(seed=args.seed)
    K = drive(iter_gram(X))
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}; "
          f"{len(data)} synthetic embryos {h}x{w} ({len(np.unique(groups))} genes), "
          f"{len(vocabulary)} terms, {Y.size} labels, {args.flip:.0%} flipped; "
          f"{args.backbone} {args.weights} (data + features {t_data:.0f} s)")
    results: dict[str, list[float]] = {"calibrated": [], "raw": [], "random": []}
    for r in range(args.repeats):
        rng = np.random.default_rng(args.seed + 100 + r)
        k = int(round(args.flip * Y.size))
        flat = rng.choice(Y.size, size=k, replace=False)
        bad = Y.copy().ravel()
        bad[flat] = 1 - bad[flat]
        bad = bad.reshape(Y.shape)
        flipped = set(zip(*np.unravel_index(flat, Y.shape), strict=True))
        t1 = time.perf_counter()
        P = drive(iter_out_of_fold_probabilities(X, bad, groups, cfg, vocabulary))
        t_oof = time.perf_counter() - t1
        raw = drive(iter_out_of_fold(K, np.arange(len(Y)), bad, groups, cfg, vocabulary, 5,
                                     seed=cfg.seed))

        def precision(ranked, k=k, flipped=flipped):
            return sum((s.row, s.term) in flipped for s in ranked[:k]) / k

        results["calibrated"].append(precision(rank_suspicious(bad, P)))
        results["raw"].append(precision(rank_suspicious(bad, raw)))
        order = rng.permutation(Y.size)[:k]
        results["random"].append(
            sum(tuple(int(v) for v in np.unravel_index(i, Y.shape)) in flipped for i in order) / k)
        print(f"repeat {r + 1}: k = {k}; precision at k: calibrated "
              f"{results['calibrated'][-1]:.3f}, raw {results['raw'][-1]:.3f}, random "
              f"{results['random'][-1]:.3f} (out-of-fold fits {t_oof:.0f} s)")
    print(f"\nmean precision at k over {args.repeats} flips (expected for random: "
          f"{args.flip:.3f}):")
    for name, values in results.items():
        print(f"  {name:<11} {np.mean(values):.3f} ± {np.std(values):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
