"""Atomic file writes: a crash or cancel never leaves a half-written output behind.

Everything is written to a temporary file in the destination's folder and moved into place
with ``os.replace``, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

_SQLITE_MAGIC = b"SQLite format 3\x00"


def refuse_overwrite(path: str | Path, inputs: Iterable[str | Path] = (),
                     option: str = "the output") -> None:
    """The one guard of every output file: it may not replace one of the command's
    ``inputs`` nor any SQLite file (a label store), however it is named.

    Files are compared after resolving every symlink and ``..`` (and with ``samefile``, so
    a hard link counts too): ``--out imgs/../store.sqlite`` or a symlink to the store is
    the store. An existing output is refused when its first bytes are SQLite's, whatever
    its name: no command writes CSV, JSON or PNG over a database."""
    path = Path(path)
    try:
        target = path.resolve()
    except (RuntimeError, OSError):  # a symlink loop: nothing can be written through it
        raise InputError("cannot follow this output path (a symlink loop); choose another "
                         "output name", path=path) from None
    for given in inputs:
        try:
            same = Path(given).resolve() == target or os.path.samefile(given, target)
        except (RuntimeError, OSError, ValueError):
            continue
        if same:
            raise InputError(f"is also an input of this command ({given}); writing {option} "
                             f"there would destroy it - choose another {option}", path=path)
    try:
        st = os.stat(target)
    except (OSError, ValueError):
        return
    if not stat.S_ISREG(st.st_mode):
        return
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return
    try:
        head = os.read(fd, len(_SQLITE_MAGIC))
    finally:
        os.close(fd)
    if head == _SQLITE_MAGIC:
        raise InputError(f"is a SQLite file (a label store?); {option} never replaces one - "
                         f"choose another {option}", path=path)


def check_output_path(path: str | Path, folder: bool = False,
                      inputs: Iterable[str | Path] | None = None,
                      option: str = "the output") -> Path:
    """Fail fast, before hours of work, if ``path`` cannot be written.

    ``path`` must not be a folder (or, with ``folder=True``, a file); its nearest existing
    ancestor must be a writable folder. With ``inputs`` (the CLI passes every other path
    argument) a file output must also pass :func:`refuse_overwrite`. Nothing is created
    here, so a run that fails later leaves no empty folders behind.
    """
    path = Path(path)
    if inputs is not None and not folder:
        refuse_overwrite(path, inputs, option)
    if not folder and path.is_dir():
        raise InputError("is a folder; give a file name for the output", path=path)
    if folder and path.exists() and not path.is_dir():
        raise InputError("exists and is a file; give a folder name for the output", path=path)
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot write here: {parent} is a file, not a folder; choose "
                         "another output location", path=path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write here: no permission to write in {parent}; choose a "
                         "writable location", path=path)
    return path


def _new_file_mode(path: Path) -> int:
    """The mode ``open()`` would give ``path``: an existing file's own, else 0666 less the
    umask. ``mkstemp`` makes owner-only files, and outputs shared on a lab or cluster file
    system (predictions, models, manifests) must stay readable by the group."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (with the
    permissions a plain write would have given it). Never a label store
    (:func:`refuse_overwrite`), whoever asks."""
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder; give a file name for the output", path=path)
    refuse_overwrite(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}",
                                        dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write here ({exc.strerror}); choose a writable location",
                         path=path) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        try:
            if tmp.exists():
                os.chmod(tmp, _new_file_mode(path))
            os.replace(tmp, path)
        except OSError as exc:
            raise InputError(f"cannot write here ({exc.strerror}); choose a writable location",
                             path=path) from exc
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise InputError(f"cannot write here ({exc.strerror}); free some space or choose "
                         "another location", path=path) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """UTF-8; a Linux file name that is not valid UTF-8 (Python holds it as surrogates) is
    written back as its original bytes rather than failing after hours of work."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n")


def write_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)


def write_png_atomic(path: str | Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.asarray(rgb)).save(tmp, format="PNG")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def scratch_memmap(shape: tuple[int, ...], dtype: Any, folder: str | Path | None = None,
                   what: str = "the features") -> np.memmap:
    """A zero-filled array backed by a scratch file in ``folder`` (default: the temp folder).

    For arrays larger than memory should hold, e.g. the features of thousands of images. Free
    space is checked first (InputError naming the folder if short), and on POSIX the file is
    unlinked at once: its space comes back when the array is freed, even after a crash or
    Ctrl-C, so no partial file is ever left behind.
    """
    folder = Path(folder).expanduser() if folder is not None else Path(tempfile.gettempdir())
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise InputError(f"cannot use it as scratch space for {what} ({exc})", path=folder) from exc
    margin = 256 * 2**20
    if free < nbytes + margin:
        raise InputError(f"{what} of this run need {_gib(nbytes)} of scratch disk space here, but "
                         f"only {_gib(free)} is free; free some space, or point --cache (or "
                         "TMPDIR) to a larger disk", path=folder)
    fd, name = tempfile.mkstemp(prefix="ish-scratch-", suffix=".bin", dir=folder)
    try:
        os.ftruncate(fd, max(nbytes, 1))  # sparse: blocks are allocated as rows are written
        return np.memmap(name, dtype=dtype, mode="r+", shape=shape)
    finally:
        os.close(fd)
        if os.name == "posix":
            os.unlink(name)


def release_pages(array: Any) -> None:
    """Drop a memory-mapped array's pages from this process's resident set.

    The data stays in the file (and the page cache, from where the kernel can reclaim it);
    reading the next block maps it back. Streaming over a 6 GB feature memmap this way keeps
    the resident size at a block, not the whole file. No-op for in-memory arrays.
    """
    import mmap

    mm = getattr(array, "_mmap", None)  # numpy's memmap keeps its mmap here
    if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    with contextlib.suppress(OSError, ValueError):
        mm.madvise(mmap.MADV_DONTNEED)
