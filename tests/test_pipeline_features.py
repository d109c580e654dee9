"""Pipeline features are held as float16 (half the memory), losslessly, and never become inf."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_ish_annotator.core import workflow as pipeline
from napari_ish_annotator.core.backbones.weights import load_backbone
from napari_ish_annotator.core.data.manifest import read_manifest
from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
from napari_ish_annotator.core.learn.logistic import EnsembleConfig
from napari_ish_annotator.core.utils.errors import InputError
from napari_ish_annotator.core.utils.progress import drive

CONFIG = ExtractorConfig(weights="random", input_size=64, device="cpu", precision="fp32",
                         batch_size=4)


@pytest.fixture(scope="module")
def loaded():
    return load_backbone("vgg16", "random", seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> object:
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    root = tmp_path_factory.mktemp("pipe")
    manifest = generate_dataset(root / "data", n_images=16, stage="13-16", seed=5,
                                size=(64, 128), min_positives=4, write_masks=False)
    return read_manifest(manifest)


def test_features_are_float16_and_equal_to_the_float32_extraction(dataset, loaded):
    fx = FeatureExtractor(CONFIG, loaded=loaded)
    X16 = drive(pipeline.iter_features(fx, dataset.paths))
    X32 = fx.extract(dataset.paths)
    assert X16.dtype == np.float16 and X32.dtype == np.float32
    assert X16.shape == X32.shape == (len(dataset.paths), fx.dim)
    np.testing.assert_array_equal(X16.astype(np.float32), X32)  # exact: rounded through f16


def test_train_and_predict_give_the_same_results_as_with_float32(dataset, loaded):
    ens = EnsembleConfig(n_members=3, seed=1)
    bundle = drive(pipeline.iter_train(dataset, CONFIG, ens, loaded=loaded))
    X32 = FeatureExtractor(CONFIG, loaded=loaded).extract(dataset.paths)
    Y = dataset.labels().astype(np.int8)
    before = drive(pipeline.iter_fit_bundle(X32, Y, dataset.vocabulary, CONFIG, ens,
                                            groups=dataset.groups()))
    P = drive(pipeline.iter_predict(bundle, dataset.paths, loaded=loaded))
    np.testing.assert_array_equal(P, before.predict_proba(X32))  # calibrated, as reported
    np.testing.assert_array_equal(bundle.classifier.predict(X32), before.classifier.predict(X32))


def _huge_for_the_black_image(monkeypatch):
    """The activation of an all-black image is scaled beyond the float16 range."""
    original = FeatureExtractor.activation

    def activation(self, batch, grad=False):
        batch = batch[None] if batch.ndim == 3 else batch
        y = original(self, batch, grad).clone()
        black = (batch.reshape(len(batch), -1).amax(dim=1) < -1.5)  # normalised black pixels
        y[black] = y[black] * 1e6 + 1e5
        return y

    monkeypatch.setattr(FeatureExtractor, "activation", activation)


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    images = [rng.integers(100, 255, (40, 60, 3), dtype=np.uint8) for _ in range(n)]
    images[5] = np.zeros((40, 60, 3), np.uint8)
    return images


def test_a_row_overflowing_float16_widens_the_matrix_to_float32(loaded, monkeypatch, tmp_path):
    images = _images(7)
    reference = FeatureExtractor(CONFIG, loaded=loaded).extract(images)
    _huge_for_the_black_image(monkeypatch)
    fx = FeatureExtractor(CONFIG, cache_dir=tmp_path / "cache", loaded=loaded)
    X = drive(pipeline.iter_features(fx, images))
    assert X.dtype == np.float32 and np.isfinite(X).all()
    assert float(np.abs(X[5]).max()) > 65504  # kept in float32, not inf
    np.testing.assert_array_equal(np.delete(X, 5, axis=0), np.delete(reference, 5, axis=0))
    # rows before the overflow (copied at widening) and after it are exact (checked above);
    # the big row is the float32 activation (up to batched-vs-single float noise)
    expected5 = fx.activation(fx.preprocess(images[5])).numpy().reshape(-1)
    np.testing.assert_allclose(X[5], expected5, rtol=1e-3)


def test_float16_memmap_out_refuses_an_overflowing_row(loaded, monkeypatch, tmp_path: Path):
    images = _images(7)
    _huge_for_the_black_image(monkeypatch)
    fx = FeatureExtractor(CONFIG, loaded=loaded)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16,
                                   shape=(len(images), fx.dim))
    with pytest.raises(InputError, match="float16"):
        fx.extract(images, out=mm)
