"""Atomic writes keep the permissions a plain write would give (outputs are shared)."""

from __future__ import annotations

import os
import stat

from napari_ish_annotator.core.utils.files import write_npy_atomic, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_file_gets_umask_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "predictions.csv"
        write_text_atomic(target, "image,a\n")
        assert _mode(target) == 0o644  # mkstemp alone would leave 0600
        write_npy_atomic(tmp_path / "heat.npy", __import__("numpy").zeros(3))
        assert _mode(tmp_path / "heat.npy") == 0o644
    finally:
        os.umask(old)


def test_rewrite_keeps_existing_file_mode(tmp_path):
    target = tmp_path / "labels.csv"
    target.write_text("old")
    os.chmod(target, 0o640)
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert _mode(target) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["labels.csv"]  # no temp file left
