"""SQLite label store that never loses a biologist's labels.

Every label change is an *event* appended in its own committed transaction, so nothing is
ever overwritten: the current label is the latest event per (image, term, annotator), undo
writes a new event that restores the previous value, and the whole history stays readable.

Durability: WAL journal with ``synchronous=FULL``. NORMAL would survive an application crash
but may drop the last commits on power loss; labels arrive at human speed, so the extra fsync
per change costs nothing noticeable and FULL is the safe choice.

Images are identified by the sha256 of their bytes, so a moved or renamed image keeps its
labels (its stored path is updated the next time it is seen).
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError
from .label_schema import (
    OPTIONAL_INDEXES,
    QUERY_SECONDS,
    SCHEMA_VERSION,
    BudgetConnection,
    check_pages,
    check_rows,
    check_schema,
    connect,
    create_schema,
    store_error,
)

if TYPE_CHECKING:
    from .manifest import Dataset

LabelValue = int | None  # 1 present, 0 absent, None unknown
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
#: up to this many images, label queries name them (SQL IN list) instead of reading all labels
_FEW = 200

# An event counts towards the current label unless it is an undo record or has been undone.
# Undoing an annotator's first label of a term therefore leaves *no* label of theirs (so a
# fallback such as the imported manifest shows through again), not an explicit "unknown".
_EFFECTIVE = ("{e}.undo_of IS NULL AND NOT EXISTS "
              "(SELECT 1 FROM label_events u WHERE u.undo_of = {e}.id)")

_EVENT_SQL = """SELECT e.id, i.content_hash, i.path, t.name, e.value, a.name, e.time, e.undo_of
FROM label_events e JOIN images i ON i.id = e.image JOIN terms t ON t.id = e.term
JOIN annotators a ON a.id = e.annotator"""


def _content_hash(path: Path) -> str:
    """sha256 of the file bytes: the same image identity as the feature cache uses."""
    from .images import content_hash

    return content_hash(path)


def _guarded(method):
    """A SQLite error inside a store method becomes one :class:`InputError` line (a Ctrl-C or
    SIGTERM that stopped the query is re-raised as itself)."""
    @functools.wraps(method)
    def run(self: LabelStore, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, self._conn) from None
    return run


def default_annotator() -> str:
    """$ISH_ANNOTATOR_USER, else the OS user name."""
    name = os.environ.get("ISH_ANNOTATOR_USER", "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (some containers)
        return "unknown"


def _lookup(keys: dict[int, int], query: np.ndarray) -> np.ndarray:
    """``keys[q]`` for each id in ``query``, -1 where absent (memory follows len(keys))."""
    if not keys or not len(query):
        return np.full(len(query), -1, dtype=np.int64)
    k = np.fromiter(keys.keys(), np.int64, len(keys))
    v = np.fromiter(keys.values(), np.int64, len(keys))
    order = np.argsort(k)
    k, v = k[order], v[order]
    pos = np.minimum(np.searchsorted(k, query), len(k) - 1)
    return np.where(k[pos] == query, v[pos], -1)


@dataclass(frozen=True)
class LabelEvent:
    id: int
    image_hash: str
    image_path: str
    term: str
    value: LabelValue
    annotator: str
    time: float
    undo_of: int | None


class LabelStore:
    """Append-only label events in one SQLite file; see the module docstring."""

    def __init__(self, path: str | Path, annotator: str | None = None, read_only: bool = False,
                 busy_timeout: float = 5.0, query_budget: float = QUERY_SECONDS):
        self.path = Path(path)
        self.annotator = annotator or default_annotator()
        self.read_only = read_only
        self._hash_cache: dict[str, tuple[int, int, str]] = {}
        # path exactly as given -> (st_dev, st_ino, st_mtime_ns, st_size, hash): one stat() per
        # image instead of resolve() + is_file() + stat(), for label counts over large folders
        self._given_cache: dict[str, tuple[int, int, int, int, str]] = {}
        self._lock = threading.RLock()  # widgets may write from worker threads
        self._conn: BudgetConnection | None = None
        if read_only and not self.path.is_file():
            raise InputError("no label store here; check the path", path=self.path)
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists:
            with open(self.path, "rb") as fh:  # SQLite would silently reuse a tiny non-db file
                if fh.read(16) != b"SQLite format 3\x00":
                    raise InputError("file is not a label store (not SQLite); pick another "
                                     "file name", path=self.path)
        uri = self.path.resolve().as_uri()
        give_up = time.monotonic() + busy_timeout
        while True:  # two processes creating one new store: the loser waits, never fails
            try:
                self._open(uri, exists or read_only, busy_timeout, query_budget)
                return
            except sqlite3.Error as exc:
                error = store_error(exc, self.path, self._conn)
                self.close()
                if "locked" not in str(exc) or time.monotonic() > give_up:
                    raise error from None
                time.sleep(0.02)
            except BaseException:
                self.close()
                raise

    def _open(self, uri: str, vet: bool, busy_timeout: float, budget: float) -> None:
        """Vet an existing file on a read-only connection, then (unless read-only) open it for
        writing: nothing is written to a file that fails any check, so it stays byte-identical."""
        if vet:
            self._conn = self._connect_read_only(uri, busy_timeout, budget)
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise InputError(
                    f"label store has schema version {version} but this napari-ish-annotator "
                    f"only knows up to {SCHEMA_VERSION}; update the package to open it",
                    path=self.path)
            check_schema(self._conn, self.path)
            if self.read_only:
                if version == 0:
                    raise InputError("file is not a napari-ish-annotator label store",
                                     path=self.path)
                check_pages(self._conn, self.path)
                check_rows(self._conn, self.path)
                return
            if version:
                check_pages(self._conn, self.path)
                check_rows(self._conn, self.path)
            self._conn.close()
        self._conn = connect(uri, busy_timeout, budget)
        check_schema(self._conn, self.path)  # again on the writing connection: no gap
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        if self._needs_schema(self._conn):
            with self._write() as conn:  # re-check: another process may have won
                if self._needs_schema(conn):
                    create_schema(conn)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _needs_schema(conn: sqlite3.Connection) -> bool:
        """A new file, or an older store without a later index."""
        have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        return (conn.execute("PRAGMA user_version").fetchone()[0] == 0
                or not set(OPTIONAL_INDEXES) <= have)

    def _connect_read_only(self, uri: str, busy_timeout: float, budget: float
                           ) -> BudgetConnection:
        try:
            conn = connect(uri + "?mode=ro", busy_timeout, budget)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error:
            wal = Path(f"{self.path}-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise
        # read-only disk: a WAL store cannot create its -shm file; with no pending WAL
        # content the file alone is complete and nobody can write it, so read it as is
        return connect(uri + "?mode=ro&immutable=1", busy_timeout, budget)

    # -- plumbing --------------------------------------------------------------------------
    @staticmethod
    def default_path_for(source: str | Path) -> Path:
        """manifest.csv -> manifest.labels.sqlite beside it; folder -> folder/ish-labels.sqlite."""
        source = Path(source)
        if source.is_dir() or not source.suffix:
            return source / "ish-labels.sqlite"
        return source.with_name(source.stem + ".labels.sqlite")

    def _error(self, exc: sqlite3.Error) -> InputError:
        return store_error(exc, self.path, self._conn)

    def cancel(self) -> None:
        """Stop the query running now (from any thread); it raises :class:`InputError`."""
        if self._conn is not None:
            self._conn.cancel()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction (BEGIN IMMEDIATE: take the write lock before reading)."""
        if self.read_only:
            raise InputError("label store was opened read-only; reopen it without read_only "
                             "to change labels", path=self.path)
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self._error(exc) from None
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise self._error(exc) from None
                raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- identities ------------------------------------------------------------------------
    def _hash_file(self, path: Path) -> str:
        st = path.stat()
        key = str(path)
        cached = self._hash_cache.get(key)
        if cached and cached[:2] == (st.st_mtime_ns, st.st_size):
            return cached[2]
        digest = _content_hash(path)
        with self._lock:
            self._hash_cache[key] = (st.st_mtime_ns, st.st_size, digest)
        return digest

    def _resolve(self, image: str | Path) -> tuple[str, str | None]:
        """(content hash, current file path or None) for a path or a known hash."""
        text = str(image)
        if _HASH_RE.match(text) and self._image_id(text) is not None:
            return text, None
        path = Path(image).resolve()
        if path.is_file():
            return self._hash_file(path), str(path)
        row = self._conn.execute("SELECT content_hash FROM images WHERE path = ?",
                                 (str(path),)).fetchone()
        if row:
            return row[0], None
        raise InputError("image not found and not known to the label store; check the path",
                         path=image)

    def _image_id(self, digest: str) -> int | None:
        row = self._conn.execute("SELECT id FROM images WHERE content_hash = ?",
                                 (digest,)).fetchone()
        return row[0] if row else None

    def _upsert_image(self, digest: str, path: str | None, gene: str | None = None,
                      stage: str | None = None) -> int:
        if path is not None:
            self._conn.execute(
                "INSERT INTO images (content_hash, path, added, gene, stage) VALUES (?,?,?,?,?) "
                "ON CONFLICT(content_hash) DO UPDATE SET path = excluded.path, "
                "gene = coalesce(excluded.gene, gene), stage = coalesce(excluded.stage, stage)",
                (digest, path, time.time(), gene, stage))
        image_id = self._image_id(digest)
        if image_id is None:
            raise InputError("unknown image hash; add the image by its path first", path=digest)
        return image_id

    def _named_id(self, table: str, name: str) -> int:
        self._conn.execute(f"INSERT OR IGNORE INTO {table} (name) VALUES (?)", (name,))
        return self._conn.execute(f"SELECT id FROM {table} WHERE name = ?", (name,)).fetchone()[0]

    @_guarded
    def add_images(self, paths: Sequence[Path], hashes: Sequence[str] | None = None) -> None:
        """Register images (path updated if the same content was seen elsewhere)."""
        if hashes is None:
            hashes = self._hashes(paths, strict=True)
        with self._write():
            for path, digest in zip(paths, hashes, strict=True):
                self._upsert_image(digest, str(Path(path).resolve()))

    @_guarded
    def add_terms(self, terms: Sequence[str]) -> None:
        with self._write():
            for term in terms:
                self._named_id("terms", term)

    @_guarded
    def terms(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM terms ORDER BY id")]

    @_guarded
    def annotators(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM annotators ORDER BY id")]

    @_guarded
    def labelled_images(self) -> list[str]:
        """Content hashes of the images with at least one label event, oldest first."""
        return [r[0] for r in self._conn.execute(
            "SELECT content_hash FROM images WHERE id IN (SELECT image FROM label_events) "
            "ORDER BY id")]

    @_guarded
    def unlabelled(self, images: Sequence[str | Path]) -> list[str | Path]:
        """The ``images`` this store holds no label event of (unknown files included)."""
        have = set(self.labelled_images())
        return [image for image, digest in zip(images, self._hashes(images), strict=True)
                if digest not in have]

    # -- events ----------------------------------------------------------------------------
    def _event(self, event_id: int) -> LabelEvent:
        row = self._conn.execute(_EVENT_SQL + " WHERE e.id = ?", (event_id,)).fetchone()
        return LabelEvent(*row)

    def _latest(self, image_id: int, term_id: int, annotator_id: int,
                before: int | None = None) -> tuple[int, LabelValue] | None:
        args: tuple[int, ...] = (image_id, term_id, annotator_id)
        if before is not None:
            args += (before,)
        row = self._conn.execute(
            "SELECT id, value FROM label_events WHERE image = ? AND term = ? AND annotator = ? "
            + ("AND id < ? " if before is not None else "") + "AND "
            + _EFFECTIVE.format(e="label_events") + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return (row[0], row[1]) if row else None

    def _insert(self, image_id: int, term_id: int, value: LabelValue, annotator_id: int,
                undo_of: int | None = None) -> int:
        cur = self._conn.execute(
            "INSERT INTO label_events (image, term, value, annotator, time, undo_of) "
            "VALUES (?,?,?,?,?,?)", (image_id, term_id, value, annotator_id, time.time(), undo_of))
        return int(cur.lastrowid)

    @staticmethod
    def _check_value(value: object) -> LabelValue:
        if value is None:
            return None
        if value in (0, 1) and not isinstance(value, float):
            return int(value)  # type: ignore[arg-type]
        raise InputError(f"label value must be 1 (present), 0 (absent) or None (unknown), "
                         f"not {value!r}")

    @_guarded
    def set_label(self, image: str | Path, term: str, value: LabelValue,
                  annotator: str | None = None) -> LabelEvent:
        """Record one label in its own committed transaction; a no-op change writes nothing."""
        value = self._check_value(value)
        digest, path = self._resolve(image)
        with self._write():
            image_id = self._upsert_image(digest, path)
            term_id = self._named_id("terms", term)
            annotator_id = self._named_id("annotators", annotator or self.annotator)
            latest = self._latest(image_id, term_id, annotator_id)
            if latest is not None and latest[1] == value:
                event_id = latest[0]
            else:
                event_id = self._insert(image_id, term_id, value, annotator_id)
        return self._event(event_id)

    @_guarded
    def undo(self, annotator: str | None = None) -> LabelEvent | None:
        """Revert the annotator's latest change not yet undone; repeated calls walk back.

        The undo is itself recorded (``undo_of`` = the reverted event, ``value`` = the value
        now in force, ``None`` when the annotator has no earlier label of that term).
        """
        name = annotator or self.annotator
        with self._write():
            row = self._conn.execute(
                "SELECT e.id, e.image, e.term, e.annotator FROM label_events e "
                "JOIN annotators a ON a.id = e.annotator WHERE a.name = ? AND e.undo_of IS NULL "
                "AND NOT EXISTS (SELECT 1 FROM label_events u WHERE u.undo_of = e.id) "
                "ORDER BY e.id DESC LIMIT 1", (name,)).fetchone()
            if row is None:
                return None
            target, image_id, term_id, annotator_id = row
            previous = self._latest(image_id, term_id, annotator_id, before=target)
            event_id = self._insert(image_id, term_id, previous[1] if previous else None,
                                    annotator_id, undo_of=target)
        return self._event(event_id)

    @_guarded
    def history(self, image: str | Path | None = None, term: str | None = None) -> list[LabelEvent]:
        """All events (optionally of one image and/or term), oldest first."""
        where, args = [], []
        if image is not None:
            where.append("i.content_hash = ?")
            args.append(self._resolve(image)[0])
        if term is not None:
            where.append("t.name = ?")
            args.append(term)
        sql = _EVENT_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY e.id"
        return [LabelEvent(*r) for r in self._conn.execute(sql, args)]

    # -- current labels --------------------------------------------------------------------
    def _current(self, annotators: Sequence[str] | None,
                 image: str | None = None) -> dict[tuple[str, str, str], LabelValue]:
        """{(hash, term, annotator): latest value} for the given annotators (None = all)."""
        where, args = [_EFFECTIVE.format(e="label_events")], []
        if annotators is not None:
            where.append("annotator IN (SELECT id FROM annotators WHERE name IN "
                         f"({','.join('?' * len(annotators))}))")
            args = list(annotators)
        if image is not None:
            where.append("image = (SELECT id FROM images WHERE content_hash = ?)")
            args.append(image)
        sql = ("SELECT i.content_hash, t.name, a.name, e.value FROM label_events e "
               "JOIN (SELECT max(id) AS id FROM label_events WHERE " + " AND ".join(where) +
               " GROUP BY image, term, annotator) last ON last.id = e.id "
               "JOIN images i ON i.id = e.image JOIN terms t ON t.id = e.term "
               "JOIN annotators a ON a.id = e.annotator")
        return {(h, t, a): v for h, t, a, v in self._conn.execute(sql, args)}

    def _hash_or_none(self, image: str | Path) -> str | None:
        try:
            return self._resolve(image)[0]
        except InputError:
            return None

    def copy_hashes_from(self, other: LabelStore) -> None:
        """Take a copy of ``other``'s path->hash caches (switching label files then re-hashes
        nothing). Copied under ``other``'s lock, so a worker thread may call this while the
        GUI thread still uses ``other``; the two stores never share a dict."""
        with other._lock:
            hashes, given = dict(other._hash_cache), dict(other._given_cache)
        with self._lock:
            self._hash_cache.update(hashes)
            self._given_cache.update(given)

    def _hashes(self, images: Sequence[str | Path], strict: bool = False) -> list[str | None]:
        """Content hash per image (None when unknown unless ``strict``), one stat() per hit.

        A hit needs the same file (device, inode) with the same mtime_ns and size as when it
        was hashed, so a changed, replaced or re-targeted file is hashed again; anything else
        (known hashes, moved files, unknown paths) goes through :meth:`_resolve`.
        """
        out: list[str | None] = []
        cache = self._given_cache
        for image in images:
            text = str(image)
            try:
                st = os.stat(text)
            except (OSError, ValueError):
                st = None
            if st is not None and stat.S_ISREG(st.st_mode) and not _HASH_RE.match(text):
                key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
                hit = cache.get(text)
                if hit is not None and hit[:4] == key:
                    out.append(hit[4])
                    continue
            else:
                key = None
            try:
                digest, path = self._resolve(image)
            except InputError:
                if strict:
                    raise
                out.append(None)
                continue
            if key is not None and path is not None:
                with self._lock:
                    cache[text] = (*key, digest)
            out.append(digest)
        return out

    @_guarded
    def labels_for(self, image: str | Path, annotator: str | None = None,
                   fallback: Sequence[str] = ("manifest",)) -> dict[str, LabelValue]:
        """Latest value per term for one annotator; ``fallback`` annotators fill unlabelled terms."""
        digest = self._resolve(image)[0]
        chain = [annotator or self.annotator, *fallback]
        current = self._current(chain, digest)
        out: dict[str, LabelValue] = {}
        for name in chain:  # earlier annotators in the chain win
            for (h, term, a), value in current.items():
                if h == digest and a == name and term not in out:
                    out[term] = value
        return out

    @_guarded
    def label_matrix(self, images: Sequence[str | Path], vocabulary: Sequence[str],
                     annotator: str | None = None,
                     fallback: Sequence[str] = ("manifest",)) -> np.ndarray:
        """(n, T) int8 of 1/0, -1 unknown; unseen images are all -1.

        ``fallback`` annotators (by default the imported manifest) fill terms the annotator
        never labelled; an explicit "unknown" from the annotator is kept. ``fallback=()``
        gives the annotator's own labels only.
        """
        out = np.full((len(images), len(vocabulary)), -1, dtype=np.int8)
        if not len(images) or not len(vocabulary):
            return out
        chain = list(dict.fromkeys([annotator or self.annotator, *fallback]))
        digests = self._hashes(images)
        wanted = {d for d in digests if d is not None}
        if not wanted:
            return out
        conn = self._conn
        if len(wanted) <= _FEW:  # one row (a keypress): only that image's events
            ids = dict(conn.execute("SELECT content_hash, id FROM images WHERE content_hash IN "
                                    f"({','.join('?' * len(wanted))})", list(wanted)))
        else:
            ids = {h: i for h, i in conn.execute("SELECT content_hash, id FROM images")
                   if h in wanted}
        if not ids:
            return out
        term_ids = dict(conn.execute("SELECT name, id FROM terms"))
        names = dict(conn.execute("SELECT name, id FROM annotators"))
        chain_ids = [names[a] for a in chain if a in names]
        if not chain_ids or not any(t in term_ids for t in vocabulary):
            return out
        where = [_EFFECTIVE.format(e="label_events"),
                 f"annotator IN ({','.join('?' * len(chain_ids))})"]
        args: list[object] = list(chain_ids)
        if len(ids) <= _FEW:
            where.append(f"image IN ({','.join('?' * len(ids))})")
            args += list(ids.values())
        sql = ("SELECT e.image, e.term, e.annotator, coalesce(e.value, -1) FROM label_events e "
               "JOIN (SELECT max(id) AS id FROM label_events WHERE " + " AND ".join(where) +
               " GROUP BY image, term, annotator) last ON last.id = e.id")
        events = np.array(conn.execute(sql, args).fetchall(), dtype=np.int64).reshape(-1, 4)
        # image id -> first row showing it (same content under two paths: copied below);
        # lookups are sized by the number of rows, never by how large an id is
        first: dict[str, int] = {}
        for i, d in enumerate(digests):
            if d in ids and d not in first:
                first[d] = i
        first_col: dict[int, int] = {}
        for j, term in enumerate(vocabulary):
            if term in term_ids:
                first_col.setdefault(term_ids[term], j)
        image, term, who, value = events.T
        rows = _lookup({ids[d]: i for d, i in first.items()}, image)
        cols = _lookup(first_col, term)
        for annotator_id in reversed(chain_ids):  # earlier annotators in the chain win: last
            pick = (who == annotator_id) & (rows >= 0) & (cols >= 0)
            out[rows[pick], cols[pick]] = value[pick]
        if len(vocabulary) != len(set(vocabulary)):  # a repeated term column copies the first
            for j, term in enumerate(vocabulary):
                if term in term_ids and first_col[term_ids[term]] != j:
                    out[:, j] = out[:, first_col[term_ids[term]]]
        for i, d in enumerate(digests):
            if d in first and first[d] != i:
                out[i] = out[first[d]]
        return out

    # -- manifests -------------------------------------------------------------------------
    @_guarded
    def import_dataset(self, dataset: Dataset, annotator: str = "manifest") -> int:
        """Write the manifest's labels (unlisted vocabulary terms = 0) in ONE transaction.

        Only values that differ from the annotator's current ones are written, so importing
        the same manifest again writes nothing. Returns the number of events written.
        """
        hashes = [self._resolve(s.image)[0] for s in dataset.samples]  # before taking the lock
        written = 0
        with self._write():
            term_ids = {t: self._named_id("terms", t) for t in dataset.vocabulary}
            annotator_id = self._named_id("annotators", annotator)
            for sample, digest in zip(dataset.samples, hashes, strict=True):
                image_id = self._upsert_image(digest, str(Path(sample.image).resolve()),
                                              sample.gene, sample.stage)
                positives = set(sample.terms)
                for term in positives - term_ids.keys():
                    term_ids[term] = self._named_id("terms", term)
                for term, term_id in term_ids.items():
                    value = 1 if term in positives else 0
                    latest = self._latest(image_id, term_id, annotator_id)
                    if latest is None or latest[1] != value:
                        self._insert(image_id, term_id, value, annotator_id)
                        written += 1
        return written

    @_guarded
    def export_manifest(self, path: str | Path, images: Sequence[Path], vocabulary: Sequence[str],
                        annotator: str | None = None,
                        fallback: Sequence[str] = ("manifest",),
                        matrix: np.ndarray | None = None) -> None:
        """Write a manifest CSV (image, terms[, stage, gene], unknown_terms) atomically.

        Labels are this annotator's, with imported manifest labels filling terms it never
        labelled, or ``matrix`` (n, T) in {1, 0, -1} (e.g. a consensus) when given;
        ``unknown_terms`` lists the terms still without a label.
        """
        from .manifest import Sample, write_manifest

        if matrix is None:
            matrix = self.label_matrix(images, vocabulary, annotator, fallback)
        samples, unknown = [], []
        for image, labels in zip(images, matrix, strict=True):
            digest, file_path = self._resolve(image)
            stored = self._conn.execute("SELECT path, gene, stage FROM images "
                                        "WHERE content_hash = ?", (digest,)).fetchone()
            gene, stage = (stored[1], stored[2]) if stored else (None, None)
            full = Path(file_path or stored[0])
            samples.append(Sample(image=full, gene=gene, stage=stage, terms=tuple(
                t for t, v in zip(vocabulary, labels, strict=True) if v == 1)))
            unknown.append(";".join(t for t, v in zip(vocabulary, labels, strict=True) if v == -1))
        try:
            write_manifest(path, samples, extra_columns={"unknown_terms": unknown})
        except OSError as exc:
            raise InputError(f"cannot write the manifest ({exc.strerror}); pick a writable "
                             "location", path=path) from None
