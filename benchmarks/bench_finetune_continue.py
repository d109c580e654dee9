#!/usr/bin/env python
"""Continued fine-tuning (``finetune --init``) against a fresh run on all labels.

The story of a biologist who labelled more: a first network was fine-tuned on the labels of
the first half of the training genes; now every training gene is labelled. Either fine-tune
again from ImageNet on all labels (fresh), or continue the first network with them
(continued). Both runs see the same images, labels, validation genes and settings; the first
network never saw a validation gene. Prints the validation mean AUC after every epoch of both
(the trainer's own gene-grouped validation split, :func:`core.finetune.data.make_split`).

    python benchmarks/bench_finetune_continue.py                # EfficientNet-Lite0, CPU
    python benchmarks/bench_finetune_continue.py --n 200 --epochs 8 --seed 1   # docs' figures
    python benchmarks/bench_finetune_continue.py --n 160 --epochs 6 --device cuda
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=120, help="images")
    ap.add_argument("--size", default="96x192", help="rendered image HxW")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default="imagenet")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.data.vocabulary import default_vocabulary
    from napari_ish_annotator.core.finetune import FinetuneConfig, finetune
    from napari_ish_annotator.core.finetune.data import make_split
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    h, w = (int(x) for x in args.size.split("x"))
    vocabulary = default_vocabulary("13-16")
    config = FinetuneConfig(backbone=args.backbone, weights=args.weights,
                            input_size=args.input_size, epochs=args.epochs, batch_size=16,
                            frozen="auto", augment=False, val_fraction=0.25, patience=99,
                            device=args.device, seed=args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = read_manifest(generate_dataset(Path(tmp) / "d", args.n, "13-16", seed=args.seed + 11,
                                              size=(h, w), vocabulary=vocabulary, min_positives=0,
                                              write_masks=False),
                             vocabulary=vocabulary, require_positives=False)
        Y = data.labels().astype(np.int8)
        groups = data.groups()
        split = make_split(groups, Y, config.val_fraction, config.seed)
        train_genes = np.unique(groups[split.train])
        early = np.isin(groups, train_genes[: len(train_genes) // 2])
        first = Path(tmp) / "first.pt"  # the early genes only, no validation genes among them
        finetune([p for p, e in zip(data.paths, early, strict=True) if e], Y[early], vocabulary,
                 replace(config, val_fraction=0.0), first, groups=groups[early])
        fresh = finetune(data.paths, Y, vocabulary, config, Path(tmp) / "fresh.pt",
                         groups=groups)
        cont = finetune(data.paths, Y, vocabulary, config, Path(tmp) / "continued.pt",
                        groups=groups, init=first)
    print(f"machine: {platform.processor() or platform.machine()}, 2 shared cores, "
          f"{args.device}; {time.perf_counter() - t0:.0f} s in all")
    print(f"data: {len(data)} synthetic embryos (FlyExpress 13-16 label sets), "
          f"{len(split.val)} validation images of {len(split.val_groups)} genes; first network "
          f"on {int(early[split.train].sum())} images of half the training genes; "
          f"{args.backbone} {args.weights}, input {args.input_size}, {args.epochs} epochs")
    print(f"\n{'epoch':>5}  {'fresh AUC':>9}  {'continued AUC':>13}")
    for f, c in zip(fresh.history, cont.history, strict=False):
        cell = [("n/a" if v is None else f"{v:.3f}") for v in (f.get("val_auc"), c.get("val_auc"))]
        print(f"{f['epoch']:>5}  {cell[0]:>9}  {cell[1]:>13}")
    best = max((h.get("val_auc") or 0.0) for h in fresh.history)
    reach = next((h["epoch"] for h in cont.history if (h.get("val_auc") or 0.0) >= best), None)
    print(f"\nfresh run's best {best:.3f}; continued reaches it at epoch "
          f"{reach if reach is not None else 'never (within these epochs)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
