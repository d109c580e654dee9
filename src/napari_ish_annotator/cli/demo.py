"""``ish-annotator demo``: the whole tool on synthetic embryos, in napari or headless.

The headless run lives here (it is command-line work: options, messages, files in OUT);
choosing a network and opening the window live in ``napari_ish_annotator.demo``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..core.data.images import read_rgb
from ..core.data.manifest import read_manifest
from ..core.explain.gradcam import gradcam_all_terms, overlay
from ..core.learn.bundle import save_bundle
from ..core.learn.evaluation import score_predictions
from ..core.learn.metrics import trainable_terms
from ..core.learn.splits import held_out_genes
from ..core.learn.table import format_table
from ..core.synthetic.embryos import generate_dataset
from ..core.utils.errors import InputError
from ..core.utils.files import write_json_atomic, write_png_atomic, write_text_atomic
from ..core.workflow import (
    iter_features,
    iter_train,
    make_extractor,
    predict_rows,
    write_predictions,
)
from ..demo import (
    DEMO_IMAGE_SIZE,
    DEMO_STAGE,
    MIN_DEMO_IMAGES,
    resolve_demo_model,
    run_gui_demo,
    slug,
)
from . import _common as c


def cmd_demo(args: argparse.Namespace) -> int:
    if args.headless:
        return run_headless_demo(args)

    return run_gui_demo(args)


def _held_out_genes(dataset, test_fraction: float, seed: int):
    """The dataset as (train, test) datasets of whole genes (:func:`.splits.held_out_genes`:
    images of one gene share labels, so splitting them would leak)."""
    from dataclasses import replace

    train, test = held_out_genes(dataset.groups(), test_fraction, seed=seed)
    return (replace(dataset, samples=[dataset.samples[i] for i in train]),
            replace(dataset, samples=[dataset.samples[i] for i in test]))


def run_headless_demo(args: argparse.Namespace) -> int:
    """Generate embryos, train, predict, evaluate and write Grad-CAM overlays into OUT."""
    from dataclasses import replace

    if args.n_images < MIN_DEMO_IMAGES:
        raise InputError(f"--n-images {args.n_images} is too few to train and evaluate on "
                         f"held-out genes; use at least {MIN_DEMO_IMAGES} (default 80)")
    out = Path(args.headless)
    out.mkdir(parents=True, exist_ok=True)
    args.backbone, weights, note = resolve_demo_model(args.backbone, args.weights)
    if note:
        c.say(args, f"note: {note}")
    c.say(args, f"1/5 generating {args.n_images} synthetic embryos (stage {DEMO_STAGE}) in {out / 'data'}")
    manifest_path = generate_dataset(out / "data", n_images=args.n_images, stage=DEMO_STAGE,
                                     seed=args.seed, size=DEMO_IMAGE_SIZE)
    dataset = read_manifest(manifest_path, require_positives=False)
    train, test = _held_out_genes(dataset, test_fraction=0.3, seed=args.seed)
    keep = trainable_terms(train.labels())
    vocabulary = [dataset.vocabulary[i] for i in keep]
    train, test = replace(train, vocabulary=vocabulary), replace(test, vocabulary=vocabulary)

    args.weights = weights
    extractor = c.extractor_config(args)
    c.say(args, f"2/5 training on {len(train.samples)} images ({args.backbone}, weights {weights})")
    bundle = c.run(iter_train(train, extractor, c.ensemble_config(args), cache_dir=out / "cache"),
                  args, "train")
    save_bundle(out / "model", bundle)

    c.say(args, f"3/5 predicting {len(test.samples)} held-out images")
    fx = make_extractor(bundle.extractor, out / "cache")
    X_test = c.run(iter_features(fx, test.paths), args, "predict")
    probabilities, votes = predict_rows(bundle, X_test)
    write_predictions(out / "predictions.csv", test.paths, vocabulary, probabilities)

    c.say(args, "4/5 evaluating on the held-out genes")
    layer = str(bundle.extractor.layer)
    evaluation = score_predictions(test.labels(), votes, probabilities, vocabulary)
    metrics = {"layers": {layer: evaluation.summary}}
    write_json_atomic(out / "metrics.json", metrics)
    table = format_table(metrics)

    c.say(args, "5/5 writing Grad-CAM overlays")
    gradcam_dir = out / "gradcam"
    written = []
    for path, labels in list(zip(test.paths, test.labels(), strict=True))[:6]:
        image = read_rgb(path)
        maps, proba = gradcam_all_terms(bundle, fx, image)
        order = np.argsort(-proba)[:2]
        for index in order:
            target = gradcam_dir / f"{Path(path).stem}__{slug(vocabulary[index])}.png"
            write_png_atomic(target, overlay(image, maps[index]))
            written.append((Path(path).name, vocabulary[index], float(proba[index]),
                            bool(labels[index]), target.name))

    lines = ["# napari-ish-annotator headless demo", "",
             f"- backbone: {args.backbone}, weights: {weights}, layer {layer}",
             f"- training images: {len(train.samples)}, held-out images: {len(test.samples)} "
             "(split by gene)", f"- vocabulary ({len(vocabulary)} terms): {'; '.join(vocabulary)}",
             "", "## Held-out metrics", "", "```", table, "```", "", "## Grad-CAM overlays", "",
             "| image | term | probability | labelled present | file |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c:.2f} | {'yes' if d else 'no'} | gradcam/{e} |"
              for a, b, c, d, e in written]
    if note:
        lines += ["", f"Note: {note}"]
    write_text_atomic(out / "summary.md", "\n".join(lines) + "\n")
    print(table)
    c.say(args, f"done: model/, predictions.csv, metrics.json, gradcam/*.png and summary.md in {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="open napari with sample embryos, or run the pipeline headless")
    p.add_argument("--headless", metavar="OUT", default=None,
                   help="no window: write predictions, metrics and Grad-CAM overlays into OUT")
    p.add_argument("--n-images", type=int, default=80, help="synthetic embryos to generate")
    c.add_backbone(p, default_weights="auto", default_backbone="auto")
    c.add_classifier(p)
    c.add_layer(p)
    c.add_common(p)
    p.set_defaults(handler=cmd_demo, outputs=[("headless", True)], uses_own_cache=True)
