"""Model folders and bioimage.io packages from other labs are untrusted (issue 18, item 5).

A bundle's model.json may only name files inside the bundle; a received package's own Python
(its ``network.py``) never runs unless the caller trusts it; exported packages carry neither
the OS account name nor this machine's paths.
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_ish_annotator.cli import main
from napari_ish_annotator.core.data.manifest import read_manifest
from napari_ish_annotator.core.learn.bundle import load_bundle
from napari_ish_annotator.core.utils.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> Path:
    """A real (random-weights, 64 px) bundle trained by the CLI, read-only for the tests."""
    out = tmp_path_factory.mktemp("hostile") / "model"
    assert main(["train", str(tiny_dataset), "--out", str(out), "--ensemble", "3", "-q",
                 "--no-cache", "--weights", "random", "--input-size", "64"]) == 0
    return out


def _copy(trained: Path, tmp_path: Path, arrays: str) -> Path:
    model = tmp_path / "received" / "model"
    shutil.copytree(trained, model)
    info = json.loads((model / "model.json").read_text())
    info["arrays"] = arrays
    (model / "model.json").write_text(json.dumps(info))
    return model


def _one_line_exit_2(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("arrays, why", [
    ("/etc/passwd", "absolute path"),
    ("../x.npz", "climbs out"),
    ("sub/../../x.npz", "climbs out"),
    ("link.npz", "leads out"),
])
def test_bundle_naming_a_file_outside_itself_is_refused(trained, tiny_dataset, tmp_path,
                                                        capsys, monkeypatch, arrays, why):
    model = _copy(trained, tmp_path, arrays)
    outside = tmp_path / "received" / "x.npz"  # a valid copy: were it opened, predict would work
    shutil.copyfile(trained / "classifiers.npz", outside)
    (model / "link.npz").symlink_to(outside)
    opened: list[str] = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda f, *a, **k: opened.append(str(f)) or real_load(f, *a, **k))
    image = read_manifest(tiny_dataset).paths[0]
    err = _one_line_exit_2(capsys, ["predict", str(model), str(image), "--out",
                                    str(tmp_path / "p.csv"), "-q", "--no-cache"])
    assert why in err and str(model) in err and "arrays" in err
    assert opened == [] and not (tmp_path / "p.csv").exists()
    with pytest.raises(InputError, match=why):
        load_bundle(model)
    assert opened == []


def test_model_json_linking_out_is_refused(trained, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(trained, model)
    outside = tmp_path / "elsewhere.json"
    shutil.move(model / "model.json", outside)
    (model / "model.json").symlink_to(outside)
    err = _one_line_exit_2(capsys, ["export", str(model), "--out", str(tmp_path / "m.zip"),
                                    "-q", "--no-test"])
    assert "leads out" in err and not (tmp_path / "m.zip").exists()


def test_bundle_with_files_in_a_subfolder_still_loads(trained, tmp_path):
    model = _copy(trained, tmp_path, "arrays/classifiers.npz")
    (model / "arrays").mkdir()
    shutil.move(model / "classifiers.npz", model / "arrays" / "classifiers.npz")
    assert load_bundle(model).classifier.vocabulary


# ----------------------------------------------------------------------------- packages

@pytest.fixture(scope="module")
def package(trained, tmp_path_factory) -> Path:
    if os.environ.get("ISH_TEST_REQUIRE_EXTRAS"):
        import bioimageio.core  # noqa: F401 - the test run promises the extra: fail, not skip
    else:
        pytest.importorskip("bioimageio.core", reason="bioimageio extra not installed")
    out = tmp_path_factory.mktemp("pkg") / "model.zip"
    assert main(["export", str(trained), "--out", str(out), "-q", "--no-test"]) == 0
    return out


HOSTILE_NETWORK = """
from pathlib import Path
Path({marker!r}).write_text("the package's code ran")
from napari_ish_annotator.core.export.network import build_network  # noqa: E402,F401
"""


def _hostile(package: Path, tmp_path: Path, marker: Path, torchscript: bool) -> Path:
    """The package with a network.py that writes ``marker`` when imported; without
    ``torchscript`` its rdf.yaml offers only the state dict (which needs network.py)."""
    code = HOSTILE_NETWORK.format(marker=str(marker)).encode()
    out = tmp_path / "hostile.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w") as dst:
        old = hashlib.sha256(src.read("network.py")).hexdigest()
        for name in src.namelist():
            data = src.read(name)
            if name == "network.py":
                data = code
            elif name == "rdf.yaml":
                text = data.decode().replace(old, hashlib.sha256(code).hexdigest())
                if not torchscript:
                    text = re.sub(r"\n  torchscript:\n(    .*\n)+", "\n", text)
                    assert "torchscript:" not in text
                data = text.encode()
            dst.writestr(name, data)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("torchscript", [False, True])
def test_package_python_runs_only_with_trust(package, trained, tmp_path, tiny_dataset,
                                             torchscript):
    """Without trust_code neither the package's network.py nor its TorchScript runs: this
    project's own network code is filled from the package's state dict (issue 24, item 1)."""
    from napari_ish_annotator.core.data.images import read_rgb
    from napari_ish_annotator.core.export.packages import predict_package

    marker = tmp_path / "marker.txt"
    hostile = _hostile(package, tmp_path, marker, torchscript=torchscript)
    images = [read_rgb(p) for p in read_manifest(tiny_dataset).paths[:2]]
    got = predict_package(hostile, images)
    assert not marker.exists()
    np.testing.assert_allclose(got, predict_package(package, images), atol=1e-6)
    if torchscript:
        return
    # trusted explicitly: bioimageio.core imports the package's architecture (documented)
    trusted = predict_package(hostile, images[:1], trust_code=True)
    assert trusted.shape == (1, len(load_bundle(trained).classifier.vocabulary))
    assert marker.read_text() == "the package's code ran"


@pytest.mark.slow
def test_exported_package_names_no_user_and_no_machine_path(package, trained):
    """Every member of the zip, decompressed, and the zip's own bytes."""
    user = getpass.getuser()
    needles = {str(ROOT), os.getcwd(), str(Path.home()), str(trained.parent),
               str(Path(np.__file__).parents[1])}  # site-packages
    needles = {n.encode() for n in needles if len(n) > 1}
    blobs = [package.read_bytes()]
    with zipfile.ZipFile(package) as zf:
        rdf = zf.read("rdf.yaml").decode()
        for name in zf.namelist():
            data = zf.read(name)
            blobs.append(data)
            if name.endswith((".pt", ".zip")):  # TorchScript: a zip inside the zip
                with zipfile.ZipFile(io.BytesIO(data)) as inner:
                    assert not [n for n in inner.namelist() if n.endswith(".debug_pkl")]
                    blobs += [inner.read(n) for n in inner.namelist()]
    for blob in blobs:
        for needle in needles:
            assert needle not in blob, needle
        assert f"/{user}/".encode() not in blob and f"{user}@".encode() not in blob
    assert "authors:" not in rdf or not re.search(rf"name:\s*{re.escape(user)}\s*$", rdf, re.M)


# ----------------------------------------------------------------------------- issue 24: sizes, JSON, weights

def _edit_json(trained: Path, tmp_path: Path, edit) -> Path:
    model = tmp_path / "received" / "model"
    shutil.copytree(trained, model)
    text = (model / "model.json").read_text()
    (model / "model.json").write_text(edit(text) if callable(edit) else edit)
    return model


def _predict_err(capsys, model: Path, tiny_dataset, tmp_path) -> str:
    image = read_manifest(tiny_dataset).paths[0]
    err = _one_line_exit_2(capsys, ["predict", str(model), str(image), "--out",
                                    str(tmp_path / "p.csv"), "-q", "--no-cache"])
    assert not (tmp_path / "p.csv").exists()
    return err


@pytest.mark.parametrize("weights, why", [
    ("/etc/passwd", "absolute path"),
    ("../w.pt", "climbs out"),
    ("link.pt", "leads out"),
])
def test_bundle_weights_naming_a_file_outside_is_refused_unopened(
        trained, tiny_dataset, tmp_path, capsys, monkeypatch, weights, why):
    model = _edit_json(trained, tmp_path, lambda t: t.replace('"weights": "random"',
                                                              f'"weights": "{weights}"'))
    (tmp_path / "received" / "w.pt").write_bytes(b"outside")
    (model / "link.pt").symlink_to(tmp_path / "received" / "w.pt")
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(str(p))
                        or real_open(p, *a, **k))
    err = _predict_err(capsys, model, tiny_dataset, tmp_path)
    assert why in err and '"weights"' in err
    assert not [p for p in opened if p.endswith(("passwd", "w.pt"))]


def test_weights_file_travels_inside_the_bundle(tmp_path):
    from napari_ish_annotator.core.features.extractor import ExtractorConfig
    from napari_ish_annotator.core.learn.bundle import ModelBundle, save_bundle
    from napari_ish_annotator.core.learn.ensembles import EnsembleClassifier
    from napari_ish_annotator.core.learn.logistic import EnsembleConfig

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 16)).astype(np.float32)
    clf = EnsembleClassifier(["a"], EnsembleConfig(n_members=2)).fit(X, (X[:, :1] > 0)
                                                                      .astype(np.int8))
    weights = tmp_path / "elsewhere" / "ckpt.pt"
    weights.parent.mkdir()
    weights.write_bytes(b"weights bytes")
    ext = ExtractorConfig(backbone="vgg16", weights=str(weights), layer="21", input_size=64)
    save_bundle(tmp_path / "m", ModelBundle(ext, clf, {"weights_id": "file:sha256=x"}))
    info = json.loads((tmp_path / "m" / "model.json").read_text())
    assert info["weights"] == "weights.pt" and str(tmp_path) not in json.dumps(info)
    assert (tmp_path / "m" / "weights.pt").read_bytes() == b"weights bytes"
    assert load_bundle(tmp_path / "m").extractor.weights == str(tmp_path / "m" / "weights.pt")


@pytest.mark.parametrize("edit, why", [
    (lambda t: re.sub(r'"n_features": \d+', '"n_features": 7000000', t), "at most"),
    (lambda t: re.sub(r'"input_size": \d+', '"input_size": 60000', t), "outside 1..2048"),
    (lambda t: t.replace('"ensemble": {', '"ensemble": {"x": ' + "[" * 200_000 + "]" * 200_000
                         + ","), "nested too deeply"),
    (lambda t: re.sub(r'"positives": \d+', '"positives": Infinity', t, count=1), "Infinity"),
    (lambda t: re.sub(r'"seed": \d+', '"seed": 1e999', t, count=1), "out of range"),
    (lambda t: re.sub(r'"positives": \d+', '"positives": 1.5', t, count=1), "whole number"),
    (lambda t: re.sub(r'"training": \{', '"training": [], "x": {', t, count=1), "garbles"),
    (lambda t: re.sub(r'"n_members": \d+', '"n_members": 9999', t), "over the|at most"),
])
def test_impossible_model_json_is_one_line_before_reading_arrays(
        trained, tiny_dataset, tmp_path, capsys, edit, why):
    model = _edit_json(trained, tmp_path, edit)
    assert (model / "model.json").read_text() != (trained / "model.json").read_text()
    err = _predict_err(capsys, model, tiny_dataset, tmp_path)
    assert re.search(why, err), err


@pytest.mark.parametrize("vocabulary", [[], ["a", "a"], [{"x": 1}, {"x": 1}]],
                         ids=["empty", "a-term-twice", "the-same-object-twice"])
def test_a_vocabulary_without_distinct_terms_names_the_model_file(trained, tmp_path,
                                                                  vocabulary):
    """Found by the long fuzz run: a term listed twice was refused by the classifier itself,
    in a message without the model's path (and with the whole hostile list in it)."""
    def edit(text: str) -> str:
        info = json.loads(text)
        info["vocabulary"] = vocabulary
        return json.dumps(info)

    model = _edit_json(trained, tmp_path, edit)
    with pytest.raises(InputError, match="vocabulary") as caught:
        load_bundle(model)
    assert str(caught.value).startswith(str(model / "model.json"))
    assert "\n" not in str(caught.value) and "{" not in str(caught.value)


def _npy_header(shape: tuple[int, ...]) -> bytes:
    header = repr({"descr": "<f4", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@pytest.mark.parametrize("member, why", [
    ("huge-header", "has shape"),          # header claims 3 GB before any data is read
    ("short-data", "declares"),            # the right header over too little data
    ("deflated", "has shape"),             # a deflated record that would inflate
])
def test_npz_headers_are_checked_against_model_json_first(trained, tmp_path, member, why):
    import tracemalloc

    model = _copy(trained, tmp_path, "classifiers.npz")
    info = json.loads((model / "model.json").read_text())
    m, d = info["ensemble"]["n_members"], info["n_features"]
    with zipfile.ZipFile(trained / "classifiers.npz") as src, \
            zipfile.ZipFile(model / "classifiers.npz", "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "coef__0.npy":
                if member == "huge-header":
                    data = _npy_header((m, 250_000_000)) + b"\0" * 64
                elif member == "short-data":
                    data = _npy_header((m, d)) + b"\0" * 64
                else:
                    dst.writestr(name, _npy_header((20_000, 40_000)) + bytes(8 * 10**6),
                                 zipfile.ZIP_DEFLATED)
                    continue
            dst.writestr(name, data)
    load_bundle(trained)  # imports done: measure what the hostile file makes us allocate
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=why) as err:
            load_bundle(model)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "coef__0" in str(err.value) and "\n" not in str(err.value) and peak < 10e6


# ----------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict:
    """A real, complete fine-tuning checkpoint's contents (random VGG16 trunk, 2 terms)."""
    from napari_ish_annotator.core.backbones.weights import load_backbone
    from napari_ish_annotator.core.finetune.config import FORMAT
    from napari_ish_annotator.core.finetune.network import build_head

    return {"format": FORMAT, "backbone": "vgg16",
            "backbone_state_dict": load_backbone("vgg16", "random", 0).module.state_dict(),
            "head_state_dict": build_head(512, 2, 16, 0.0, 1).state_dict(),
            "vocabulary": ["a", "b"], "input_size": 64,
            "head": {"in_features": 512, "hidden": 16, "dropout": 0.0, "pool": 1},
            "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                              "pixel_scale": 1.0}}


def _deflated(path: Path) -> None:
    data = {i.filename: zipfile.ZipFile(path).read(i) for i in zipfile.ZipFile(path).infolist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, blob in data.items():
            zf.writestr(name, blob)


class _Reduce:
    def __reduce__(self):
        return (print, ("a pickle ran code",))


@pytest.mark.parametrize("case, why", [
    ("legacy-pickle", "bare pickle"),
    ("deflated", "compressed records"),
    ("reduce", "Python objects"),
    ("hidden-122070", "do not fit"),
    ("nan-normalisation", "normalisation"),
    ("short-normalisation", "normalisation"),
    ("input-60000", "outside 1..2048"),
    ("vocabulary", "vocabulary"),
    ("infinite-dropout", "impossible sizes"),
])
def test_hostile_checkpoints_are_one_line(checkpoint, tmp_path, capsys, case, why):
    import resource

    import torch

    from napari_ish_annotator.core.finetune import load_finetuned

    ckpt = dict(checkpoint, head=dict(checkpoint["head"]),
                normalisation=dict(checkpoint["normalisation"]))
    path = tmp_path / "ckpt.pt"
    if case == "legacy-pickle":
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    elif case == "reduce":
        torch.save(dict(ckpt, metrics=_Reduce()), path)
    else:
        if case == "hidden-122070":
            ckpt["head"].update(hidden=122_070, pool=4)  # 4 GB if it were built
        elif case == "nan-normalisation":
            ckpt["normalisation"]["std"] = [0.2, float("nan"), 0.2]
        elif case == "short-normalisation":
            ckpt["normalisation"]["mean"] = [0.5, 0.5]
        elif case == "input-60000":
            ckpt["input_size"] = 60_000
        elif case == "vocabulary":
            ckpt["vocabulary"] = {"a": 1}
        elif case == "infinite-dropout":
            ckpt["head"]["dropout"] = float("inf")
        torch.save(ckpt, path)
        if case == "deflated":
            _deflated(path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = _one_line_exit_2(capsys, ["export", str(path), "--out", str(tmp_path / "m.zip"),
                                    "-q", "--no-test"])
    assert re.search(why, err) and str(path) in err, err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 1_000_000  # KiB
    assert not (tmp_path / "m.zip").exists() and "a pickle ran code" not in capsys.readouterr().out
    if case in ("legacy-pickle", "deflated", "reduce", "nan-normalisation",
                "short-normalisation"):  # the same file as --weights: the same line
        with pytest.raises(InputError, match=why):
            from napari_ish_annotator.core.backbones.weights import load_backbone

            load_backbone("vgg16", str(path))
    torch.save(checkpoint, path)  # the intact checkpoint loads
    assert load_finetuned(path).vocabulary == ["a", "b"]
