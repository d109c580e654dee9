"""Label stores from someone else (issue 18, item 1): a received store never runs its code,
never loses another annotator's labels, never hangs, and bad rows never become labels.

Each case builds a small hostile store, then asserts one clear line (exit 2 on the CLI), that
nothing was lost (the file is byte-identical) and that the process ends within seconds.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from napari_ish_annotator.cli import main
from napari_ish_annotator.core.labels.connection import open_store
from napari_ish_annotator.core.labels.store import LabelStore
from napari_ish_annotator.core.utils.errors import InputError

SRC = str(Path(__file__).resolve().parents[1] / "src")
VOCAB = "brain;gut;eye"


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"emb{i:02d}.png" for i in range(n)]
    for i, p in enumerate(paths):
        Image.new("RGB", (6, 4), (i, 2 * i, 3 * i)).save(p)
    return paths


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(folder: Path, imgs: list[Path], terms: list[str], name: str) -> Path:
    path = folder / f"{name}.csv"
    lines = ["image,terms"] + [f"{p.name},{t}" for p, t in zip(imgs, terms, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def team(tmp_path) -> tuple[Path, Path, list[Path]]:
    """carol's 60 events (20 images x 3 terms) in a store; returns (store, folder, images)."""
    imgs = make_images(tmp_path / "imgs", 20)
    db = tmp_path / "store.sqlite"
    terms = ["brain;gut" if i % 2 else "eye" for i in range(20)]
    carol = manifest(tmp_path / "imgs", imgs, terms, "carol")
    assert main(["labels", "import", str(db), str(carol), "--annotator", "carol",
                 "--vocab", VOCAB, "-q"]) == 0
    with sqlite3.connect(db) as con:  # fold the WAL into the file: the hash covers everything
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db, tmp_path / "imgs", imgs


def tamper(db: Path, *statements: str) -> str:
    """Run ``statements`` the way a hostile sender would; return the file's hash after."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode = DELETE")  # one file, nothing pending beside it
    for sql in statements:
        con.execute(sql)
    con.close()
    return digest(db)


def carol_events(db: Path) -> int:
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM label_events e JOIN annotators a "
                           "ON a.id = e.annotator WHERE a.name = 'carol'").fetchone()[0]
    finally:
        con.close()


def count_events(db: Path) -> int:
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM label_events").fetchone()[0]
    finally:
        con.close()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


TRIGGER = ("CREATE TRIGGER wipe AFTER INSERT ON label_events BEGIN "
           "DELETE FROM label_events WHERE annotator != NEW.annotator; "
           "UPDATE label_events SET value = 1 - value WHERE id = NEW.id; END")


def test_trigger_store_import_is_refused_and_nothing_is_lost(team, capsys):
    db, folder, imgs = team
    before = tamper(db, TRIGGER)
    dave = manifest(folder, imgs, ["gut"] * 20, "dave")
    assert main(["labels", "import", str(db), str(dave), "--annotator", "dave",
                 "--vocab", VOCAB]) == 2
    err = one_line_error(capsys)
    assert "trigger 'wipe' on label_events is not part of a label store" in err, err
    assert digest(db) == before and carol_events(db) == 60
    for verb in (["agreement"], ["export", "--images", str(folder), "--out",
                                 str(folder.parent / "out.csv")]):
        assert main(["labels", verb[0], str(db), *verb[1:]]) == 2
        assert "trigger 'wipe'" in one_line_error(capsys)
    assert digest(db) == before and not (folder.parent / "out.csv").exists()


@pytest.mark.parametrize("sql, found", [
    ("CREATE VIEW v AS SELECT 1", "view 'v'"),
    ("CREATE TABLE extra (x)", "table 'extra'"),
    ("CREATE INDEX sneaky ON terms (name)", "index 'sneaky' on terms"),
    ("ALTER TABLE terms ADD COLUMN note TEXT", "table 'terms' with a different definition "
                                               "(extra column(s) note TEXT)"),
])
def test_anything_outside_the_schema_is_named(team, sql, found):
    db, _, _ = team
    before = tamper(db, sql)
    for read_only in (True, False):
        with pytest.raises(InputError, match="refusing to open") as err:
            LabelStore(db, read_only=read_only)
        assert found in str(err.value) and "\n" not in str(err.value)
    assert digest(db) == before


def test_session_refuses_a_trigger_in_the_store_beside_the_data(tmp_path):
    from _gui_helpers import make_dataset
    from napari_ish_annotator.session import AnnotatorSession

    data = make_dataset(tmp_path / "data", n=8)
    first = AnnotatorSession(cache_dir=tmp_path / "cache", annotator="alice")
    first.open([data])
    first.labels.set_label(first.vocabulary[0], 1, 0)
    db = first.store.path
    first.close()
    before_events = count_events(db)
    before = tamper(db, "CREATE TRIGGER wipe AFTER INSERT ON images BEGIN "
                        "DELETE FROM label_events; END",
                    "CREATE TRIGGER wipe2 AFTER UPDATE ON images BEGIN "
                    "DELETE FROM label_events; END")
    second = AnnotatorSession(cache_dir=tmp_path / "cache", annotator="alice")
    second.open([data])
    error = second.take_pending_error()
    assert second.store is None and error is not None and "trigger 'wipe" in str(error)
    assert digest(db) == before
    assert count_events(db) == before_events > 0


ENDLESS_VIEW = ("CREATE VIEW images AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
                "SELECT i + 1 FROM n) SELECT i AS id, printf('%064d', i) AS content_hash, "
                "'x' AS path, 0.0 AS added, NULL AS gene, NULL AS stage FROM n")


def test_endless_view_is_refused_within_seconds(team, capsys):
    db, _, _ = team
    before = tamper(db, "DROP TABLE images", ENDLESS_VIEW)
    start = time.monotonic()
    assert main(["labels", "agreement", str(db)]) == 2
    assert time.monotonic() - start < 5
    assert "view 'images' is not part of a label store" in one_line_error(capsys)
    assert digest(db) == before


ENDLESS = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"


def test_query_budget_stops_an_endless_query(tmp_path):
    """Second line of defence: even a query the allow-list let through ends on its budget
    (the vetted connection a store opens, :func:`open_store`, with its budget)."""
    conn = open_store(tmp_path / "s.sqlite", read_only=False, busy_timeout=5.0, budget=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="interrupted"):
            conn.execute(ENDLESS).fetchone()
        assert time.monotonic() - start < 3
        assert conn.stopped == "budget"
        assert conn.execute("SELECT name FROM terms").fetchall() == []  # a fresh budget

        conn.budget = 60
        threading.Timer(0.3, conn.cancel).start()  # as LabelStore.cancel does, from a thread
        start = time.monotonic()
        with pytest.raises(sqlite3.OperationalError):
            conn.execute(ENDLESS).fetchall()
        assert time.monotonic() - start < 3 and conn.stopped == "cancelled"
    finally:
        conn.close()


HANG = textwrap.dedent("""
    import sys, time
    from napari_ish_annotator.core.labels.store import LabelStore
    from napari_ish_annotator.core.labels.connection import guarded as _guarded
    from napari_ish_annotator.cli import main
    from unittest import mock
    @_guarded
    def endless(self):
        return self._conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                                  "FROM n) SELECT count(*) FROM n").fetchall()
    with mock.patch.object(LabelStore, "labelled_images", endless):
        print("READY", flush=True)
        sys.exit(main(["labels", "agreement", sys.argv[1]]))
""")


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "cancelled"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_stop_a_running_query(team, sig, code, word):
    db, _, _ = team
    proc = subprocess.Popen([sys.executable, "-c", HANG, str(db)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={"PYTHONPATH": SRC})
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(1.0)
    start = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    assert time.monotonic() - start < 5
    assert proc.returncode == code and word in err, err


@pytest.mark.parametrize("sql, found", [
    ("UPDATE label_events SET value = 'abc' WHERE id = 7", "label_events row 7 has value 'abc'"),
    ("UPDATE label_events SET value = 7 WHERE id = 8", "label_events row 8 has value 7"),
    ("UPDATE label_events SET id = 4611686018427387904 WHERE id = 9",
     "label_events row 4611686018427387904 has id"),
    ("UPDATE terms SET name = x'00ff' WHERE id = 2", "terms row 2 has name b'\\x00\\xff'"),
])
def test_bad_rows_are_named_and_never_become_labels(team, capsys, sql, found):
    db, folder, _ = team
    before = tamper(db, "PRAGMA ignore_check_constraints = ON", sql)
    out = folder.parent / "out.csv"
    code = main(["labels", "export", str(db), "--images", str(folder), "--out", str(out),
                 "--annotator", "carol", "--vocab", VOCAB])
    assert code == 2 and not out.exists()
    assert found in one_line_error(capsys)
    assert digest(db) == before


def test_huge_image_id_does_not_size_arrays(team, capsys):
    """A large id is a valid id: it must not size an array (1e8 was an 818 MB allocation)."""
    import tracemalloc

    db, folder, imgs = team
    tamper(db, "UPDATE images SET id = 100000000 WHERE id = 3",
           "UPDATE label_events SET image = 100000000 WHERE image = 3")
    out = folder.parent / "out.csv"
    assert main(["labels", "export", str(db), "--images", str(folder), "--out", str(out),
                 "--vocab", VOCAB, "-q"]) == 0
    assert out.read_text().count("\n") == 21
    with LabelStore(db, read_only=True) as store:
        tracemalloc.start()
        matrix = store.label_matrix(imgs, VOCAB.split(";"), annotator="carol", fallback=())
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 20 * 2**20 and (matrix >= 0).all()
    assert matrix[2].tolist() == [0, 0, 1]  # image 3 (index 2) still has its labels


def test_corrupted_page_gives_a_hint_and_leaves_the_file_alone(team, capsys):
    db, folder, imgs = team
    tamper(db)
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) >= 4 * page
    data[2 * page:3 * page] = b"\xa5" * page  # a page in the middle: garbage
    db.write_bytes(bytes(data))
    before = digest(db)
    assert main(["labels", "agreement", str(db)]) == 2
    err = one_line_error(capsys)
    assert ".recover" in err and "fixed.sqlite" in err, err
    dave = manifest(folder, imgs, ["gut"] * 20, "dave")
    assert main(["labels", "import", str(db), str(dave), "--annotator", "dave",
                 "--vocab", VOCAB]) == 2
    assert ".recover" in one_line_error(capsys)
    assert digest(db) == before


def _create(path: str, barrier, results) -> None:
    try:
        barrier.wait()
        with LabelStore(path, annotator="p") as store:
            store.add_terms(["brain"])
        results.put("ok")
    except Exception as exc:  # reported to the parent
        results.put(repr(exc))


def test_two_processes_creating_one_store_never_see_locked(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(10):
        path = str(tmp_path / f"new{round_}.sqlite")
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_create, args=(path, barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        outcome = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert outcome == ["ok", "ok"], (round_, outcome)
        with LabelStore(path, read_only=True) as store:
            assert store.terms() == ["brain"]


def test_a_stop_inside_a_write_is_re_raised_not_reported_as_a_timeout(tmp_path):
    """Ctrl-C caught by the progress handler during a write: the ROLLBACK that follows is a
    statement of its own and must not clear it (it was reported as a spent 30 s budget).
    Every write rolls back with :func:`rollback` (scripts/check_rules.sh), whose error
    :func:`store_error` then re-raises the stop."""
    from napari_ish_annotator.core.labels.connection import rollback, store_error

    path = tmp_path / "s.sqlite"
    with LabelStore(path, annotator="a") as store:
        store.add_terms(["t"])
    conn = open_store(path, read_only=False, busy_timeout=5.0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO terms (name) VALUES ('u')")
        conn.stopped = KeyboardInterrupt()  # as the progress handler keeps a signal
        rollback(conn)
        with pytest.raises(KeyboardInterrupt):
            raise store_error(sqlite3.OperationalError("interrupted"), path, conn)
    finally:
        conn.close()
    with LabelStore(path, annotator="a") as store:
        assert store.terms() == ["t"]  # rolled back
