"""Model bundle: round trip, atomic replacement, version and shape checks, expectations."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from napari_ish_annotator.core.features.extractor import ExtractorConfig
from napari_ish_annotator.core.learn import bundle as bundle_mod
from napari_ish_annotator.core.learn.bundle import (
    FORMAT,
    ModelBundle,
    load_bundle,
    package_versions,
    save_bundle,
)
from napari_ish_annotator.core.learn.ensembles import EnsembleClassifier
from napari_ish_annotator.core.learn.logistic import EnsembleConfig
from napari_ish_annotator.core.utils.errors import InputError

VOCAB = ["ventral nerve cord", "brain", "foregut"]


def _bundle(seed=0, d=64, members=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(80, d)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0.3, X[:, 2] < -0.5], axis=1).astype(np.int8)
    Y[:5, 2] = -1
    clf = EnsembleClassifier(VOCAB, EnsembleConfig(n_members=members, C=2.0, seed=seed))
    clf.fit(X, Y)
    ext = ExtractorConfig(backbone="vgg16", weights="random", layer="21", input_size=96,
                          keep_aspect=True, device="cpu", seed=3)
    meta = {"weights_id": "random:seed=3",
            "training": {"fingerprint": "abc123", "n_images": 80}}
    return ModelBundle(extractor=ext, classifier=clf, meta=meta), X


def test_round_trip(tmp_path):
    b, X = _bundle()
    out = tmp_path / "model"
    save_bundle(out, b)
    assert sorted(p.name for p in out.iterdir()) == ["classifiers.npz", "model.json"]
    info = json.loads((out / "model.json").read_text())
    assert info["format"] == FORMAT and info["format_version"] == 2
    assert info["calibration"]["method"] == "none"  # this bundle was built without one
    assert info["backbone"] == "vgg16" and info["layer"] == "21"
    assert info["weights"] == "random" and info["weights_id"] == "random:seed=3"
    assert info["input_size"] == 96 and info["keep_aspect"] is True
    assert len(info["normalisation"]["mean"]) == 3 and len(info["normalisation"]["std"]) == 3
    assert info["vocabulary"] == VOCAB and info["n_features"] == 64
    assert info["ensemble"] == {"n_members": 3, "C": 2.0, "seed": 0, "normalize": True,
                                "center": True}
    assert info["training"]["fingerprint"] == "abc123" and info["training"]["n_images"] == 80
    assert info["training"]["term_counts"]["foregut"]["unknown"] == 5
    assert set(info["package_versions"]) == {"napari-ish-annotator", "torch", "torchvision",
                                             "numpy", "scikit-learn"}
    assert info["package_versions"]["numpy"] == np.__version__
    assert "T" in info["created"]
    with np.load(out / "classifiers.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(
            [f"coef__{i}" for i in range(3)] + [f"intercept__{i}" for i in range(3)]
            + ["center", "calibration_a", "calibration_b"])
        assert npz["coef__1"].dtype == np.float32 and npz["coef__1"].shape == (3, 64)
        np.testing.assert_array_equal(npz["center"], b.classifier.center)

    loaded = load_bundle(out, expect_backbone="vgg16", expect_layer="21",
                         expect_vocabulary=list(reversed(VOCAB)))
    np.testing.assert_array_equal(loaded.classifier.predict_proba(X), b.classifier.predict_proba(X))
    np.testing.assert_array_equal(loaded.classifier.predict(X), b.classifier.predict(X))
    ext = loaded.extractor
    assert (ext.backbone, ext.weights, ext.layer, ext.input_size, ext.keep_aspect, ext.seed) == \
        ("vgg16", "random", "21", 96, True, 3)
    assert ext.device == "auto"  # the training machine's device is not carried over
    assert loaded.classifier.terms[2].n_unknown == 5
    assert loaded.meta["training"]["fingerprint"] == "abc123"
    # a bundle whose centring row went missing is refused, not silently mis-predicted
    with np.load(out / "classifiers.npz", allow_pickle=False) as npz:
        kept = {k: npz[k] for k in npz.files if k != "center"}
    np.savez(out / "classifiers.npz", **kept)
    with pytest.raises(InputError, match="lacks the centring row"):
        load_bundle(out)


def test_versions_without_importing_torch():
    code = ("import sys; from napari_ish_annotator.core.learn.bundle import package_versions; "
            "v = package_versions(); assert v['numpy']; assert 'torch' not in sys.modules")
    assert os.system(f'{sys.executable} -c "{code}"') == 0
    assert package_versions()["scikit-learn"]


def test_replace_existing_only_when_complete(tmp_path, monkeypatch):
    b1, X = _bundle(seed=1)
    b2, _ = _bundle(seed=2)
    out = tmp_path / "model"
    save_bundle(out, b1)
    before = (out / "classifiers.npz").read_bytes()

    def broken_savez(fh, **arrays):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_mod.np, "savez", broken_savez)
    with pytest.raises(InputError, match="No space left"):
        save_bundle(out, b2)
    monkeypatch.undo()
    assert (out / "classifiers.npz").read_bytes() == before  # old bundle intact
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp folders left
    save_bundle(out, b2)
    loaded = load_bundle(out)
    np.testing.assert_array_equal(loaded.classifier.predict_proba(X),
                                  b2.classifier.predict_proba(X))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_interrupt_between_renames_keeps_the_previous_bundle(tmp_path, monkeypatch):
    b1, X = _bundle(seed=1)
    b2, _ = _bundle(seed=2)
    out = tmp_path / "model"
    save_bundle(out, b1)
    before = (out / "classifiers.npz").read_bytes()
    real_replace = os.replace

    def interrupted_replace(src, dst):
        if ".tmp-" in str(src):  # the new bundle moving into place: Ctrl-C arrives first
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(bundle_mod.os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        save_bundle(out, b2)
    monkeypatch.undo()
    assert (out / "classifiers.npz").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_refuses_to_overwrite_other_things(tmp_path):
    b, _ = _bundle()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="not a model folder; refusing"):
        save_bundle(other, b)
    assert (other / "holiday.jpg").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    save_bundle(empty, b)
    assert (empty / "model.json").exists()


def test_load_errors(tmp_path):
    b, _ = _bundle()
    out = tmp_path / "model"
    save_bundle(out, b)
    with pytest.raises(InputError, match="no model.json"):
        load_bundle(tmp_path)
    with pytest.raises(InputError, match="trained on 'vgg16' features but backbone 'resnet50'"):
        load_bundle(out, expect_backbone="resnet50")
    with pytest.raises(InputError, match="trained on layer 21 but layer 24"):
        load_bundle(out, expect_layer="24")
    with pytest.raises(InputError, match="not in the model: midgut; only in the model: foregut"):
        load_bundle(out, expect_vocabulary=["ventral nerve cord", "brain", "midgut"])

    info = json.loads((out / "model.json").read_text())
    newer = dict(info, format_version=3)
    (out / "model.json").write_text(json.dumps(newer))
    with pytest.raises(InputError, match="format version 3.*upgrade"):
        load_bundle(out)
    (out / "model.json").write_text(json.dumps(dict(info, format="something-else")))
    with pytest.raises(InputError, match="not an ish-annotator-model"):
        load_bundle(out)
    (out / "model.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read the model description"):
        load_bundle(out)
    # arrays that do not fit the declared feature size / ensemble size
    (out / "model.json").write_text(json.dumps(dict(info, n_features=65)))
    with pytest.raises(InputError, match=r"shape \(3, 64\), expected \(3, 65\)"):
        load_bundle(out)
    (out / "model.json").write_text(json.dumps(info))
    with np.load(out / "classifiers.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    del arrays["intercept__2"]
    np.savez(out / "classifiers.npz", **arrays)
    with pytest.raises(InputError, match="no arrays for term 2"):
        load_bundle(out)
    # a pickled object array is refused, never unpickled
    arrays["intercept__2"] = np.array([{"evil": 1}] * 3, dtype=object)
    np.savez(out / "classifiers.npz", **arrays)
    with pytest.raises(InputError, match="cannot read classifiers.npz"):
        load_bundle(out)


def test_calibrated_bundle_round_trip_and_prevalence(tmp_path):
    """The bundle reports calibrated probabilities; the vote stays the members' majority."""
    from scipy.special import expit, logit

    from napari_ish_annotator.core.learn.calibration import prior_correction

    b, X = _bundle()
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0.3, X[:, 2] < -0.5], axis=1).astype(np.int8)
    b.calibration = prior_correction(Y)
    raw = b.classifier.predict_proba(X)
    expected = expit(logit(np.clip(raw, 1e-6, 1 - 1e-6)) + logit(Y.mean(axis=0)))
    np.testing.assert_allclose(b.predict_proba(X), expected, rtol=1e-12)
    assert np.array_equal(b.predict_votes(X), b.classifier.predict(X))
    proba, votes = b.predict_both(X)
    assert np.array_equal(proba, b.predict_proba(X)) and np.array_equal(votes, b.predict_votes(X))
    save_bundle(tmp_path / "m", b)
    info = json.loads((tmp_path / "m" / "model.json").read_text())
    assert info["calibration"]["method"] == "prior"
    assert info["calibration"]["prevalence"] == pytest.approx(Y.mean(axis=0).tolist())
    loaded = load_bundle(tmp_path / "m")
    assert loaded.notes == () and loaded.calibration.method == "prior"
    np.testing.assert_allclose(loaded.predict_proba(X), b.predict_proba(X), rtol=1e-6)


def test_version_1_bundle_loads_uncalibrated_with_a_note(tmp_path):
    """A bundle written before calibration existed (format 1: no calibration arrays or entry)
    still predicts, with the members' raw mean as its probability."""
    b, X = _bundle()
    out = tmp_path / "old"
    save_bundle(out, b)
    info = json.loads((out / "model.json").read_text())
    del info["calibration"]
    (out / "model.json").write_text(json.dumps(dict(info, format_version=1)))
    with np.load(out / "classifiers.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if not k.startswith("calibration_")}
    np.savez(out / "classifiers.npz", **arrays)
    loaded = load_bundle(out)
    assert len(loaded.notes) == 1 and "without probability calibration" in loaded.notes[0]
    assert "\n" not in loaded.notes[0]
    np.testing.assert_allclose(loaded.predict_proba(X), b.classifier.predict_proba(X), rtol=1e-6)
    # a version-2 bundle that lost its calibration arrays is damaged, not silently raw
    (out / "model.json").write_text(json.dumps(dict(info, format_version=2)))
    with pytest.raises(InputError, match="calibration arrays"):
        load_bundle(out)


def test_unfitted_classifier_is_not_saved(tmp_path):
    b = ModelBundle(ExtractorConfig(), EnsembleClassifier(VOCAB), {})
    with pytest.raises(InputError, match="not trained"):
        save_bundle(tmp_path / "m", b)
    assert not (tmp_path / "m").exists()
