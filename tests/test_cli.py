"""The `ish-annotator` command line end to end on a small synthetic set (CPU, random weights)."""

from __future__ import annotations

import csv
import json

import numpy as np

import _cli_helpers
from _cli_helpers import FAST
from napari_ish_annotator.cli import main

cli_data = _cli_helpers.cli_data  # the shared module-scoped fixtures
trained = _cli_helpers.trained


def test_train_writes_a_bundle_without_pickle(trained):
    meta = json.loads((trained / "model.json").read_text())
    assert meta["backbone"] == "vgg16"
    assert str(meta["layer"]) == "21"
    assert len(meta["vocabulary"]) >= 2
    arrays = list(trained.glob("*.npz"))
    assert arrays, "classifier weights must be stored as plain arrays"
    with np.load(arrays[0], allow_pickle=False) as data:
        # coef, intercept per term + centre + the calibration map (a, b)
        assert len(data.files) == 2 * len(meta["vocabulary"]) + 3
    assert meta["format_version"] == 2 and meta["calibration"]["method"] == "platt"


def test_predict_csv_has_image_and_one_probability_column_per_term(cli_data, trained, tmp_path):
    out = tmp_path / "pred.csv"
    images_dir = cli_data / "data" / "images"
    code = main(["predict", str(trained), str(images_dir), "--out", str(out),
                 "--cache", str(cli_data / "cache"), "--quiet"])
    assert code == 0
    vocabulary = json.loads((trained / "model.json").read_text())["vocabulary"]
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(list(images_dir.glob("*.png")))
    assert list(rows[0]) == ["image", *vocabulary, "calls"]
    probabilities = np.array([[float(r[t]) for t in vocabulary] for r in rows])
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    # calls: the terms with calibrated p >= 0.5 (the GUI's rule), ';'-joined
    for r, p in zip(rows, probabilities, strict=True):
        assert r["calls"] == ";".join(t for t, q in zip(vocabulary, p, strict=True) if q >= 0.5)
    assert probabilities.std() > 0  # not a constant answer


def test_predict_votes_option_adds_the_majority_vote_columns(cli_data, trained, tmp_path):
    from napari_ish_annotator.core.features.extractor import FeatureExtractor
    from napari_ish_annotator.core.learn.bundle import load_bundle

    images = sorted((cli_data / "data" / "images").glob("*.png"))[:4]
    out = tmp_path / "votes.csv"
    assert main(["predict", str(trained), *map(str, images), "--out", str(out), "--votes",
                 "--cache", str(cli_data / "cache"), "--quiet"]) == 0
    bundle = load_bundle(trained)
    vocabulary = bundle.classifier.vocabulary
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", *vocabulary, "calls", *(f"{t} vote" for t in vocabulary)]
    X = FeatureExtractor(bundle.extractor, cache_dir=cli_data / "cache").extract(images)
    votes = np.array([[int(r[f"{t} vote"]) for t in vocabulary] for r in rows])
    probabilities = np.array([[float(r[t]) for t in vocabulary] for r in rows])
    assert np.array_equal(votes.astype(bool), bundle.predict_votes(X))
    np.testing.assert_allclose(probabilities, bundle.predict_proba(X), atol=1e-6)


def test_predictions_track_labels_on_training_images(cli_data, trained, tmp_path):
    """The model must have learned something: training positives rank above negatives."""
    from sklearn.metrics import roc_auc_score

    from napari_ish_annotator.core.data.manifest import read_manifest

    manifest = cli_data / "data" / "manifest.csv"
    out = tmp_path / "pred.csv"
    assert main(["predict", str(trained), str(manifest), "--out", str(out),
                 "--cache", str(cli_data / "cache"), "--quiet"]) == 0
    dataset = read_manifest(manifest)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    vocabulary = dataset.vocabulary
    scores = np.array([[float(r[t]) for t in vocabulary] for r in rows])
    labels = dataset.labels()
    aucs = [roc_auc_score(labels[:, t], scores[:, t]) for t in range(len(vocabulary))]
    assert min(aucs) > 0.8, aucs
    assert scores[labels == 1].mean() > scores[labels == 0].mean() + 0.1


def test_evaluate_prints_table_and_writes_contract_json(cli_data, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = main(["evaluate", str(cli_data / "data" / "manifest.csv"), "--folds", "3",
                 "--layers", "17,21", "--ensemble", "3", "--json", str(out),
                 "--cache", str(cli_data / "cache"), *FAST])
    assert code == 0
    printed = capsys.readouterr().out
    assert "21" in printed and "AUC" in printed.upper()
    metrics = json.loads(out.read_text())
    for layer in ("17", "21"):
        mean = metrics["layers"][layer]["mean"]
        assert set(mean) >= {"accuracy", "sensitivity", "specificity", "auc", "brier", "ece"}
        assert 0.0 <= mean["accuracy"] <= 1.0
        for term_metrics in metrics["layers"][layer]["terms"].values():
            assert term_metrics["n_pos"] >= 1
        assert "std" not in metrics["layers"][layer]  # k-fold CV pools the folds


def test_evaluate_repeats_prints_mean_std_and_writes_std_json(cli_data, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = main(["evaluate", str(cli_data / "data" / "manifest.csv"), "--repeats", "3",
                 "--test-fraction", "0.3", "--ensemble", "3", "--json", str(out),
                 "--cache", str(cli_data / "cache"), *FAST])
    assert code == 0
    printed = capsys.readouterr().out
    layer = json.loads(out.read_text())["layers"]["21"]
    assert set(layer["mean"]) == {"accuracy", "sensitivity", "specificity", "auc", "brier", "ece"}
    assert set(layer["std"]) == set(layer["mean"]) and layer["n_partitions"] == 3
    assert all(v is None or v >= 0 for v in layer["std"].values())
    assert layer["n_evaluated"] + len(layer["not_evaluated"]) == layer["n_terms"]
    assert f"Mean over {layer['n_evaluated']} of {layer['n_terms']} terms" in printed
    assert f"{layer['mean']['auc']:.3f} ± {layer['std']['auc']:.3f}" in printed
    assert main(["evaluate", str(cli_data / "data" / "manifest.csv"), "--repeats", "2",
                 "--folds", "3", *FAST]) == 2
    assert main(["evaluate", str(cli_data / "data" / "manifest.csv"), "--test-fraction",
                 "0.3", *FAST]) == 2


def test_evaluate_with_held_out_test_manifest(cli_data, tmp_path):
    from napari_ish_annotator.core.data.manifest import read_manifest

    data = cli_data / "data"
    dataset = read_manifest(data / "manifest.csv")
    with open(data / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    genes = sorted({r["gene"] for r in rows})
    test_genes = set(genes[::4])
    for name, keep in (("train.csv", lambda r: r["gene"] not in test_genes),
                       ("test.csv", lambda r: r["gene"] in test_genes)):
        with open(data / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if keep(r))
    out = tmp_path / "m.json"
    code = main(["evaluate", str(data / "train.csv"), "--test", str(data / "test.csv"),
                 "--terms", ";".join(dataset.vocabulary), "--ensemble", "3", "--json", str(out),
                 "--cache", str(cli_data / "cache"), *FAST])
    assert code == 0
    assert "21" in json.loads(out.read_text())["layers"]


def test_gradcam_writes_png_and_npy_at_image_size(cli_data, trained, tmp_path):
    from PIL import Image

    image = sorted((cli_data / "data" / "images").glob("*.png"))[0]
    term = json.loads((trained / "model.json").read_text())["vocabulary"][0]
    png, npy = tmp_path / "heat.png", tmp_path / "heat.npy"
    code = main(["gradcam", str(trained), str(image), "--term", term, "--out", str(png),
                 "--npy", str(npy), "--quiet"])
    assert code == 0
    heat = np.load(npy, allow_pickle=False)
    width, height = Image.open(image).size
    assert heat.shape == (height, width)
    assert heat.dtype == np.float32 and heat.min() >= 0.0 and heat.max() <= 1.0
    assert Image.open(png).size == (width, height)


