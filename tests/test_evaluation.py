"""The evaluation engine: metrics by hand, grouped splits, not-evaluated terms, Gram-reuse CV
equal to a per-fold refit, repeated partitions, and the Table 2 layout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_ish_annotator.core.learn.ensembles import EnsembleClassifier
from napari_ish_annotator.core.learn.evaluation import (
    iter_cross_validate,
    score_predictions,
)
from napari_ish_annotator.core.learn.logistic import EnsembleConfig
from napari_ish_annotator.core.learn.metrics import (
    METRICS,
    expected_calibration_error,
    per_term_auc,
    term_metrics,
)
from napari_ish_annotator.core.learn.splits import (
    group_ids,
    grouped_folds,
    random_partitions,
    validation_split,
)
from napari_ish_annotator.core.learn.table import format_table
from napari_ish_annotator.core.utils.errors import InputError
from napari_ish_annotator.core.utils.progress import Progress, drive

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


def test_score_predictions_means_unknowns_and_not_evaluated_terms():
    Y_true = np.array([Y_TRUE, [1, 1, 0, 0, 1, 1, 0, 0], [0] * 8]).T
    Y_pred = np.array([Y_PRED, [1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1]]).T
    Y_score = np.array([Y_SCORE, [0.9, 0.8, 0.1, 0.2, 0.3, 0.4, 0.35, 0.05], [0.1] * 8]).T
    Y_true[6, 1] = -1  # unknown: leave out for term "b"
    ev = score_predictions(Y_true, Y_pred, Y_score, ["a", "b", "c"])
    out = ev.summary
    b = out["terms"]["b"]
    # b over 7 known rows: true 1,1,0,0,1,1,0 / pred 1,1,0,0,0,0,0 -> tp 2 fn 2 tn 3 fp 0
    assert b["accuracy"] == pytest.approx(5 / 7)
    assert b["sensitivity"] == pytest.approx(0.5) and b["specificity"] == pytest.approx(1.0)
    # AUC b: pos 0.9 0.8 0.3 0.4 vs neg 0.1 0.2 0.05 (row 6 dropped) -> all 12 pairs right
    assert b["auc"] == pytest.approx(1.0) and b["n_pos"] == 4
    # c has no positive: not evaluated (no metric at all), counted, with a reason
    c = out["terms"]["c"]
    assert all(c[m] is None for m in METRICS) and c["evaluated"] is False
    assert ev.not_evaluated == {"c": c["reason"]} and "present" in c["reason"]
    assert (ev.n_evaluated, ev.n_terms) == (2, 3) == (out["n_evaluated"], out["n_terms"])
    mean = out["mean"]
    assert mean["accuracy"] == pytest.approx((5 / 8 + 5 / 7) / 2)
    assert mean["auc"] == pytest.approx((13 / 16 + 1.0) / 2) == ev.mean_auc
    assert mean["specificity"] == pytest.approx((0.75 + 1.0) / 2)
    # brier over the 15 labelled pairs of a and b
    known = np.r_[np.array(Y_TRUE), np.delete(Y_true[:, 1], 6)]
    p = np.r_[np.array(Y_SCORE), np.delete(Y_score[:, 1], 6)]
    assert mean["brier"] == pytest.approx(np.mean((p - known) ** 2))
    assert mean["ece"] == pytest.approx(expected_calibration_error(known, p))
    assert ev.term_auc() == {"a": pytest.approx(13 / 16), "b": 1.0, "c": None}
    json.dumps(out, allow_nan=False)  # plain JSON
    with pytest.raises(InputError, match="shape"):
        score_predictions(Y_true[:, :2], Y_pred, Y_score, ["a", "b", "c"])


def test_expected_calibration_error_by_hand():
    # bin [0.1, 0.2): p 0.1, 0.1 with y 0, 1 -> |1 - 0.2| = 0.8; bin [0.9, 1]: 0.9 vs y 1 -> 0.1
    assert expected_calibration_error([0, 1, 1], [0.1, 0.1, 0.9]) == pytest.approx(0.9 / 3)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


def test_per_term_auc_masks_unknowns_and_unscored_rows():
    Y = np.array([[1, 1, 1], [0, 0, -1], [1, -1, 1], [0, 1, 0]])
    S = np.array([[0.9, 0.2, 0.3], [0.1, 0.5, 0.2], [0.05, 0.9, 0.4], [0.5, np.nan, np.nan]])
    # term 1: row 2 unknown and row 3 unscored leave 0.2 (present) < 0.5 (absent);
    # term 2: only present labels are scored -> undefined
    assert per_term_auc(Y, S) == [pytest.approx(0.5), 0.0, None]


def test_group_ids_by_gene_then_gene_and_stage_then_image():
    ids = group_ids(["g1", "g1", "g2", None, "g1"], ["1-3", "4-6", "1-3", "1-3", "1-3"])
    assert ids.tolist() == [0, 0, 1, 2, 0]
    one_gene = group_ids(["g1", "g1", "g1"], ["1-3", "4-6", "1-3"])
    assert one_gene.tolist() == [0, 1, 0]
    assert group_ids(["g1", "g1"], ["1-3", "1-3"]).tolist() == [0, 1]


def test_random_partitions_hold_out_whole_genes_seeded():
    groups = np.repeat(np.arange(10), 3)
    parts = random_partitions(groups, 5, test_fraction=0.3, seed=2)
    assert len(parts) == 5
    for train, test in parts:
        assert not set(groups[train]) & set(groups[test])
        assert len(np.unique(groups[test])) == 3 and len(train) + len(test) == 30
    again = random_partitions(groups, 5, test_fraction=0.3, seed=2)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(parts, again, strict=True))
    assert len({tuple(te) for _, te in parts}) > 1  # the partitions differ
    with pytest.raises(InputError, match="test-fraction"):
        random_partitions(groups, 2, test_fraction=1.5)
    with pytest.raises(InputError, match="two genes"):
        random_partitions(np.zeros(5), 2)


def test_validation_split_grouped_and_scoreable():
    groups = np.repeat(np.arange(8), 2)
    Y = np.zeros((16, 1), dtype=np.int8)
    Y[:4] = 1
    tr, va = validation_split(groups, Y, 0.25, seed=0)
    assert not set(groups[tr]) & set(groups[va]) and len(tr) + len(va) == 16
    assert (Y[va] == 1).any() and (Y[va] == 0).any()
    tr, va = validation_split(groups, Y, 0.0, seed=0)
    assert len(va) == 0 and len(tr) == 16


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
    s1 = score_predictions(np.array([Y_TRUE, [0] * 8]).T, np.array([Y_PRED, [0] * 8]).T,
                           np.array([Y_SCORE, [0.1] * 8]).T, ["a", "z"]).summary
    results = {"layers": {"17": s1, "21": s1}}
    text = format_table(results)
    lines = text.splitlines()
    assert lines[0] == "Mean over 1 of 2 terms"
    header = next(line for line in lines if "accuracy" in line)
    assert header.split() == ["layer", *METRICS, "brier", "ece"]
    row21 = next(line for line in lines if line.split()[:1] == ["21"])
    assert row21.split()[1:5] == ["0.625", "0.500", "0.750", "0.812"]
    assert any(line.strip().startswith("z: ") for line in lines)  # listed with its reason
    spread = {"layers": {"21": {**s1, "std": {m: 0.01 for m in s1["mean"]},
                                "n_partitions": 5}}}
    row = next(line for line in format_table(spread).splitlines() if line.split()[:1] == ["21"])
    assert "0.625 ± 0.010" in row and "5 random" in format_table(spread)
    assert "a" not in text.split()  # no per-term table by default
    detailed = format_table(results, per_term=True)
    term_row = next(line for line in detailed.splitlines() if line.split()[:1] == ["a"])
    assert term_row.split() == ["a", "4", "0.625", "0.500", "0.750", "0.812"]
    assert "± " not in text
    none = {"layers": {"30": {"mean": {m: None for m in METRICS}, "terms": {}}}}
    assert "n/a" in format_table(none)


def _learnable(n: int, d: int, n_terms: int, seed: int = 0, p: float = 0.35,
               strength: float = 0.6):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, n_terms)) < p).astype(np.int8)
    X = rng.random((n, d), dtype=np.float32)
    for t in range(n_terms):
        X[:, 40 * t:40 * t + 40] += strength * Y[:, t:t + 1]
    return X, Y


def _refit_out_of_fold(X, Y, groups, folds, cfg, vocabulary):
    """The straightforward way: a new EnsembleClassifier per fold, fitted on copied rows."""
    P = np.full(Y.shape, np.nan)
    votes = np.zeros(Y.shape, dtype=bool)
    for train, test in folds:
        clf = EnsembleClassifier(vocabulary, cfg).fit(X[train], Y[train])
        P[test], votes[test] = clf.predict_proba(X[test]), clf.predict(X[test])
    return P, votes


@pytest.mark.parametrize("calibration", ["none", "prior", "platt"])
def test_cross_validation_equals_a_per_fold_refit(calibration):
    """Fitting each fold on sub-blocks of one Gram matrix is exact (same members, same scores),
    the calibration included (Platt: fitted on out-of-fold scores inside each training part)."""
    from napari_ish_annotator.core.learn.calibration import CALIBRATION_FOLDS, fit

    X, Y = _learnable(72, 2000, 3)
    Y[5, 2] = -1  # an unknown label stays out of that term's training and scoring
    groups = np.arange(72) // 3
    folds = grouped_folds(groups, 4, seed=1)
    cfg = EnsembleConfig(n_members=4, seed=3)
    vocabulary = ["a", "b", "c"]
    ev = drive(iter_cross_validate(X, Y, vocabulary, folds, cfg, calibration=calibration,
                                   groups=groups))
    raw, votes = _refit_out_of_fold(X, Y, groups, folds, cfg, vocabulary)
    reference = raw.copy()
    for train, test in folds:
        oof = None
        if calibration == "platt":
            inner = [(train[a], train[b]) for a, b in
                     grouped_folds(groups[train], CALIBRATION_FOLDS, seed=cfg.seed)]
            oof = _refit_out_of_fold(X, Y, groups, inner, cfg, vocabulary)[0][train]
        reference[test] = fit(calibration, Y[train], oof).apply(raw[test])
    np.testing.assert_allclose(ev.scores, reference, atol=2e-5)
    expected = score_predictions(Y, votes, reference, vocabulary, ranking=raw)
    for term in vocabulary:
        for m in METRICS:
            assert ev.summary["terms"][term][m] == pytest.approx(expected.summary["terms"][term][m],
                                                                 abs=1e-9)
    for m in ("brier", "ece"):
        assert ev.summary["mean"][m] == pytest.approx(expected.summary["mean"][m], abs=1e-5)
    assert ev.n_evaluated == 3 and ev.mean_auc > 0.8


def test_term_positive_in_one_gene_only_is_not_evaluated_not_scored():
    X, Y = _learnable(60, 800, 2, seed=4)
    groups = np.arange(60) // 4  # 15 genes of 4 images
    Y[:, 1] = 0
    Y[groups == 6, 1] = 1  # term "b" is present in gene 6 only
    folds = grouped_folds(groups, 5, seed=0)
    ev = drive(iter_cross_validate(X, Y, ["a", "b"], folds, EnsembleConfig(n_members=3),
                                   groups=groups))
    assert set(ev.not_evaluated) == {"b"} and "one gene group" in ev.not_evaluated["b"]
    assert ev.summary["terms"]["b"]["auc"] is None and ev.summary["terms"]["b"]["evaluated"] is False
    assert (ev.n_evaluated, ev.n_terms) == (1, 2)
    assert ev.mean_auc == ev.summary["terms"]["a"]["auc"]  # the mean is over "a" alone
    # the fold that tests gene 6 cannot train "b": its rows carry no score (never zeros)
    assert np.isnan(ev.scores[groups == 6, 1]).all()
    assert "b" in format_table({"layers": {"21": ev.summary}})


def test_a_fold_that_cannot_train_a_term_adds_no_scores_for_it():
    X, Y = _learnable(48, 600, 1, seed=2)
    groups = np.arange(48) // 4
    Y[:, 0] = 0
    Y[np.isin(groups, [0, 1]), 0] = 1  # positives in two genes
    folds = [(np.flatnonzero(~np.isin(groups, g)), np.flatnonzero(np.isin(groups, g)))
             for g in ([0, 2, 3], [1, 4, 5], [6, 7, 8, 9, 10, 11])]
    ev = drive(iter_cross_validate(X, Y, ["a"], folds, EnsembleConfig(n_members=3)))
    # folds 1 and 2 train on the other positive gene; fold 3 has both in training; all score
    assert np.isfinite(ev.scores).all()
    Y[np.isin(groups, [1]), 0] = 0  # now only gene 0: fold 1 cannot train, others test no pos
    ev = drive(iter_cross_validate(X, Y, ["a"], folds, EnsembleConfig(n_members=3)))
    assert np.isnan(ev.scores[folds[0][1], 0]).all() and ev.n_evaluated == 0


def test_cross_validation_reads_features_in_place_and_skips_failed_rows():
    """The (huge) feature matrix is never copied per fold; NaN rows (failed images) drop out."""
    import tracemalloc

    X, Y = _learnable(120, 40_000, 2, seed=0)  # 19 MB of float32 features
    X[7] = np.nan
    groups = np.arange(120) // 4
    folds = grouped_folds(groups, 4, seed=0)
    tracemalloc.start()
    ev = drive(iter_cross_validate(X, Y, ["a", "b"], folds, EnsembleConfig(n_members=3)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.35 * X.nbytes, f"peak {peak / 1e6:.1f} MB for {X.nbytes / 1e6:.1f} MB of X"
    assert np.isnan(ev.scores[7]).all() and np.isfinite(np.delete(ev.scores, 7, axis=0)).all()
    assert ev.mean_auc > 0.9


def test_repeated_partitions_give_mean_and_std():
    X, Y = _learnable(60, 800, 2, seed=5, strength=0.12)
    groups = np.arange(60) // 3
    parts = random_partitions(groups, 4, test_fraction=0.25, seed=0)
    ev = drive(iter_cross_validate(X, Y, ["a", "b"], parts, EnsembleConfig(n_members=3)))
    assert ev.std is not None and ev.summary["std"] is ev.std and ev.summary["n_partitions"] == 4
    singles = [drive(iter_cross_validate(X, Y, ["a", "b"], [p], EnsembleConfig(n_members=3)))
               for p in parts]
    for m in ("auc", "accuracy", "ece"):
        values = [s.summary["mean"][m] for s in singles]
        assert ev.summary["mean"][m] == pytest.approx(np.mean(values))
        assert ev.std[m] == pytest.approx(np.std(values))
    assert ev.std["accuracy"] > 0
    assert ev.summary["terms"]["a"]["n_pos"] == int((Y[:, 0] == 1).sum())
    json.dumps(ev.summary, allow_nan=False)


def test_evaluate_frees_each_layers_features_before_the_next(monkeypatch):
    """Layer after layer, only one feature matrix (GBs for thousands of images) is alive."""
    import gc
    import weakref
    from pathlib import Path

    from napari_ish_annotator.core import workflow as pipeline
    from napari_ish_annotator.core.data.manifest import Dataset, Sample
    from napari_ish_annotator.core.features.extractor import ExtractorConfig
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig
    from napari_ish_annotator.core.utils.progress import drive

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
        yield Progress(len(images), len(images), stage)
        return X

    monkeypatch.setattr(pipeline, "iter_features", fake_features)
    monkeypatch.setattr(pipeline, "make_extractor", lambda config, cache_dir, loaded, executor=None: None)
    monkeypatch.setattr(pipeline, "load_backbone", lambda *a, **k: None)
    config = ExtractorConfig(weights="random", input_size=64, device="cpu", precision="fp32")
    res = drive(pipeline.iter_evaluate(dataset, config, EnsembleConfig(n_members=3),
                                       layers=["17", "21", "24"], folds=3))
    assert list(res["layers"]) == ["17", "21", "24"]
    assert still_alive_at_start == [0, 0, 0]
    assert res["layers"]["21"]["mean"]["auc"] > 0.8


def test_fold_auc_spread_is_the_std_of_each_folds_own_auc():
    """The Train chart's whisker: per term, std over the gene folds of the AUC each fold's
    held-out rows give; a term only one fold can score (or one gene) has none."""
    from napari_ish_annotator.core.learn.folds import fold_auc_spread

    rng = np.random.default_rng(0)
    groups = np.repeat([f"g{i}" for i in range(6)], 5)
    Y = rng.integers(0, 2, size=(30, 2)).astype(np.int8)
    Y[:, 1] = 0
    Y[:5, 1] = [1, 0, 1, 0, 1]  # term 1: both classes in the first gene only
    scores = np.clip(Y * 0.4 + rng.random((30, 2)) * 0.6, 0, 1)
    spread = fold_auc_spread(Y, scores, groups, 3, seed=1)
    by_hand = [per_term_auc(Y[te], scores[te])[0] for _, te in grouped_folds(groups, 3, seed=1)]
    assert spread[0] == pytest.approx(float(np.std(by_hand))) and spread[0] > 0
    assert spread[1] is None
    assert fold_auc_spread(Y, scores, np.zeros(30), 3) == [None, None]
