"""Metrics against hand-computed values, grouped folds, and the Table 2 layout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_ish_annotator.core.errors import InputError
from napari_ish_annotator.core.evaluate import (
    METRICS,
    format_table,
    grouped_folds,
    summarise,
    term_metrics,
)

Y_TRUE = [1, 1, 1, 0, 0, 0, 0, 1]
Y_PRED = [1, 0, 0, 0, 1, 0, 0, 1]
Y_SCORE = [0.9, 0.4, 0.35, 0.1, 0.8, 0.2, 0.3, 0.7]


def test_term_metrics_by_hand():
    # tp = 2 (rows 0, 7), fn = 2 (1, 2), tn = 3 (3, 5, 6), fp = 1 (4)
    # AUC: positive > negative in 4 + 3 + 3 + 3 = 13 of 16 pairs
    res = term_metrics(Y_TRUE, Y_PRED, Y_SCORE)
    assert res["accuracy"] == pytest.approx(5 / 8)
    assert res["sensitivity"] == pytest.approx(2 / 4)
    assert res["specificity"] == pytest.approx(3 / 4)
    assert res["auc"] == pytest.approx(13 / 16)
    assert res["n_pos"] == 4


def test_term_metrics_one_class():
    res = term_metrics([0, 0, 0], [0, 1, 0], [0.1, 0.7, 0.2])
    assert res["accuracy"] == pytest.approx(2 / 3)
    assert math.isnan(res["sensitivity"]) and math.isnan(res["auc"])
    assert res["specificity"] == pytest.approx(2 / 3)
    with pytest.raises(InputError, match="length"):
        term_metrics([0, 1], [0], [0.1, 0.2])


def test_summarise_means_and_unknowns():
    Y_true = np.array([Y_TRUE, [1, 1, 0, 0, 1, 1, 0, 0], [0] * 8]).T
    Y_pred = np.array([Y_PRED, [1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1]]).T
    Y_score = np.array([Y_SCORE, [0.9, 0.8, 0.1, 0.2, 0.3, 0.4, 0.35, 0.05], [0.1] * 8]).T
    Y_true[6, 1] = -1  # unknown: leave out for term "b"
    out = summarise(Y_true, Y_pred, Y_score, ["a", "b", "c"])
    b = out["terms"]["b"]
    # b over 7 known rows: true 1,1,0,0,1,1,0 / pred 1,1,0,0,0,0,0 -> tp 2 fn 2 tn 3 fp 0
    assert b["accuracy"] == pytest.approx(5 / 7)
    assert b["sensitivity"] == pytest.approx(0.5) and b["specificity"] == pytest.approx(1.0)
    # AUC b: pos 0.9 0.8 0.3 0.4 vs neg 0.1 0.2 0.05 (row 6 dropped) -> all 12 pairs right
    assert b["auc"] == pytest.approx(1.0) and b["n_pos"] == 4
    c = out["terms"]["c"]
    assert c["auc"] is None and c["sensitivity"] is None and c["specificity"] == pytest.approx(7 / 8)
    mean = out["mean"]
    assert mean["accuracy"] == pytest.approx((5 / 8 + 5 / 7 + 7 / 8) / 3)
    assert mean["auc"] == pytest.approx((13 / 16 + 1.0) / 2)  # only where defined
    assert mean["sensitivity"] == pytest.approx((0.5 + 0.5) / 2)
    assert mean["specificity"] == pytest.approx((0.75 + 1.0 + 7 / 8) / 3)
    json.dumps(out, allow_nan=False)  # plain JSON
    with pytest.raises(InputError, match="shape"):
        summarise(Y_true[:, :2], Y_pred, Y_score, ["a", "b", "c"])


def test_grouped_folds_keep_genes_together():
    rng = np.random.default_rng(0)
    groups = rng.choice([f"gene{i}" for i in range(12)], size=60)
    folds = grouped_folds(groups, 4, seed=3)
    assert len(folds) == 4
    tests = np.concatenate([t for _, t in folds])
    assert sorted(tests) == list(range(60))  # every image tested exactly once
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert len(train) + len(test) == 60
    again = grouped_folds(groups, 4, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = grouped_folds(groups, 4, seed=4)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))
    with pytest.raises(InputError, match="only 3 gene group"):
        grouped_folds(["a", "b", "c", "a"], 5, seed=0)
    with pytest.raises(InputError, match="at least 2 folds"):
        grouped_folds(groups, 1, seed=0)


def test_format_table_layout():
    s1 = summarise(np.array([Y_TRUE]).T, np.array([Y_PRED]).T, np.array([Y_SCORE]).T, ["a"])
    results = {"layers": {"17": s1, "21": s1}}
    text = format_table(results)
    lines = text.splitlines()
    header = next(line for line in lines if "accuracy" in line)
    assert header.split() == ["layer", *METRICS]
    row21 = next(line for line in lines if line.split()[:1] == ["21"])
    assert row21.split()[1:] == ["0.625", "0.500", "0.750", "0.812"]
    assert "a" not in text.split()  # no per-term table by default
    detailed = format_table(results, per_term=True)
    term_row = next(line for line in detailed.splitlines() if line.split()[:1] == ["a"])
    assert term_row.split() == ["a", "4", "0.625", "0.500", "0.750", "0.812"]
    none = {"layers": {"30": {"mean": {m: None for m in METRICS}, "terms": {}}}}
    assert "n/a" in format_table(none)


def test_fold_fit_reads_features_in_place_and_matches_a_copied_fit():
    """Cross-validation must not copy the (huge) feature matrix per fold, nor change results."""
    import tracemalloc

    from napari_ish_annotator.core.classify import EnsembleClassifier, EnsembleConfig
    from napari_ish_annotator.core.pipeline import _fit_predict_fold

    rng = np.random.default_rng(0)
    n, d = 120, 40_000  # 19 MB of float32 features
    Y = (rng.random((n, 2)) < 0.3).astype(np.int8)
    Y[:, 1] = 0  # term 1 has no positive in any fold: scored 0, predicted absent
    X = rng.random((n, d), dtype=np.float32)
    X[:, :50] += Y[:, :1].astype(np.float32)  # term 0 is learnable
    train = np.setdiff1d(np.arange(n), np.arange(0, n, 4))
    test = np.arange(0, n, 4)
    config = EnsembleConfig(n_members=3)

    tracemalloc.start()
    scores, votes = _fit_predict_fold(X, Y, train, test, ["a", "b"], config)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # copying the training rows alone would take 0.75 X; scoring 30 test rows takes ~0.5 X
    assert peak < 0.65 * X.nbytes, f"peak {peak / 1e6:.1f} MB for {X.nbytes / 1e6:.1f} MB of X"

    reference = EnsembleClassifier(vocabulary=["a"], config=config).fit(X[train], Y[train, :1])
    np.testing.assert_allclose(scores[:, 0], reference.predict_proba(X[test])[:, 0], atol=1e-6)
    assert np.array_equal(votes[:, 0], reference.predict(X[test])[:, 0])
    assert (scores[:, 1] == 0).all() and not votes[:, 1].any()
    assert float(np.mean(votes[:, 0] == Y[test, 0].astype(bool))) > 0.8


def test_evaluate_frees_each_layers_features_before_the_next(monkeypatch):
    """Layer after layer, only one feature matrix (GBs for thousands of images) is alive."""
    import gc
    import weakref
    from pathlib import Path

    from napari_ish_annotator.core import pipeline
    from napari_ish_annotator.core.classify import EnsembleConfig
    from napari_ish_annotator.core.features import ExtractorConfig
    from napari_ish_annotator.core.manifest import Dataset, Sample
    from napari_ish_annotator.core.progress import drive

    rng = np.random.default_rng(0)
    samples = [Sample(Path(f"img{i}.png"), ("a",) if i % 3 == 0 else (), gene=f"g{i // 2}")
               for i in range(24)]
    dataset = Dataset(samples=samples, vocabulary=["a"])
    alive: list[weakref.ref] = []
    still_alive_at_start: list[int] = []

    def fake_features(extractor, images, stage="features"):
        gc.collect()
        still_alive_at_start.append(sum(r() is not None for r in alive))
        X = rng.random((len(images), 64)).astype(np.float32)
        X[:, :8] += 2.0 * dataset.labels()[:, :1]
        alive.append(weakref.ref(X))
        yield pipeline.Progress(len(images), len(images), stage)
        return X

    from napari_ish_annotator.core import backbones

    monkeypatch.setattr(pipeline, "iter_features", fake_features)
    monkeypatch.setattr(pipeline, "make_extractor", lambda config, cache_dir, loaded: None)
    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **k: None)
    config = ExtractorConfig(weights="random", input_size=64, device="cpu", precision="fp32")
    res = drive(pipeline.iter_evaluate(dataset, config, EnsembleConfig(n_members=3),
                                       layers=["17", "21", "24"], folds=3))
    assert list(res["layers"]) == ["17", "21", "24"]
    assert still_alive_at_start == [0, 0, 0]
    assert res["layers"]["21"]["mean"]["auc"] > 0.8
