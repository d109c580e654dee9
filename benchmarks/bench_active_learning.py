"""Label efficiency: held-out AUC against the number of labelled images, `suggest` vs random.

Synthetic embryos reduced to cheap features (:mod:`napari_ish_annotator.core.synthetic.simulate`);
40 % of the genes are held out, the rest is the unlabelled pool. Both strategies start from
the same random images, then label a batch at a time, chosen either by
:func:`napari_ish_annotator.core.learn.active.suggest` (what ``ish-annotator suggest`` writes) or at
random, and retrain the project's classifier after each batch.

    python benchmarks/bench_active_learning.py                   # 1000 images, 6 seeds
    python benchmarks/bench_active_learning.py --images 600 --seeds 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_ish_annotator.core.synthetic.simulate import learning_curve, synthetic_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--start", type=int, default=20)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = synthetic_features(args.images, seed=0)
    curves = {"suggest": [], "random": []}
    for seed in range(args.seeds):
        for strategy in curves:
            curves[strategy].append(learning_curve(data, strategy, seed, args.start,
                                                   args.batch, args.rounds))
    sizes = curves["random"][0].n_labelled
    print(f"{args.images} synthetic embryos, {len(set(data.genes))} genes (40 % held out, "
          f"the rest is the pool); {args.seeds} seeds; start {args.start}, batch {args.batch}")
    print("labelled   random            suggest           gain     suggest >= random")
    auc = {s: np.array([c.auc for c in cs]) for s, cs in curves.items()}
    for k, n in enumerate(sizes):
        r, s = auc["random"][:, k], auc["suggest"][:, k]
        print(f"{n:>8}   {r.mean():.4f} +- {r.std():.4f}  {s.mean():.4f} +- {s.std():.4f}  "
              f"{(s - r).mean():+.4f}   {(s >= r).sum()}/{len(r)} seeds")
    area = {s: a[:, 1:].mean(axis=1) for s, a in auc.items()}
    print(f"mean AUC over the curve after the start: random {area['random'].mean():.4f}, "
          f"suggest {area['suggest'].mean():.4f} (gain {np.mean(area['suggest'] - area['random']):+.4f}, "
          f"per seed {np.round(area['suggest'] - area['random'], 4).tolist()})")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
