"""The one content hash of a file: sha256 of its bytes, remembered while the file is unchanged.

An image is identified by this hash everywhere (label store rows, feature-cache entries,
thumbnails), and a weights file by it too, so every caller goes through :func:`content_hash`:
one hash per file per process however many parts ask. A remembered hash is reused only while
the same path still names the same file (device, inode) with the same size, mtime_ns and
ctime_ns - a file rewritten in place, replaced or re-targeted is read again. The file is
opened only if it is a regular file, without blocking (a FIFO named ``.png`` must not hang).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

from .arrays import open_regular
from .errors import InputError

#: how many paths the process remembers (oldest forgotten first): bounded for huge folders
MAX_ENTRIES = 200_000

Signature = tuple[int, int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)


def signature(st: os.stat_result) -> Signature:
    """What must stay the same for a remembered hash to still be the file's."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class HashCache:
    """path -> sha256 hex digest, valid while the file's :func:`signature` is unchanged.

    Thread-safe (workers hash while the GUI thread reads). ``hashed`` counts the files
    actually read, so callers and tests can see that a hash was reused."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = max_entries
        self.hashed = 0
        self._entries: dict[str, tuple[Signature, str]] = {}
        self._lock = threading.Lock()

    def lookup(self, path: str | Path, st: os.stat_result) -> str | None:
        """The remembered digest of ``path`` if ``st`` (its stat now) still matches, else None."""
        with self._lock:
            hit = self._entries.get(os.fspath(path))
        return hit[1] if hit is not None and hit[0] == signature(st) else None

    def hash(self, path: str | Path, what: str = "file") -> str:
        """sha256 of the bytes of the regular file ``path`` (remembered); InputError if it
        is missing or not a regular file (``what`` names it in the message)."""
        key = os.fspath(path)
        try:
            st = os.stat(key)
        except (OSError, ValueError):
            raise InputError(f"{what} file not found; check the path", path=path) from None
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"the {what} is not a regular file (a pipe, device or folder); "
                             "choose a file", path=path)
        known = self.lookup(key, st)
        if known is not None:
            return known
        with open_regular(key, what) as fh:
            before = signature(os.fstat(fh.fileno()))
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
            after = signature(os.fstat(fh.fileno()))
        with self._lock:
            self.hashed += 1
            if before == after:  # not written to while it was read: safe to remember
                self._entries.pop(key, None)
                self._entries[key] = (after, digest)
                while len(self._entries) > self.max_entries:
                    del self._entries[next(iter(self._entries))]
        return digest

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Forget every remembered hash."""
        with self._lock:
            self._entries.clear()


#: the process's one cache of file hashes (label store, feature cache, thumbnails, weights)
FILE_HASHES = HashCache()


def content_hash(path: str | Path, what: str = "file") -> str:
    """sha256 hex digest of a file's bytes: the identity of an image (or weights file) for
    labels and caches, read once per process while the file is unchanged."""
    return FILE_HASHES.hash(path, what)
