"""SQLite label store that never loses a biologist's labels.

Every label change is an *event* appended in its own committed transaction, so nothing is
ever overwritten: the current label is the latest event per (image, term, annotator), undo
writes a new event that restores the previous value, and the whole history stays readable.

Durability: WAL journal with ``synchronous=FULL``. NORMAL would survive an application crash
but may drop the last commits on power loss; labels arrive at human speed, so the extra fsync
per change costs nothing noticeable and FULL is the safe choice.

Images are identified by the sha256 of their bytes, so a moved or renamed image keeps its
labels (its stored path is updated the next time it is seen).

Files: this module holds the store's events and image identities; opening a file safely
(read-only vetting first, time budget, Ctrl-C) is :mod:`.connection`, what a store may
contain is :mod:`.schema`, reading current labels :mod:`.reading` and manifest
import/export :mod:`.manifests` (mixins of :class:`LabelStore`).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..utils.errors import InputError
from ..utils.hashing import FILE_HASHES
from .connection import QUERY_SECONDS, BudgetConnection, guarded, open_store, rollback
from .manifests import ManifestIO
from .reading import CurrentLabels
from .schema import EFFECTIVE, LabelValue

_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # the same rule as schema.check_rows

_EVENT_SQL = """SELECT e.id, i.content_hash, i.path, t.name, e.value, a.name, e.time, e.undo_of
FROM label_events e JOIN images i ON i.id = e.image JOIN terms t ON t.id = e.term
JOIN annotators a ON a.id = e.annotator"""


def default_annotator() -> str:
    """$ISH_ANNOTATOR_USER, else the OS user name."""
    name = os.environ.get("ISH_ANNOTATOR_USER", "").strip()
    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (some containers)
        return "unknown"


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


class LabelStore(CurrentLabels, ManifestIO):
    """Append-only label events in one SQLite file; see the module docstring."""

    def __init__(self, path: str | Path, annotator: str | None = None, read_only: bool = False,
                 busy_timeout: float = 5.0, query_budget: float = QUERY_SECONDS):
        self.path = Path(path)
        self.annotator = annotator or default_annotator()
        self.read_only = read_only
        self._lock = threading.RLock()  # widgets may write from worker threads
        self._conn: BudgetConnection | None = None
        self._conn = open_store(self.path, read_only, busy_timeout, query_budget)

    # -- plumbing --------------------------------------------------------------------------
    @staticmethod
    def default_path_for(source: str | Path) -> Path:
        """manifest.csv -> manifest.labels.sqlite beside it; folder -> folder/ish-labels.sqlite."""
        source = Path(source)
        if source.is_dir() or not source.suffix:
            return source / "ish-labels.sqlite"
        return source.with_name(source.stem + ".labels.sqlite")

    def cancel(self) -> None:
        """Stop the query running now (from any thread); it raises :class:`InputError`."""
        if self._conn is not None:
            self._conn.cancel()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction (BEGIN IMMEDIATE: take the write lock before reading).
        Every caller is :func:`guarded`, which turns a SQLite error into one line."""
        if self.read_only:
            raise InputError("label store was opened read-only; reopen it without read_only "
                             "to change labels", path=self.path)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                rollback(self._conn)
                raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- identities ------------------------------------------------------------------------
    def _resolve(self, image: str | Path) -> tuple[str, str | None]:
        """(content hash, current file path or None) for a path or a known hash."""
        text = str(image)
        if _HASH_RE.match(text) and self._image_id(text) is not None:
            return text, None
        path = Path(image).resolve()
        if path.is_file():
            return FILE_HASHES.hash(path, "image"), str(path)
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
        bad = _CONTROL.search(name)
        if bad is not None:
            raise InputError(f"{table[:-1]} name {ascii(name[:60])} holds a control character "
                             f"({ascii(bad.group())}); names are printable text - fix the "
                             "manifest or vocabulary it came from")
        self._conn.execute(f"INSERT OR IGNORE INTO {table} (name) VALUES (?)", (name,))
        return self._conn.execute(f"SELECT id FROM {table} WHERE name = ?", (name,)).fetchone()[0]

    @guarded
    def add_images(self, paths: Sequence[Path], hashes: Sequence[str] | None = None) -> None:
        """Register images (path updated if the same content was seen elsewhere)."""
        if hashes is None:
            hashes = self._hashes(paths, strict=True)
        with self._write():
            for path, digest in zip(paths, hashes, strict=True):
                self._upsert_image(digest, str(Path(path).resolve()))

    @guarded
    def add_terms(self, terms: Sequence[str]) -> None:
        with self._write():
            for term in terms:
                self._named_id("terms", term)

    @guarded
    def terms(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM terms ORDER BY id")]

    @guarded
    def annotators(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM annotators ORDER BY id")]

    @guarded
    def labelled_images(self) -> list[str]:
        """Content hashes of the images with at least one label event, oldest first."""
        return [r[0] for r in self._conn.execute(
            "SELECT content_hash FROM images WHERE id IN (SELECT image FROM label_events) "
            "ORDER BY id")]

    @guarded
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
            + EFFECTIVE.format(e="label_events") + " ORDER BY id DESC LIMIT 1", args).fetchone()
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

    @guarded
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

    @guarded
    def set_labels(self, changes: Sequence[tuple[str | Path, str, LabelValue]],
                   annotator: str | None = None) -> list[LabelEvent]:
        """Record many labels in ONE committed transaction (all or none, e.g. accepting a gene
        x stage record); returns the events written (no-op changes write nothing)."""
        checked = [(image, term, self._check_value(value)) for image, term, value in changes]
        resolved = [(*self._resolve(image), term, value) for image, term, value in checked]
        written = []
        with self._write():
            annotator_id = self._named_id("annotators", annotator or self.annotator)
            for digest, path, term, value in resolved:
                image_id = self._upsert_image(digest, path)
                term_id = self._named_id("terms", term)
                latest = self._latest(image_id, term_id, annotator_id)
                if latest is None or latest[1] != value:
                    written.append(self._insert(image_id, term_id, value, annotator_id))
        return [self._event(e) for e in written]

    @guarded
    def undo(self, annotator: str | None = None) -> LabelEvent | None:
        """Revert the annotator's latest change not yet undone; repeated calls walk back.

        The undo is itself recorded (``undo_of`` = the reverted event, ``value`` = the value
        now in force, ``None`` when the annotator has no earlier label of that term).
        """
        undone = self.undo_together((), annotator)
        return undone[0] if undone else None

    @guarded
    def undo_together(self, together: Collection[int], annotator: str | None = None
                      ) -> list[LabelEvent]:
        """Like :meth:`undo`, in one transaction; while the next change to revert is one of the
        event ids ``together`` (a batch from :meth:`set_labels`), it is reverted too."""
        name = annotator or self.annotator
        together = set(together)
        done: list[int] = []
        with self._write():
            while True:
                row = self._conn.execute(
                    "SELECT e.id, e.image, e.term, e.annotator FROM label_events e "
                    "JOIN annotators a ON a.id = e.annotator WHERE a.name = ? "
                    "AND e.undo_of IS NULL AND NOT EXISTS (SELECT 1 FROM label_events u "
                    "WHERE u.undo_of = e.id) ORDER BY e.id DESC LIMIT 1", (name,)).fetchone()
                if row is None or (done and row[0] not in together):
                    break
                target, image_id, term_id, annotator_id = row
                previous = self._latest(image_id, term_id, annotator_id, before=target)
                done.append(self._insert(image_id, term_id, previous[1] if previous else None,
                                         annotator_id, undo_of=target))
                if target not in together:
                    break
        return [self._event(e) for e in done]

    @guarded
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

    # -- image identities (content hashes) -------------------------------------------------
    def _hash_or_none(self, image: str | Path) -> str | None:
        try:
            return self._resolve(image)[0]
        except InputError:
            return None

    def copy_hashes_from(self, other: LabelStore) -> None:
        """Nothing to copy any more: every store reads the process's one hash cache
        (:data:`..utils.hashing.FILE_HASHES`), so switching label files re-hashes nothing.
        Kept until its callers in ``session.steps`` are removed."""

    def _hashes(self, images: Sequence[str | Path], strict: bool = False) -> list[str | None]:
        """Content hash per image (None when unknown unless ``strict``), one stat() per hit.

        A hit is the process's hash cache (:data:`FILE_HASHES`), keyed by the path as given:
        a changed, replaced or re-targeted file is hashed again; anything else (known hashes,
        moved files, unknown paths) goes through :meth:`_resolve`.
        """
        out: list[str | None] = []
        for image in images:
            text = str(image)
            if not _HASH_RE.match(text):
                try:
                    out.append(FILE_HASHES.hash(text, "image"))
                    continue
                except InputError:
                    pass  # not a file here: perhaps known by its path
            try:
                digest = self._resolve(image)[0]
            except InputError:
                if strict:
                    raise
                out.append(None)
                continue
            out.append(digest)
        return out

