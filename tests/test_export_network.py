"""The exported network (core/export/network.py) computes what the package computes.

These tests need only torch: the network built from a bundle must give the bundle's own
probabilities (feature extraction + ensembles), rebuild from its architecture kwargs and state
dict, apply the calibration map, and a model that cannot be exported must fail up front.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_ish_annotator.core.data.images import read_rgb
from napari_ish_annotator.core.data.manifest import read_manifest
from napari_ish_annotator.core.export.model import load_exportable
from napari_ish_annotator.core.export.network import build_network
from napari_ish_annotator.core.features.extractor import ExtractorConfig
from napari_ish_annotator.core.learn.bundle import load_bundle, save_bundle
from napari_ish_annotator.core.learn.logistic import EnsembleConfig
from napari_ish_annotator.core.utils.errors import InputError
from napari_ish_annotator.core.utils.progress import drive
from napari_ish_annotator.core.workflow import iter_predict, iter_train


def _train(dataset: Path, out: Path, keep_aspect: bool = False) -> Path:
    data = read_manifest(dataset)
    config = ExtractorConfig(backbone="vgg16", weights="random", input_size=64,
                             keep_aspect=keep_aspect, precision="fp32", device="cpu")
    bundle = drive(iter_train(data, config, EnsembleConfig(n_members=3)))
    save_bundle(out, bundle)
    return out


@pytest.fixture(scope="module")
def vgg_bundles(tiny_dataset: Path, tmp_path_factory) -> dict[bool, Path]:
    root = tmp_path_factory.mktemp("export-net")
    return {k: _train(tiny_dataset, root / f"vgg-aspect{int(k)}", keep_aspect=k)
            for k in (False, True)}


def _with_calibration(source: Path, target: Path, a: np.ndarray, b: np.ndarray) -> Path:
    shutil.copytree(source, target)
    with np.load(target / "classifiers.npz") as npz:
        arrays = dict(npz)
    arrays.update(calibration_a=a, calibration_b=b)
    np.savez(target / "classifiers.npz", **arrays)
    return target


def _images(dataset: Path, n: int = 3) -> list[np.ndarray]:
    return [read_rgb(p) for p in read_manifest(dataset).paths[:n]]


def _run(network: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        return network(x)[0].numpy()


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_network_gives_the_bundles_probabilities(vgg_bundles, tiny_dataset, tmp_path,
                                                 keep_aspect):
    """Images are 128x256 (not square), so resize and, with keep_aspect, padding are used.

    Uncalibrated, the network matches the members' mean closely (the package rounds features
    through float16, the network does not); a fitted calibration (Platt: slopes well above 1)
    amplifies that rounding, so calibrated output is held to the export's 0.02 promise."""
    path = vgg_bundles[keep_aspect]
    n = len(load_bundle(path).classifier.vocabulary)
    raw_path = _with_calibration(path, tmp_path / "raw", np.ones(n), np.zeros(n))
    images = _images(tiny_dataset)
    for model_path, atol in ((raw_path, 2e-3), (path, 0.02)):
        expected = drive(iter_predict(load_bundle(model_path), images))
        got = np.stack([_run(load_exportable(model_path).network, im) for im in images])
        assert got.shape == expected.shape == (3, n)
        np.testing.assert_allclose(got, expected, atol=atol)
        assert np.ptp(got) > 0.05  # not a constant: the comparison can fail


def test_architecture_kwargs_and_state_dict_rebuild_the_network(vgg_bundles, tiny_dataset):
    model = load_exportable(vgg_bundles[True])
    rebuilt = build_network(**model.architecture)
    rebuilt.load_state_dict(model.network.state_dict(), strict=True)
    image = _images(tiny_dataset, 1)[0]
    np.testing.assert_allclose(_run(rebuilt.eval(), image), _run(model.network, image), atol=1e-6)


def test_calibration_is_core_calibrations_map(vgg_bundles, tiny_dataset, tmp_path):
    """The network carries the bundle's own calibration; any stored a, b is applied as
    ``core.calibration.apply`` applies it."""
    from napari_ish_annotator.core.learn.calibration import apply

    source = vgg_bundles[False]
    n = len(load_bundle(source).classifier.vocabulary)
    method = load_exportable(source).calibration["method"]
    assert method == load_bundle(source).calibration.method != "none"
    raw_model = _with_calibration(source, tmp_path / "raw", np.ones(n), np.zeros(n))
    a = np.linspace(0.5, 40.0, n)
    b = np.linspace(-1.0, 1.0, n)
    custom = _with_calibration(source, tmp_path / "custom", a, b)
    images = _images(tiny_dataset, 2)
    raw = np.stack([_run(load_exportable(raw_model).network, im) for im in images])
    got = np.stack([_run(load_exportable(custom).network, im) for im in images])
    np.testing.assert_allclose(got, apply(raw, a, b), atol=1e-5)
    assert not np.allclose(got, raw, atol=1e-3)


def test_a_bundle_whose_weights_file_is_gone_cannot_be_exported(vgg_bundles, tmp_path):
    weights = tmp_path / "trunk.pt"
    loaded = torch.nn.Sequential()  # any state dict file; it is deleted below
    torch.save(loaded.state_dict(), weights)
    bundle = load_bundle(vgg_bundles[False])
    from dataclasses import replace

    bundle.extractor = replace(bundle.extractor, weights=str(weights))
    save_bundle(tmp_path / "m", bundle)
    assert (tmp_path / "m" / "weights.pt").is_file()  # the bundle keeps its own copy ...
    weights.unlink()
    (tmp_path / "m" / "weights.pt").unlink()  # ... and now that is gone too
    with pytest.raises(InputError, match="cannot be exported.*weights file not found"):
        load_exportable(tmp_path / "m")
    with pytest.raises(InputError, match="not found"):
        load_exportable(tmp_path / "no-such-model")
