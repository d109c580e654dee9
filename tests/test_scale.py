"""Paper scale on one machine: large feature matrices are float16 memmaps, streamed in blocks."""

from __future__ import annotations

import shutil
from collections import namedtuple

import numpy as np
import pytest

from napari_ish_annotator.core import workflow as pipeline
from napari_ish_annotator.core.data.manifest import read_manifest
from napari_ish_annotator.core.features.extractor import ExtractorConfig
from napari_ish_annotator.core.learn.ensembles import gram_matrix
from napari_ish_annotator.core.learn.logistic import EnsembleConfig
from napari_ish_annotator.core.utils import files as ish_io
from napari_ish_annotator.core.utils.errors import InputError
from napari_ish_annotator.core.utils.progress import drive


def test_large_feature_matrices_are_unlinked_float16_memmaps(tmp_path, monkeypatch):
    assert not isinstance(pipeline.feature_matrix(10, 100, tmp_path), np.memmap)
    monkeypatch.setattr(pipeline, "MEMMAP_BYTES", 1000)
    X = pipeline.feature_matrix(10, 100, tmp_path)
    assert isinstance(X, np.memmap) and X.dtype == np.float16 and X.shape == (10, 100)
    X[:] = 1.5
    assert float(X.sum()) == 1500.0
    assert list(tmp_path.iterdir()) == []  # no file left behind, even if the run dies


def test_too_little_disk_space_is_one_clear_input_error(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**12, 10**6))
    monkeypatch.setattr(pipeline, "MEMMAP_BYTES", 0)
    with pytest.raises(InputError, match=r"need .* GiB .* free") as info:
        pipeline.feature_matrix(7564, 401408, tmp_path)
    assert info.value.path == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_memmap_blocks_give_the_in_memory_gram(tmp_path):
    """A memmap is read 256 rows at a time (its pages released after each): 600 rows, and
    a subset of 300, give the in-memory Gram matrix exactly."""
    rng = np.random.default_rng(0)
    A = rng.random((600, 5000)).astype(np.float16)
    X = ish_io.scratch_memmap(A.shape, np.float16, tmp_path)
    X[:] = A
    np.testing.assert_array_equal(gram_matrix(X), gram_matrix(A))
    rows = np.sort(rng.choice(600, 300, replace=False))
    np.testing.assert_array_equal(gram_matrix(X, rows), gram_matrix(A, rows))


def test_training_on_a_memmap_gives_the_same_bundle(tiny_dataset, tmp_path, monkeypatch):
    dataset = read_manifest(tiny_dataset)
    config = ExtractorConfig(weights="random", input_size=64, device="cpu")
    ensemble = EnsembleConfig(n_members=3)
    in_ram = drive(pipeline.iter_train(dataset, config, ensemble, cache_dir=tmp_path))
    monkeypatch.setattr(pipeline, "MEMMAP_BYTES", 0)
    seen = []
    original = pipeline.feature_matrix
    monkeypatch.setattr(pipeline, "feature_matrix",
                        lambda *a: seen.append(original(*a)) or seen[-1])
    mapped = drive(pipeline.iter_train(dataset, config, ensemble, cache_dir=tmp_path))
    assert isinstance(seen[0], np.memmap)
    for a, b in zip(in_ram.classifier.terms, mapped.classifier.terms, strict=True):
        np.testing.assert_array_equal(a.coef, b.coef)
        np.testing.assert_array_equal(a.intercept, b.intercept)


def test_features_with_skipped_images_are_float16_with_nan_rows(tiny_dataset, tmp_path):
    images = sorted((tiny_dataset.parent / "images").glob("*.png"))[:3]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image")
    fx = pipeline.make_extractor(ExtractorConfig(weights="random", input_size=64, device="cpu"))
    X = drive(pipeline.iter_features(fx, [images[0], bad, *images[1:]], on_error="skip"))
    assert X.dtype == np.float16 and X.shape == (4, fx.dim)
    assert np.isnan(X[1]).all() and np.isfinite(X[[0, 2, 3]]).all()
    assert [row for row, _ in fx.last_failed] == [1]
