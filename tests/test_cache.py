"""FeatureCache: verified float16 entries per signature, and the extractor's use of it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_ish_annotator.core.backbones.weights import load_backbone
from napari_ish_annotator.core.features.cache import (
    FeatureCache,
    default_cache_dir,
    signature_hash,
)
from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
from napari_ish_annotator.core.features.preprocess import cpu_has_native_bf16

SIG = {"backbone": "vgg16", "weights_id": "random:seed=0", "layer": "21", "input_size": 64,
       "keep_aspect": False, "precision": "fp32", "shape": [2, 3, 4]}
H = "ab" * 32  # an image content hash


def feats(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, 3, 4)).astype(np.float32) * 10


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ISH_ANNOTATOR_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("ISH_ANNOTATOR_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "napari-ish-annotator"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "napari-ish-annotator"


def test_put_get_roundtrip_and_signature_folder(tmp_path):
    cache = FeatureCache(tmp_path, SIG)
    assert cache.get(H) is None
    f = feats()
    assert cache.put(H, f)
    got = FeatureCache(tmp_path, dict(SIG)).get(H)  # a fresh instance reads it back
    assert got.dtype == np.float16 and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, f.astype(np.float16))
    sig = json.loads((cache.folder / "signature.json").read_text())
    assert sig["layer"] == "21" and sig["signature_sha256"] == signature_hash(SIG)
    assert not list(cache.folder.glob("*.tmp-*"))
    # key order does not matter, any value does
    assert FeatureCache(tmp_path, dict(reversed(list(SIG.items())))).folder == cache.folder
    other = FeatureCache(tmp_path, {**SIG, "input_size": 96})
    assert other.folder != cache.folder and other.get(H) is None


def _entry(cache: FeatureCache) -> Path:
    path = cache.path_for(H)
    assert path is not None and path.exists()
    return path


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "shape", "dtype", "pickle"])
def test_corrupt_entries_are_detected_and_removed(tmp_path, damage):
    cache = FeatureCache(tmp_path, SIG)
    cache.put(H, feats())
    path = _entry(cache)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) - 7])
    elif damage == "flip":  # same size, one data byte changed: only the checksum sees it
        path.write_bytes(data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * len(data))
    elif damage == "shape":
        np.save(path, feats().reshape(4, 3, 2).astype(np.float16))
    elif damage == "dtype":
        np.save(path, feats().astype(np.float32))
    else:
        np.save(path, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    fresh = FeatureCache(tmp_path, SIG)
    assert fresh.get(H) is None
    assert not path.exists() and H not in fresh
    assert fresh.put(H, feats(1))
    np.testing.assert_array_equal(fresh.get(H), feats(1).astype(np.float16))


def test_values_outside_float16_are_not_cached(tmp_path):
    cache = FeatureCache(tmp_path, SIG)
    assert not cache.put(H, feats() * 1e5)
    assert not cache.put(H, np.full((2, 3, 4), np.nan, np.float32))
    assert cache.get(H) is None and len(cache) == 0
    with pytest.raises(ValueError, match="shape"):
        cache.put(H, np.zeros((3, 3)))


def test_unwritable_cache_does_not_stop_extraction(tmp_path):
    """A cache root that cannot be created (here: it is a file) means uncached, not a crash."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    cache = FeatureCache(blocker, SIG)
    assert not cache.put(H, feats())
    assert cache.write_error and str(blocker) in cache.write_error
    assert cache.get(H) is None and len(cache) == 0
    config = replace(BASE)
    fx = FeatureExtractor(config, cache_dir=blocker, loaded=load_backbone("vgg16", "random", 0))
    img = np.full((24, 48, 3), 200, np.uint8)
    out = fx.extract([img, img[:, ::-1]])
    assert out.shape == (2, fx.dim) and np.isfinite(out).all()
    assert fx.cache.write_error is not None


# --------------------------------------------------------------------------- with the extractor

@pytest.fixture(scope="module")
def loaded():
    return load_backbone("vgg16", "random", seed=0)


def _images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = np.full((24, 48, 3), 210, np.uint8)
        y, x = rng.integers(4, 16), rng.integers(4, 36)
        img[y:y + 6, x:x + 10] = (60, 40, 120)
        p = folder / f"img{i}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


class Counted:
    """An extractor whose network counts the images it computes."""

    def __init__(self, config: ExtractorConfig, cache: Path, loaded):
        self.fx = FeatureExtractor(config, cache_dir=cache, loaded=loaded)
        self.computed = 0
        self.fx.module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.computed += int(output.shape[0])

    def extract(self, images):
        self.computed = 0
        return self.fx.extract(images)


BASE = ExtractorConfig(weights="random", input_size=64, device="cpu", precision="fp32",
                       batch_size=4)


def test_unchanged_images_and_settings_are_never_recomputed(tmp_path, loaded):
    paths = _images(tmp_path, 5)
    cache = tmp_path / "cache"
    first = Counted(BASE, cache, loaded)
    X1 = first.extract(paths)
    assert first.computed == 5
    again = Counted(BASE, cache, loaded)  # a new session with the same settings
    X2 = again.extract(paths)
    assert again.computed == 0
    np.testing.assert_array_equal(X1, X2)
    # duplicated inputs (same content) are computed once and returned for each row
    dup = Counted(BASE, tmp_path / "cache2", loaded)
    X3 = dup.extract([paths[0], paths[1], paths[0]])
    assert dup.computed == 2
    np.testing.assert_array_equal(X3[2], X3[0])
    np.testing.assert_array_equal(X3[:2], X1[:2])


def test_changed_image_recomputes_only_that_image(tmp_path, loaded):
    paths = _images(tmp_path, 3)
    cache = tmp_path / "cache"
    Counted(BASE, cache, loaded).extract(paths)
    img = np.asarray(Image.open(paths[1])).copy()
    img[0, 0] = (0, 0, 0)
    Image.fromarray(img).save(paths[1])
    c = Counted(BASE, cache, loaded)
    c.extract(paths)
    assert c.computed == 1


@pytest.mark.parametrize("change", [
    {"input_size": 72}, {"keep_aspect": True}, {"layer": "17"},
    {"weights": "random:seed=1"},
    pytest.param({"precision": "bf16"}, marks=pytest.mark.skipif(
        not cpu_has_native_bf16(), reason="this CPU has no native bf16"))])
def test_any_setting_change_recomputes(tmp_path, loaded, change):
    paths = _images(tmp_path, 2)
    cache = tmp_path / "cache"
    base = Counted(BASE, cache, loaded)
    base.extract(paths)
    config = replace(BASE, **change)
    other_loaded = load_backbone("vgg16", config.weights) if "weights" in change else loaded
    c = Counted(config, cache, other_loaded)
    assert c.fx.signature() != base.fx.signature()
    c.extract(paths)
    assert c.computed == 2
    assert len({p.name for p in cache.iterdir()}) == 2  # one folder per signature


def test_batch_size_is_not_part_of_the_signature(tmp_path, loaded):
    paths = _images(tmp_path, 2)
    Counted(BASE, tmp_path / "c", loaded).extract(paths)
    c = Counted(replace(BASE, batch_size=1), tmp_path / "c", loaded)
    c.extract(paths)
    assert c.computed == 0


def test_corrupt_entry_is_rebuilt(tmp_path, loaded):
    paths = _images(tmp_path, 3)
    cache = tmp_path / "cache"
    X1 = Counted(BASE, cache, loaded).extract(paths)
    c = Counted(BASE, cache, loaded)
    from napari_ish_annotator.core.utils.hashing import content_hash

    entry = c.fx.cache.path_for(content_hash(paths[2]))
    entry.write_bytes(entry.read_bytes()[:100])  # truncated by a crash / full disk
    X2 = c.extract(paths)
    assert c.computed == 1
    np.testing.assert_allclose(X2, X1, rtol=2e-3, atol=1e-3 * float(np.abs(X1).max()))
    c2 = Counted(BASE, cache, loaded)
    c2.extract(paths)
    assert c2.computed == 0  # the rebuilt entry is valid


def test_an_entry_keyed_by_the_plain_sha256_of_the_file_is_hit(tmp_path, loaded):
    """On-disk keys never change: an entry stored under ``sha256(file bytes)`` (the key of
    every earlier version) is read back, not recomputed, through the cached hash."""
    import hashlib

    from napari_ish_annotator.core.utils.hashing import FILE_HASHES

    paths = _images(tmp_path, 2)
    c = Counted(BASE, tmp_path / "cache", loaded)
    key = hashlib.sha256(paths[0].read_bytes()).hexdigest()
    assert c.fx.cache.put(key, np.full(c.fx.cache.shape, 0.5, np.float32))
    before = FILE_HASHES.hashed
    X = c.extract(paths)
    assert c.computed == 1  # only the second image
    assert np.allclose(X[0], X[0][0]) and not np.allclose(X[1], X[1][0])
    again = Counted(BASE, tmp_path / "cache", loaded)
    np.testing.assert_array_equal(again.extract(paths), X)
    assert again.computed == 0 and FILE_HASHES.hashed == before + 2  # each file read once
