"""Fuzzing the readers of received models (issues 23 and 24): a valid bundle with a mutated
``model.json`` (any value replaced by any JSON) or mutated ``.npy`` headers inside its
``classifiers.npz``, and a valid fine-tuning checkpoint with mutated fields or bytes, must each
end in a loaded model or one :class:`InputError` line, within a time bound and without memory
growth, and the files are only ever read.

The default suite runs a short fixed-seed run; ``pytest -m fuzz -s tests/test_fuzz_models.py``
runs the long one (``ISH_FUZZ_EXAMPLES`` examples per target, default 5000; it prints how
many it tried).
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from napari_ish_annotator.core.features.extractor import ExtractorConfig  # noqa: E402
from napari_ish_annotator.core.finetune.checkpoint import load_checkpoint  # noqa: E402
from napari_ish_annotator.core.learn.bundle import ModelBundle, load_bundle, save_bundle  # noqa: E402
from napari_ish_annotator.core.learn.ensembles import EnsembleClassifier  # noqa: E402
from napari_ish_annotator.core.learn.logistic import EnsembleConfig  # noqa: E402
from napari_ish_annotator.core.utils.errors import InputError  # noqa: E402

SECONDS_PER_EXAMPLE = 30.0  # generous: eight developers share two cores
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.sampled_from(
        [0, 1, 3, -1, 64, 2048, 2049, 7_000_000, 10**18]) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def _peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _bundle(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 32)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0.3], axis=1).astype(np.int8)
    clf = EnsembleClassifier(["a", "b"], EnsembleConfig(n_members=2, seed=0)).fit(X, Y)
    ext = ExtractorConfig(backbone="vgg16", weights="random", layer="21", input_size=64)
    save_bundle(folder / "seed", ModelBundle(ext, clf, {"weights_id": "random:seed=0"}))
    return folder / "seed"


def _paths(obj, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj, path: tuple, value):
    if not path:
        return value
    obj[path[0]] = _set(obj[path[0]], path[1:], value)
    return obj


@st.composite
def mutated_bundle(draw, seed: Path):
    """(model.json text, classifiers.npz bytes)."""
    info = json.loads((seed / "model.json").read_text())
    npz = (seed / "classifiers.npz").read_bytes()
    if draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            info = _set(info, draw(st.sampled_from(_paths(info))), draw(JSON))
    else:  # mutate bytes in the .npy headers (the first 128 bytes of each member's data)
        members = zipfile.ZipFile(io.BytesIO(npz)).infolist()
        data = bytearray(npz)
        for _ in range(draw(st.integers(1, 4))):
            m = draw(st.sampled_from(members))
            start = m.header_offset + 30 + len(m.filename) + len(m.extra)
            pos = start + draw(st.integers(0, 127))
            if pos < len(data):
                data[pos] = draw(st.integers(0, 255))
        npz = bytes(data)
    return json.dumps(info), npz


def _check_bundle(folder: Path, seed: Path, text: str, npz: bytes) -> str:
    model = folder / "m"
    shutil.rmtree(model, ignore_errors=True)
    model.mkdir()
    (model / "model.json").write_text(text)
    (model / "classifiers.npz").write_bytes(npz)
    start = time.monotonic()
    try:
        bundle = load_bundle(model)
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(model)), str(exc)
        outcome = "refused"
    else:
        assert bundle.classifier.n_features >= 1
        outcome = "ok"
    assert time.monotonic() - start < SECONDS_PER_EXAMPLE
    assert (model / "classifiers.npz").read_bytes() == npz  # only ever read
    return outcome


def _checkpoint() -> dict:
    import torch

    from napari_ish_annotator.core.finetune.config import FORMAT

    return {"format": FORMAT, "backbone": "vgg16", "vocabulary": ["a", "b"], "input_size": 64,
            "backbone_state_dict": {"0.weight": torch.zeros(4, 3, 3, 3)},
            "head_state_dict": {"2.weight": torch.zeros(16, 512), "2.bias": torch.zeros(16)},
            "head": {"in_features": 512, "hidden": 16, "dropout": 0.0, "pool": 1},
            "normalisation": {"mean": [0.5] * 3, "std": [0.25] * 3, "pixel_scale": 1.0},
            "epoch": 3, "split": {"n_train": 10, "n_val": 4}}


@st.composite
def mutated_checkpoint(draw, seed: bytes):
    """The bytes of a checkpoint with mutated fields (torch.save) or mutated bytes."""
    import torch

    if draw(st.booleans()):
        ckpt = _checkpoint()
        for _ in range(draw(st.integers(1, 3))):
            paths = [p for p in _paths(ckpt) if "state_dict" not in str(p)]
            ckpt = _set(ckpt, draw(st.sampled_from(paths)), draw(JSON))
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        return buf.getvalue()
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _check_checkpoint(folder: Path, blob: bytes, timed: bool = True) -> str:
    from napari_ish_annotator.core.finetune import load_finetuned

    path = folder / "ckpt.pt"
    path.write_bytes(blob)
    start = time.monotonic()
    try:
        ckpt = load_checkpoint(path)
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path)), str(exc)
        outcome = "refused"
    else:  # read and checked: building the network then works or is one line
        outcome = "ok"
        try:
            load_finetuned(ckpt)
        except InputError as exc:
            assert "\n" not in str(exc), str(exc)
    assert not timed or time.monotonic() - start < SECONDS_PER_EXAMPLE
    assert path.read_bytes() == blob
    return outcome


def _run(max_examples: int, derandomize: bool) -> dict[str, int]:
    import torch

    counts = {"bundle ok": 0, "bundle refused": 0, "checkpoint ok": 0, "checkpoint refused": 0}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seed = _bundle(folder)
        buf = io.BytesIO()
        torch.save(_checkpoint(), buf)
        common = settings(max_examples=max_examples, derandomize=derandomize, deadline=None,
                          database=None, suppress_health_check=list(HealthCheck))

        @common
        @given(mutated_bundle(seed))
        def bundles(example):
            counts["bundle " + _check_bundle(folder, seed, *example)] += 1

        @common
        @given(mutated_checkpoint(buf.getvalue()))
        def checkpoints(blob):
            counts["checkpoint " + _check_checkpoint(folder, blob)] += 1

        load_bundle(seed)  # imports and first allocations done before the baselines
        _check_checkpoint(folder, buf.getvalue(), timed=False)  # first trunk build, imports
        base = _peak_kb()
        bundles()
        checkpoints()
        assert (_peak_kb() - base) * 1024 < 400 * 2**20, "memory grew while fuzzing"
    return counts


def test_mutated_models_end_in_a_refusal_or_a_model():
    """The short fixed-seed run of the default suite."""
    start = time.monotonic()
    counts = _run(150, derandomize=True)
    assert all(counts.values()), counts  # every outcome is exercised
    assert time.monotonic() - start < 120


@pytest.mark.fuzz
def test_mutated_models_long_run(request):
    """The long run: ``pytest -m fuzz -s tests/test_fuzz_models.py``."""
    if "fuzz" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the long fuzz run: select it with -m fuzz")
    counts = _run(int(os.environ.get("ISH_FUZZ_EXAMPLES", "5000")), derandomize=False)
    print(f"\nfuzzed {sum(counts.values())} examples: {counts}")
