"""``ish-annotator finetune`` and ``ish-annotator evaluate --compare CKPT`` (issue 4).

Kept out of ``cli.py`` so the fine-tuning options live with their owner; ``cli.py`` only calls
:func:`register` through its ``EXTRA_COMMANDS`` hook.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from .core.errors import InputError

EXIT_OK = 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune trunk + multi-task head on a manifest and write the checkpoint."""
    from .cli import _run, _say
    from .core.finetune import FinetuneConfig, iter_finetune_dataset
    from .core.manifest import parse_vocabulary, read_manifest

    vocabulary = parse_vocabulary(args.terms) if args.terms else None
    dataset = read_manifest(args.manifest, vocabulary=vocabulary)
    pos_weight = args.pos_weight
    if pos_weight not in ("none", "balanced"):
        try:
            pos_weight = [float(v) for v in pos_weight.split(",")]
        except ValueError:
            raise InputError(f"--pos-weight {args.pos_weight!r}: use none, balanced or one "
                             "comma-separated number per term") from None
    config = FinetuneConfig(
        backbone=args.backbone, weights=args.weights, input_size=args.input_size,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        backbone_lr_scale=args.backbone_lr_scale, hidden=args.hidden, dropout=args.dropout,
        pool=args.pool, frozen=args.frozen, pos_weight=pos_weight,
        val_fraction=args.val_fraction, patience=args.patience, augment=not args.no_augment,
        flip=args.flip, cache_frozen=args.cache_frozen, device=args.device,
        precision=args.precision, seed=args.seed,
    )
    result = _run(iter_finetune_dataset(dataset, config, args.out, resume=args.resume), args,
                  "finetune")
    last = result.history[-1] if result.history else {}
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), last)
    auc = best.get("val_auc")
    _say(args, f"fine-tuned {config.backbone} on {result.metrics['n_train']} images "
               f"({result.metrics['n_val']} for validation), {len(result.history)} epochs"
               f"{' (stopped early)' if result.stopped_early else ''}; best epoch "
               f"{result.best_epoch}" + (f", validation mean AUC {auc:.3f}" if auc is not None
                                         else "") + f"; wrote {args.out}")
    _say(args, f"use it as: ish-annotator train MANIFEST --weights {args.out} --input-size "
               f"{config.input_size} --out MODEL_DIR")
    return EXIT_OK


def format_compare_table(results: dict[str, dict]) -> str:
    """The paper's Table 2 layout: one row per (method, layer), mean metrics over terms."""
    from .core.evaluate import METRICS

    header = f"{'method':<8}  {'layer':>5}  " + "  ".join(f"{m:>11}" for m in METRICS)
    lines = ["Mean over terms", header, "-" * len(header)]
    for method, res in results.items():
        for layer, summary in res.get("layers", {}).items():
            mean = summary.get("mean", {})
            cells = []
            for m in METRICS:
                v = mean.get(m)
                cells.append(f"{'n/a' if v is None or v != v else f'{v:.4f}':>11}")
            lines.append(f"{method:<8}  {layer:>5}  " + "  ".join(cells))
    return "\n".join(lines)


def _make_evaluate_with_compare(original: Callable[[argparse.Namespace], int]):
    def cmd_evaluate(args: argparse.Namespace) -> int:
        if not getattr(args, "compare", None):
            return original(args)
        return cmd_evaluate_compare(args)

    return cmd_evaluate


def cmd_evaluate_compare(args: argparse.Namespace) -> int:
    """TL (``--weights``) and TL+MTL (the checkpoint) on the same folds / the same test set."""
    from dataclasses import replace

    from .cli import _cache_dir, _ensemble_config, _extractor_config, _parse_layers, _run, _say
    from .core.finetune import load_checkpoint
    from .core.manifest import parse_vocabulary, read_manifest
    from .core.pipeline import iter_evaluate

    ckpt_path = Path(args.compare)
    ckpt = load_checkpoint(ckpt_path)  # fail fast on a bad file, before any extraction
    if ckpt["backbone"] != args.backbone:
        raise InputError(f"the checkpoint is for backbone {ckpt['backbone']!r}; pass --backbone "
                         f"{ckpt['backbone']}", path=ckpt_path)
    vocabulary = parse_vocabulary(args.terms) if args.terms else None
    dataset = read_manifest(args.manifest, vocabulary=vocabulary)
    test = None
    if args.test:
        test = read_manifest(args.test, vocabulary=dataset.vocabulary, require_positives=False)
    elif ckpt.get("training_fingerprint") == dataset.fingerprint():
        _say(args, "note: the checkpoint was fine-tuned on these very images, so cross-validated "
                   "TL+MTL figures are optimistic; fine-tune on a training manifest and pass the "
                   "held-out images with --test for a fair comparison")
    layers = _parse_layers(args.layers, args.backbone)
    tl_config = _extractor_config(args)
    mtl_config = replace(tl_config, weights=str(ckpt_path),
                         input_size=int(ckpt.get("input_size", tl_config.input_size)))
    if mtl_config.input_size != tl_config.input_size:
        _say(args, f"note: TL+MTL uses the checkpoint's input size {mtl_config.input_size}")
    ens = _ensemble_config(args)
    results = {}
    for name, config in (("TL", tl_config), ("TL+MTL", mtl_config)):
        results[name] = _run(iter_evaluate(dataset, config, ens, layers=layers, folds=args.folds,
                                           test_dataset=test, cache_dir=_cache_dir(args)),
                             args, f"evaluate {name}")
    print(format_compare_table(results))
    if args.json:
        from .core.io import write_json_atomic

        payload = dict(results["TL"])  # CONTRACTS layout for the baseline ...
        payload["tl_mtl"] = {"checkpoint": str(ckpt_path), **results["TL+MTL"]}  # ... plus TL+MTL
        write_json_atomic(args.json, payload)
        _say(args, f"wrote metrics to {args.json}")
    return EXIT_OK


def _make_gradcam_with_checkpoint(original: Callable[[argparse.Namespace], int]):
    def cmd_gradcam(args: argparse.Namespace) -> int:
        if not Path(args.model_dir).is_file():
            return original(args)  # a model bundle folder: the logistic head's Grad-CAM
        return cmd_gradcam_mtl(args)

    return cmd_gradcam


def cmd_gradcam_mtl(args: argparse.Namespace) -> int:
    """Grad-CAM through a fine-tuned checkpoint's own term output (MODEL_DIR is a .pt file)."""
    import numpy as np

    from .cli import _say
    from .core.finetune import gradcam_mtl, load_finetuned
    from .core.gradcam import heat_to_rgb, overlay
    from .core.images import read_rgb
    from .core.io import write_npy_atomic, write_png_atomic

    model = load_finetuned(args.model_dir, device="cpu" if args.device == "auto" else args.device)
    if args.term not in model.vocabulary:
        raise InputError(f"term {args.term!r} is not in the checkpoint's vocabulary: "
                         f"{'; '.join(model.vocabulary)}", path=args.model_dir)
    image = read_rgb(args.image)
    heat = gradcam_mtl(model, image, [args.term])[0]
    write_png_atomic(args.out, overlay(image, heat) if args.overlay else heat_to_rgb(heat))
    if args.npy:
        write_npy_atomic(args.npy, heat.astype(np.float32))
    _say(args, f"wrote Grad-CAM of {args.term!r} through the fine-tuned head "
               f"({heat.shape[0]}x{heat.shape[1]}) to {args.out}")
    return EXIT_OK


def register(sub, add_common, add_backbone, add_classifier) -> None:
    """Add ``finetune`` and ``evaluate --compare`` to the ``ish-annotator`` parser."""
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
    p.add_argument("--backbone", default="vgg16")
    p.add_argument("--weights", default="imagenet",
                   help="starting weights: imagenet | imagenet:V1 | random | FILE")
    p.add_argument("--frozen", default="auto",
                   help="freeze the trunk up to and including this layer (VGG16 paper numbering: "
                        "17 = pool3), none, all, or auto = the backbone's default (VGG16: 17)")
    p.add_argument("--input-size", type=int, default=224)
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
    p.add_argument("--terms", "--vocab", dest="terms", default=None,
                   help="vocabulary: 'term a;term b' or a text file with one term per line")
    add_common(p)
    p.set_defaults(handler=cmd_finetune)

    evaluate = sub.choices.get("evaluate")
    if evaluate is not None:
        evaluate.add_argument("--compare", metavar="CKPT", default=None,
                              help="also evaluate TL+MTL with this fine-tuned checkpoint on the "
                                   "same folds and print both")
        evaluate.set_defaults(handler=_make_evaluate_with_compare(evaluate.get_default("handler")))
    gradcam = sub.choices.get("gradcam")
    if gradcam is not None:  # MODEL_DIR may also be a fine-tuning checkpoint file
        gradcam.set_defaults(handler=_make_gradcam_with_checkpoint(gradcam.get_default("handler")))

