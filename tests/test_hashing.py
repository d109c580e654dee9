"""The one content hash of a file (core/utils/hashing.py): values, reuse, invalidation."""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np
import pytest
from PIL import Image

from napari_ish_annotator.core.utils.errors import InputError
from napari_ish_annotator.core.utils.hashing import HashCache, content_hash


@pytest.fixture
def rgb8() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(12, 20, 3), dtype=np.uint8)


def test_content_hash_is_the_sha256_of_the_bytes(tmp_path, rgb8):
    p, q = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(rgb8).save(p)
    q.write_bytes(p.read_bytes())
    assert content_hash(p) == content_hash(q) == hashlib.sha256(p.read_bytes()).hexdigest()
    Image.fromarray(255 - rgb8).save(q)
    assert content_hash(p) != content_hash(q) == hashlib.sha256(q.read_bytes()).hexdigest()
    with pytest.raises(InputError, match="image file not found"):
        content_hash(tmp_path / "missing.png", "image")
    with pytest.raises(InputError, match="not a regular file"):
        content_hash(tmp_path)


def test_a_file_is_read_once_while_unchanged_and_again_when_changed(tmp_path):
    cache = HashCache()
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    first = cache.hash(f)
    assert cache.hash(f) == cache.hash(str(f)) == first and cache.hashed == 1
    st = f.stat()
    f.write_bytes(b"b" * 1000)  # same size, mtime put back: the ctime still tells
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.hash(f) == hashlib.sha256(b"b" * 1000).hexdigest() and cache.hashed == 2
    other = tmp_path / "other.bin"
    other.write_bytes(b"c" * 1000)
    os.replace(other, f)  # replaced by another file (another inode)
    assert cache.hash(f) == hashlib.sha256(b"c" * 1000).hexdigest() and cache.hashed == 3


def test_the_cache_is_bounded(tmp_path):
    cache = HashCache(max_entries=3)
    files = []
    for i in range(5):
        files.append(tmp_path / f"{i}.bin")
        files[-1].write_bytes(bytes([i]) * 10)
        cache.hash(files[-1])
    assert len(cache) == 3 and cache.hashed == 5
    cache.hash(files[-1])  # the newest is remembered, the oldest forgotten
    assert cache.hashed == 5
    cache.hash(files[0])
    assert cache.hashed == 6


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "trap.png"
    os.mkfifo(fifo)
    done: list[BaseException] = []
    worker = threading.Thread(target=lambda: done.append(_raises(fifo)), daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and isinstance(done[0], InputError)


def _raises(path) -> BaseException | None:
    try:
        HashCache().hash(path)
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        return exc
    return None
