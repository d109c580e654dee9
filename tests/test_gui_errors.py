"""GUI errors lead with what is wrong and what to do in the panels' words, the file after.

The table walks real InputErrors raised by core/ and session/ functions the GUI calls (the
messages are shared with the command line, whose advice names options); the GUI test clicks
buttons that fail and reads the notifications.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from _gui_helpers import click, dock, make_dataset
from napari_ish_annotator.core.backbones.builders import EFFICIENTNET_LITE0_WEIGHTS
from napari_ish_annotator.core.backbones.devices import resolve_device
from napari_ish_annotator.core.backbones.weights import load_backbone
from napari_ish_annotator.core.data.budget import too_large
from napari_ish_annotator.core.export.model import load_exportable
from napari_ish_annotator.core.learn.bundle import FORMAT, FORMAT_VERSION, MODEL_JSON, load_bundle
from napari_ish_annotator.core.learn.logistic import EnsembleConfig
from napari_ish_annotator.core.learn.splits import grouped_folds
from napari_ish_annotator.core.utils.errors import InputError
from napari_ish_annotator.session import AnnotatorSession
from napari_ish_annotator.session.model_outputs import spread_request
from napari_ish_annotator.widgets import error_text, gui_words
from napari_ish_annotator.widgets import session_of as get_session

ADVICE = re.compile(r"\b(choose|use|set|install|reinstall|label|untick|start|raise|crop|open|"
                    r"train|download|upgrade|add|free)\b")


def no_cli_options(text: str) -> bool:
    """No ``--option`` outside a pip command (pip's own options are what the user types)."""
    return "--" not in re.sub(r"pip install [^;)]*", "", text)


def raised(func: Callable[[], object]) -> InputError:
    with pytest.raises(InputError) as info:
        func()
    return info.value


def _download_fails(tmp_path, monkeypatch) -> InputError:
    import torch


    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*_a, **_k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return raised(lambda: load_backbone("vgg16", "imagenet"))


def _other_backbones_checkpoint(tmp_path, _mp) -> InputError:
    import torch


    ckpt = tmp_path / "resnet.pt"
    torch.save({"backbone": "resnet50", "backbone_state_dict": {}}, ckpt)
    return raised(lambda: load_backbone("vgg16", str(ckpt)))


def _cuda_asked(_t, _mp) -> InputError:
    import torch


    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    return raised(lambda: resolve_device("cuda"))


def _offline_package_missing(_t, monkeypatch) -> InputError:

    monkeypatch.setitem(sys.modules, EFFICIENTNET_LITE0_WEIGHTS.module, None)  # not installed
    return raised(EFFICIENTNET_LITE0_WEIGHTS.path)


def _efficientnet_package_missing(_t, monkeypatch) -> InputError:

    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    return raised(lambda: load_backbone("efficientnet_lite0", "random"))


def _not_a_model_folder(tmp_path, _mp) -> InputError:

    return raised(lambda: load_bundle(tmp_path))


def _model_for_another_backbone(tmp_path, _mp) -> InputError:

    (tmp_path / MODEL_JSON).write_text(json.dumps({
        "format": FORMAT, "format_version": FORMAT_VERSION, "vocabulary": ["midgut"],
        "n_features": 4, "ensemble": {"n_members": 1, "C": 1.0, "seed": 0, "normalize": True},
        "backbone": "resnet50", "layer": "layer3"}))
    return raised(lambda: load_bundle(tmp_path, expect_backbone="vgg16"))


def _no_model_to_export(tmp_path, _mp) -> InputError:

    return raised(lambda: load_exportable(tmp_path / "gone"))


def _no_ensemble_in_use(_t, _mp) -> InputError:
    return raised(lambda: spread_request(AnnotatorSession()))


def _ensemble_size(_t, _mp) -> InputError:

    return raised(lambda: EnsembleConfig(n_members=0))


def _too_few_genes_for_folds(_t, _mp) -> InputError:

    return raised(lambda: grouped_folds([0, 0, 1, 1], 5))


def _image_too_large(tmp_path, _mp) -> InputError:

    return too_large(tmp_path / "huge.tif", 10**10, "100000x100000")


CASES = {f.__name__.lstrip("_"): f for f in (
    _download_fails, _other_backbones_checkpoint, _cuda_asked, _offline_package_missing,
    _efficientnet_package_missing, _not_a_model_folder, _model_for_another_backbone,
    _no_model_to_export, _no_ensemble_in_use, _ensemble_size, _too_few_genes_for_folds,
    _image_too_large)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_error_the_gui_can_show_reads_as_panel_advice(case, tmp_path, monkeypatch):
    exc = CASES[case](tmp_path, monkeypatch)
    text = error_text(exc)
    first, *rest = text.split("\n")
    assert no_cli_options(text), text
    assert ADVICE.search(first), f"no advice in {first!r}"
    if exc.path is not None:
        assert rest == [str(exc.path) + (f", row {exc.row}" if exc.row is not None else "")]
        assert not first.startswith(str(exc.path))
    else:
        assert rest == []


def test_presenter_rules():
    assert gui_words("use --device auto or --device cpu") == \
        "choose Device auto or cpu in the Model panel"
    assert gui_words("pass --backbone resnet50") == "choose Backbone resnet50 in the Model panel"
    # an option nobody wrote a rule for yet still never shows as "--option"
    assert gui_words("give --new-thing 3") == "give the new-thing setting 3"
    # pip's own options are what the user types: kept
    assert "--force-reinstall" in gui_words("pip install 'x[offline]' --force-reinstall")
    row = error_text(InputError("bad term; fix it", path="a.csv", row=3))
    assert row == "bad term; fix it\na.csv, row 3"


def _notifications_since(before: int) -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records[before:]]


@pytest.mark.gui
def test_clicked_errors_lead_with_advice_and_end_with_the_path(make_napari_viewer, qtbot,
                                                               tmp_path, monkeypatch):
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QFileDialog

    manifest = make_dataset(tmp_path / "data")
    viewer = make_napari_viewer()
    embryos, annotate, train = (dock(viewer, n) for n in ("Embryos", "Annotate", "Train"))
    assert embryos.open_paths([manifest])

    before = len(notification_manager.records)
    click(qtbot, train.spread_button)  # no fine-tuned ensemble in use
    assert not train.runner.running
    (spread,) = _notifications_since(before)
    assert spread.startswith("no fine-tuned model is in use; choose a fine-tuned ensemble")
    assert "\n" not in spread and no_cli_options(spread)

    annotate.model.new_term_edit.setFocus()
    qtbot.keyClicks(annotate.model.new_term_edit, "midgut")
    click(qtbot, annotate.model.add_term_button)  # a term nothing is labelled with yet
    before = len(notification_manager.records)
    click(qtbot, train.train_button)
    assert not train.runner.running
    (untrainable,) = _notifications_since(before)
    assert untrainable.startswith("cannot train: every term needs")
    assert untrainable.endswith("midgut (0 present, 0 absent); label more images or remove "
                                "those terms")
    assert "\n" not in untrainable and no_cli_options(untrainable)

    not_a_model = tmp_path / "not a model"
    not_a_model.mkdir()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda *a, **k: str(not_a_model)))
    before = len(notification_manager.records)
    click(qtbot, annotate.model.load_model_button)
    (load,) = _notifications_since(before)
    first, last = load.split("\n")
    assert first.startswith("not a model folder") and "Save model…" in first
    assert no_cli_options(load)
    assert Path(last) == not_a_model
    assert get_session(viewer).model.bundle is None
