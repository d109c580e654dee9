"""An image that turns unreadable after opening is skipped at extraction, not fatal."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from _gui_helpers import TERMS, click, dock, make_dataset
from _gui_helpers import wait_done as _wait

pytestmark = pytest.mark.gui


def test_truncated_image_is_skipped_reported_and_never_classified(make_napari_viewer, qtbot,
                                                                   tmp_path):
    from napari_ish_annotator.widgets import session_of as get_session

    manifest = make_dataset(tmp_path / "data", n=10)
    viewer = make_napari_viewer()
    embryos, annotate, train = dock(viewer, "Embryos"), dock(viewer, "Annotate"), dock(viewer,
                                                                                       "Train")
    assert embryos.open_paths([manifest])
    session = get_session(viewer)
    assert session.skipped == () and embryos.skipped_label.text() == ""
    bad = session.paths[9]  # truncated after opening (e.g. a sync still writing it)
    bad.write_bytes(bad.read_bytes()[:100])
    annotate.model.set_settings(weights="random", input_size=64, layer="21", device="cpu")

    click(qtbot, annotate.model.extract_button)
    _wait(qtbot, annotate.model.runner)  # completes despite the bad image
    X = session.model.features
    assert np.isnan(X[9]).all() and np.isfinite(X[:9]).all()
    assert len(session.skipped) == 1 and bad.name in session.skipped[0]
    assert embryos.skipped_label.text().startswith("1 file(s) skipped")
    assert bad.name in embryos.skipped_label.toolTip()

    train.members_spin.setValue(3)
    click(qtbot, train.train_button)
    _wait(qtbot, train.runner)
    clf = session.model.bundle.classifier
    assert clf.vocabulary == list(TERMS)
    P = session.model.probabilities
    # the bundle's calibrated probabilities (core.calibration), as `ish-annotator predict`
    np.testing.assert_allclose(P[:9], session.model.bundle.predict_proba(X[:9]), rtol=1e-5, atol=1e-6)
    assert np.isnan(P[9]).all() and not session.model.votes[9].any()
    assert session.model.probabilities_for(9) == {} and session.model.predicted_for(9) == {}
    assert set(session.model.probabilities_for(3)) == set(TERMS)
    assert len(session.skipped) == 1  # reported once, not again when training reuses them

    # predicting with the model (features reused) and export leave the bad image out
    session.model.probabilities = None
    seen: list[np.ndarray] = []
    for name in ("decision_members",):  # what ModelBundle.predict_both scores rows with
        original = getattr(clf, name)

        def spy(X, _original=original):
            seen.append(np.asarray(X))
            return _original(X)

        setattr(clf, name, spy)
    click(qtbot, annotate.model.predict_button)
    _wait(qtbot, annotate.model.runner)
    np.testing.assert_array_equal(session.model.probabilities[:9], P[:9])
    assert np.isnan(session.model.probabilities[9]).all()
    assert seen and all(np.isfinite(x).all() for x in seen)  # NaN rows never classified
    assert sum(len(x) for x in seen) == 9
    out = tmp_path / "pred.csv"
    session.model.export_predictions(out)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == [str(p) for p in session.paths[:9]]
