"""Received bioimage.io packages are inert (issue 23 "not yet probed", issue 24 items 1-3).

The zip is vetted before anything reads it (names, symlinks, sizes, a bounded safe YAML
parse, file references inside the zip only), and without ``trust_code`` nothing the package
ships runs - not its Python, not its TorchScript (which can write files). Fast tests use small
hand-made zips; the slow ones a real exported package and a real malicious TorchScript.
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch  # the malicious TorchScript below is scripted from this module's source

from napari_ish_annotator.core.export.packages import predict_package
from napari_ish_annotator.core.export.received import vet_package
from napari_ish_annotator.core.utils.errors import InputError

IMAGE = np.full((40, 60, 3), 128, np.uint8)

RDF = """format_version: 0.5.3
type: model
name: received
weights:
  torchscript:
    source: {source}
    pytorch_version: 2.0
"""


def _zip(path: Path, members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # S_IFLNK
            zf.writestr(info, "/etc/passwd")
    return path


def _refused(path: Path, match: str, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        predict_package(path, [IMAGE], **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert re.search(match, message), message
    return message


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("member, symlink, why", [
    ("../escaped.txt", False, "climbs out"),
    ("sub/../../escaped.txt", False, "climbs out"),
    ("/tmp/ish-absolute-member.txt", False, "absolute name"),
    ("C:/escaped.txt", False, "absolute name"),
    ("link.pt", True, "symlink"),
])
@pytest.mark.parametrize("trust", [False, True])
def test_zip_slip_absolute_and_symlink_members_are_refused(tmp_path, member, symlink, why,
                                                           trust):
    pkg = tmp_path / "in" / "pkg.zip"
    pkg.parent.mkdir()
    members = {"rdf.yaml": RDF.format(source="w.pt").encode(), "w.pt": b"PK"}
    if not symlink:
        members[member] = b"written where it should not be"
    _zip(pkg, members, (member,) if symlink else ())
    before = _snapshot(tmp_path)
    _refused(pkg, why, trust_code=trust)
    assert _snapshot(tmp_path) == before
    assert not Path("/tmp/ish-absolute-member.txt").exists()


def test_python_yaml_tags_are_refused_and_never_constructed(tmp_path):
    canary = tmp_path / "canary"
    rdf = RDF.format(source="w.pt") + (
        f'config: !!python/object/apply:os.system ["touch {canary}"]\n')
    pkg = _zip(tmp_path / "pkg.zip", {"rdf.yaml": rdf.encode(), "w.pt": b""})
    for trust in (False, True):
        _refused(pkg, "not plain \\(safe\\) YAML", trust_code=trust)
    assert not canary.exists()


def test_yaml_alias_bomb_is_refused_quickly_in_little_memory(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    rdf = RDF.format(source="w.pt") + "config:\n" + "".join(f"  {ln}\n" for ln in lines)
    assert len(rdf) < 1200
    pkg = _zip(tmp_path / "pkg.zip", {"rdf.yaml": rdf.encode(), "w.pt": b""})
    tracemalloc.start()
    start = time.perf_counter()
    try:
        for trust in (False, True):
            _refused(pkg, "alias bomb", trust_code=trust)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 10 and peak < 50e6


def test_deeply_nested_yaml_is_refused(tmp_path):
    rdf = RDF.format(source="w.pt") + "config: " + "[" * 100_000 + "]" * 100_000 + "\n"
    pkg = _zip(tmp_path / "pkg.zip", {"rdf.yaml": rdf.encode(), "w.pt": b""})
    _refused(pkg, "nested")


@pytest.mark.parametrize("source, why", [
    ("https://example.invalid/weights.pt", "is a URL"),
    ("http://127.0.0.1:9/w.pt", "is a URL"),
    ("/etc/passwd", "not a file inside the package"),
    ("../outside.pt", "not a file inside the package"),
    ("missing.pt", "not a file inside the package"),
])
@pytest.mark.parametrize("trust", [False, True])
def test_sources_outside_the_zip_are_refused_without_network(tmp_path, monkeypatch, source,
                                                            why, trust):
    attempts: list[object] = []

    def no_network(self, address, *args):
        attempts.append(address)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    cache = Path.home() / ".cache" / "bioimageio"
    had_cache = cache.exists()
    before = _snapshot(cache) if had_cache else None
    pkg = _zip(tmp_path / "pkg.zip", {"rdf.yaml": RDF.format(source=source).encode(),
                                      "w.pt": b"x"})
    _refused(pkg, why, trust_code=trust)
    assert attempts == []
    assert cache.exists() == had_cache and (before is None or _snapshot(cache) == before)


def test_other_files_it_names_must_be_members_too(tmp_path):
    rdf = RDF.format(source="w.pt") + "documentation: https://example.invalid/README.md\n"
    pkg = _zip(tmp_path / "pkg.zip", {"rdf.yaml": rdf.encode(), "w.pt": b""})
    _refused(pkg, "documentation .* is a URL")
    rdf = RDF.format(source="w.pt") + "covers: [cover.png, /home/someone/secret.png]\n"
    pkg = _zip(tmp_path / "pkg2.zip", {"rdf.yaml": rdf.encode(), "w.pt": b"",
                                       "cover.png": b""})
    _refused(pkg, "covers '/home/someone/secret.png' is not a file inside")


def test_a_package_not_made_by_this_tool_needs_trust(tmp_path):
    """Only TorchScript: running it would run its code, so it is refused without trust."""
    pkg = _zip(tmp_path / "pkg.zip", {"rdf.yaml": RDF.format(source="w.pt").encode(),
                                      "w.pt": b"not even torch"})
    assert vet_package(pkg).members == {"rdf.yaml", "w.pt"}
    message = _refused(pkg, "not a napari-ish-annotator package")
    assert "TorchScript" in message and "trust_code=True" in message


def test_not_a_zip_and_fifo_packages_are_one_line(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"no zip here")
    _refused(junk, "not a readable bioimage.io package")
    fifo = tmp_path / "fifo.zip"
    import os

    os.mkfifo(fifo)
    _refused(fifo, "not a regular file")


# ----------------------------------------------------------------------------- real packages

@pytest.fixture(scope="module")
def package(tiny_dataset, tmp_path_factory) -> Path:
    """A real exported package of a random-weights 64 px bundle (read-only for the tests)."""
    from napari_ish_annotator.cli import main

    root = tmp_path_factory.mktemp("received")
    assert main(["train", str(tiny_dataset), "--out", str(root / "model"), "--ensemble", "2",
                 "-q", "--no-cache", "--weights", "random", "--input-size", "64"]) == 0
    assert main(["export", str(root / "model"), "--out", str(root / "model.zip"), "-q",
                 "--no-test"]) == 0
    return root / "model.zip"


def _images(tiny_dataset) -> list[np.ndarray]:
    from napari_ish_annotator.core.data.images import read_rgb
    from napari_ish_annotator.core.data.manifest import read_manifest

    return [read_rgb(p) for p in read_manifest(tiny_dataset).paths[:2]]


def _variant(package: Path, out: Path, replace: dict[str, bytes] | None = None,
             rdf_edit=lambda text: text, compress: str | None = None) -> Path:
    """A copy of ``package`` with members replaced, rdf.yaml edited or one member deflated."""
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = (replace or {}).get(name, src.read(name))
            if name == "rdf.yaml":
                data = rdf_edit(data.decode()).encode()
            dst.writestr(name, data, zipfile.ZIP_DEFLATED if name == compress else
                         zipfile.ZIP_STORED)
    return out


class _Overwrite(torch.nn.Module):
    """TorchScript that maps ``path`` for writing and zeroes it (torch.from_file, shared=True):
    what a received 'TorchScript only' package can do to the user's files."""

    def __init__(self, path: str, n_terms: int):
        super().__init__()
        self.path = path
        self.n_terms = n_terms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mapped = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8)
        mapped.zero_()
        return torch.zeros(x.shape[0], self.n_terms) + mapped[0].float()


@pytest.mark.slow
def test_malicious_torchscript_never_runs(package, tiny_dataset, tmp_path):
    import io

    images = _images(tiny_dataset)
    n_terms = predict_package(package, images[:1]).shape[1]
    proof, canary = tmp_path / "proof.bin", tmp_path / "labels.sqlite"
    for f in (proof, canary):
        f.write_bytes(b"precious" * 8)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(_Overwrite(str(proof), n_terms)), buf)
    torch.jit.load(io.BytesIO(buf.getvalue()))(torch.zeros(1, 3, 8, 8))
    assert proof.read_bytes()[:16] == b"\0" * 16  # the payload is real ...
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(_Overwrite(str(canary), n_terms)), buf)
    evil = _variant(package, tmp_path / "evil.zip", {"weights_torchscript.pt": buf.getvalue()})
    got = predict_package(evil, images)  # ... but never runs from a package
    assert canary.read_bytes() == b"precious" * 8
    np.testing.assert_allclose(got, predict_package(package, images), atol=1e-6)
    assert got.shape == (2, n_terms) and (got > 0).all() and (got < 1).all()


@pytest.mark.slow
def test_pickle_named_as_torchscript_is_never_opened(package, tiny_dataset, tmp_path):
    import pickle

    canary = tmp_path / "canary"

    class Boom:
        def __reduce__(self):
            return (Path.write_text, (canary, "ran"))

    evil = _variant(package, tmp_path / "evil.zip",
                    {"weights_torchscript.pt": pickle.dumps(Boom())})
    assert predict_package(evil, _images(tiny_dataset)[:1]).shape[0] == 1
    assert not canary.exists()


@pytest.mark.slow
@pytest.mark.parametrize("edit, why", [
    (lambda t: t.replace("input_size: 64\n        n_terms", "input_size: 60000\n        n_terms"),
     "impossible \\(input_size=60000\\)"),
    (lambda t: t.replace("n_features: 32768", "n_features: 7000000"), "does not fit|over the"),
    (lambda t: t.replace("n_members: 2", "n_members: 9000"), "over the"),
    (lambda t: t.replace("backbone: vgg16\n        layer_index", "backbone: os\n        layer_index"),
     "does not build"),
    (lambda t: t.replace("callable: build_network", "callable: evil"), "not a napari-ish"),
    (lambda t: t.replace("        head: ensemble\n", "        head: ensemble\n        cmd: rm\n"),
     "unknown arguments"),
])
def test_impossible_architectures_are_refused_before_allocating(package, tmp_path, edit, why):
    evil = _variant(package, tmp_path / "evil.zip", rdf_edit=edit)
    with zipfile.ZipFile(evil) as zf:
        assert zf.read("rdf.yaml") != zipfile.ZipFile(package).read("rdf.yaml")
    _refused(evil, why)


@pytest.mark.slow
def test_state_dict_bombs_and_pickles_are_refused(package, tmp_path):
    import io
    import pickle

    with zipfile.ZipFile(package) as zf:
        state = zf.read("weights.pt")
    inner = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(state)) as src, zipfile.ZipFile(inner, "w",
                                                                    zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    _refused(_variant(package, tmp_path / "a.zip", {"weights.pt": inner.getvalue()}),
             "compressed records")
    _refused(_variant(package, tmp_path / "b.zip", {"weights.pt": pickle.dumps({"a": 1})}),
             "bare pickle")
    wrong = io.BytesIO()
    torch.save({"x": torch.zeros(2)}, wrong)
    _refused(_variant(package, tmp_path / "c.zip", {"weights.pt": wrong.getvalue()}),
             "does not fit the network")
