"""``ish-annotator finetune``: multi-task fine-tuning of the backbone (TL+MTL)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.data.manifest import read_manifest
from ..core.finetune import FinetuneConfig, iter_finetune_dataset, iter_finetune_ensemble_dataset
from ..core.utils.errors import InputError
from . import _common as c


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune trunk + multi-task head on a manifest and write the checkpoint."""
    dataset = read_manifest(args.manifest, vocabulary=c.vocabulary(args))
    pos_weight = args.pos_weight
    if pos_weight not in ("none", "balanced"):
        try:
            pos_weight = [float(v) for v in pos_weight.split(",")]
        except ValueError:
            raise InputError(f"--pos-weight {args.pos_weight!r}: use none, balanced or one "
                             "comma-separated number per term") from None
    config = FinetuneConfig(
        backbone=args.backbone, weights=args.weights, input_size=c.input_size(args),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        backbone_lr_scale=args.backbone_lr_scale, hidden=args.hidden, dropout=args.dropout,
        pool=args.pool, frozen=args.frozen, pos_weight=pos_weight,
        val_fraction=args.val_fraction, patience=args.patience, augment=not args.no_augment,
        flip=args.flip, cache_frozen=args.cache_frozen, device=args.device,
        precision=args.precision, seed=args.seed,
    )
    if args.init is not None and (args.resume or (args.ensemble or 1) != 1):
        raise InputError("--init starts a new run from a checkpoint; drop --resume and --ensemble")
    if args.ensemble is not None and args.ensemble != 1:
        return _ensemble(args, dataset, config)
    result = c.run(iter_finetune_dataset(dataset, config, args.out, resume=args.resume,
                                         init=args.init), args, "finetune")
    for note in result.notes:
        c.say(args, note)
    last = result.history[-1] if result.history else {}
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), last)
    auc = best.get("val_auc")
    c.say(args, f"fine-tuned {config.backbone} on {result.metrics['n_train']} images "
               f"({result.metrics['n_val']} for validation), {len(result.history)} epochs"
               f"{' (stopped early)' if result.stopped_early else ''}; best epoch "
               f"{result.best_epoch}" + (f", validation mean AUC {auc:.3f}" if auc is not None
                                         else "") + f"; wrote {args.out}")
    c.say(args, f"use it as: ish-annotator train MANIFEST --weights {args.out} --input-size "
               f"{config.input_size} --out MODEL_DIR")
    return c.EXIT_OK


def _ensemble(args: argparse.Namespace, dataset, config) -> int:
    """``--ensemble K``: K networks (seeds seed..seed+K-1, each its own validation genes)."""
    result = c.run(iter_finetune_ensemble_dataset(dataset, config, args.out, args.ensemble,
                                                  resume=args.resume), args, "finetune")
    scores = ", ".join("n/a" if s is None else f"{s:.3f}" for s in result.best_scores)
    c.say(args, f"fine-tuned an ensemble of {len(result.members)} {config.backbone} networks "
               f"(best validation scores {scores}); wrote {args.out}")
    c.say(args, f"--weights {args.out} uses member {result.representative + 1} (the best "
               f"validation score); e.g. ish-annotator train MANIFEST --weights {args.out} "
               f"--input-size {config.input_size} --out MODEL_DIR")
    return c.EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("finetune", help="multi-task fine-tuning of the backbone (TL+MTL)",
                       description="Fine-tune the pretrained trunk with a shared hidden layer and "
                                   "one sigmoid output per term; CKPT is usable as --weights CKPT "
                                   "in train/evaluate/predict.")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", required=True, type=Path, help="checkpoint file to write (.pt)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="head learning rate (Adam)")
    p.add_argument("--backbone-lr-scale", type=float, default=0.1,
                   help="trainable backbone layers learn at lr x this (default %(default)s)")
    p.add_argument("--backbone", default="vgg16",
                   help="vgg16, resnet50, inception_v3 or efficientnet_lite0 (docs/backbones.md)")
    p.add_argument("--weights", default="imagenet",
                   help="starting weights: imagenet | imagenet:V1 | random | FILE")
    p.add_argument("--frozen", default="auto",
                   help="freeze the trunk up to and including this layer (VGG16 paper numbering: "
                        "17 = pool3), none, all, or auto = the backbone's default (VGG16: 17)")
    p.add_argument("--input-size", type=int, default=None,
                   help="network input size (default: the backbone's, 224; 299 for inception_v3)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of genes held out for validation and early stopping")
    p.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs")
    p.add_argument("--hidden", type=int, default=512, help="shared hidden layer width")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--pool", type=int, default=3, help="pooling grid before the hidden layer")
    p.add_argument("--pos-weight", default="none",
                   help="none | balanced (n_neg/n_pos per term) | comma-separated per-term values")
    p.add_argument("--no-augment", action="store_true",
                   help="no rotation/scale/colour augmentation (lets CPU runs cache the frozen part)")
    p.add_argument("--flip", action="store_true",
                   help="also flip horizontally (off: BDGP images are oriented anterior-left)")
    p.add_argument("--cache-frozen", default="auto", choices=["auto", "on", "off"],
                   help="compute the frozen layers once (auto: on CPU without augmentation)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--resume", action="store_true",
                   help="continue the run stored in --out (same images, labels and settings)")
    p.add_argument("--init", type=Path, default=None, metavar="CKPT",
                   help="continue this fine-tuned checkpoint with the manifest's current labels "
                        "(old images stay in, new terms get new outputs, dropped terms are "
                        "noted); the new checkpoint records which one it continued")
    p.add_argument("--ensemble", type=int, default=None, metavar="K",
                   help="train K networks (seeds SEED..SEED+K-1, each with other validation "
                        "genes) into the one checkpoint --out; predictions average them and "
                        "report their spread, --weights uses the member with the best "
                        "validation score (docs/finetuning.md)")
    c.add_vocabulary(p)
    c.add_common(p)
    p.set_defaults(handler=cmd_finetune, outputs=[("out", False)])
