"""The files of a label store, looked at before SQLite opens any of them.

SQLite acts on the files beside a store on its own: a *hot rollback journal*
(``store.sqlite-journal``) is replayed into the store by the first connection that may
write, and its super-journal record makes SQLite ``unlink()`` whatever path it names; a
``-wal`` or ``-shm`` that is a symlink or a FIFO is followed (writing outside the folder) or
blocks for ever. A received store may come with any of these, so, before SQLite sees it:

* the store path is resolved once (a symlink loop is one line) and must be a regular file;
* each side file must be absent or a regular file (no symlink, FIFO, device or folder);
* a hot journal is refused and never replayed (napari-ish-annotator writes stores in WAL
  mode and never leaves one; SQLite's own rule: non-empty, first byte not zero) unless it
  goes within seconds (a live one: another process creating the store);
* a non-empty WAL (a crash of our own program, or another program still using the store,
  or a crafted file) is vetted in a private copy (:class:`Snapshot`): the store and its WAL
  are copied into a fresh temp folder and SQLite replays the WAL there, where nothing of
  the user's can be touched; the originals are compared (inode, size, mtime) before and
  after, so what was vetted is what the writing connection then sees.

Nothing here writes beside the store; :func:`same` is how the opener notices a swap.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..utils.errors import InputError

SQLITE_MAGIC = b"SQLite format 3\x00"
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) \
    | getattr(os, "O_CLOEXEC", 0)


class Changed(Exception):
    """The store or its WAL changed while it was looked at (another program writes it)."""


class HotJournal(InputError):
    """A rollback journal SQLite would replay. A live one (another process creating the
    store, or in the middle of a transaction) goes within moments: the opener waits
    :data:`JOURNAL_WAIT` seconds for it before refusing the store."""


#: how long a hot-looking journal may take to go before the store is refused
JOURNAL_WAIT = 2.0


@dataclass(frozen=True)
class FileState:
    """Who a file is and how it looked: enough to notice a swap or a write."""
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def real_path(path: Path) -> Path:
    """``path`` with every symlink resolved, once, so SQLite and its side files agree."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:  # 3.11: RuntimeError on a loop; 3.13: OSError
        raise InputError(f"cannot follow this path ({_why(exc)}); give the label store's "
                         "real file", path=path) from None


def _why(exc: BaseException) -> str:
    text = str(exc).lower()
    if "loop" in text or getattr(exc, "errno", None) == 40:
        return "a symlink loop: it points back to itself"
    return getattr(exc, "strerror", None) or str(exc)


#: (device, inode) -> how many SQLite connections of this process have that store open
_HELD: dict[tuple[int, int], int] = {}
_HELD_LOCK = threading.Lock()


def hold(real: Path) -> Callable[[], None]:
    """Note that this process has the store open (until the returned function is called).

    POSIX locks belong to the process: closing *any* descriptor of a file drops every lock
    SQLite holds on it in this process, which can let another process delete a WAL still in
    use (SQLite's "how to corrupt", 2.2). So a store this process has open is never opened
    by our own descriptors (:func:`main_file`, :class:`Snapshot`): SQLite shares it safely."""
    st = os.stat(real)
    key = (st.st_dev, st.st_ino)
    with _HELD_LOCK:
        _HELD[key] = _HELD.get(key, 0) + 1

    def release() -> None:
        with _HELD_LOCK:
            _HELD[key] -= 1
            if not _HELD[key]:
                del _HELD[key]
    return release


def held(state: FileState | None) -> bool:
    """Has this process the store with this state open already (see :func:`hold`)?"""
    with _HELD_LOCK:
        return state is not None and (state.dev, state.ino) in _HELD


def main_file(real: Path, path: Path) -> tuple[FileState | None, bytes]:
    """State and first 100 bytes of the store file; ``(None, b"")`` when there is none.

    Opened without following a symlink and without blocking, so a FIFO or a device named
    ``.sqlite`` is refused at once instead of hanging the program. A store this process
    has open already (:func:`hold`) is not opened again: it passed when it was opened."""
    try:
        st = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        return None, b""
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode) and held(FileState.of(st)):
        return FileState.of(st), SQLITE_MAGIC
    try:
        fd = os.open(real, _FLAGS)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (SQLite says the rest)
        return None, b""
    except OSError as exc:
        raise InputError(f"cannot open the label store ({_why(exc)}); check the path",
                         path=path) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError("is a folder, not a label store; give the .sqlite file", path=path)
        if not stat.S_ISREG(st.st_mode):
            raise InputError("is not a regular file (a FIFO, socket or device); a label store "
                             "is a plain .sqlite file - pick another file", path=path)
        return FileState.of(st), os.pread(fd, 100, 0)
    finally:
        os.close(fd)


def _side(real: Path, suffix: str) -> Path:
    return Path(f"{real}{suffix}")


def side_files(real: Path, path: Path) -> FileState | None:
    """Refuse side files SQLite must not act on; the WAL's state when it holds anything.

    Reads only (the journal's first byte); never creates, replays or removes anything."""
    wal: FileState | None = None
    for suffix in ("-journal", "-wal", "-shm"):
        side = _side(real, suffix)
        try:
            st = os.lstat(side)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise InputError(f"cannot inspect {side.name} beside the store ({_why(exc)})",
                             path=path) from None
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise InputError(
                f"{side.name} beside the store is {kind}; SQLite would follow it (writing "
                "or hanging outside this folder), so nothing was opened - move it away if the "
                "store is yours, or ask the sender for the .sqlite file alone", path=path)
        if suffix == "-journal" and st.st_size > 0 and _first_byte(side, path) != 0:
            raise HotJournal(
                f"{side.name} beside the store is an unfinished transaction that SQLite "
                "would replay into the store (napari-ish-annotator never leaves one: it is a "
                "crash of another SQLite program, or a crafted file that can rewrite the store "
                "and delete other files); nothing was replayed or changed - if the store is "
                f"yours, open it once with the program that left {side.name}, else ask the "
                "sender for the .sqlite file alone", path=path)
        if suffix == "-wal" and st.st_size > 0:
            wal = FileState.of(st)
    return wal


def _first_byte(side: Path, path: Path) -> int:
    try:
        fd = os.open(side, _FLAGS)
    except OSError as exc:
        raise InputError(f"cannot read {side.name} beside the store ({_why(exc)})",
                         path=path) from None
    try:
        first = os.pread(fd, 1, 0)
    finally:
        os.close(fd)
    return first[0] if first else 0


def same(real: Path, main: FileState | None, wal: FileState | None) -> bool:
    """Are the store (and its non-empty WAL) the very files seen before, unchanged?"""
    try:
        now = FileState.of(os.stat(real))
    except OSError:
        return False
    if main is not None and now != main:
        return False
    try:
        st = os.lstat(_side(real, "-wal"))
        now_wal = FileState.of(st) if st.st_size > 0 else None
    except FileNotFoundError:
        now_wal = None
    except OSError:
        return False
    return now_wal == wal


class Snapshot:
    """The store and its WAL copied into a private temp folder, for vetting (and for
    reading, when the store was opened read-only); :meth:`remove` deletes the folder."""

    def __init__(self, real: Path, main: FileState, wal: FileState):
        self.folder = Path(tempfile.mkdtemp(prefix="ish-labels-"))
        self.path = self.folder / "store.sqlite"
        try:
            _copy(real, self.path, main)
            _copy(_side(real, "-wal"), _side(self.path, "-wal"), wal)
        except BaseException:
            self.remove()
            raise

    @property
    def uri(self) -> str:
        return self.path.as_uri()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _copy(source: Path, target: Path, expected: FileState) -> None:
    """Copy exactly the file that had ``expected`` state (else :class:`Changed`)."""
    try:
        fd = os.open(source, _FLAGS)
    except OSError:
        raise Changed from None
    try:
        if FileState.of(os.fstat(fd)) != expected:
            raise Changed
        with open(target, "xb") as out:
            left = expected.size
            while left > 0:
                block = os.read(fd, min(left, 1 << 20))
                if not block:
                    raise Changed
                out.write(block)
                left -= len(block)
        if FileState.of(os.fstat(fd)) != expected:
            raise Changed
    finally:
        os.close(fd)
