"""A feature cache folder with planted entries neither hangs nor floods (issue 24, item 6).

Entries that are not regular files (a FIFO blocks ``open()`` for ever) or whose ``.npy``
header is impossible (18 TiB in a few bytes, another dtype or shape) are ignored, removed and
recomputed, without blocking or allocating. Forged but well-formed entries are a documented
limit: a cache folder is trusted input (docs/sharing-data-safely.md).
"""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from napari_ish_annotator.core.features.cache import FeatureCache

SIG = {"backbone": "vgg16", "weights_id": "random:seed=0", "layer": "21", "input_size": 64,
       "keep_aspect": False, "precision": "fp32", "shape": [2, 3, 4]}
H = "cd" * 32


def _feats(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, 3, 4)).astype(np.float16)


def _planted(tmp_path: Path, plant, shape: bool = True) -> tuple[FeatureCache, Path]:
    sig = SIG if shape else {k: v for k, v in SIG.items() if k != "shape"}
    cache = FeatureCache(tmp_path, sig)
    assert cache.put(H, _feats())
    entry = cache.path_for(H)
    assert entry is not None
    entry.unlink()
    plant(entry)
    return FeatureCache(tmp_path, sig), entry


def _get_within(cache: FeatureCache, seconds: float = 10.0):
    result: list = []
    worker = threading.Thread(target=lambda: result.append(cache.get(H)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "the cache blocked on a planted entry"
    return result[0]


def _header(shape: tuple[int, ...], dtype: str = "<f2") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


@pytest.mark.parametrize("shape", [True, False])
def test_a_fifo_entry_does_not_block_and_is_replaced(tmp_path, shape):
    cache, entry = _planted(tmp_path, os.mkfifo, shape)
    assert _get_within(cache) is None
    assert not entry.exists() and H not in cache
    assert cache.put(H, _feats(1))
    np.testing.assert_array_equal(_get_within(cache), _feats(1))


@pytest.mark.parametrize("declared", [(2**40 * 9,), (3, 2**43), (2, 3, 4 * 2**40)])
@pytest.mark.parametrize("shape", [True, False])
def test_impossible_headers_are_ignored_without_allocating(tmp_path, declared, shape):
    cache, entry = _planted(tmp_path, lambda p: p.write_bytes(_header(declared) + b"\0" * 48),
                            shape)
    tracemalloc.start()
    try:
        assert _get_within(cache) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10e6 and not entry.exists()
    assert cache.put(H, _feats(2)) and cache.get(H) is not None  # replaced on the next run


@pytest.mark.parametrize("plant", [
    lambda p: p.mkdir(),
    lambda p: p.symlink_to("/dev/zero"),
    lambda p: p.write_bytes(_header((2, 3, 4), "|O") + b"\0" * 64),
    lambda p: p.write_bytes(_header((2, 3, 4), "<f8") + b"\0" * 192),
    lambda p: p.write_bytes(_header((2, 3, 4)) + b"\0" * 47),
])
def test_other_planted_entries_are_misses(tmp_path, plant):
    cache, entry = _planted(tmp_path, plant)
    assert _get_within(cache) is None and H not in cache
    assert Path("/dev/zero").exists()  # a symlinked entry is unlinked, never its target
