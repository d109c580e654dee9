"""``ish-annotator labels`` and ``suggest`` end to end: several annotators, their agreement
and consensus, bad input that leaves the store untouched, and the suggestion CSV."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from napari_ish_annotator.cli import main
from napari_ish_annotator.core.labels.store import LabelStore
from test_labels import make_images

VOCAB = "brain;gut;eye"
# three annotators' terms for four images
ROWS = {
    "ann": ["brain;gut", "gut", "", "eye"],
    "bob": ["brain", "gut", "brain", "eye"],
    "cat": ["brain;gut", "", "", "eye;brain"],
}


def manifest(folder: Path, who: str, imgs: list[Path]) -> Path:
    path = folder / f"{who}.csv"
    lines = ["image,terms"] + [f"{p.name},{t}" for p, t in zip(imgs, ROWS[who], strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def store(tmp_path) -> tuple[Path, Path, list[Path]]:
    """A store with the three annotators' labels; returns (store, image folder, images)."""
    imgs = make_images(tmp_path / "imgs", 4)
    db = tmp_path / "team.sqlite"
    for who in ROWS:
        assert main(["labels", "import", str(db), str(manifest(tmp_path / "imgs", who, imgs)),
                     "--annotator", who, "--vocab", VOCAB, "-q"]) == 0
    return db, tmp_path / "imgs", imgs


def snapshot(db: Path) -> tuple[str, list]:
    rows = sqlite3.connect(db).execute("SELECT * FROM label_events ORDER BY id").fetchall()
    return hashlib.sha256(db.read_bytes()).hexdigest(), rows


def test_import_records_each_annotator_and_is_idempotent(store, tmp_path, capsys):
    db, folder, imgs = store
    before = snapshot(db)
    assert main(["labels", "import", str(db), str(folder / "ann.csv"), "--annotator", "ann",
                 "--vocab", VOCAB]) == 0
    assert "0 label(s)" in capsys.readouterr().err and snapshot(db)[1] == before[1]
    with LabelStore(db, read_only=True) as s:
        assert s.annotators() == ["ann", "bob", "cat"]
        m = s.label_matrix(imgs, ["brain", "gut", "eye"], annotator="ann", fallback=())
        # terms a row does not list are absent (0), not unknown
        np.testing.assert_array_equal(m, [[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]])


def test_agreement_table_and_json(store, tmp_path, capsys):
    db, _, _ = store
    out = tmp_path / "agree.json"
    assert main(["labels", "agreement", str(db), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "overall" in table and "estimated accuracy" in table
    data = json.loads(out.read_text())
    assert data["annotators"] == ["ann", "bob", "cat"]
    eye = data["terms"]["eye"]  # all three agree on every image: observed 1, kappa 1
    assert (eye["annotators"], eye["images"], eye["kappa_kind"]) == (3, 4, "fleiss")
    assert eye["observed"] == pytest.approx(1.0) and eye["kappa"] == pytest.approx(1.0)
    # brain votes per image (yes, no): (3,0) (0,3) (1,2) (2,1) -> pairs 1, 1, 1/3, 1/3
    assert data["terms"]["brain"]["observed"] == pytest.approx(2 / 3)
    assert set(data["accuracy"]) == {"ann", "bob", "cat"}


@pytest.mark.parametrize("method", ["majority", "dawid-skene"])
def test_export_consensus_and_min_agreement(store, tmp_path, capsys, method):
    db, folder, imgs = store
    out = tmp_path / "consensus.csv"
    assert main(["labels", "export", str(db), "--images", str(folder), "--out", str(out),
                 "--consensus", method]) == 0
    rows = read_csv(out)
    assert [Path(r["image"]).name for r in rows] == [p.name for p in imgs]
    assert [set(filter(None, r["terms"].split(";"))) for r in rows] == \
        [{"brain", "gut"}, {"gut"}, set(), {"eye"}]
    # unanimous only: gut on images 1 and 2, brain on 3 and 4 are 2-of-3 -> unknown
    assert main(["labels", "export", str(db), "--images", str(folder), "--out", str(out),
                 "--consensus", method, "--min-agreement", "1"]) == 0
    assert "4 term label(s) left unknown" in capsys.readouterr().err
    rows = read_csv(out)
    assert [r["unknown_terms"] for r in rows] == ["gut", "gut", "brain", "brain"]


def test_export_one_annotator(store, tmp_path):
    db, folder, imgs = store
    out = tmp_path / "bob.csv"
    assert main(["labels", "export", str(db), "--images", str(folder), "--out", str(out),
                 "--annotator", "bob", "-q"]) == 0
    assert [r["terms"] for r in read_csv(out)] == ["brain", "gut", "brain", "eye"]


def test_bad_input_exits_2_and_changes_nothing(store, tmp_path, capsys):
    db, folder, imgs = store
    before = snapshot(db)
    out = tmp_path / "x.csv"
    other = make_images(tmp_path / "other", 5)[4:]  # an image the store has never seen
    (tmp_path / "broken.csv").write_text("image,terms\nnope.png,brain\n", encoding="utf-8")
    empty = tmp_path / "empty.sqlite"
    LabelStore(empty).close()
    cases = [
        (["labels", "export", str(db), "--images", str(folder), "--out", str(out),
          "--annotator", "dan"], "unknown annotator(s) 'dan'"),
        (["labels", "export", str(db), "--images", str(other[0]), "--out", str(out)],
         "1 of 1 images have no labels in the store"),
        (["labels", "export", str(empty), "--images", str(folder), "--out", str(out)],
         "no labels yet"),
        (["labels", "agreement", str(empty)], "no labels yet"),
        (["labels", "import", str(db), str(tmp_path / "broken.csv"), "--annotator", "ann"],
         "nope.png"),
        (["labels", "export", str(db), "--images", str(folder), "--out", str(out),
          "--min-agreement", "1.5"], "between 0 and 1"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert snapshot(db) == before
    assert not out.exists()
    assert not (tmp_path / "never.sqlite").exists()
    assert main(["labels", "import", str(tmp_path / "never.sqlite"),
                 str(tmp_path / "broken.csv"), "--annotator", "ann"]) == 2
    assert not (tmp_path / "never.sqlite").exists()  # a bad manifest creates no store
