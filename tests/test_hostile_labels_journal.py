"""Files beside a received label store (issue 23, item 1): SQLite acts on a store's
``-journal``, ``-wal`` and ``-shm`` by itself. A crafted hot journal must never be replayed
(it rewrites the store and deletes the file its super-journal record names), a symlinked or
FIFO side file is never followed, and a pending WAL - the user's own crash - loses nothing.

Each case: one line (exit 2 on the CLI), and every file in the folders involved unchanged.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _store_helpers import (
    VOCAB,
    build_store,
    count_events,
    fingerprint,
    fold,
    hot_journal,
    make_images,
    manifest,
    tampered,
)
from napari_ish_annotator.cli import main
from napari_ish_annotator.core.labels import connection
from napari_ish_annotator.core.labels.store import LabelStore
from napari_ish_annotator.core.utils.errors import InputError

SRC = str(Path(__file__).resolve().parents[1] / "src")
TRIGGER = ("CREATE TRIGGER wipe AFTER INSERT ON label_events BEGIN "
           "DELETE FROM label_events WHERE annotator != NEW.annotator; END")


@pytest.fixture
def lab(tmp_path) -> tuple[Path, list[Path], Path]:
    """(received store with carol's 30 events, its images, dave's manifest)."""
    imgs = make_images(tmp_path / "recv" / "imgs", 10)
    db = tmp_path / "recv" / "store.sqlite"
    build_store(db, imgs)
    dave = manifest(tmp_path / "recv" / "imgs", imgs, ["gut"] * 10, "dave")
    return db, imgs, dave


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def refused_everywhere(db: Path, dave: Path, capsys, words: str) -> None:
    """Import (writes), agreement (reads) and both LabelStore modes refuse in one line."""
    assert main(["labels", "import", str(db), str(dave), "--annotator", "dave", "-q"]) == 2
    assert words in one_line(capsys)
    assert main(["labels", "agreement", str(db)]) == 2
    assert words in one_line(capsys)
    for read_only in (True, False):
        with pytest.raises(InputError, match=words):
            LabelStore(db, read_only=read_only)


def test_a_crafted_hot_journal_is_never_replayed_and_deletes_nothing(lab, tmp_path, capsys):
    db, imgs, dave = lab
    mine = tmp_path / "mine"
    victim = mine / "my-labels.sqlite"  # the user's own store, in another folder
    build_store(victim, make_images(mine / "imgs", 3), annotator="me")
    clean = db.read_bytes()
    hostile = tampered(db, tmp_path / "hostile.sqlite", TRIGGER, "PRAGMA ignore_check_constraints = ON",
                       "UPDATE label_events SET value = 5 WHERE id = 1")
    # the attack is real: plain SQLite replays it, the trigger arrives, the victim goes
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "s.sqlite").write_bytes(clean)
    (scratch / "bait").write_text("x")
    (scratch / "s.sqlite-journal").write_bytes(hot_journal(clean, hostile, scratch / "bait"))
    con = sqlite3.connect(scratch / "s.sqlite")
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone() \
        == (1,)
    con.close()
    assert not (scratch / "bait").exists()

    Path(f"{db}-journal").write_bytes(hot_journal(clean, hostile, victim))
    before = fingerprint(tmp_path / "recv", mine)
    start = time.monotonic()
    refused_everywhere(db, dave, capsys, "store.sqlite-journal")
    assert time.monotonic() - start < 30
    assert fingerprint(tmp_path / "recv", mine) == before  # journal, store, victim: untouched
    assert db.read_bytes() == clean


def test_a_journal_that_is_not_hot_is_ignored(lab, capsys):
    """A zeroed journal header (SQLite's PERSIST mode leaves one) is not replayed by SQLite:
    the store opens."""
    db, imgs, dave = lab
    Path(f"{db}-journal").write_bytes(b"\0" * 4096)
    assert main(["labels", "import", str(db), str(dave), "--annotator", "dave", "-q"]) == 0
    assert count_events(db) == 40


def _crash_copy(db: Path, imgs: list[Path], out: Path, *statements: str) -> None:
    """``out`` + ``out-wal`` as a crash leaves them: committed changes still in the WAL."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA wal_autocheckpoint = 0")
    for sql in statements:
        con.execute(sql)
    out.write_bytes(db.read_bytes())
    Path(f"{out}-wal").write_bytes(Path(f"{db}-wal").read_bytes())
    con.close()


def test_the_users_own_crash_wal_loses_nothing(lab, tmp_path, capsys):
    db, imgs, dave = lab
    crashed = tmp_path / "crash" / "store.sqlite"
    crashed.parent.mkdir()
    _crash_copy(db, imgs, crashed, "INSERT INTO annotators (name) VALUES ('erin')",
                "INSERT INTO label_events (image, term, value, annotator, time) "
                "SELECT image, term, 1 - value, 2, time FROM label_events")
    assert Path(f"{crashed}-wal").stat().st_size > 0 and crashed.stat().st_size > 0
    before = fingerprint(crashed.parent)
    with LabelStore(crashed, read_only=True) as store:  # reads a private copy
        assert store.annotators() == ["carol", "erin"]
        assert len(store.history()) == 60
    assert fingerprint(crashed.parent) == before  # side files byte-identical
    assert main(["labels", "import", str(crashed), str(dave), "--annotator", "dave", "-q"]) == 0
    with LabelStore(crashed, read_only=True) as store:
        assert store.annotators() == ["carol", "erin", "dave"] and len(store.history()) == 70


def test_a_hostile_wal_is_vetted_in_a_copy_and_left_alone(lab, tmp_path, capsys):
    db, imgs, dave = lab
    recv = tmp_path / "wal" / "store.sqlite"
    recv.parent.mkdir()
    _crash_copy(db, imgs, recv, TRIGGER)
    before = fingerprint(recv.parent)
    refused_everywhere(recv, dave, capsys, "trigger 'wipe'")
    assert fingerprint(recv.parent) == before  # no -shm made, WAL not replayed here


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_a_symlinked_side_file_is_never_followed(lab, tmp_path, capsys, suffix):
    db, imgs, dave = lab
    outside = tmp_path / "outside.txt"
    outside.write_text("someone's file\n")
    os.symlink(outside, f"{db}{suffix}")
    before = fingerprint(tmp_path)
    refused_everywhere(db, dave, capsys, "is a symlink")
    assert fingerprint(tmp_path) == before


@pytest.mark.parametrize("where", ["store", "-wal", "-shm"])
def test_a_fifo_store_or_side_file_never_hangs(lab, tmp_path, where):
    db, imgs, dave = lab
    target = db if where == "store" else Path(f"{db}{where}")
    if where == "store":
        db.unlink()
    os.mkfifo(target)
    for args in (["labels", "agreement", str(db)],
                 ["labels", "import", str(db), str(dave), "--annotator", "dave", "-q"]):
        run = subprocess.run([sys.executable, "-m", "napari_ish_annotator.cli", *args],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": SRC})
        err = run.stderr.strip()
        assert run.returncode == 2 and len(err.splitlines()) == 1, err
        assert ("not a regular file" in err), err


def test_a_symlink_loop_is_one_line(tmp_path, capsys):
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    os.symlink(b, a)
    os.symlink(a, b)
    imgs = make_images(tmp_path / "imgs", 2)
    m = manifest(tmp_path / "imgs", imgs, ["gut", "eye"], "m")
    assert main(["labels", "agreement", str(a)]) == 2
    assert "symlink loop" in one_line(capsys)
    assert main(["labels", "import", str(a), str(m), "--annotator", "x", "-q"]) == 2
    assert "symlink loop" in one_line(capsys)


def test_a_store_swapped_after_vetting_is_vetted_again(lab, tmp_path, monkeypatch):
    """The file that was vetted must be the file that is opened: a swap in between (here
    right after the first vetting's last check, of the rows) is noticed, the new file is
    vetted, and refused."""
    db, imgs, dave = lab
    hostile = tmp_path / "hostile.sqlite"
    hostile_bytes = tampered(db, hostile, TRIGGER)
    real_check, swaps = connection.check_rows, []

    def check_then_swap(conn, path):
        real_check(conn, path)
        if not swaps:
            swaps.append(1)
            shutil.copyfile(hostile, tmp_path / "swap.tmp")
            os.replace(tmp_path / "swap.tmp", db)

    monkeypatch.setattr(connection, "check_rows", check_then_swap)
    with pytest.raises(InputError, match="trigger 'wipe'"):
        LabelStore(db, annotator="dave")
    assert swaps and db.read_bytes() == hostile_bytes  # refused before anything was written


def test_store_error_names_the_changing_store(lab, monkeypatch):
    """A store that changes on every look (a writer that never pauses) ends in one line."""
    db, imgs, dave = lab
    monkeypatch.setattr(connection, "same", lambda *a: False)
    with pytest.raises(InputError, match="kept changing while it was checked"):
        LabelStore(db, annotator="dave")
    assert count_events(db) == len(imgs) * len(VOCAB)


def test_a_second_opening_in_this_process_shares_the_live_wal(lab):
    """The GUI keeps a store open (its WAL pending) while an export opens it again: the
    second opening sees every label, and the first keeps writing afterwards (this process
    never opens and closes its own descriptor of a store SQLite holds: that would drop
    SQLite's locks)."""
    db, imgs, dave = lab
    with LabelStore(db, annotator="gui") as first:
        first.set_label(imgs[0], "brain", 1)
        assert Path(f"{db}-wal").stat().st_size > 0
        for read_only in (True, False):
            with LabelStore(db, read_only=read_only) as second:
                assert "gui" in second.annotators() and len(second.history()) == 31
        first.set_label(imgs[1], "brain", 0)
    assert count_events(db) == 32


def test_opening_the_data_folder_never_replays_a_journal_beside_its_store(tmp_path):
    """The napari session opens the store beside the data by itself: a crafted journal there
    is refused with one message, the victim it names survives, nothing is changed."""
    from _gui_helpers import make_dataset
    from napari_ish_annotator.session import AnnotatorSession

    data = make_dataset(tmp_path / "data", n=8)
    first = AnnotatorSession(cache_dir=tmp_path / "cache", annotator="alice")
    first.open([data])
    first.labels.set_label(first.vocabulary[0], 1, 0)
    db = first.store.path
    first.close()
    fold(db)
    victim = tmp_path / "mine" / "labels.sqlite"
    victim.parent.mkdir()
    victim.write_bytes(db.read_bytes())
    hostile = tampered(db, tmp_path / "hostile.sqlite", TRIGGER)
    Path(f"{db}-journal").write_bytes(hot_journal(db.read_bytes(), hostile, victim))
    before = fingerprint(db.parent, victim.parent)
    second = AnnotatorSession(cache_dir=tmp_path / "cache", annotator="alice")
    second.open([data])
    error = second.take_pending_error()
    assert second.store is None and error is not None and "-journal" in str(error)
    assert "\n" not in str(error)
    second.close()
    assert fingerprint(db.parent, victim.parent) == before


@pytest.mark.parametrize("offset", [18, 19], ids=["read-version", "write-version"])
def test_an_unknown_file_format_version_is_refused_before_sqlite_touches_the_files(tmp_path,
                                                                                 offset):
    """Header bytes 18/19 (SQLite's read/write format versions) beyond 2: SQLite opens such a
    file read-only (or not at all) only once it has it open, and closing it deleted the
    received WAL beside it (found by the long fuzz run). Refused first, every file kept."""
    imgs = make_images(tmp_path / "imgs", 4)
    seed = tmp_path / "seed.sqlite"
    build_store(seed, imgs)
    data = bytearray(seed.read_bytes())
    data[offset] = 3
    db = tmp_path / "recv" / "store.sqlite"
    db.parent.mkdir()
    db.write_bytes(bytes(data))
    Path(f"{db}-wal").write_bytes(b"\x37\x7f\x06\x82\x00")  # a WAL SQLite would discard
    received = {p.name: p.read_bytes() for p in db.parent.iterdir()}
    for read_only in (True, False):
        with pytest.raises(InputError, match="format versions") as caught:
            LabelStore(db, read_only=read_only, annotator="fuzz")
        assert str(caught.value).startswith(str(db)) and "\n" not in str(caught.value)
        assert {p.name: p.read_bytes() for p in db.parent.iterdir()} == received
