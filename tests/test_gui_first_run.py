"""First run with one's own data, offline: the Model panel starts on a network whose weights
are on this computer (as ``ish-annotator demo`` does) and says why, deciding from files only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _gui_helpers import choose, dock
from napari_ish_annotator.core.backbones.hub_files import HUB_FILES, weights_cached
from napari_ish_annotator.core.backbones.specs import REGISTRY

VGG16_FILE = HUB_FILES["VGG16_Weights.IMAGENET1K_FEATURES"]


def offline_extra_installed() -> bool:
    return weights_cached("efficientnet_lite0")


def test_hub_file_names_are_torchvisions():
    """The table that spares importing torch names the files torch hub really downloads."""
    from torchvision.models import get_weight

    enums = {e for spec in REGISTRY.values() for e in spec.torchvision_weights.values()}
    assert enums <= set(HUB_FILES)
    for enum in enums:
        assert HUB_FILES[enum] == os.path.basename(get_weight(enum).url)


def test_cached_file_found_where_torch_hub_looks(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert not weights_cached("vgg16")
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    folder.mkdir(parents=True)
    (folder / VGG16_FILE).write_bytes(b"not read: only its presence counts")
    assert weights_cached("vgg16")
    assert not weights_cached("vgg16", "imagenet:V1")  # another file


def test_choice_never_imports_torch(tmp_path):
    code = ("import sys\n"
            "from napari_ish_annotator.session.first_run import first_run_model\n"
            "from napari_ish_annotator.session.results import SessionSettings\n"
            "choice = first_run_model(SessionSettings())\n"
            "assert choice is not None and 'VGG16' in choice.detail\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    env = dict(os.environ, TORCH_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.gui
@pytest.mark.skipif(not offline_extra_installed(), reason="needs the [offline] extra")
def test_offline_first_run_starts_on_efficientnet_and_says_so(make_napari_viewer, qtbot,
                                                              tmp_path, monkeypatch):
    from napari_ish_annotator.widgets import session_of as get_session

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    viewer = make_napari_viewer()
    model = dock(viewer, "Annotate").model
    session = get_session(viewer)
    assert model.backbone_combo.currentText() == "efficientnet_lite0"
    assert model.weights_combo.currentText() == "imagenet"
    assert model.layer_combo.currentText() == str(REGISTRY["efficientnet_lite0"].default_layer)
    assert (session.settings.backbone, session.settings.weights) == ("efficientnet_lite0",
                                                                     "imagenet")
    # a few words beside the Backbone box (the panel still fits 1366x768), the why on hover
    assert not model.first_run_label.isHidden()
    assert model.first_run_label.text() == "VGG16 weights absent"
    why = model.first_run_label.toolTip()
    assert "\n" not in why and "--" not in why
    assert "VGG16's ImageNet weights are not on this computer" in why
    assert "EfficientNet-Lite0" in why and "[offline] extra" in why

    # random weights need no download: the stand-in ends, back to the paper's VGG16
    choose(qtbot, model.weights_combo, "random")
    assert model.backbone_combo.currentText() == "vgg16"
    assert session.settings.backbone == "vgg16" and session.settings.weights == "random"
    assert model.layer_combo.currentText() == "21"
    assert model.first_run_label.isHidden()


@pytest.mark.gui
def test_cached_vgg16_keeps_vgg16(make_napari_viewer, tmp_path, monkeypatch):
    home = tmp_path / "torch"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    (home / "hub" / "checkpoints" / VGG16_FILE).write_bytes(b"fake: the choice never loads it")
    monkeypatch.setenv("TORCH_HOME", str(home))
    viewer = make_napari_viewer()
    model = dock(viewer, "Annotate").model
    assert model.backbone_combo.currentText() == "vgg16"
    assert model.first_run_label.isHidden()
