"""Fuzzing the label-store vetting (issue 23): a valid store mutated at random - bytes,
whole pages, schema rows and cell values, and the journal or WAL beside it - must end in a
one-line refusal or a working store, within a time and memory bound, with nothing outside
the store and its side files changed and a refused store left byte-identical.

The default suite runs a short fixed-seed run (derandomized, 50 examples). The long run:
``python -m pytest -m fuzz -s tests/test_fuzz_labels.py`` (random seeds, ISH_FUZZ_EXAMPLES
examples, default 2000; see docs/sharing-data-safely.md).
"""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _store_helpers import VOCAB, build_store, fingerprint, hot_journal, make_images
from napari_ish_annotator.core.labels import connection
from napari_ish_annotator.core.labels.store import LabelStore
from napari_ish_annotator.core.utils.errors import InputError

SECONDS = 10.0  # per example: open, vet, write and read (a clean store takes ~50 ms)
GROWTH_MIB = 512  # peak resident memory the whole run may add
TABLES = ["images", "terms", "annotators", "label_events", "sqlite_sequence"]
VALUES = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=True),
    st.text(max_size=40), st.binary(max_size=40), st.none(),
    st.sampled_from(["x" * 5000, "\x00", "=1+1", "a\tb", "'; DROP TABLE terms; --"]))


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> tuple[Path, list[Path], bytes]:
    """A valid store (8 images x 3 terms, one file), its images and its bytes."""
    root = tmp_path_factory.mktemp("fuzz")
    imgs = make_images(root / "imgs", 8)
    build_store(root / "seed.sqlite", imgs)
    return root, imgs, (root / "seed.sqlite").read_bytes()


@st.composite
def mutations(draw):
    """One hostile edit of the store: ("bytes", ...), ("pages", ...), ("sql", ...), plus
    optionally a side file."""
    kind = draw(st.sampled_from(["bytes", "pages", "sql", "cells"]))
    if kind == "bytes":
        edit = draw(st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)),
                             min_size=1, max_size=24))
    elif kind == "pages":
        edit = draw(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 15),
                                       st.sampled_from(["copy", "zero", "random"]),
                                       st.binary(min_size=0, max_size=64)),
                             min_size=1, max_size=3))
    elif kind == "sql":
        edit = draw(st.tuples(st.integers(0, 20), st.integers(0, 400), st.text(max_size=30)))
    else:
        edit = draw(st.lists(st.tuples(st.sampled_from(TABLES), st.integers(0, 6),
                                       st.integers(1, 40), VALUES), min_size=1, max_size=4))
    side = draw(st.sampled_from([None, None, "journal", "wal", "junk-journal", "junk-wal"]))
    junk = draw(st.binary(min_size=1, max_size=600))
    return kind, edit, side, junk


def _mutate(data: bytes, kind: str, edit, work: Path) -> bytes:
    """The mutated store's bytes (``work`` is scratch space for the SQL edits)."""
    page = int.from_bytes(data[16:18], "big")
    if kind == "bytes":
        out = bytearray(data)
        for offset, value in edit:
            out[offset % len(out)] = value
        return bytes(out)
    if kind == "pages":
        out = bytearray(data)
        n = len(out) // page
        for a, b, how, blob in edit:
            a, b = a % n, b % n
            new = {"copy": bytes(out[b * page:(b + 1) * page]), "zero": bytes(page),
                   "random": (blob or b"\xa5") * (page // max(len(blob), 1) + 1)}[how][:page]
            out[a * page:(a + 1) * page] = new
        return bytes(out)
    scratch = work / "scratch.sqlite"
    scratch.write_bytes(data)
    con = sqlite3.connect(scratch, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode = DELETE")
        con.execute("PRAGMA writable_schema = ON")
        con.execute("PRAGMA ignore_check_constraints = ON")
        if kind == "sql":  # edit the schema text of one sqlite_master row
            row, at, text = edit
            rows = con.execute("SELECT rowid, sql FROM sqlite_master WHERE sql IS NOT NULL"
                               ).fetchall()
            rowid, sql = rows[row % len(rows)]
            con.execute("UPDATE sqlite_master SET sql = ? WHERE rowid = ?",
                        (sql[:at % (len(sql) + 1)] + text + sql[at % (len(sql) + 1):], rowid))
        else:
            for table, col, rowid, value in edit:
                cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
                con.execute(f"UPDATE {table} SET {cols[col % len(cols)]} = ? WHERE rowid = ?",
                            (value, rowid))
    except sqlite3.Error:
        pass  # an edit SQLite itself refuses: the unchanged copy is still a fine example
    finally:
        con.close()
    return scratch.read_bytes()


def check_example(seed, mutation, work: Path) -> str:
    """Run one example; returns "refused" or "opened" (asserting the rules either way)."""
    root, imgs, clean = seed
    kind, edit, side, junk = mutation
    shutil.rmtree(work, ignore_errors=True)
    (work / "recv").mkdir(parents=True)
    victim = work / "mine.txt"
    victim.write_text("the user's own file\n")
    db = work / "recv" / "store.sqlite"
    mutated = _mutate(clean, kind, edit, work)
    (work / "scratch.sqlite").unlink(missing_ok=True)
    db.write_bytes(mutated)
    if side == "journal":  # a replay would give back the clean file and delete the victim
        Path(f"{db}-journal").write_bytes(hot_journal(mutated, clean, victim))
    elif side in ("junk-journal", "junk-wal"):
        Path(f"{db}-{side[5:]}").write_bytes(junk)
    elif side == "wal":
        Path(f"{db}-wal").write_bytes(b"\x37\x7f\x06\x82" + junk)
    outside = fingerprint(root / "imgs") | {str(victim): victim.read_text()}
    received = {p.name: p.read_bytes() for p in db.parent.iterdir()}
    start = time.monotonic()
    outcome = "opened"
    try:
        with LabelStore(db, read_only=True, query_budget=SECONDS) as store:
            store.label_matrix(imgs, VOCAB, annotator="carol", fallback=())
        with LabelStore(db, annotator="fuzz", query_budget=SECONDS) as store:
            store.set_label(imgs[0], "brain", 1)
            store.label_matrix(imgs, VOCAB, annotator="fuzz", fallback=())
    except InputError as exc:
        outcome = "refused"
        assert "\n" not in str(exc) and str(exc).startswith(str(db)), str(exc)
    assert time.monotonic() - start < 3 * SECONDS
    assert fingerprint(root / "imgs") | {str(victim): victim.read_text()} == outside
    if outcome == "refused" or side == "journal":
        for name, data in received.items():  # refused: every received file byte-identical
            assert (db.parent / name).read_bytes() == data, name
    return outcome


def _run(seed, tmp_path, monkeypatch, examples: int, derandomize: bool) -> dict[str, int]:
    # a hot journal is refused after JOURNAL_WAIT (a live one would have gone): short here
    monkeypatch.setattr(connection, "JOURNAL_WAIT", 0.05)
    seen = {"refused": 0, "opened": 0}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @settings(max_examples=examples, derandomize=derandomize, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutations())
    def example(mutation):
        seen[check_example(seed, mutation, tmp_path / "ex")] += 1

    example()
    print(f"\nfuzzed label stores: {sum(seen.values())} examples, {seen}")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    assert grown_mib < GROWTH_MIB, grown_mib
    return seen


def test_fuzzed_stores_are_refused_in_one_line_or_work(seed, tmp_path, monkeypatch):
    start = time.monotonic()
    seen = _run(seed, tmp_path, monkeypatch, examples=50, derandomize=True)
    assert seen["refused"] > 0 and seen["opened"] > 0, seen  # both paths were exercised
    assert time.monotonic() - start < 30


@pytest.mark.fuzz
def test_fuzzed_stores_long_run(seed, tmp_path, monkeypatch, request):
    """The long run: ``pytest -m fuzz -s tests/test_fuzz_labels.py`` (ISH_FUZZ_EXAMPLES sets
    the number of examples, default 2000: about 3.5 minutes)."""
    if "fuzz" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the long fuzz run: select it with -m fuzz")
    examples = int(os.environ.get("ISH_FUZZ_EXAMPLES", "2000"))
    _run(seed, tmp_path, monkeypatch, examples=examples, derandomize=False)
