"""The warm path: with every feature cached, ``train``/``predict`` never import torch.

The cache key (weights identity, device, precision, feature shape) is worked out as plain
data; these tests check that it agrees with what the loaded network says.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_ish_annotator.core import backbones as bb
from napari_ish_annotator.core.features import extractor
from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
from napari_ish_annotator.core.features.preprocess import resolve_precision, resolve_precision_type

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC, ISH_ANNOTATOR_DEBUG_IMPORTS="1")
    return subprocess.run([sys.executable, "-m", "napari_ish_annotator.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_second_train_and_predict_never_import_torch(tiny_dataset, tmp_path):
    common = [str(tiny_dataset), "--weights", "random", "--input-size", "64", "--ensemble", "3",
              "--cache", str(tmp_path / "cache"), "--quiet"]
    cold = _cli("train", *common, "--out", str(tmp_path / "m1"))
    assert cold.returncode == 0, cold.stderr
    assert "torch imported: yes" in cold.stderr  # the features had to be computed
    warm = _cli("train", *common, "--out", str(tmp_path / "m2"))
    assert warm.returncode == 0, warm.stderr
    assert "torch imported: no" in warm.stderr
    for name in ("model.json",):
        assert (tmp_path / "m2" / name).is_file()
    with np.load(next((tmp_path / "m1").glob("*.npz"))) as a, \
            np.load(next((tmp_path / "m2").glob("*.npz"))) as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    images = str(tiny_dataset.parent / "images")
    pred = _cli("predict", str(tmp_path / "m2"), images, "--out", str(tmp_path / "p.csv"),
                "--cache", str(tmp_path / "cache"), "--quiet")
    assert pred.returncode == 0, pred.stderr
    assert "torch imported: no" in pred.stderr


def test_torchvision_normalisation_table_matches_torchvision():
    from torchvision.models import get_weight

    for spec in bb.REGISTRY.values():
        if not spec.normalisation_from_weights:  # InceptionV3: its own (x - 0.5) / 0.5
            continue
        for enum in spec.torchvision_weights.values():
            t = get_weight(enum).transforms()
            mean, std = bb.TORCHVISION_NORMALISATION[enum]
            assert tuple(t.mean) == pytest.approx(mean) and tuple(t.std) == pytest.approx(std)
            assert f"torchvision:{get_weight(enum)}" == f"torchvision:{enum}"


@pytest.mark.parametrize("name", [n if n == "vgg16" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in bb.REGISTRY])
def test_feature_shape_arithmetic_matches_the_network(name):
    spec = bb.get_spec(name)
    if spec.packaged_weights is not None:
        pytest.importorskip("efficientnet_lite_pytorch")
    loaded = bb.LoadedBackbone(spec, bb.empty_trunk(spec.name), "x", spec.mean, spec.std)
    for layer in spec.layers:
        for size in (max(33, spec.min_input_size), 97, 225):  # InceptionV3 needs >= 75 px
            assert spec.feature_shape(layer, size) == loaded.output_shape(layer, size), \
                (layer, size)


def test_precision_without_torch_agrees_with_torch():
    import torch

    cpu = torch.device("cpu")
    assert resolve_precision_type("auto", "cpu") == resolve_precision("auto", cpu)
    assert resolve_precision_type("fp32", "cpu") == "fp32"
    assert resolve_precision_type("auto", None) is None
    try:
        expected = resolve_precision("bf16", cpu)
    except Exception as exc:  # noqa: BLE001 - the light rule must raise the same
        with pytest.raises(type(exc)):
            resolve_precision_type("bf16", "cpu")
    else:
        assert resolve_precision_type("bf16", "cpu") == expected
    assert bb.resolve_device_type("cpu") == "cpu"
    light = bb.resolve_device_type("auto")
    assert light is None or light == bb.resolve_device("auto").type


def networks_built(monkeypatch) -> list:
    """The backbones extractors load from now on (an extractor loads one on first use)."""
    built, real = [], extractor.load_backbone
    monkeypatch.setattr(extractor, "load_backbone",
                        lambda *a, **k: built.append(a) or real(*a, **k))
    return built


def test_lazy_extractor_has_the_loaded_signature_and_builds_no_network(tmp_path, monkeypatch):
    config = ExtractorConfig(weights="random:seed=4", input_size=97, device="cpu")
    built = networks_built(monkeypatch)
    lazy = FeatureExtractor(config, cache_dir=tmp_path)
    assert built == []  # nothing built yet
    eager = FeatureExtractor(config, cache_dir=tmp_path,
                             loaded=bb.load_backbone("vgg16", "random:seed=4"))
    assert lazy.signature() == eager.signature()
    assert lazy.cache.key == eager.cache.key


def test_weights_file_identity_is_remembered_by_its_hash(tmp_path, monkeypatch):
    import torch

    loaded = bb.load_backbone("vgg16", "random", seed=1)
    path = tmp_path / "w.pt"
    torch.save({"backbone_state_dict": loaded.module[:17].state_dict(), "backbone": "vgg16",
                "normalisation": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}, path)
    cache = tmp_path / "cache"
    assert bb.weights_identity("vgg16", str(path), memo_dir=cache) is None  # not known yet
    config = ExtractorConfig(weights=str(path), layer="17", input_size=64, device="cpu")
    first = FeatureExtractor(config, cache_dir=cache)  # has to read the file
    identity = bb.weights_identity("vgg16", str(path), memo_dir=cache)
    assert identity == first.loaded.identity
    assert identity.mean == (0.5, 0.5, 0.5) and identity.available_upto == 16
    built = networks_built(monkeypatch)
    second = FeatureExtractor(config, cache_dir=cache)
    assert built == [] and second.signature() == first.signature()
    from napari_ish_annotator.core.utils.errors import InputError

    with pytest.raises(InputError, match="only cover"):  # a partial file, known from the memo
        FeatureExtractor(ExtractorConfig(weights=str(path), layer="21", device="cpu"),
                         cache_dir=cache)


def test_weights_identity_matches_loading_for_a_backbone_with_its_own_normalisation(tmp_path):
    """InceptionV3 ignores the enum's advertised normalisation; the torch-free identity must
    give the same mean/std as loading would (else warm and cold runs key the cache apart)."""
    spec = bb.get_spec("inception_v3")
    identity = bb.weights_identity("inception_v3", "imagenet")
    assert (identity.mean, identity.std) == (spec.mean, spec.std)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_grouped_folds_match_scikit_learn_without_importing_it(seed):
    """The numpy gene-grouped k-fold assigns folds exactly as GroupKFold(shuffle=True) does
    (so CV AUCs and calibration stay as they were), and importing it loads no scikit-learn."""
    from sklearn.model_selection import GroupKFold

    from napari_ish_annotator.core.learn.splits import grouped_folds

    rng = np.random.default_rng(seed)
    for groups in (rng.integers(0, 23, 167), np.array([f"gene{g}" for g in
                                                       rng.integers(0, 9, 60)])):
        ours = grouped_folds(groups, 5, seed=seed)
        theirs = GroupKFold(n_splits=5, shuffle=True, random_state=seed).split(
            np.zeros((len(groups), 1)), groups=groups)
        for (train, test), (train_s, test_s) in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(test, test_s)
            np.testing.assert_array_equal(train, train_s)
            assert not set(groups[train]) & set(groups[test])
    code = ("import sys\nfrom napari_ish_annotator.core.learn.splits import grouped_folds\n"
            "grouped_folds(['a', 'b', 'c', 'a'], 3)\n"
            "assert 'sklearn.model_selection' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=SRC), timeout=120)
    assert done.returncode == 0, done.stderr
