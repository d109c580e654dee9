"""``ish-annotator suspicious`` and its rule (core.learn.review): out-of-fold, gene held out."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from napari_ish_annotator.cli import main
from napari_ish_annotator.core.learn.logistic import EnsembleConfig
from napari_ish_annotator.core.learn.review import (
    contradiction,
    iter_out_of_fold_probabilities,
    rank_suspicious,
)
from napari_ish_annotator.core.utils.progress import drive

FAST = ["--weights", "random", "--input-size", "64", "--device", "cpu", "--quiet",
        "--ensemble", "3", "--folds", "3"]


def test_contradiction_is_label_minus_p_and_nan_for_unknown():
    out = contradiction([[1, 0, -1], [0, 1, 1]], [[0.9, 0.9, 0.5], [0.1, np.nan, 0.2]])
    np.testing.assert_allclose(out[0, :2], [0.1, 0.9])
    assert np.isnan(out[0, 2]) and np.isnan(out[1, 1])
    ranked = rank_suspicious(np.array([[1, 0, -1], [0, 1, 1]]),
                             np.array([[0.95, 0.9, 0.5], [0.1, np.nan, 0.2]]))
    assert [(s.row, s.term, s.label) for s in ranked] == [(0, 1, 0), (1, 2, 1), (1, 0, 0),
                                                          (0, 0, 1)]


def test_p_is_out_of_fold_with_the_gene_held_out():
    """Each gene has two identical feature rows and random labels shared by both: only a
    model that trained on an image's twin could predict its label. Held out by gene, p knows
    nothing (AUC near 0.5); the same fits with every image its own group reach AUC > 0.9."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    X = np.repeat(rng.normal(size=(40, 500)), 2, axis=0).astype(np.float32)
    Y = np.repeat(rng.integers(0, 2, (40, 2)), 2, axis=0).astype(np.int8)
    genes = np.repeat(np.arange(40), 2)
    for groups, low, high in ((genes, 0.3, 0.65), (np.arange(80), 0.9, 1.0)):
        P = drive(iter_out_of_fold_probabilities(X, Y, groups, EnsembleConfig(n_members=3),
                                                 ["a", "b"]))
        assert low <= roc_auc_score(Y.ravel(), P.ravel()) <= high


def _twins(seed: int = 0, genes: int = 60, dim: int = 6):
    """Two identical feature rows per gene; term t present when feature t is high. The gene
    whose term-0 feature is furthest from the threshold (the clearest case) comes last."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(genes, dim))
    base = base[np.argsort(np.abs(base[:, 0] - 0.3))]
    Y = (base[:, :3] > 0.3).astype(np.int8)
    X = np.repeat(base, 2, axis=0).astype(np.float32)
    return X, np.repeat(Y, 2, axis=0), np.repeat(np.arange(genes), 2)


def test_flipped_labels_of_a_gene_rank_first_because_the_gene_is_held_out():
    """Both images of the last gene get a wrong label for term 0. A model that trained on one twin
    would confirm the other's wrong label; held out by gene, the model contradicts both."""
    X, Y, groups = _twins()
    Y_bad = Y.copy()
    n = len(Y)
    Y_bad[n - 2:, 0] = 1 - Y_bad[n - 2:, 0]
    P = drive(iter_out_of_fold_probabilities(X, Y_bad, groups, EnsembleConfig(n_members=3),
                                             ["a", "b", "c"], folds=5))
    assert P.shape == Y.shape and np.isfinite(P).all() and ((P >= 0) & (P <= 1)).all()
    top = {(s.row, s.term) for s in rank_suspicious(Y_bad, P)[:2]}
    assert top == {(n - 2, 0), (n - 1, 0)}
    # an unknown label is not listed (its image still gets a p for the term)
    Y_bad[0, 1] = -1
    P = drive(iter_out_of_fold_probabilities(X, Y_bad, groups, EnsembleConfig(n_members=3),
                                             ["a", "b", "c"], folds=5))
    assert np.isfinite(P[0, 1]) and (0, 1) not in {(s.row, s.term) for s in rank_suspicious(Y_bad, P)}


def test_one_gene_is_refused():
    X, Y, _ = _twins()
    from napari_ish_annotator.core.utils.errors import InputError

    with pytest.raises(InputError, match="fewer than two genes"):
        drive(iter_out_of_fold_probabilities(X, Y, np.zeros(len(X)), EnsembleConfig(), list("abc")))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    root = tmp_path_factory.mktemp("suspicious")
    generate_dataset(root / "data", n_images=24, stage="13-16", seed=5, size=(64, 128),
                     min_positives=6, write_masks=False)
    return root


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_cli_writes_every_label_most_suspicious_first(data, tmp_path):
    from napari_ish_annotator.core.data.manifest import read_manifest

    manifest = data / "data" / "manifest.csv"
    out = tmp_path / "review.csv"
    assert main(["suspicious", str(manifest), "--out", str(out), "--cache",
                 str(data / "cache"), *FAST]) == 0
    rows = _read(out)
    dataset = read_manifest(manifest)
    assert list(rows[0])[:4] == ["image", "term", "label", "p"]
    # each label once; labels of a term some fold could not train (no present or no absent
    # image left in it) have no out-of-fold p and are left out, with a note on stderr
    keys = {(r["image"], r["term"]) for r in rows}
    assert len(keys) == len(rows) >= 0.8 * len(dataset) * len(dataset.vocabulary)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    truth = {(str(p), t): y for p, row in zip(dataset.paths, dataset.labels(), strict=True)
             for t, y in zip(dataset.vocabulary, row, strict=True)}
    for r in rows:
        y = truth[(r["image"], r["term"])]
        assert r["label"] == ("present" if y else "absent")
        assert float(r["score"]) == pytest.approx(abs(y - float(r["p"])), abs=2e-6)


def test_cli_reviews_a_store_annotators_labels(data, tmp_path):
    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.labels.store import LabelStore

    manifest = data / "data" / "manifest.csv"
    store = tmp_path / "labels.sqlite"
    assert main(["labels", "import", str(store), str(manifest), "--annotator", "ana",
                 "--quiet"]) == 0
    dataset = read_manifest(manifest)
    image, term = dataset.paths[2], dataset.vocabulary[1]
    was = int(dataset.labels()[2, 1])
    with LabelStore(store, annotator="ana") as s:
        s.set_label(image, term, 1 - was)
        s.set_label(dataset.paths[3], term, None)  # unknown: not reviewed
    out = tmp_path / "review.csv"
    assert main(["suspicious", str(manifest), "--out", str(out), "--labels", str(store),
                 "--annotator", "ana", "--cache", str(data / "cache"), *FAST]) == 0
    rows = {(r["image"], r["term"]): r for r in _read(out)}
    assert rows[(str(image), term)]["label"] == ("present" if was == 0 else "absent")
    assert (str(dataset.paths[3]), term) not in rows


@pytest.mark.parametrize("extra, message", [
    (["--annotator", "ana"], "give --labels STORE too"),
    (["--labels", "{tmp}/labels.sqlite"], "needs --annotator NAME"),
    (["--labels", "{tmp}/none.sqlite", "--annotator", "ana"], "label store not found"),
    (["--labels", "{tmp}/labels.sqlite", "--annotator", "bob"], "unknown annotator"),
    (["--folds", "1"], "--folds must be at least 2"),
])
def test_cli_bad_input_exits_2_with_one_line(data, tmp_path, capsys, extra, message):
    manifest = data / "data" / "manifest.csv"
    assert main(["labels", "import", str(tmp_path / "labels.sqlite"), str(manifest),
                 "--annotator", "ana", "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "review.csv"
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert main(["suspicious", str(manifest), "--out", str(out), *FAST, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_refuses_to_write_over_its_manifest(data, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    text = (data / "data" / "manifest.csv").read_text()
    manifest.write_text(text.replace("images/", str(data / "data" / "images") + "/"))
    assert main(["suspicious", str(manifest), "--out", str(manifest), *FAST]) == 2
    assert "choose another --out" in capsys.readouterr().err  # the CLI's one output guard
    assert manifest.read_text() == text.replace("images/", str(data / "data" / "images") + "/")
