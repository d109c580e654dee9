"""TL vs TL+MTL on held-out synthetic embryos, and time per fine-tuning epoch.

Generates a synthetic stage 13-16 dataset, splits it by gene into a training and a held-out
test manifest, fine-tunes the backbone + multi-task head on the training part, then prints

* seconds per epoch of fine-tuning (cached frozen trunk without augmentation, and, with
  ``--augmented-epoch``, one epoch with augmentation where the frozen part runs every batch),
* mean held-out AUC / accuracy / sensitivity / specificity of the per-term logistic ensembles
  on layer-21 features of the pretrained (TL) and of the fine-tuned (TL+MTL) trunk, the same
  training and test images for both,
* the mean held-out AUC of the multi-task head's own sigmoid outputs.

Runs on CPU here and on a GPU unchanged (``--device cuda``; mixed precision is automatic).

    python benchmarks/bench_finetune.py                          # small CPU run (a few minutes)
    python benchmarks/bench_finetune.py --n-images 400 --input-size 224 --epochs 10 --device cuda

Without ImageNet weights in torch hub's cache the script falls back to ``--weights random``
(say so in the output): the figures then show the machinery and timings, not the paper's gain.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _split_manifests(manifest: Path, test_fraction: float, seed: int) -> tuple[Path, Path]:
    from sklearn.model_selection import GroupShuffleSplit

    from napari_ish_annotator.core.data.manifest import read_manifest, write_manifest

    ds = read_manifest(manifest)
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
    train, test = next(splitter.split(np.zeros(len(ds.samples)), groups=ds.groups()))
    out = []
    for name, rows in (("train", train), ("test", test)):
        path = manifest.with_name(f"{name}.csv")
        write_manifest(path, [ds.samples[i] for i in sorted(rows)])
        out.append(path)
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=80)
    parser.add_argument("--image-size", type=int, nargs=2, default=(160, 320), metavar=("H", "W"))
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--frozen", default="17")
    parser.add_argument("--weights", default=None, help="default: imagenet if cached, else random")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ensemble", type=int, default=11)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--augmented-epoch", action="store_true",
                        help="also time one epoch with augmentation (no frozen-trunk cache)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args(argv)

    from napari_ish_annotator.core.backbones.devices import resolve_device
    from napari_ish_annotator.core.backbones.weights import imagenet_weights_available
    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.features.extractor import ExtractorConfig
    from napari_ish_annotator.core.finetune import (
        FinetuneConfig,
        finetune,
        load_finetuned,
    )
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.learn.metrics import mean_auc
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.core.workflow import iter_evaluate

    weights = args.weights or ("imagenet" if imagenet_weights_available() else "random")
    device = resolve_device(args.device)
    print(f"device {device}, start weights {weights!r}"
          + ("  (no ImageNet weights cached: machinery and timings only)" if weights == "random"
             else ""))

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    manifest = generate_dataset(work / "data", args.n_images, seed=args.seed,
                                size=tuple(args.image_size), write_masks=False)
    train_csv, test_csv = _split_manifests(manifest, args.test_fraction, args.seed)
    train, test = read_manifest(train_csv), None
    test = read_manifest(test_csv, vocabulary=train.vocabulary, require_positives=False)
    print(f"synthetic data: {len(train.samples)} training / {len(test.samples)} held-out images, "
          f"{len(train.vocabulary)} terms ({time.perf_counter() - t:.1f} s)")

    config = FinetuneConfig(weights=weights, input_size=args.input_size, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, frozen=args.frozen,
                            augment=False, cache_frozen="on", device=args.device,
                            seed=args.seed, val_fraction=0.2)
    ckpt = work / "finetuned.pt"
    t = time.perf_counter()
    result = finetune(train.paths, train.labels().astype(np.int8), train.vocabulary, config, ckpt,
                      groups=train.groups(), fingerprint=train.fingerprint())
    total = time.perf_counter() - t
    secs = [h["seconds"] for h in result.history]
    print(f"fine-tuning: {len(secs)} epochs in {total:.1f} s total (incl. loading and caching); "
          f"{np.mean(secs):.2f} s per epoch with the frozen trunk (features[:{args.frozen}]) cached")
    for h in result.history:
        auc = "n/a" if h["val_auc"] is None else f"{h['val_auc']:.3f}"
        print(f"  epoch {h['epoch']}: train loss {h['train_loss']:.4f}, val AUC {auc}, "
              f"{h['seconds']:.2f} s")

    if args.augmented_epoch:
        aug = FinetuneConfig(**{**config.to_dict(), "augment": True, "cache_frozen": "off",
                                "epochs": 1})
        res_aug = finetune(train.paths, train.labels().astype(np.int8), train.vocabulary, aug,
                           work / "augmented.pt", groups=train.groups())
        print(f"one augmented epoch (frozen trunk recomputed every batch): "
              f"{res_aug.history[0]['seconds']:.2f} s")

    ens = EnsembleConfig(n_members=args.ensemble, seed=args.seed)
    rows = {}
    for name, w in (("TL", weights), ("TL+MTL", str(ckpt))):
        ext = ExtractorConfig(weights=w, layer="21", input_size=args.input_size,
                              device=args.device, seed=args.seed)
        t = time.perf_counter()
        res = drive(iter_evaluate(train, ext, ens, layers=["21"], test_dataset=test,
                                  cache_dir=work / "cache"))
        rows[name] = (res["layers"]["21"]["mean"], time.perf_counter() - t)

    model = load_finetuned(ckpt, device=args.device)
    head_auc = mean_auc(test.labels().astype(np.int8), model.predict_proba(test.paths))

    print("\nHeld-out test images, layer 21, mean over terms")
    print(f"{'method':<8} {'accuracy':>9} {'sensitivity':>12} {'specificity':>12} {'auc':>7}  seconds")
    for name, (mean, secs_eval) in rows.items():
        print(f"{name:<8} {mean['accuracy']:>9.4f} {mean['sensitivity']:>12.4f} "
              f"{mean['specificity']:>12.4f} {mean['auc']:>7.4f}  {secs_eval:7.1f}")
    print(f"MTL head (sigmoid outputs) held-out mean AUC: {head_auc:.4f}")
    if args.keep is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
