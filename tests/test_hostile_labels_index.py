"""A received label store that lies below the schema (issue 24 item 7, issue 23 rough
edges): an index emptied behind the schema's back, an AUTOINCREMENT counter at its end,
names holding control characters. Each is refused in one line before it is read or
written, and the file stays byte-identical."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from _store_helpers import VOCAB, build_store, fingerprint, make_images, manifest, tampered
from napari_ish_annotator.cli import main
from napari_ish_annotator.core.labels.schema import SCHEMA
from napari_ish_annotator.core.labels.store import LabelStore
from napari_ish_annotator.core.utils.errors import InputError


@pytest.fixture
def lab(tmp_path) -> tuple[Path, list[Path], Path]:
    imgs = make_images(tmp_path / "imgs", 8)
    db = tmp_path / "store.sqlite"
    build_store(db, imgs)
    return db, imgs, manifest(tmp_path / "imgs", imgs, ["gut"] * 8, "dave")


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def refused(db: Path, dave: Path, capsys, words: str) -> None:
    before = fingerprint(db.parent)
    assert main(["labels", "import", str(db), str(dave), "--annotator", "dave", "-q"]) == 2
    assert words in one_line(capsys)
    assert main(["labels", "export", str(db), "--images", str(dave), "--out",
                 str(db.parent / "out.csv"), "-q"]) == 2
    assert words in one_line(capsys)
    assert fingerprint(db.parent) == before


def _key_index_sql() -> str:
    return next(s.strip() for s in SCHEMA.split(";") if "INDEX label_events_key" in s)


def test_an_index_that_disagrees_with_its_table_is_refused(lab, capsys):
    """``CREATE INDEX ... WHERE 0`` then the project's exact SQL written over it: the schema
    text passes the allow-list, but every lookup through the index finds no label."""
    db, imgs, dave = lab
    exact = _key_index_sql()
    tampered(db, db, "DROP INDEX label_events_key",
             exact + " WHERE 0", "PRAGMA writable_schema = ON",
             "UPDATE sqlite_master SET sql = '" + exact + "' WHERE name = 'label_events_key'")
    con = sqlite3.connect(db)  # the lie is real: through the index, carol has no labels
    assert con.execute("SELECT sql FROM sqlite_master WHERE name = 'label_events_key'"
                       ).fetchone()[0] == exact
    assert con.execute("SELECT count(*) FROM label_events INDEXED BY label_events_key "
                       "WHERE image = 1 AND term = 1 AND annotator = 1").fetchone()[0] == 0
    assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"  # what let it through
    con.close()
    refused(db, dave, capsys, "missing from index label_events_key")


def test_an_autoincrement_counter_at_its_end_is_refused(lab, capsys):
    db, imgs, dave = lab
    tampered(db, db, f"UPDATE sqlite_sequence SET seq = {2**63 - 1}")
    refused(db, dave, capsys, "sqlite_sequence row 1 has seq 9223372036854775807")


@pytest.mark.parametrize("name", ["br\x00ain", "gut\tx", "eye\n", "\x1b[31mred", "del\x7f"])
def test_control_characters_in_stored_names_are_refused(lab, capsys, name):
    db, imgs, dave = lab
    tampered(db, db, "UPDATE terms SET name = :n WHERE id = 2".replace(":n", _sql_text(name)))
    refused(db, dave, capsys, "terms row 2 has name")


def _sql_text(text: str) -> str:
    """A SQL expression for ``text`` (NUL and all: char() keeps it inside the string)."""
    return " || ".join(f"char({ord(c)})" for c in text)


@pytest.mark.parametrize("name", ["br\x00ain", "a\tb", "\x07bell"])
def test_control_characters_are_never_written(tmp_path, name):
    imgs = make_images(tmp_path / "imgs", 1)
    with LabelStore(tmp_path / "s.sqlite", annotator="ann") as store:
        with pytest.raises(InputError, match="holds a control character"):
            store.set_label(imgs[0], name, 1)
        with pytest.raises(InputError, match="holds a control character"):
            store.set_label(imgs[0], "brain", 1, annotator=name)
        store.set_label(imgs[0], "brain", 1)
        assert store.terms() == ["brain"] and store.annotators() == ["ann"]


def test_cli_import_of_a_control_character_term_is_one_line(tmp_path, capsys):
    make_images(tmp_path / "imgs", 2)
    m = tmp_path / "imgs" / "m.csv"
    m.write_text("image,terms\nemb00.png,br\x07ain\nemb01.png,gut\n", encoding="utf-8")
    db = tmp_path / "s.sqlite"
    code = main(["labels", "import", str(db), str(m), "--annotator", "x", "-q"])
    err = one_line(capsys)
    assert code == 2 and "control character" in err, err
    if db.exists():  # nothing of the manifest was recorded
        with LabelStore(db, read_only=True) as store:
            assert store.history() == []


def test_a_clean_store_still_opens_and_reads_its_labels(lab):
    db, imgs, dave = lab
    with LabelStore(db, read_only=True) as store:
        matrix = store.label_matrix(imgs, VOCAB, annotator="carol", fallback=())
    assert matrix.tolist() == [[(i + j) % 2 for j in range(3)] for i in range(8)]


def test_text_that_is_not_utf8_is_refused_on_opening(lab, capsys):
    db, imgs, dave = lab
    tampered(db, db, "UPDATE terms SET name = CAST(x'62ff80' AS TEXT) WHERE id = 2")
    refused(db, dave, capsys, "not valid UTF-8")
