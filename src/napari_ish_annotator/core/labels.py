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

if TYPE_CHECKING:
    from .manifest import Dataset

LabelValue = int | None  # 1 present, 0 absent, None unknown
SCHEMA_VERSION = 1
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
#: up to this many images, label queries name them (SQL IN list) instead of reading all labels
_FEW = 200

_SCHEMA = """
CREATE TABLE images (id INTEGER PRIMARY KEY, content_hash TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL, added REAL NOT NULL, gene TEXT, stage TEXT);
CREATE TABLE terms (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE annotators (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE label_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image INTEGER NOT NULL REFERENCES images(id),
    term INTEGER NOT NULL REFERENCES terms(id),
    value INTEGER CHECK (value IN (0, 1)),
    annotator INTEGER NOT NULL REFERENCES annotators(id),
    time REAL NOT NULL,
    undo_of INTEGER REFERENCES label_events(id));
CREATE INDEX label_events_key ON label_events (image, term, annotator, id);
CREATE INDEX label_events_annotator ON label_events (annotator, id);
CREATE INDEX label_events_undo ON label_events (undo_of);
"""

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


class LabelStore:
    """Append-only label events in one SQLite file; see the module docstring."""

    def __init__(self, path: str | Path, annotator: str | None = None, read_only: bool = False,
                 busy_timeout: float = 5.0):
        self.path = Path(path)
        self.annotator = annotator or default_annotator()
        self.read_only = read_only
        self._hash_cache: dict[str, tuple[int, int, str]] = {}
        # path exactly as given -> (st_dev, st_ino, st_mtime_ns, st_size, hash): one stat() per
        # image instead of resolve() + is_file() + stat(), for label counts over large folders
        self._given_cache: dict[str, tuple[int, int, int, int, str]] = {}
        self._lock = threading.RLock()  # widgets may write from worker threads
        if read_only and not self.path.is_file():
            raise InputError("no label store here; check the path", path=self.path)
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as fh:  # SQLite would silently reuse a tiny non-db file
                if fh.read(16) != b"SQLite format 3\x00":
                    raise InputError("file is not a label store (not SQLite); pick another "
                                     "file name", path=self.path)
        uri = self.path.resolve().as_uri() + ("?mode=ro" if read_only else "")
        try:
            version = self._connect(uri, busy_timeout)
        except InputError:
            wal = Path(f"{self.path}-wal")
            if not read_only or (wal.exists() and wal.stat().st_size > 0):
                raise
            # read-only disk: a WAL store cannot create its -shm file; with no pending WAL
            # content the file alone is complete and nobody can write it, so read it as is
            version = self._connect(uri + "&immutable=1", busy_timeout)
        try:
            if version > SCHEMA_VERSION:
                raise InputError(
                    f"label store has schema version {version} but this napari-ish-annotator "
                    f"only knows up to {SCHEMA_VERSION}; update the package to open it",
                    path=self.path)
            if not read_only:
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
                if version == 0:
                    with self._write() as conn:  # re-check: another process may have won
                        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                            for statement in _SCHEMA.split(";"):
                                if statement.strip():
                                    conn.execute(statement)
                            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version == 0:
                raise InputError("file is not a napari-ish-annotator label store", path=self.path)
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._error(exc) from None
        except InputError:
            self._conn.close()
            raise

    def _connect(self, uri: str, busy_timeout: float) -> int:
        """Open the connection and return the schema version (PRAGMA user_version)."""
        try:
            self._conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            self._conn.execute("PRAGMA foreign_keys = ON")
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._error(exc) from None

    # -- plumbing --------------------------------------------------------------------------
    @staticmethod
    def default_path_for(source: str | Path) -> Path:
        """manifest.csv -> manifest.labels.sqlite beside it; folder -> folder/ish-labels.sqlite."""
        source = Path(source)
        if source.is_dir() or not source.suffix:
            return source / "ish-labels.sqlite"
        return source.with_name(source.stem + ".labels.sqlite")

    def _error(self, exc: sqlite3.Error) -> InputError:
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            msg = ("another program holds this label store (locked); close the other napari "
                   "window or program using it and try again")
        elif "readonly" in text or "read-only" in text or "unable to open" in text:
            msg = ("cannot write the label store here (read-only file or folder); copy the file "
                   "to a writable location or pick another label file")
        elif "not a database" in text or "malformed" in text:
            msg = "file is not a valid SQLite label store; pick another file or restore a backup"
        else:
            msg = f"label store error: {exc}"
        return InputError(msg, path=self.path)

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

    def add_images(self, paths: Sequence[Path], hashes: Sequence[str] | None = None) -> None:
        """Register images (path updated if the same content was seen elsewhere)."""
        if hashes is None:
            hashes = self._hashes(paths, strict=True)
        with self._write():
            for path, digest in zip(paths, hashes, strict=True):
                self._upsert_image(digest, str(Path(path).resolve()))

    def add_terms(self, terms: Sequence[str]) -> None:
        with self._write():
            for term in terms:
                self._named_id("terms", term)

    def terms(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM terms ORDER BY id")]

    def annotators(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT name FROM annotators ORDER BY id")]

    def labelled_images(self) -> list[str]:
        """Content hashes of the images with at least one label event, oldest first."""
        return [r[0] for r in self._conn.execute(
            "SELECT content_hash FROM images WHERE id IN (SELECT image FROM label_events) "
            "ORDER BY id")]

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
        row = self._conn.execute(
            "SELECT id, value FROM label_events WHERE image = ? AND term = ? AND annotator = ? "
            "AND id < ? AND " + _EFFECTIVE.format(e="label_events") + " ORDER BY id DESC LIMIT 1",
            (image_id, term_id, annotator_id, before if before is not None else 2**62)).fetchone()
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

    def share_hash_cache(self, other: LabelStore) -> None:
        """Reuse ``other``'s path->hash cache (switching label files then re-hashes nothing)."""
        self._hash_cache = other._hash_cache
        self._given_cache = other._given_cache

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
                cache[text] = (*key, digest)
            out.append(digest)
        return out

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
        # image id -> first row showing it (same content under two paths: copied below)
        row_of = np.full(max(ids.values()) + 1, -1, dtype=np.int64)
        first: dict[str, int] = {}
        for i, d in enumerate(digests):
            if d in ids and d not in first:
                first[d] = i
                row_of[ids[d]] = i
        col_of = np.full(max(term_ids.values()) + 1, -1, dtype=np.int64)
        for j, term in enumerate(vocabulary):
            if term in term_ids and col_of[term_ids[term]] < 0:
                col_of[term_ids[term]] = j
        image, term, who, value = events.T
        inside = (image < len(row_of)) & (term < len(col_of))
        image, term, who, value = image[inside], term[inside], who[inside], value[inside]
        rows, cols = row_of[image], col_of[term]
        for annotator_id in reversed(chain_ids):  # earlier annotators in the chain win: last
            pick = (who == annotator_id) & (rows >= 0) & (cols >= 0)
            out[rows[pick], cols[pick]] = value[pick]
        if len(vocabulary) != len(set(vocabulary)):  # a repeated term column copies the first
            for j, term in enumerate(vocabulary):
                if term in term_ids and col_of[term_ids[term]] != j:
                    out[:, j] = out[:, col_of[term_ids[term]]]
        for i, d in enumerate(digests):
            if d in first and first[d] != i:
                out[i] = out[first[d]]
        return out

    def consensus_matrix(self, images: Sequence[str | Path], vocabulary: Sequence[str],
                         min_agreement: float = 0.5,
                         annotators: Sequence[str] | None = None) -> np.ndarray:
        """Strict majority of annotators' latest known labels, needing ``min_agreement`` of them.

        -1 where nobody labelled, on ties, or when the winning share is below min_agreement
        (:func:`~napari_ish_annotator.core.consensus.majority_vote`). Names of annotators
        without labels in this store are ignored.
        """
        from .consensus import annotator_labels, majority_vote

        known = self.annotators()
        names = None if annotators is None else [a for a in annotators if a in known]
        labels = annotator_labels(self, images, vocabulary, names)
        return majority_vote(labels.labels, min_agreement)

    # -- manifests -------------------------------------------------------------------------
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
