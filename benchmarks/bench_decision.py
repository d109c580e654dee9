#!/usr/bin/env python
"""One decision on screen: calls by calibrated p >= 0.5 against the members' majority vote and
against per-term thresholds chosen on out-of-fold scores, on held-out genes.

Renders a training set and a disjoint held-out set of synthetic stage 13-16 embryos whose label
sets are drawn from the real FlyExpress annotation table (``core.synthetic``: BDGP-shaped
prevalence and co-occurrence, genes with 1-3 images), extracts ImageNet features, fits a model
bundle (Platt-calibrated, as ``train`` does) and compares on the held-out images:

* **rule** - :func:`core.learn.decision.calls` (calibrated p >= 0.5): what the GUI and
  ``predict``'s ``calls`` column show;
* **per-term** - each term's F1-optimal threshold on the training set's gene-grouped
  out-of-fold calibrated scores (:func:`core.learn.review.iter_out_of_fold_probabilities`);
* **vote** - the paper's members' majority vote (``predict --votes``).

Figures: mean calls per image against the true mean, micro-F1 of the calls against the truth,
and how often a call disagrees with its own probability (vote "yes" beside p < 0.5 or "no"
beside p >= 0.5). Features go to ``--cache`` so bench_suspicious.py can reuse them.

    python benchmarks/bench_decision.py                          # ~5 min on 2 busy cores
    python benchmarks/bench_decision.py --n-train 80 --n-test 60 --size 96x192   # quick
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np


def micro_f1(Y: np.ndarray, C: np.ndarray) -> float:
    tp = float((C & (Y == 1)).sum())
    fp = float((C & (Y == 0)).sum())
    fn = float((~C & (Y == 1)).sum())
    return 2 * tp / max(1.0, 2 * tp + fp + fn)


def best_thresholds(P: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Per term, the threshold on ``P`` (out-of-fold) with the best F1 (0.5 where none fits)."""
    out = np.full(P.shape[1], 0.5)
    grid = np.linspace(0.05, 0.95, 91)
    for t in range(P.shape[1]):
        ok = np.isfinite(P[:, t]) & (Y[:, t] >= 0)
        y = Y[ok, t] == 1
        if y.sum() == 0 or (~y).sum() == 0:
            continue
        f1 = [micro_f1(y[:, None].astype(np.int8), (P[ok, t] >= g)[:, None]) for g in grid]
        out[t] = grid[int(np.argmax(f1))]
    return out


def render(root: Path, n: int, seed: int, size: tuple[int, int], vocabulary):
    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    manifest = generate_dataset(root, n, "13-16", seed=seed, size=size, vocabulary=vocabulary,
                                min_positives=0, write_masks=False)
    return read_manifest(manifest, vocabulary=vocabulary, require_positives=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=160)
    ap.add_argument("--size", default="128x256", help="image HxW")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ish-bench-review"),
                    help="folder for the rendered images and the feature cache")
    args = ap.parse_args(argv)

    from napari_ish_annotator.core.data.vocabulary import default_vocabulary
    from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
    from napari_ish_annotator.core.learn.decision import calls
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.learn.review import iter_out_of_fold_probabilities
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.core.workflow import iter_fit_bundle

    h, w = (int(x) for x in args.size.split("x"))
    vocabulary = default_vocabulary("13-16")
    t0 = time.perf_counter()
    train = render(args.work / f"train{args.n_train}-{h}x{w}", args.n_train, args.seed + 1,
                   (h, w), vocabulary)
    test = render(args.work / f"test{args.n_test}-{h}x{w}", args.n_test, args.seed + 1000,
                  (h, w), vocabulary)
    config = ExtractorConfig(backbone=args.backbone, weights=args.weights, device="cpu",
                             seed=args.seed)
    fx = FeatureExtractor(config, cache_dir=args.work / "cache")
    Xtr, Xte = fx.extract(train.paths), fx.extract(test.paths)
    t_data = time.perf_counter() - t0
    Ytr, Yte = train.labels().astype(np.int8), test.labels().astype(np.int8)
    cfg = EnsembleConfig(seed=args.seed)
    bundle = drive(iter_fit_bundle(Xtr, Ytr, vocabulary, fx.config, cfg, groups=train.groups()))
    P, votes = bundle.predict_both(Xte)
    oof = drive(iter_out_of_fold_probabilities(Xtr, Ytr, train.groups(), cfg, vocabulary))
    thr = best_thresholds(oof, Ytr)

    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}; "
          f"{len(train)} training / {len(test)} held-out synthetic embryos {h}x{w}, "
          f"{len(vocabulary)} terms, {args.backbone} {args.weights} layer {fx.layer} "
          f"(data + features {t_data:.0f} s)")
    rule = calls(P)
    per_term = np.greater_equal(P, thr[None, :])
    print(f"true terms per held-out image: {Yte.sum(axis=1).mean():.2f}")
    print(f"{'decision':<38} {'calls/image':>11} {'micro-F1':>9} {'contradicts p':>14}")
    for name, C in (("calibrated p >= 0.5 (the rule)", rule),
                    ("per-term OOF F1-optimal threshold", per_term),
                    ("members' majority vote (the paper)", votes.astype(bool))):
        contra = float(np.not_equal(C, rule).mean())
        print(f"{name:<38} {C.sum(axis=1).mean():>11.2f} {micro_f1(Yte, C):>9.3f} "
              f"{contra:>13.1%}")
    print("per-term thresholds: " + ", ".join(f"{t:.2f}" for t in thr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
