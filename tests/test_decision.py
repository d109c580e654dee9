"""The one decision rule (core.learn.decision) and the views that must agree with it."""

from __future__ import annotations

import numpy as np
import pytest

from _gui_helpers import TERMS, make_dataset
from napari_ish_annotator.core.learn.decision import (
    CALL_THRESHOLD,
    called_terms,
    calls,
    calls_text,
    uncertainty,
)


def test_calls_are_calibrated_p_at_or_above_the_threshold_and_never_nan():
    P = np.array([[0.11, 0.5, 0.49999, np.nan], [0.9, 0.0, 1.0, 0.5]])
    np.testing.assert_array_equal(calls(P), [[False, True, False, False],
                                             [True, False, True, True]])
    assert CALL_THRESHOLD == 0.5


def test_calls_text_joins_called_terms_in_vocabulary_order():
    vocab = ["ventral nerve cord", "hindgut", "brain"]
    assert calls_text(vocab, [0.7, 0.2, 0.95]) == "ventral nerve cord;brain"
    assert calls_text(vocab, [0.1, 0.2, np.nan]) == ""
    assert called_terms(vocab, [0.5, 0.5, 0.5]) == vocab
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        called_terms(vocab, [0.5, 0.5])


def test_uncertainty_peaks_at_the_threshold():
    u = uncertainty([0.5, 0.25, 0.0, 1.0, np.nan])
    np.testing.assert_allclose(u[:4], [1.0, 0.5, 0.0, 0.0])
    assert np.isnan(u[4])


def test_session_calls_follow_the_rule_not_the_vote(tmp_path):
    """The session's called_for (what the pred. column, the canvas and the Gallery show) is the
    rule on the calibrated p of a really trained model, even where its members' majority vote
    says otherwise."""
    from napari_ish_annotator.core.utils.progress import drive
    from napari_ish_annotator.session import AnnotatorSession, Predictions, steps

    session = AnnotatorSession(cache_dir=tmp_path / "cache")
    session.open([make_dataset(tmp_path / "data", n=8)])
    session.update_settings(weights="random", input_size=64, layer="21", device="cpu",
                            n_members=3)
    session.model.apply_trained(drive(steps.iter_train(session.model.train_request(cross_validate=False))))
    P = session.model.probabilities
    assert P is not None and P.shape == (8, len(TERMS))
    votes = ~calls(P)  # a vote that disagrees with the rule everywhere
    session.model.apply_predictions(Predictions(P, votes, session.generation))
    for i in range(8):
        called = session.model.called_for(i)
        assert called == {t: bool(P[i, k] >= 0.5) for k, t in enumerate(TERMS)}
        assert session.model.predicted_for(i) != called  # the vote is kept, but not as the call


def test_calls_texts_equal_calls_text_row_by_row():
    from napari_ish_annotator.core.learn.decision import calls_text, calls_texts

    rng = np.random.default_rng(3)
    P = rng.random((500, 4))
    P[7] = np.nan  # an unreadable image calls nothing
    vocab = ["a", "b", "c", "d"]
    assert calls_texts(vocab, P) == [calls_text(vocab, row) for row in P]
    assert calls_texts(vocab, np.empty((0, 4))) == []
