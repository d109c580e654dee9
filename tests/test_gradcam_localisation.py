"""Grad-CAM points at the right anatomy: on synthetic embryos with ground-truth masks, the
map of a present term peaks inside that term's stained region far more often than chance."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from napari_ish_annotator.core.data.images import read_rgb
from napari_ish_annotator.core.data.manifest import read_manifest
from napari_ish_annotator.core.explain.gradcam import gradcam_all_terms
from napari_ish_annotator.core.features.extractor import ExtractorConfig
from napari_ish_annotator.core.learn.logistic import EnsembleConfig
from napari_ish_annotator.core.synthetic.embryos import generate_dataset, slugify
from napari_ish_annotator.core.utils.progress import drive
from napari_ish_annotator.core.workflow import iter_train, make_extractor


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("loc")
    manifest = generate_dataset(root / "data", n_images=56, stage="13-16", seed=11,
                                size=(128, 256), min_positives=6)
    dataset = read_manifest(manifest, require_positives=False)
    genes = dataset.genes
    # cut at a gene boundary: images of one gene share labels and must not straddle the split
    n_train = next(i for i in range(40, len(genes)) if genes[i] != genes[i - 1])
    train = replace(dataset, samples=dataset.samples[:n_train])
    labels = train.labels()
    train = replace(train, vocabulary=[t for i, t in enumerate(train.vocabulary)
                                       if 0 < labels[:, i].sum() < n_train])
    config = ExtractorConfig(weights="random", input_size=128, device="cpu", seed=0)
    bundle = drive(iter_train(train, config, EnsembleConfig(n_members=5, C=10.0),
                              cache_dir=root / "cache"))
    return bundle, dataset.samples[n_train:], root / "data"


def test_map_peaks_inside_the_terms_region_more_often_than_chance(trained):
    bundle, held_out, data = trained
    fx = make_extractor(bundle.extractor)
    hits, chance, n = 0, 0.0, 0
    for sample in held_out:
        image = read_rgb(sample.image)
        present = [t for t in sample.terms if t in bundle.classifier.vocabulary]
        if not present:
            continue
        maps, _ = gradcam_all_terms(bundle, fx, image, present)
        for term, cam in zip(present, maps, strict=True):
            mask_path = data / "masks" / f"{sample.image.stem}__{slugify(term)}.png"
            mask = np.asarray(Image.open(mask_path)) > 0
            assert cam.shape == mask.shape == image.shape[:2]
            if cam.max() <= 0:
                n += 1
                chance += mask.mean()
                continue
            peak = np.unravel_index(np.argmax(cam), cam.shape)
            hits += bool(mask[peak])
            chance += mask.mean()
            n += 1
    assert n >= 10
    hit_rate, chance_rate = hits / n, chance / n
    assert hit_rate > max(2 * chance_rate, chance_rate + 0.2), (hit_rate, chance_rate, n)


def test_absent_terms_stay_darker_than_present_ones(trained):
    """Maps are scaled by probability, so terms the model calls absent are dimmer on average."""
    bundle, held_out, _ = trained
    fx = make_extractor(bundle.extractor)
    vocabulary = bundle.classifier.vocabulary
    peaks_present, peaks_absent = [], []
    for sample in held_out:
        maps, proba = gradcam_all_terms(bundle, fx, read_rgb(sample.image))
        for term, cam in zip(vocabulary, maps, strict=True):
            (peaks_present if term in sample.terms else peaks_absent).append(cam.max())
    assert np.mean(peaks_present) > np.mean(peaks_absent)
