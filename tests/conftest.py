"""Shared fixtures. Add yours below; keep them small and fast."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_SIZE = (128, 256)  # (H, W) of the tiny synthetic embryos
TINY_N = 24


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of ``manifest.csv`` of 24 synthetic 128x256 stage 13-16 embryos (seed 0).

    The folder also holds ``images/``, ``masks/`` and ``vocabulary.txt`` (the ten built-in
    13-16 terms in order; the manifest's own first-appearance order may differ). Every term
    has >= 3 positive images; genes have 1-3 images. Treat it as read-only (session-scoped).
    """
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    return generate_dataset(root, TINY_N, stage="13-16", seed=0, size=TINY_SIZE)


@pytest.fixture(scope="session")
def tiny_vocabulary(tiny_dataset: Path) -> list[str]:
    """The vocabulary of :func:`tiny_dataset`, in built-in (prevalence) order."""
    return (tiny_dataset.parent / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture(autouse=True)
def _isolated_feature_cache(tmp_path, monkeypatch):
    """Every test gets its own default feature cache: nothing is read from or written to the
    user's ~/.cache, and no test sees another's cached features."""
    monkeypatch.setenv("ISH_ANNOTATOR_CACHE", str(tmp_path / "feature-cache"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """With GUI tests in the run, import torchvision first, the way the plugin does (triton
    kept out). Tests that call core steps directly, outside the panels' workers, would
    otherwise import it after a viewer loaded Mesa's LLVM, and triton's LLVM segfaults
    beside it; the plugin's own imports all go through ``triton_blocked``
    (tests/test_gui_torch_import.py checks them in a fresh process)."""
    if not any(item.get_closest_marker("gui") for item in session.items):
        return
    try:
        from napari_ish_annotator.widgets import triton_blocked
    except ImportError:  # the GUI extra is not installed: no viewer, no clash
        return
    with triton_blocked():
        import torchvision  # noqa: F401
