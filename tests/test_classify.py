"""The Gram-matrix ensemble: exactness against scikit-learn, undersampling, labels, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from napari_ish_annotator.core.learn.ensembles import EnsembleClassifier, gram_matrix
from napari_ish_annotator.core.learn.logistic import EnsembleConfig, fit_logistic_gram, member_rows
from napari_ish_annotator.core.utils.errors import InputError


def _sk(X, y, C):
    return LogisticRegression(C=C, solver="newton-cholesky", tol=1e-12, max_iter=10_000,
                              fit_intercept=True).fit(X, y)


def _problem(rng, n, d, signal=3):
    X = rng.normal(size=(n, d))
    w = np.zeros(d)
    w[:signal] = 2.0
    y = (X @ w + rng.normal(size=n) > 0).astype(int)
    return X, y


@pytest.mark.parametrize(
    ("n", "d", "C"),
    [(60, 300, 1.0), (60, 300, 50.0), (60, 300, 1e-3), (200, 20, 1.0), (200, 20, 1e4),
     (300, 400, 1.0), (300, 400, 100.0), (400, 30, 10.0)],
)
def test_dual_solver_matches_sklearn(n, d, C):
    """d > n (separable) and n > d (K singular): decision values equal sklearn's.

    n >= 256 also exercises the float32-factorisation-first Newton steps.
    """
    rng = np.random.default_rng(n + d)
    X, y = _problem(rng, n, d)
    alpha, b = fit_logistic_gram(X @ X.T, y, C)
    w = X.T @ alpha
    sk = _sk(X, y, C)
    Xt = rng.normal(size=(40, d))
    ours, theirs = Xt @ w + b, sk.decision_function(Xt)
    assert np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()
    assert np.allclose(w, sk.coef_[0], rtol=1e-3, atol=1e-3 * np.abs(sk.coef_).max())
    assert abs(b - sk.intercept_[0]) <= 1e-3 * max(1.0, abs(sk.intercept_[0]))


def test_gram_blocks_and_float16_memmap(tmp_path):
    """K is exact float64 accumulation for a float16 memmap read in several feature blocks
    (a block is at most 4096 features: 10000 make three, one step of iter_gram each)."""
    from napari_ish_annotator.core.learn.ensembles import iter_gram
    from napari_ish_annotator.core.utils.progress import drive

    rng = np.random.default_rng(1)
    X16 = rng.normal(size=(30, 10_000)).astype(np.float16)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16,
                                   shape=X16.shape)
    mm[:] = X16
    mm.flush()
    X = np.load(tmp_path / "x.npy", mmap_mode="r")
    steps: list[tuple[int, int]] = []
    K = drive(iter_gram(X), lambda done, total, _: steps.append((done, total)))
    assert len(steps) > 2 and steps[-1] == (len(steps), len(steps))  # a step per block
    ref = X16.astype(np.float64) @ X16.astype(np.float64).T
    assert K.dtype == np.float64
    assert np.abs(K - ref).max() <= 1e-6 * np.abs(ref).max()
    rows = np.array([3, 7, 11])
    assert np.abs(gram_matrix(X, rows) - ref[np.ix_(rows, rows)]).max() <= 1e-6 * ref.max()
    # float64 features stay float64 throughout
    X64 = X16.astype(np.float64) + 1e-9
    np.testing.assert_allclose(gram_matrix(X64), X64 @ X64.T, rtol=1e-12, atol=1e-9)


def test_ensemble_members_match_sklearn_when_balanced():
    """Balanced labels => every member uses all rows => each equals sklearn (centred, normalised rows)."""
    rng = np.random.default_rng(2)
    n, d = 60, 300
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=(n, 1))
    y = np.array([1] * 30 + [0] * 30)
    X[y == 1, :3] += 1.5
    clf = EnsembleClassifier(["t"], EnsembleConfig(n_members=3, C=2.0, normalize=True))
    clf.fit(X.astype(np.float32), y[:, None])
    X64 = X.astype(np.float32).astype(np.float64)
    mu = X64.mean(axis=0)
    sk = _sk(normalize(X64 - mu), y, 2.0)
    Xt = rng.normal(size=(25, d))
    theirs = sk.decision_function(normalize(Xt - mu))
    np.testing.assert_allclose(clf.center, mu, rtol=1e-5, atol=1e-6)
    dec = clf.decision_members(Xt)
    assert dec.shape == (25, 1, 3)
    for j in range(3):
        assert np.abs(dec[:, 0, j] - theirs).max() <= 1e-3 * np.abs(theirs).max()
    assert clf.terms[0].coef.dtype == np.float32 and clf.terms[0].coef.shape == (3, d)
    # without normalisation, too
    raw = EnsembleClassifier(["t"], EnsembleConfig(n_members=1, C=0.5, normalize=False,
                                                   center=False))
    raw.fit(X, y[:, None])
    theirs = _sk(X, y, 0.5).decision_function(Xt)
    assert np.abs(raw.decision_members(Xt)[:, 0, 0] - theirs).max() <= 1e-3 * np.abs(theirs).max()


def test_member_rows_undersampling():
    rng = np.random.default_rng(0)
    y = np.array([1] * 5 + [0] * 20 + [-1] * 7)
    members = member_rows(y, 11, rng)
    for rows in members:
        assert len(rows) == 10 and len(set(rows)) == 10
        assert set(range(5)) <= set(rows)  # all positives
        assert ((y[rows] == 0).sum()) == 5 and (y[rows] != -1).all()
    assert len({tuple(r) for r in members}) > 1  # members differ
    # more positives than negatives: undersample the positives instead
    y2 = np.array([1] * 20 + [0] * 4)
    for rows in member_rows(y2, 5, rng):
        assert (y2[rows] == 0).sum() == 4 and (y2[rows] == 1).sum() == 4


def test_undersampling_ensemble_beats_unbalanced_lr_on_sensitivity():
    """8 % positives, signal in a few features: the balanced ensemble finds more positives."""
    rng = np.random.default_rng(7)
    d = 200

    def make(n):
        X = rng.normal(size=(n, d))
        score = X[:, :4].sum(axis=1) / 2.0
        y = (score + 0.8 * rng.normal(size=n) > 1.65).astype(int)
        return X, y

    X, y = make(600)
    Xt, yt = make(3000)
    assert 0.05 < y.mean() < 0.11
    ens = EnsembleClassifier(["t"], EnsembleConfig(n_members=11, C=1.0, normalize=False))
    ens.fit(X, y[:, None])
    pred = ens.predict(Xt)[:, 0]
    sens_ens = pred[yt == 1].mean()
    single = LogisticRegression(C=1.0, max_iter=5000).fit(X, y)
    sens_lr = single.predict(Xt)[yt == 1].mean()
    assert sens_ens >= sens_lr + 0.2, (sens_ens, sens_lr)
    assert (~pred[yt == 0]).mean() > 0.6  # and still rejects most negatives


def _multi(rng, n=120, d=80):
    X = rng.normal(size=(n, d)).astype(np.float32)
    Y = np.stack([(X[:, 0] > 0.5), (X[:, 1] + X[:, 2] > 0), (X[:, 3] < -1.0)], axis=1)
    return X, Y.astype(np.int8)


def test_unknown_labels_are_skipped():
    rng = np.random.default_rng(3)
    X, Y = _multi(rng)
    Yu = Y.copy()
    Yu[:40, 0] = -1  # unknown for term 0 only
    # no centring: the centre is the mean of all labelled images, shared by every term, so
    # with it term "a" would (rightly) differ slightly from a fit on its 80 known rows alone
    cfg = EnsembleConfig(n_members=5, C=1.0, seed=4, center=False)
    a = EnsembleClassifier(["a", "b", "c"], cfg).fit(X, Yu)
    # same as fitting term "a" on the 80 known rows only
    ref = EnsembleClassifier(["a", "b", "c"], cfg).fit(X[40:], Y[40:])
    assert a.terms[0].n_unknown == 40 and a.terms[0].n_pos + a.terms[0].n_neg == 80
    np.testing.assert_allclose(a.terms[0].coef, ref.terms[0].coef, rtol=1e-4, atol=1e-6)
    # the other terms still use all 120 rows, so they differ from the 80-row fit
    assert a.terms[1].n_pos + a.terms[1].n_neg == 120
    assert not np.allclose(a.terms[1].coef, ref.terms[1].coef)
    # rows unknown for every term are left out of the Gram matrix entirely
    Yall = Y.copy()
    Yall[:10] = -1
    b = EnsembleClassifier(["a", "b", "c"], cfg).fit(X, Yall)
    ref2 = EnsembleClassifier(["a", "b", "c"], cfg).fit(X[10:], Y[10:])
    np.testing.assert_allclose(b.predict_proba(X), ref2.predict_proba(X), rtol=1e-4, atol=1e-6)


def test_determinism_and_seed():
    rng = np.random.default_rng(5)
    X, Y = _multi(rng)
    p1 = EnsembleClassifier(["a", "b", "c"], EnsembleConfig(seed=1)).fit(X, Y).predict_proba(X)
    p2 = EnsembleClassifier(["a", "b", "c"], EnsembleConfig(seed=1)).fit(X, Y).predict_proba(X)
    p3 = EnsembleClassifier(["a", "b", "c"], EnsembleConfig(seed=2)).fit(X, Y).predict_proba(X)
    assert np.array_equal(p1, p2)
    assert not np.allclose(p1, p3)


def test_vote_and_proba_consistency():
    rng = np.random.default_rng(6)
    X, Y = _multi(rng)
    clf = EnsembleClassifier(["a", "b", "c"], EnsembleConfig(n_members=7, C=10.0)).fit(X, Y)
    dec = clf.decision_members(X)
    assert dec.shape == (len(X), 3, 7)
    proba, votes, pred = clf.predict_proba(X), clf.vote_fraction(X), clf.predict(X)
    np.testing.assert_allclose(proba, expit(dec).mean(axis=2))
    np.testing.assert_allclose(votes * 7, np.round(votes * 7))
    assert np.array_equal(pred, votes > 0.5)
    assert ((proba >= 0) & (proba <= 1)).all()
    # unanimous votes agree with the mean probability's side of 0.5
    assert (proba[votes == 1.0] > 0.5).all() and (proba[votes == 0.0] < 0.5).all()
    # the classifier actually learned term "a" (x0 > 0.5) on its training data
    assert (pred[:, 0] == Y[:, 0].astype(bool)).mean() > 0.9
    # no images (an empty test fold or input list) gives empty results, not a reshape error
    none = X[:0]
    assert clf.decision_members(none).shape == (0, 3, 7)
    assert clf.predict_proba(none).shape == clf.predict(none).shape == (0, 3)


def test_even_ensemble_tie_goes_to_probability():
    rng = np.random.default_rng(8)
    X, Y = _multi(rng)
    clf = EnsembleClassifier(["a", "b", "c"], EnsembleConfig(n_members=2)).fit(X, Y)
    votes, proba, pred = clf.vote_fraction(X), clf.predict_proba(X), clf.predict(X)
    tie = votes == 0.5
    assert np.array_equal(pred[tie], proba[tie] > 0.5)
    assert np.array_equal(pred[~tie], votes[~tie] > 0.5)


def test_errors():
    rng = np.random.default_rng(9)
    X, Y = _multi(rng)
    Y[:, 2] = 0
    with pytest.raises(InputError, match=r"'c' has no positive.*present"):
        EnsembleClassifier(["a", "b", "c"]).fit(X, Y)
    Y[:, 2] = np.where(np.arange(len(Y)) % 2, 1, -1)
    with pytest.raises(InputError, match=r"'c' has no negative.*absent"):
        EnsembleClassifier(["a", "b", "c"]).fit(X, Y)
    Y[:, 2] = X[:, 3] < 0
    Y[4, 1] = 2
    with pytest.raises(InputError, match="row 4.*not 1"):
        EnsembleClassifier(["a", "b", "c"]).fit(X, Y)
    with pytest.raises(InputError, match="one label row per image"):
        EnsembleClassifier(["a", "b"]).fit(X, Y[:, :3])
    Y[4, 1] = 1
    Xbad = X.copy()
    Xbad[9, 5] = np.nan
    with pytest.raises(InputError, match="row 9.*NaN"):
        EnsembleClassifier(["a", "b", "c"]).fit(Xbad, Y)
    clf = EnsembleClassifier(["a", "b", "c"])
    with pytest.raises(InputError, match="not trained"):
        clf.predict(X)
    clf.fit(X, Y)
    with pytest.raises(InputError, match="expects"):
        clf.predict(X[:, :10])
    with pytest.raises(InputError, match="at least 1"):
        EnsembleConfig(n_members=0)
    with pytest.raises(InputError, match="positive number"):
        EnsembleConfig(C=-1)
    with pytest.raises(InputError, match="duplicate"):
        EnsembleClassifier(["a", "a"])


def test_dual_solver_extreme_separable_case():
    """Separable data, large feature scale and C = 1e6: reaches an objective at least as low as
    sklearn's (which warns about an ill-conditioned Hessian here) and a finite model."""
    import warnings

    rng = np.random.default_rng(11)
    X = rng.normal(size=(40, 100)) * 100
    y = (X[:, 0] > 0).astype(int)
    C = 1e6

    def objective(w, b):
        return 0.5 * w @ w + C * np.logaddexp(0, -(2 * y - 1) * (X @ w + b)).sum()

    alpha, b = fit_logistic_gram(X @ X.T, y, C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(X, y)
    ours, theirs = objective(X.T @ alpha, b), objective(sk.coef_[0], sk.intercept_[0])
    assert np.isfinite(ours) and ours <= theirs * (1 + 1e-6)
    assert ((X @ (X.T @ alpha) + b > 0) == (y == 1)).all()


def test_gram_block_gives_sub_blocks_and_refuses_rows_it_lacks():
    from napari_ish_annotator.core.learn.ensembles import GramBlock, gram_matrix

    rng = np.random.default_rng(0)
    X = rng.random((12, 40)).astype(np.float32)
    rows = np.array([0, 2, 3, 5, 8, 9, 11])
    block = GramBlock(rows, gram_matrix(X, rows))
    sub = np.array([2, 5, 11])
    np.testing.assert_allclose(block.take(sub, 12), gram_matrix(X, sub), rtol=1e-6)
    assert block.take(np.array([2, 4]), 12) is None  # row 4 is not in the block
    assert block.take(None, 12) is None  # "all rows": the block lacks some
    full = GramBlock(np.arange(12), gram_matrix(X))
    np.testing.assert_array_equal(full.take(None, 12), full.K)
