"""Grad-CAM latency for one image on this machine (issue 3: "well under a second on CPU").

    python benchmarks/bench_gradcam.py [--backbone vgg16] [--weights random] [--repeats 5]

Trains a small model on synthetic embryos (the weights' values do not change the timing),
then times what the Explain panel does when the term or image changes: one forward pass to
the classifier's layer plus the closed-form map per term, upsampled to the image's size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_ish_annotator.core.data.images import read_rgb
from napari_ish_annotator.core.data.manifest import read_manifest
from napari_ish_annotator.core.explain.gradcam import (
    gradcam_all_terms,
    gradcam_linear,
    layer_activation,
)
from napari_ish_annotator.core.features.extractor import ExtractorConfig
from napari_ish_annotator.core.learn.logistic import EnsembleConfig
from napari_ish_annotator.core.synthetic.embryos import generate_dataset
from napari_ish_annotator.core.utils.progress import drive
from napari_ish_annotator.core.workflow import iter_train, make_extractor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--n-images", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_dataset(Path(tmp) / "data", n_images=args.n_images, seed=0,
                                    min_positives=3)
        dataset = read_manifest(manifest, require_positives=False)
        labels = dataset.labels()
        keep = [t for i, t in enumerate(dataset.vocabulary)
                if 0 < labels[:, i].sum() < len(dataset.samples)]
        from dataclasses import replace

        dataset = replace(dataset, vocabulary=keep)
        config = ExtractorConfig(backbone=args.backbone, weights=args.weights, device="cpu")
        bundle = drive(iter_train(dataset, config, EnsembleConfig(n_members=11)))
        fx = make_extractor(bundle.extractor)
        image = read_rgb(dataset.paths[0])
        gradcam_all_terms(bundle, fx, image, keep[:1])  # warm-up (lazy init, first call)

        def timed(fn) -> float:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return float(np.median(times))

        forward = timed(lambda: layer_activation(fx, image))
        act = layer_activation(fx, image)
        coef = bundle.classifier.terms[0].coef
        one_map = timed(lambda: gradcam_linear(act, coef, 0.9, center=bundle.classifier.center))
        one_term = timed(lambda: gradcam_all_terms(bundle, fx, image, keep[:1]))
        all_terms = timed(lambda: gradcam_all_terms(bundle, fx, image))

    h, w = image.shape[:2]
    print(f"# Grad-CAM on one {w}x{h} embryo, {args.backbone} ({args.weights}) layer "
          f"{bundle.extractor.layer}, {len(keep)} terms x 11 members, CPU, median of "
          f"{args.repeats}")
    print(f"forward pass to the layer      {forward * 1000:8.1f} ms")
    print(f"closed-form map, one term      {one_map * 1000:8.1f} ms")
    print(f"one term, end to end           {one_term * 1000:8.1f} ms")
    print(f"all {len(keep):2d} terms, end to end       {all_terms * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
