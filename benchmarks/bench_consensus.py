"""Training on the consensus of noisy annotators vs on one annotator (simulated).

Synthetic embryos (64 x 128, 1-3 per gene, real term co-occurrence) are reduced to cheap
features (4 x 4-pixel stain darkness, :mod:`napari_ish_annotator.core.synthetic.simulate`); half the
genes are held out. Three simulated annotators label the training half, each flipping every
label independently with their own rate. The project's classifier (11-member undersampled
ensembles, C=10) is trained on: the true labels, the first annotator's labels, the
majority vote, and the Dawid-Skene consensus; the figure is mean held-out AUC over the
10 stage 13-16 terms.

    python benchmarks/bench_consensus.py                      # 5 seeds, 1000 images
    python benchmarks/bench_consensus.py --seeds 3 --images 600

Two scenarios: equal annotators (25 % flips each, the issue's test) and unequal ones
(10 %, 25 %, 40 %), where weighting annotators by their estimated reliability matters.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_ish_annotator.core.synthetic.simulate import consensus_trial, synthetic_features

METHODS = ("truth", "single", "majority", "dawid-skene")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = synthetic_features(args.images, seed=0)
    print(f"{args.images} synthetic embryos, {data.X.shape[1]} features, "
          f"{len(set(data.genes))} genes ({time.perf_counter() - t0:.1f} s)")
    for flip in (0.25, (0.10, 0.25, 0.40)):
        rows = [consensus_trial(data, flip, seed) for seed in range(args.seeds)]
        print(f"\nflip rates {rows[0].flip}: mean held-out AUC (label accuracy)")
        print("seed  " + "  ".join(f"{m:>18}" for m in METHODS))
        for r in rows:
            print(f"{r.seed:>4}  " + "  ".join(
                f"{r.auc[m]:.4f} ({r.label_accuracy[m]:.3f})" for m in METHODS))
        auc = {m: np.array([r.auc[m] for r in rows]) for m in METHODS}
        print("mean  " + "  ".join(f"{auc[m].mean():.4f} +- {auc[m].std():.4f}"
                                   .rjust(18) for m in METHODS))
        print(f"consensus - single: majority {np.mean(auc['majority'] - auc['single']):+.4f}, "
              f"Dawid-Skene {np.mean(auc['dawid-skene'] - auc['single']):+.4f}; "
              f"Dawid-Skene - majority {np.mean(auc['dawid-skene'] - auc['majority']):+.4f} "
              f"(min {np.min(auc['dawid-skene'] - auc['majority']):+.4f})")
    # speed of the consensus itself on a large store's worth of labels
    from napari_ish_annotator.core.labels.consensus import dawid_skene
    from napari_ish_annotator.core.synthetic.simulate import noisy_annotators

    rng = np.random.default_rng(0)
    L = noisy_annotators((rng.random((10_000, 50)) < 0.2).astype(np.int8), (0.1, 0.2, 0.3))
    t1 = time.perf_counter()
    model = dawid_skene(L)
    print(f"\nDawid-Skene on 3 annotators x 10,000 images x 50 terms: "
          f"{time.perf_counter() - t1:.2f} s ({model.iterations} EM iterations)")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
