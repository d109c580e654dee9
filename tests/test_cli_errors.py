"""The `ish-annotator` command line when things go wrong: bad input, unwritable outputs,
signals, corrupt images, missing displays (exit 2 with one line, nothing half-written)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import _cli_helpers
from _cli_helpers import FAST
from napari_ish_annotator.cli import main

cli_data = _cli_helpers.cli_data  # the shared module-scoped fixtures
trained = _cli_helpers.trained


def test_bad_input_exits_2_with_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "broken.csv"
    bad.write_text("picture,labels\na.png,x\n")
    assert main(["train", str(bad), "--out", str(tmp_path / "m"), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.csv" in err
    assert main(["predict", str(tmp_path / "no-model"), str(tmp_path), "--out",
                 str(tmp_path / "p.csv"), "--quiet"]) == 2
    assert "no-model" in capsys.readouterr().err


def test_unknown_term_for_gradcam_exits_2(cli_data, trained, tmp_path, capsys):
    image = sorted((cli_data / "data" / "images").glob("*.png"))[0]
    code = main(["gradcam", str(trained), str(image), "--term", "wings", "--out",
                 str(tmp_path / "h.png"), "--quiet"])
    assert code == 2
    assert "wings" in capsys.readouterr().err


def test_console_script_reports_bad_input_without_traceback(tmp_path):
    missing = tmp_path / "missing.csv"
    result = subprocess.run(
        [sys.executable, "-m", "napari_ish_annotator.cli", "train", str(missing), "--out",
         str(tmp_path / "m")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "missing.csv" in result.stderr


def test_predict_holds_only_one_chunk_of_features_in_memory(cli_data, trained, tmp_path,
                                                             monkeypatch):
    """5,000 images x 401,408 floats would be 8 GB: predict must extract chunk by chunk."""
    from napari_ish_annotator.core.features.extractor import FeatureExtractor

    images_dir = cli_data / "data" / "images"
    whole = tmp_path / "whole.csv"
    assert main(["predict", str(trained), str(images_dir), "--out", str(whole),
                 "--cache", str(cli_data / "cache"), "--quiet"]) == 0
    sizes: list[int] = []
    original = FeatureExtractor.iter_extract

    def recording(self, images, out=None, **kwargs):
        sizes.append(len(list(images)))
        return original(self, images, out=out, **kwargs)

    monkeypatch.setattr(FeatureExtractor, "iter_extract", recording)
    chunked = tmp_path / "chunked.csv"
    assert main(["predict", str(trained), str(images_dir), "--out", str(chunked),
                 "--chunk-size", "7", "--cache", str(cli_data / "cache"), "--quiet"]) == 0
    n_images = len(list(images_dir.glob("*.png")))
    assert max(sizes) <= 7 and sum(sizes) == n_images
    assert chunked.read_text() == whole.read_text()


@pytest.mark.parametrize("command", ["predict-folder", "predict-under-file", "evaluate-json",
                                     "gradcam-npy", "train-out-file", "cache-file"])
def test_unwritable_output_fails_fast_with_exit_2(cli_data, trained, tmp_path, capsys,
                                                  monkeypatch, command):
    """A bad output path must be reported before any feature is extracted, in one line."""
    from napari_ish_annotator.core.features.extractor import FeatureExtractor

    def no_work(self, *args, **kwargs):
        raise AssertionError("features extracted before the output path was checked")

    monkeypatch.setattr(FeatureExtractor, "iter_extract", no_work)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    manifest = str(cli_data / "data" / "manifest.csv")
    image = str(sorted((cli_data / "data" / "images").glob("*.png"))[0])
    term = json.loads((trained / "model.json").read_text())["vocabulary"][0]
    argv, culprit = {
        "predict-folder": (["predict", str(trained), image, "--out", str(folder)], folder),
        "predict-under-file": (["predict", str(trained), image, "--out",
                                str(a_file / "p.csv")], a_file),
        "evaluate-json": (["evaluate", manifest, "--json", str(folder), *FAST], folder),
        "gradcam-npy": (["gradcam", str(trained), image, "--term", term, "--out",
                         str(tmp_path / "h.png"), "--npy", str(folder)], folder),
        "train-out-file": (["train", manifest, "--out", str(a_file), *FAST], a_file),
        "cache-file": (["train", manifest, "--out", str(tmp_path / "m"), "--cache", str(a_file),
                        *FAST], a_file),
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(culprit) in err, err
    assert not (tmp_path / "h.png").exists()


def test_atomic_write_onto_a_folder_is_an_input_error(tmp_path):
    from napari_ish_annotator.core.utils.errors import InputError
    from napari_ish_annotator.core.utils.files import write_png_atomic, write_text_atomic

    with pytest.raises(InputError, match="is a folder"):
        write_text_atomic(tmp_path, "x")
    with pytest.raises(InputError, match="is a folder"):
        write_png_atomic(tmp_path, np.zeros((4, 4, 3), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left behind


def test_gui_demo_without_a_display_exits_2_pointing_to_headless(monkeypatch, capsys):
    """Without X/Wayland, Qt aborts the process (exit 134); say what to do instead."""
    import napari_ish_annotator.demo as demo

    monkeypatch.setattr(demo.sys, "platform", "linux")
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(key, raising=False)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--headless" in err, err


def test_progress_bar_reaches_a_log_file_in_batch_jobs(cli_data, trained, tmp_path):
    """`predict ... 2> log` (stderr not a terminal) must still report progress there."""
    out = tmp_path / "pred.csv"
    result = subprocess.run(
        [sys.executable, "-m", "napari_ish_annotator.cli", "predict", str(trained),
         str(cli_data / "data" / "images"), "--out", str(out), "--cache",
         str(cli_data / "cache")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    n_images = len(list((cli_data / "data" / "images").glob("*.png")))
    assert f"{n_images}/{n_images}" in result.stderr  # tqdm's "done/total" at the end
    assert "predict" in result.stderr


def test_gui_demo_without_a_qt_binding_exits_2_naming_the_extra(monkeypatch, capsys):
    """`pip install napari-ish-annotator` alone brings napari but no Qt: say how to fix it."""
    import importlib.util

    import napari_ish_annotator.demo as demo

    real_find_spec = importlib.util.find_spec
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in (
        "PyQt5", "PyQt6", "PySide2", "PySide6") else real_find_spec(name, *a))
    assert not demo.has_qt_binding()
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[gui]" in err and "--headless" in err, err


def test_predict_no_cache_writes_no_features_to_disk(cli_data, trained, tmp_path,
                                                     monkeypatch):
    """Batch prediction of many images must be able to skip the ~0.8 MB/image cache."""
    images_dir = cli_data / "data" / "images"
    default_cache = tmp_path / "default-cache"
    monkeypatch.setenv("ISH_ANNOTATOR_CACHE", str(default_cache))
    cached, uncached = tmp_path / "cached.csv", tmp_path / "uncached.csv"
    assert main(["predict", str(trained), str(images_dir), "--out", str(cached),
                 "--cache", str(cli_data / "cache"), "--quiet"]) == 0
    assert main(["predict", str(trained), str(images_dir), "--out", str(uncached),
                 "--no-cache", "--quiet"]) == 0
    assert not default_cache.exists()
    assert uncached.read_text() == cached.read_text()


def test_predict_corrupt_image_stops_with_hint_or_is_skipped(cli_data, trained, tmp_path,
                                                             capsys):
    """A truncated PNG in a batch: exit 2 naming it, or with --skip-bad a warning and the rest."""
    folder = tmp_path / "batch"
    folder.mkdir()
    good = sorted((cli_data / "data" / "images").glob("*.png"))[:3]
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "zz_truncated.png").write_bytes(good[0].read_bytes()[:150])
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "pred.csv"
    argv = ["predict", str(trained), str(folder), "--out", str(out), "--cache",
            str(cli_data / "cache"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "zz_truncated.png" in err and "--skip-bad" in err
    assert not out.exists()
    assert main([*argv, "--skip-bad"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zz_truncated.png" in err[0] and "warning" in err[0], err
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [Path(r["image"]).name for r in rows] == [p.name for p in good]


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_during_extraction_exits_cleanly_without_partial_files(trained, tmp_path, sig,
                                                                     code):
    """Ctrl-C or a scheduler's SIGTERM mid-run: exit 130/143, no output, no temp files."""
    import signal

    from PIL import Image

    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(400):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"im{i:04d}.png")
    out, cache = tmp_path / "out" / "pred.csv", tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_ish_annotator.cli", "predict", str(trained), str(folder),
         "--out", str(out), "--cache", str(cache), "--chunk-size", "64"],
        stderr=subprocess.PIPE, text=True)
    seen = ""
    while "predict" not in seen:  # the bar's first draw: extraction has started
        char = proc.stderr.read(1)
        assert char, f"exited early: {seen}"
        seen += char
    proc.send_signal(getattr(signal, sig))
    err = seen + proc.stderr.read()
    assert proc.wait(timeout=120) == code, err
    assert "Traceback" not in err
    assert not out.exists() and not out.parent.exists()
    leftovers = [p for p in tmp_path.rglob(".*") if ".tmp" in p.name]
    assert leftovers == [], leftovers


def test_predict_refuses_to_overwrite_its_input_manifest(cli_data, trained, tmp_path, capsys):
    manifest = tmp_path / "batch.csv"
    image = sorted((cli_data / "data" / "images").glob("*.png"))[0]
    manifest.write_text(f"image\n{image}\n")
    before = manifest.read_text()
    assert main(["predict", str(trained), str(manifest), "--out", str(manifest), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "batch.csv" in err and "--out" in err
    assert manifest.read_text() == before


@pytest.mark.parametrize("argv", [["train"], ["predict", "m", "x", "--out", "p.csv", "--device",
                                              "gpu"], ["evaluate", "m.csv", "--test", "t.csv",
                                                       "--folds", "3"], []])
def test_usage_errors_are_one_line_with_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err and "--help" in err, err


def test_bad_layer_in_list_fails_before_any_extraction(cli_data, monkeypatch, capsys):
    """`--layers 17,99`: report 99 now, not after extracting and fitting layer 17."""
    from napari_ish_annotator.core.features.extractor import FeatureExtractor

    def no_work(self, *args, **kwargs):
        raise AssertionError("features extracted before the layers were checked")

    monkeypatch.setattr(FeatureExtractor, "iter_extract", no_work)
    assert main(["evaluate", str(cli_data / "data" / "manifest.csv"), "--layers", "17,99",
                 *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'99'" in err


def test_demo_with_too_few_images_says_so(tmp_path, capsys):
    assert main(["demo", "--headless", str(tmp_path / "out"), "--n-images", "3", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--n-images" in err, err


def test_predict_image_with_non_utf8_file_name(cli_data, trained, tmp_path):
    """Linux allows any bytes in names (e.g. latin-1 'é'); the CSV must still be written."""
    import os

    folder = tmp_path / "latin1"
    folder.mkdir()
    source = sorted((cli_data / "data" / "images").glob("*.png"))[0]
    name = os.fsencode(str(folder)) + b"/emb\xe9.png"
    try:
        with open(name, "wb") as fh:
            fh.write(source.read_bytes())
    except OSError:
        pytest.skip("this file system only accepts UTF-8 names")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(trained), str(folder), "--out", str(out), "--cache",
                 str(cli_data / "cache"), "--quiet"]) == 0
    lines = out.read_bytes().splitlines()
    assert len(lines) == 2 and lines[1].startswith(name)


def test_unusable_default_cache_warns_once_and_runs_uncached(cli_data, trained, tmp_path,
                                                              monkeypatch, capsys):
    """A read-only home must not stop a batch job (no traceback, no per-image noise)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    monkeypatch.setenv("ISH_ANNOTATOR_CACHE", str(a_file / "cache"))
    image = str(sorted((cli_data / "data" / "images").glob("*.png"))[0])
    out = tmp_path / "p.csv"
    assert main(["predict", str(trained), image, "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "warning" in err and str(a_file) in err, err
    assert out.exists()


def test_demo_prefers_a_qt6_binding_unless_the_user_chose_one(monkeypatch):
    """qtpy takes PyQt5 first where both are installed; napari deprecates it."""
    import importlib.util

    import napari_ish_annotator.demo as demo

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in (
        "PyQt5", "PyQt6") else None if name == "PySide6" else real_find_spec(name, *a))
    monkeypatch.delenv("QT_API", raising=False)
    demo.prefer_qt6()
    assert os.environ["QT_API"] == "pyqt6"
    monkeypatch.setenv("QT_API", "pyside6")  # the user's own choice stays
    demo.prefer_qt6()
    assert os.environ["QT_API"] == "pyside6"
