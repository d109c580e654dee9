"""The Train panel's "Continue from the current network" (issue 27): disabled until a
fine-tuned network is in use, then a run that continues it (tiny random-weight runs)."""

from __future__ import annotations

import hashlib

import pytest

from _gui_helpers import (
    choose,
    choose_small_model,
    click,
    make_dataset,
    open_annotator,
    type_value,
    wait_done,
)

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def _tiny_finetuning(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    """8 embryos opened in the ISH Annotator, a small model picked and the fine-tuning
    section set to one epoch of batches of 4 on the CPU, by the controls' keys."""
    manifest = make_dataset(tmp_path / "data", n=8)
    _, annotator, session, watch = open_annotator(qtbot, make_napari_viewer, manifest,
                                                  monkeypatch)
    sec = annotator.train.finetune
    choose_small_model(qtbot, annotator.model, annotator.train)
    type_value(qtbot, sec.epochs_spin, 1)
    type_value(qtbot, sec.batch_spin, 4)
    choose(qtbot, sec.device_combo, "cpu")
    return annotator, session, watch


def test_continue_from_the_current_network_records_what_it_continued(
        make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_ish_annotator.core.finetune.checkpoint import load_checkpoint

    annotator, session, watch = _tiny_finetuning(qtbot, make_napari_viewer, tmp_path,
                                                 monkeypatch)
    train = annotator.train
    sec = train.finetune
    choose(qtbot, sec.frozen_combo, next(sec.frozen_combo.itemText(i)
                                         for i in range(sec.frozen_combo.count())
                                         if sec.frozen_combo.itemData(i) == "all"))
    click(qtbot, sec.augment_check)
    assert not sec.augment_check.isChecked()

    # nothing to continue yet: disabled, and the tooltip says why
    assert not sec.continue_check.isEnabled()
    assert "no fine-tuned network" in sec.continue_check.toolTip()
    click(qtbot, sec.start_button)
    assert sec.runner.running, sec.summary.text()
    wait_done(qtbot, sec.runner, timeout=300_000)
    first = sec.checkpoint
    assert session.model.finetuned == first and first.exists()
    assert "continued_from" not in load_checkpoint(first)

    assert sec.continue_check.isEnabled() and first.name in sec.continue_check.toolTip()
    click(qtbot, sec.continue_check)
    assert sec.continue_check.isChecked() and sec.start_button.text() == "Continue fine-tuning"
    click(qtbot, sec.start_button)
    # a warm tiny run may already be over when the click returns: the summary says which
    # network was continued while it runs and after it finished
    assert (f"continuing {first.name}" in sec.summary.text()
            or f"continued {first.name}" in sec.summary.text()), sec.summary.text()
    wait_done(qtbot, sec.runner, timeout=300_000)
    assert sec.summary.text().startswith(f"continued {first.name}: fine-tuned 1 epochs")
    second = sec.checkpoint
    assert second != first and session.model.finetuned == second
    ckpt = load_checkpoint(second)
    assert ckpt["continued_from"]["file"] == first.name
    assert ckpt["continued_from"]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert str(tmp_path) not in str(ckpt["continued_from"])  # no machine path
    assert session.model.bundle.extractor.weights == str(second)
    assert watch.problems() == []


def test_continue_a_checkpoint_chosen_as_weights(make_napari_viewer, qtbot, tmp_path,
                                                 monkeypatch):
    """A network fine-tuned elsewhere (`ish-annotator finetune`), chosen with Weights file…
    and trained on, is the network Continue starts from, as its tooltip promises."""
    from qtpy.QtWidgets import QFileDialog

    from napari_ish_annotator.core.finetune import FinetuneConfig, finetune
    from napari_ish_annotator.core.finetune.checkpoint import load_checkpoint

    annotator, session, watch = _tiny_finetuning(qtbot, make_napari_viewer, tmp_path,
                                                 monkeypatch)
    model, train = annotator.model, annotator.train
    sec = train.finetune
    ckpt = tmp_path / "elsewhere.pt"
    finetune(list(session.paths), session.labels.label_matrix().copy(), list(session.vocabulary),
             FinetuneConfig(backbone="vgg16", weights="random", input_size=64, epochs=1,
                            batch_size=4, frozen="all", augment=False, device="cpu", seed=0),
             ckpt, groups=session.dataset.groups())
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *_a, **_k: (str(ckpt), "")))
    click(qtbot, model.weights_file_button)
    click(qtbot, train.train_button)
    wait_done(qtbot, train.runner)
    assert session.model.finetuned is None and session.model.bundle.extractor.weights == str(ckpt)

    assert sec.continue_check.isEnabled() and ckpt.name in sec.continue_check.toolTip()
    click(qtbot, sec.continue_check)
    click(qtbot, sec.start_button)
    wait_done(qtbot, sec.runner, timeout=300_000)
    assert sec.summary.text().startswith(f"continued {ckpt.name}: fine-tuned 1 epochs")
    ckpt2 = load_checkpoint(sec.checkpoint)
    assert ckpt2["continued_from"]["file"] == ckpt.name and session.model.finetuned == sec.checkpoint
    assert watch.problems() == []
