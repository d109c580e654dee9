"""What a label store file may contain: the project's schema, an allow-list check of
``sqlite_master`` and a type check of every row.

A label store is often someone else's file (a colleague's, another lab's). SQLite files can
carry code: triggers fire on our INSERTs, views run arbitrary (even endless) queries, and a
schema may mix in extra tables, columns or indexes. So every store, our own included, is
checked before any statement of ours touches its tables (see :mod:`.connection`):

* :func:`check_schema` compares ``sqlite_master`` with the project's own schema (an
  allow-list): any trigger, view, other table, column or index is refused in one line
  naming what was found;
* :func:`check_rows` type-checks every row (values 0/1/NULL, ids in range, names text of
  sane length, hashes 64 hex digits) and names the first bad row, so a bad value is never
  read as a label;
* :func:`check_pages` (``PRAGMA integrity_check``: pages, and indexes against their tables)
  turns a damaged file into one line with the ``sqlite3 .recover`` hint.

All of these only read.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from ..utils.errors import InputError

#: a label's value: 1 present, 0 absent, None unknown
LabelValue = int | None

SCHEMA_VERSION = 1

SCHEMA = """
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
#: indexes later versions added: a store without them is still ours (they are created on write)
OPTIONAL_INDEXES = ("label_events_undo",)
#: written by SQLite itself (AUTOINCREMENT, ANALYZE): harmless bookkeeping, no code
_INTERNAL = {
    ("table", "sqlite_sequence"): "CREATE TABLE sqlite_sequence(name,seq)",
    ("table", "sqlite_stat1"): "CREATE TABLE sqlite_stat1(tbl,idx,stat)",
}

# An event counts towards the current label unless it is an undo record or has been undone.
# Undoing an annotator's first label of a term therefore leaves *no* label of theirs (so a
# fallback such as the imported manifest shows through again), not an explicit "unknown".
EFFECTIVE = ("{e}.undo_of IS NULL AND NOT EXISTS "
              "(SELECT 1 FROM label_events u WHERE u.undo_of = {e}.id)")

#: largest id accepted (2**53 - 1: exact in a float, far beyond any real store)
MAX_ID = 2**53 - 1
#: longest term, annotator, gene or stage name, and longest image path
MAX_NAME = 1000
MAX_PATH = 4096

RECOVER_HINT = ('recover what is readable with: sqlite3 {name} ".recover" | sqlite3 '
                'fixed.sqlite (then open fixed.sqlite), or restore a backup')
_SPACE = re.compile(r"\s+")


def _norm(sql: str | None) -> str:
    return _SPACE.sub(" ", sql or "").replace("( ", "(").replace(" )", ")").strip()


def _expected() -> dict[tuple[str, str], tuple[str, str]]:
    """(type, name) -> (table, normalised SQL) of the project's own schema."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(SCHEMA)
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    finally:
        conn.close()
    return {(t, n): (tbl, _norm(sql)) for t, n, tbl, sql in rows}


_EXPECTED = _expected()


def _refuse(path: Path, what: str) -> InputError:
    return InputError(f"{what} is not part of a label store; refusing to open it (someone "
                      "else's store must not run code) - ask its sender for a plain copy",
                      path=path)


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse anything in ``sqlite_master`` that the project's schema does not have.

    An empty schema (a new file) passes. Missing tables fail unless all are missing.
    """
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    found = set()
    for kind, name, table, sql in rows:
        key = (str(kind), str(name))
        found.add(key)
        if key in _INTERNAL and _norm(sql) == _norm(_INTERNAL[key]):
            continue
        if kind == "index" and sql is None and str(name).startswith("sqlite_autoindex_") \
                and ("table", str(table)) in _EXPECTED:
            continue  # UNIQUE constraints of our own tables (their SQL is checked below)
        want = _EXPECTED.get(key)
        if want is not None and want == (table, _norm(sql)):
            continue
        if kind == "table" and key in _EXPECTED:
            raise _refuse(path, f"table {name!r} with a different definition "
                                f"({_column_diff(conn, name)})")
        where = f" on {table}" if kind in ("trigger", "index") else ""
        raise _refuse(path, f"{kind} {name!r}{where}")
    tables = {k for k in _EXPECTED if k[0] == "table"}
    if found and not tables <= found:
        missing = sorted(n for t, n in tables - found)
        raise InputError(f"table(s) {', '.join(missing)} missing: not a napari-ish-annotator "
                         "label store; pick another file", path=path)
    missing_idx = {k for k in _EXPECTED if k[0] == "index"} - found
    if found and any(n not in OPTIONAL_INDEXES for _, n in missing_idx):
        raise InputError("an index of the label store is missing; not a store this program "
                         "wrote - pick another file", path=path)


def _column_diff(conn: sqlite3.Connection, table: str) -> str:
    ours = sqlite3.connect(":memory:")
    try:
        ours.executescript(SCHEMA)
        want = [tuple(r[1:3]) for r in ours.execute(f"PRAGMA table_info({table})")]
    finally:
        ours.close()
    have = [tuple(r[1:3]) for r in conn.execute(f"PRAGMA table_info({table})")]
    extra = [f"{n} {t}".strip() for n, t in have if (n, t) not in want]
    gone = [f"{n} {t}".strip() for n, t in want if (n, t) not in have]
    parts = ([f"extra column(s) {', '.join(extra)}"] if extra else []) + \
            ([f"missing column(s) {', '.join(gone)}"] if gone else [])
    return "; ".join(parts) or "different constraints"


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables and every index (missing optional indexes of older stores too)."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    for statement in SCHEMA.split(";"):
        words = statement.split()
        if words and words[2] not in have:
            conn.execute(statement)


def check_pages(conn: sqlite3.Connection, path: Path) -> None:
    """``PRAGMA integrity_check``: a damaged page, or an index that disagrees with its table
    (``quick_check`` does not compare them: an index emptied behind the schema's back makes
    every label read as empty), gives one line with the recover hint. About 1 s per million
    label events, well inside the query budget."""
    problems = [r[0] for r in conn.execute("PRAGMA integrity_check(3)")]
    if problems != ["ok"]:
        first = " ".join(problems[0].replace("*** in database main ***", "").split())
        raise InputError(f"file is damaged ({first[:120]}); "
                         + RECOVER_HINT.format(name=path.name), path=path)


_NAME_OK = "(typeof({c}) = 'text' AND length({c}) <= {n})"
#: a name (term, annotator, gene, stage) holds no control character and no NUL (which would
#: hide the rest of the text from length() and from anything that reads it as a C string)
_CLEAN_NAME = ("(typeof({c}) = 'text' AND length(CAST({c} AS BLOB)) <= 4 * {n} AND "
               "instr(CAST({c} AS BLOB), x'00') = 0 AND NOT {c} GLOB "
               "'*[' || char(1) || '-' || char(31) || char(127) || ']*')")
_NULLABLE = "({c} IS NULL OR " + _CLEAN_NAME + ")"
_NUMBER = "typeof({c}) IN ('integer', 'real')"
_ID = f"({{c}} BETWEEN 1 AND {MAX_ID})"
_ROW_CHECKS = {
    "images": [
        ("id", _ID), ("content_hash", "(typeof({c}) = 'text' AND length({c}) = 64 AND "
                                       "NOT {c} GLOB '*[^0-9a-f]*')"),
        ("path", _NAME_OK.replace("{n}", str(MAX_PATH))), ("added", _NUMBER),
        ("gene", _NULLABLE.replace("{n}", str(MAX_NAME))),
        ("stage", _NULLABLE.replace("{n}", str(MAX_NAME)))],
    "terms": [("id", _ID), ("name", _CLEAN_NAME.replace("{n}", str(MAX_NAME)))],
    "annotators": [("id", _ID), ("name", _CLEAN_NAME.replace("{n}", str(MAX_NAME)))],
    "label_events": [
        ("id", _ID), ("image", f"(typeof({{c}}) = 'integer' AND {_ID})"),
        ("term", f"(typeof({{c}}) = 'integer' AND {_ID})"),
        ("value", "({c} IS NULL OR (typeof({c}) = 'integer' AND {c} IN (0, 1)))"),
        ("annotator", f"(typeof({{c}}) = 'integer' AND {_ID})"), ("time", _NUMBER),
        ("undo_of", f"({{c}} IS NULL OR (typeof({{c}}) = 'integer' AND {_ID}))")],
    # AUTOINCREMENT's counter: near 2**63 every later label fails ("database or disk is full")
    "sqlite_sequence": [("name", "({c} = 'label_events')"),
                        ("seq", f"(typeof({{c}}) = 'integer' AND {{c}} BETWEEN 0 AND {MAX_ID})")],
}
_WHAT = {"value": "a label is 1, 0 or empty", "seq": f"the event counter runs to {MAX_ID}",
         "name": f"printable text of at most {MAX_NAME} characters, no control characters", "content_hash": "a sha256 in hex",
         "id": f"ids run from 1 to {MAX_ID}", "image": "an image id", "term": "a term id",
         "annotator": "an annotator id", "undo_of": "an event id or empty",
         "time": "a number", "added": "a number"}


def check_rows(conn: sqlite3.Connection, path: Path) -> None:
    """Type-check every row of an allow-listed store; name the first bad one.

    Bad rows are never read as labels: the store is refused until it is fixed.
    """
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table, checks in _ROW_CHECKS.items():
        if table not in have:  # sqlite_sequence: only once an event was written
            continue
        _decode_text(conn, table, path)
        bad = " OR ".join(f"NOT {rule.replace('{c}', col)}" for col, rule in checks)
        cols = ", ".join(col for col, _ in checks)
        row = conn.execute(f"SELECT rowid, {cols} FROM {table} WHERE {bad} LIMIT 1").fetchone()
        if row is None:
            continue
        for (col, rule), value in zip(checks, row[1:], strict=True):
            ok = conn.execute(f"SELECT {rule.replace('{c}', ':v')}", {"v": value}).fetchone()[0]
            if not ok:
                shown = ascii(value if not isinstance(value, str | bytes) else value[:40])
                limit = _WHAT.get(col, f"text of at most {MAX_PATH if col == 'path' else MAX_NAME}"
                                       " characters")
                raise InputError(
                    f"{table} row {row[0]} has {col} {shown} ({limit}); this store was not "
                    "written by napari-ish-annotator or was edited by hand - ask its sender "
                    "for a fresh copy", path=path)


_TEXT = {"images": "content_hash, path, gene, stage", "terms": "name", "annotators": "name",
         "sqlite_sequence": "name"}


def _decode_text(conn: sqlite3.Connection, table: str, path: Path) -> None:
    """Read every text cell once, so text that is not UTF-8 is refused now, in one line,
    rather than when some later query happens to fetch it."""
    if table not in _TEXT:
        return
    cursor = conn.execute(f"SELECT rowid, {_TEXT[table]} FROM {table}")
    rowid = None
    while True:
        try:
            row = cursor.fetchone()
        except (UnicodeDecodeError, sqlite3.OperationalError) as exc:
            if "decode" not in str(exc).lower():
                raise
            raise InputError(f"{table} row after {rowid or 0} holds text that is not valid UTF-8 "
                             "(damaged, or not written by napari-ish-annotator) - ask its "
                             "sender for a fresh copy", path=path) from None
        if row is None:
            return
        rowid = row[0]
