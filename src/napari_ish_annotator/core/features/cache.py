"""On-disk feature cache: unchanged images with unchanged settings are never recomputed.

Layout: ``<root>/<signature hash>/`` holds ``signature.json`` (for humans) and one float16
``<image hash>.<crc32>.npy`` per image. The signature is everything the features depend on
except the image (backbone, weights identity, layer, input size, keep_aspect, normalisation,
precision, package version), so changing any setting lands in a different folder. The CRC of
the array bytes in the file name lets :meth:`FeatureCache.get` detect a truncated or corrupt
entry, delete it and report a miss so the caller recomputes it. No pickle anywhere.

Entries that are not regular files (a planted FIFO) or whose ``.npy`` header is impossible
(not float16 of the cache's shape, or a size the file does not hold) are ignored and replaced,
without blocking or allocating. The CRC detects damage, not forgery: whoever can write into a
cache folder can change the features (and so the predictions) of images it caches. A cache
folder is therefore trusted input - keep it private (the default lives in your home folder);
docs/sharing-data-safely.md says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import zlib
from pathlib import Path

import numpy as np

from ..utils.arrays import open_regular, read_npy
from ..utils.errors import InputError
from ..utils.files import atomic_path

_F16_MAX = float(np.finfo(np.float16).max)
#: no real entry is larger (VGG16 layer 17 at 1024 px is 270 MB); a bigger one is not read
_MAX_ENTRY_BYTES = 2 << 30


def default_cache_dir() -> Path:
    """$ISH_ANNOTATOR_CACHE, else $XDG_CACHE_HOME/napari-ish-annotator, else ~/.cache/..."""
    env = os.environ.get("ISH_ANNOTATOR_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "napari-ish-annotator"


def signature_hash(signature: dict) -> str:
    """sha256 of the canonical JSON of ``signature`` (sorted keys, no whitespace)."""
    text = json.dumps(signature, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _crc32(arr: np.ndarray) -> int:
    """CRC-32 of an array's bytes in C order, read in place (``tobytes`` would copy them)."""
    a = np.ascontiguousarray(arr)
    return zlib.crc32(a.reshape(-1).view(np.uint8))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class FeatureCache:
    """One verified float16 ``.npy`` per (signature, image content hash).

    ``signature`` may hold ``"shape"`` (the per-image feature shape); entries of another shape
    are treated as corrupt. The folder index is read once (one directory scan) and kept up to
    date by :meth:`put`, so a lookup costs no directory listing.
    """

    def __init__(self, root: str | Path, signature: dict):
        self.root = Path(root).expanduser()
        self.signature = dict(signature)
        self.key = signature_hash(self.signature)
        self.folder = self.root / self.key[:24]
        shape = self.signature.get("shape")
        self.shape: tuple[int, ...] | None = tuple(int(v) for v in shape) if shape else None
        self._index: dict[str, str] | None = None
        self._lock = threading.Lock()
        #: why entries cannot be written (read-only or full disk), else None; features are
        #: then still computed and returned, just not cached
        self.write_error: str | None = None

    # ------------------------------------------------------------------ internals
    def _ensure_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        sig = self.folder / "signature.json"
        if not sig.exists():
            text = json.dumps({"signature_sha256": self.key, **self.signature}, indent=2,
                              sort_keys=True, default=str)
            _atomic_write_bytes(sig, (text + "\n").encode("utf-8"))

    def _load_index(self) -> dict[str, str]:
        if self._index is None:
            index: dict[str, str] = {}
            if self.folder.is_dir():
                with os.scandir(self.folder) as entries:
                    for entry in entries:
                        parts = entry.name.split(".")
                        if len(parts) == 3 and parts[2] == "npy":
                            index[parts[0]] = entry.name
            self._index = index
        return self._index

    def _discard(self, image_hash: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            (self.folder / name).unlink()
        with self._lock:
            if self._load_index().get(image_hash) == name:
                del self._index[image_hash]  # type: ignore[union-attr]

    # ------------------------------------------------------------------ public
    def path_for(self, image_hash: str) -> Path | None:
        """The entry's file if one is indexed (not verified)."""
        name = self._load_index().get(image_hash)
        return self.folder / name if name else None

    def get(self, image_hash: str) -> np.ndarray | None:
        """The stored float16 features, or None if absent or corrupt (corrupt files are removed)."""
        with self._lock:
            name = self._load_index().get(image_hash)
        if name is None:
            return None
        path = self.folder / name
        arr = self._read(path)
        crc = name.split(".")[1]
        if arr is None or f"{_crc32(arr):08x}" != crc:
            self._discard(image_hash, name)
            return None
        return arr

    def _read(self, path: Path) -> np.ndarray | None:
        """The entry's float16 array, or None for anything else: not a regular file (a FIFO
        would block for ever), a header that is not float16 of the cache's shape, or one whose
        size disagrees with the file (an 18 TiB header in a small file). Nothing is allocated
        before the header has been checked."""
        def expect(shape: tuple[int, ...], dtype: np.dtype) -> str | None:
            if dtype != np.float16 or (self.shape is not None and shape != self.shape):
                return "not this cache's float16 features"
            return None

        try:
            with open_regular(path, "feature cache entry") as fh:
                size = os.fstat(fh.fileno()).st_size
                arr, _why = read_npy(fh, expect, size, min(size, _MAX_ENTRY_BYTES))
        except (InputError, OSError):
            return None
        return arr

    def put(self, image_hash: str, features: np.ndarray) -> bool:
        """Store ``features`` as float16 (atomically). Returns False if they were not stored:
        they do not fit float16, or the cache cannot be written (see :attr:`write_error`) -
        a cache is an optimisation, so a full or read-only disk must not stop an extraction."""
        arr = np.asarray(features)
        if self.shape is not None and arr.shape != self.shape:
            raise ValueError(f"features have shape {arr.shape}, the cache expects {self.shape}")
        if not np.isfinite(arr).all() or (arr.size and float(np.abs(arr).max()) > _F16_MAX):
            return False
        if self.write_error is not None:
            return False
        arr16 = np.ascontiguousarray(arr, dtype=np.float16)
        name = f"{image_hash}.{_crc32(arr16):08x}.npy"
        import io

        buf = io.BytesIO()
        np.save(buf, arr16, allow_pickle=False)
        try:
            self._ensure_folder()
            _atomic_write_bytes(self.folder / name, buf.getvalue())
        except (OSError, InputError) as exc:
            self.write_error = f"cannot write the feature cache at {self.folder}: {exc}"
            return False
        with self._lock:
            old = self._load_index().get(image_hash)
            self._index[image_hash] = name  # type: ignore[index]
        if old and old != name:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / old).unlink()
        return True

    def __contains__(self, image_hash: str) -> bool:
        return image_hash in self._load_index()

    def __len__(self) -> int:
        return len(self._load_index())
