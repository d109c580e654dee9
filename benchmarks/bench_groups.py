#!/usr/bin/env python
"""Gene x stage records against images: which combination of image probabilities, and how the
group-level figures compare with the image-level ones on the same held-out genes.

Renders synthetic embryos whose label sets are drawn from the real FlyExpress stage 13-16
table (``core.synthetic``; genes get 1-3 images sharing their terms), extracts ImageNet
features (EfficientNet-Lite0 from its PyPI package by default), runs the gene-grouped k-fold
evaluation once (``iter_cross_validate``) and scores the pooled held-out probabilities per
image and per record with each combination of :mod:`core.learn.groups`.

    python benchmarks/bench_groups.py                  # ~2-4 min on 2 busy cores
    python benchmarks/bench_groups.py --n 120 --size 96x192
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=240, help="images")
    ap.add_argument("--size", default="128x256", help="image HxW")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.data.vocabulary import default_vocabulary
    from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
    from napari_ish_annotator.core.learn.evaluation import iter_cross_validate, score_groups
    from napari_ish_annotator.core.learn.groups import COMBINATIONS, record_groups
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.learn.splits import grouped_folds
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset
    from napari_ish_annotator.core.utils.progress import drive

    h, w = (int(x) for x in args.size.split("x"))
    vocabulary = default_vocabulary("13-16")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = read_manifest(generate_dataset(Path(tmp) / "d", args.n, "13-16", seed=args.seed + 7,
                                              size=(h, w), vocabulary=vocabulary,
                                              min_positives=0, write_masks=False),
                             vocabulary=vocabulary, require_positives=False)
        fx = FeatureExtractor(ExtractorConfig(backbone=args.backbone, weights=args.weights,
                                              device="cpu", seed=args.seed), cache_dir=None)
        X = fx.extract(data.paths)
    Y = data.labels().astype(np.int8)
    records = record_groups(data.genes, data.stages)
    splits = grouped_folds(data.groups(), args.folds, seed=args.seed)
    ev = drive(iter_cross_validate(X, Y, vocabulary, splits, EnsembleConfig(seed=args.seed),
                                   groups=data.groups(), records=records))
    print(f"machine: {platform.processor() or platform.machine()}, 2 shared cores; "
          f"{time.perf_counter() - t0:.0f} s in all")
    print(f"data: {len(data)} synthetic embryos {h}x{w}, FlyExpress 13-16 label sets, "
          f"{len(records)} gene x stage records ({np.mean(records.sizes()):.1f} images each); "
          f"{args.backbone} {args.weights} features; {args.folds} gene-grouped folds; "
          f"{ev.n_evaluated} of {ev.n_terms} terms evaluated")
    print(f"\n{'level':<8} {'combination':<11} {'AUC':>6} {'acc':>6} {'sens':>6} {'spec':>6} "
          f"{'Brier':>6} {'ECE':>6}")

    def row(level: str, how: str, m: dict) -> None:
        cells = [m.get(k) for k in ("auc", "accuracy", "sensitivity", "specificity", "brier",
                                    "ece")]
        print(f"{level:<8} {how:<11} " + " ".join(
            f"{'n/a' if v is None else f'{v:.3f}':>6}" for v in cells))

    row("images", "-", ev.summary["mean"])
    for method in COMBINATIONS:
        g = score_groups(Y, ev.scores, records, vocabulary, ev.not_evaluated, method=method)
        row("records", method, g.summary["mean"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
