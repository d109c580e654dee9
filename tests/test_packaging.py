"""The plugin is discoverable by napari: a valid npe2 manifest, shipped inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_npe2_manifest_validates_and_every_command_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-ish-annotator")
    manifest.validate_imports()  # every python_name resolves to a real callable
    kinds = manifest.contributions
    assert {w.display_name for w in kinds.widgets} == {"ISH Annotator", "Embryos", "Annotate",
                                                         "Explain", "Train", "Gallery"}
    assert kinds.readers and kinds.writers and kinds.sample_data
    result = subprocess.run(["npe2", "validate", "napari-ish-annotator"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_top_level_manifest_is_the_packaged_one():
    top = ROOT / "napari.yaml"
    assert top.is_symlink() or top.is_file()
    assert top.read_text() == (ROOT / "src" / "napari_ish_annotator" / "napari.yaml").read_text()


def test_wheel_ships_manifest_entry_point_and_console_script(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("napari_ish_annotator-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_ish_annotator/napari.yaml" in names
        assert "napari_ish_annotator/data/flyexpress_stats.json" in names
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "napari_ish_annotator:napari.yaml" in entry_points
    assert "ish-annotator = napari_ish_annotator.cli:main" in entry_points
