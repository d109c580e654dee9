"""The Train panel's per-term AUC chart after a CV run (issue 27), driven by clicks and keys."""

from __future__ import annotations

import pytest

from _gui_helpers import (
    TERMS,
    choose_small_model,
    click,
    make_dataset,
    open_annotator,
    press,
    wait_done,
)

pytestmark = pytest.mark.gui


def test_cv_run_shows_the_auc_of_every_scored_term(make_napari_viewer, qtbot, tmp_path,
                                                   monkeypatch):
    manifest = make_dataset(tmp_path / "data", n=8)  # 4 genes; every term 4 present, 4 absent
    viewer, annotator, session, watch = open_annotator(qtbot, make_napari_viewer, manifest,
                                                       monkeypatch)
    model, train = annotator.model, annotator.train
    chart = train.cv_chart
    assert chart.canvas is None and "cross-validated" in chart.note.text()
    choose_small_model(qtbot, model, train)
    # a fourth term with one present and one absent label: trainable, too few to score
    qtbot.keyClicks(model.new_term_edit, "midgut")
    click(qtbot, model.add_term_button)
    press(viewer, "4")
    press(viewer, "n")
    press(viewer, "4")
    press(viewer, "4")
    assert session.model.training_counts()["midgut"] == (1, 1)
    assert train.cv_check.isChecked()

    click(qtbot, train.train_button)
    wait_done(qtbot, train.runner)
    auc = session.model.train_report.auc
    assert len(auc) >= 2 and set(auc) <= set(TERMS)
    assert chart.canvas is not None and chart.canvas.isVisible()
    assert chart.drawn == sorted(auc, key=auc.get)  # lowest AUC first
    ax = chart.figure.axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == pytest.approx([auc[t] for t in chart.drawn])
    assert [t.get_text() for t in ax.get_yticklabels()] == chart.drawn
    # whiskers: the std over the gene folds of each fold's AUC (0 where < 2 folds scored it)
    std = session.model.train_report.auc_std
    assert std and set(std) <= set(auc) and all(v >= 0 for v in std.values())
    from matplotlib.container import ErrorbarContainer

    whiskers = next(c for c in ax.containers if isinstance(c, ErrorbarContainer))
    segments = whiskers.lines[2][0].get_segments()
    half = [(seg[1][0] - seg[0][0]) / 2 for seg in segments]
    assert half == pytest.approx([std.get(t, 0.0) for t in chart.drawn])
    table = {train.table.item(r, 0).text(): train.table.item(r, 3).text()
             for r in range(train.table.rowCount())}
    for term in auc:  # the same figure as the table's CV AUC column
        assert table[term] == f"{auc[term]:.2f}"
    for term in ["midgut", *(t for t in TERMS if t not in auc)]:  # named, not drawn as 0
        assert term in chart.note.text() and term not in chart.drawn
        assert table[term] == "–"

    click(qtbot, train.cv_check)  # without CV: no chart
    click(qtbot, train.train_button)
    wait_done(qtbot, train.runner)
    assert not chart.canvas.isVisible() and chart.drawn == []
    assert watch.problems() == []
