"""Opening a label store without running a received file's code, and keeping every query
over it interruptible.

* Every connection is hardened (:func:`connect`): ``PRAGMA trusted_schema=OFF`` (schema code
  may not call functions with side effects), defensive mode where Python offers it (3.12+:
  ``Connection.setconfig``; Python 3.11 has no way to reach ``sqlite3_db_config``, so there
  the read-only URI, ``trusted_schema=OFF`` and the allow-list carry the protection alone),
  a 64 MiB limit on any string or blob, the busy timeout set before anything else (before
  the switch to WAL), and a per-statement time budget enforced by a progress handler that
  also stops on Ctrl-C / SIGTERM or :meth:`BudgetConnection.cancel`.
* :func:`open_store` looks at the files first (:mod:`.sidefiles`: no hot journal is ever
  replayed, no symlinked side file followed, a pending WAL is vetted in a private copy),
  vets an existing file on a connection that only reads (:mod:`.schema`: allow-listed
  schema, pages and indexes that agree with their tables, well-typed rows) and opens it for
  writing only when it passed and is still the very file that was vetted, so a refused file
  is byte-identical afterwards and a trigger in it can never fire.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ..utils.errors import InputError
from .schema import (
    OPTIONAL_INDEXES,
    RECOVER_HINT,
    SCHEMA_VERSION,
    check_pages,
    check_rows,
    check_schema,
    create_schema,
)
from .sidefiles import (
    JOURNAL_WAIT,
    SQLITE_MAGIC,
    Changed,
    HotJournal,
    Snapshot,
    held,
    hold,
    main_file,
    real_path,
    same,
    side_files,
)

#: per-statement time budget (seconds) over a store, and how often the handler looks
QUERY_SECONDS = 30.0
_TICK_OPS = 20_000
_MAX_LENGTH = 64 * 2**20
F = TypeVar("F", bound=Callable)


class BudgetConnection(sqlite3.Connection):
    """A connection whose every statement has a time budget and can be stopped.

    The budget restarts at each :meth:`execute`; the progress handler (every ~20k VM steps)
    aborts the statement when it is spent, when :meth:`cancel` was called (any thread), or
    when a signal handler raises (Ctrl-C, the CLI's SIGTERM) - that exception is kept in
    ``stopped`` and re-raised by :func:`store_error` instead of being swallowed by SQLite.
    Only the thread running the query sees signals (the main thread, as in the CLI); the
    GUI stops a worker's query with :meth:`cancel`.
    """

    budget: float = QUERY_SECONDS
    deadline: float = float("inf")
    stopped: BaseException | str | None = None
    on_close: Callable[[], None] | None = None  # e.g. remove the private copy it reads

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.on_close is not None:
                self.on_close()
                self.on_close = None

    def execute(self, sql: str, parameters=(), /) -> sqlite3.Cursor:  # type: ignore[override]
        self.deadline = time.monotonic() + self.budget
        self.stopped = None
        return super().execute(sql, parameters)

    def cancel(self) -> None:
        """Stop the running statement (thread-safe)."""
        self.stopped = "cancelled"
        self.interrupt()

    def _over(self) -> int:
        if self.stopped is not None:
            return 1
        if time.monotonic() > self.deadline:
            self.stopped = "budget"
            return 1
        return 0

    def ticks(self) -> Iterator[int]:
        """The progress handler, as a generator's ``__next__``: Python runs a pending signal
        handler (Ctrl-C, SIGTERM) when a frame starts or resumes, and SQLite swallows an
        exception raised by its callback. A resumed generator raises it *inside* this try,
        so it is kept in ``stopped`` instead of being lost."""
        result = 0
        while True:
            try:
                yield result
                result = self._over()
            except GeneratorExit:
                return
            except BaseException as exc:  # KeyboardInterrupt / SIGTERM from a signal handler
                self.stopped = exc
                result = 1


def connect(uri: str, busy_timeout: float, budget: float = QUERY_SECONDS) -> BudgetConnection:
    """A hardened connection (see the module docstring); raises sqlite3.Error."""
    conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None,
                           check_same_thread=False, factory=BudgetConnection)
    assert isinstance(conn, BudgetConnection)
    try:
        conn.budget = budget
        ticks = conn.ticks()
        next(ticks)  # started here, so a signal can only arrive where it is caught
        conn.set_progress_handler(ticks.__next__, _TICK_OPS)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_LENGTH)
        if hasattr(conn, "setconfig"):  # Python 3.12+
            conn.setconfig(sqlite3.SQLITE_DBCONFIG_DEFENSIVE, True)  # type: ignore[attr-defined]
            conn.setconfig(sqlite3.SQLITE_DBCONFIG_TRUSTED_SCHEMA, False)  # type: ignore[attr-defined]
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA cell_size_check = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def store_error(exc: sqlite3.Error, path: Path, conn: sqlite3.Connection | None = None
                ) -> InputError:
    """One line for a SQLite error; re-raises a Ctrl-C/SIGTERM caught by the progress handler."""
    stopped = getattr(conn, "stopped", None)
    if isinstance(stopped, BaseException):
        raise stopped
    text = str(exc).lower()
    if stopped == "budget" or (stopped is None and "interrupted" in text):
        budget = getattr(conn, "budget", QUERY_SECONDS)
        msg = (f"a query over the label store ran longer than its {budget:g} s budget and was "
               "stopped; the file may be built to hang readers - ask its sender for a fresh copy")
    elif stopped == "cancelled":
        msg = "reading the label store was cancelled"
    elif "locked" in text or "busy" in text:
        msg = ("another program holds this label store (locked); close the other napari "
               "window or program using it and try again")
    elif "readonly" in text or "read-only" in text or "unable to open" in text:
        msg = ("cannot write the label store here (read-only file or folder); copy the file "
               "to a writable location or pick another label file")
    elif "could not decode" in text:  # the message would echo the raw bytes: not shown
        return not_utf8(path)
    elif "not a database" in text or "malformed" in text or "corrupt" in text:
        msg = "file is damaged or not a SQLite label store; " + RECOVER_HINT.format(name=path.name)
    else:
        msg = f"label store error: {exc}"
    return InputError(msg, path=path)


def not_utf8(path: Path) -> InputError:
    """Text SQLite hands back that is not UTF-8: only a damaged or hand-made store has it."""
    return InputError("the label store holds text that is not valid UTF-8 (damaged, or not "
                      "written by napari-ish-annotator); "
                      + RECOVER_HINT.format(name=path.name), path=path)


def guarded(method: F) -> F:
    """A SQLite error inside a store method becomes one :class:`InputError` line (a Ctrl-C or
    SIGTERM that stopped the query is re-raised as itself)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, self._conn) from None
        except UnicodeDecodeError:
            raise not_utf8(self.path) from None
    return run  # type: ignore[return-value]


def open_store(path: Path, read_only: bool, busy_timeout: float,
               budget: float = QUERY_SECONDS) -> BudgetConnection:
    """A vetted connection to the store at ``path`` (created unless ``read_only``).

    The files are looked at before SQLite opens any (:mod:`.sidefiles`: symlink loops,
    FIFOs, symlinked side files and hot journals refused); a store with a pending WAL is
    vetted in a private copy. A store that changes while it is vetted (another program
    writing it) is vetted again, a few times."""
    real = real_path(path)
    main, header = main_file(real, path)
    if read_only and main is None:
        raise InputError("no label store here; check the path", path=path)
    exists = main is not None and main.size > 0
    if exists and header[:16] != SQLITE_MAGIC:  # SQLite would silently reuse a tiny non-db file
        raise InputError("file is not a label store (not SQLite); pick another file name",
                         path=path)
    if exists and len(header) >= 20 and not {header[18], header[19]} <= {1, 2}:
        # SQLite reads such a file as read-only (or not at all) only once it is open, and
        # closing it then deletes a received WAL: refused here, before SQLite opens anything
        raise InputError(f"file is not a label store this program can open (SQLite file format "
                         f"versions {header[18]}/{header[19]}, known: 1 and 2); pick another "
                         "file name", path=path)
    give_up = time.monotonic() + busy_timeout
    journal_gone_by = time.monotonic() + min(busy_timeout, JOURNAL_WAIT)
    tries = 0
    while True:  # two processes creating one new store: the loser waits, never fails
        conns: list[BudgetConnection] = []
        try:
            conn = _open(path, real, read_only, exists or read_only, busy_timeout, budget, conns)
            if conn.on_close is None:  # SQLite has the store itself open (not a private copy)
                conn.on_close = hold(real)
            return conn
        except sqlite3.Error as exc:
            error = store_error(exc, path, conns[-1] if conns else None)
            _close(conns)
            if "locked" not in str(exc) or time.monotonic() > give_up:
                raise error from None
            time.sleep(0.02)
        except UnicodeDecodeError:
            _close(conns)
            raise not_utf8(path) from None
        except HotJournal:
            _close(conns)
            if time.monotonic() > journal_gone_by:
                raise
            time.sleep(0.02)
        except Changed:
            _close(conns)
            tries += 1
            if tries >= 5:
                raise InputError("the label store kept changing while it was checked (another "
                                 "program is writing it); close that program and try again",
                                 path=path) from None
            time.sleep(0.05 * tries)
            main, header = main_file(real, path)
            if header[:16] != SQLITE_MAGIC and (main is not None and main.size > 0):
                raise InputError("file is not a label store (not SQLite); pick another file "
                                 "name", path=path) from None
        except BaseException:
            _close(conns)
            raise


def _close(conns: list[BudgetConnection]) -> None:
    for conn in conns:
        conn.close()


def _vet(conn: BudgetConnection, path: Path, read_only: bool) -> None:
    """Every check of :mod:`.schema`, on a connection that only reads."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise InputError(
            f"label store has schema version {version} but this napari-ish-annotator "
            f"only knows up to {SCHEMA_VERSION}; update the package to open it", path=path)
    check_schema(conn, path)
    if read_only and version == 0:
        raise InputError("file is not a napari-ish-annotator label store", path=path)
    if version:
        check_pages(conn, path)
        check_rows(conn, path)


def _open(path: Path, real: Path, read_only: bool, vet: bool, busy_timeout: float,
          budget: float, conns: list[BudgetConnection]) -> BudgetConnection:
    """Vet an existing file without writing it, then (unless ``read_only``) open it for
    writing - only if it is still the very file that was vetted."""
    uri = real.as_uri()
    main, _ = main_file(real, path)
    wal = side_files(real, path)
    if vet and main is not None and wal is not None and not held(main):
        snapshot = Snapshot(real, main, wal)  # the WAL is replayed there, never here
        try:
            conns.append(connect(snapshot.uri, busy_timeout, budget))
            _vet(conns[-1], path, read_only)
        except BaseException:
            snapshot.remove()
            raise
        if read_only:  # read what was vetted: a later change of the file is not seen
            conns[-1].on_close = snapshot.remove
            return conns[-1]
        conns.pop().close()
        snapshot.remove()
    elif vet:
        conns.append(_connect_read_only(real, path, uri, busy_timeout, budget))
        _vet(conns[-1], path, read_only)
        if not same(real, main, wal):
            raise Changed
        if read_only:
            return conns[-1]
        conns.pop().close()
    if side_files(real, path) != wal:
        raise Changed
    conns.append(connect(uri, busy_timeout, budget))
    conn = conns[-1]
    check_schema(conn, path)  # again on the writing connection: no gap
    if vet and not same(real, main, wal):  # swapped or written since it was vetted
        raise Changed
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    if _needs_schema(conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _needs_schema(conn):  # re-check: another process may have won
                create_schema(conn)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
    return conn


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back an open transaction, keeping what stopped it: the ROLLBACK is a statement of
    its own, which would otherwise clear a Ctrl-C/SIGTERM that :func:`store_error` re-raises."""
    stopped = getattr(conn, "stopped", None)
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    if stopped is not None:
        conn.stopped = stopped


def _needs_schema(conn: sqlite3.Connection) -> bool:
    """A new file, or an older store without a later index."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    return (conn.execute("PRAGMA user_version").fetchone()[0] == 0
            or not set(OPTIONAL_INDEXES) <= have)


def _connect_read_only(real: Path, path: Path, uri: str, busy_timeout: float, budget: float
                       ) -> BudgetConnection:
    try:
        conn = connect(uri + "?mode=ro", busy_timeout, budget)
    except sqlite3.Error:
        conn = None
    if conn is not None:
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error:
            conn.close()
    if side_files(real, path) is not None:  # a WAL appeared: vet it in a copy (again)
        raise Changed
    # read-only disk: a WAL store cannot create its -shm file; with no pending WAL (and no
    # hot journal: refused by side_files) the file alone is complete, so read it as is
    return connect(uri + "?mode=ro&immutable=1", busy_timeout, budget)
