"""CSV outputs from hostile names (issue 18, item 4): image names, terms, genes and stages that
begin with ``=``, ``+``, ``-``, ``@`` are written neutralised (a leading quote, OWASP) by
predict, suggest, labels export and the manifest writer, and read back as themselves through
the project's own readers; plain numbers stay numbers."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_ish_annotator.cli import main
from napari_ish_annotator.core.data.manifest import (
    Sample,
    read_manifest,
    read_manifest_images,
    write_manifest,
)
from napari_ish_annotator.core.utils.csvio import FORMULA_START, csv_text, neutralise, restore

FAST = ["--weights", "random", "--input-size", "64", "--device", "cpu", "--quiet"]
HOSTILE_STEMS = ["=cmd|' -C calc'!A0", "+SUM(1,2)", "-2+3", "@SUM(A1)", "=HYPERLINK(x)"]
HOSTILE_TERMS = ["=1+1", "+brain", "-gut", "@eye", "plain term"]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _is_formula(cell: str) -> bool:
    """What a spreadsheet would evaluate: a formula-leading cell that is not a plain number."""
    try:
        float(cell)
        return False
    except ValueError:
        return cell.startswith(FORMULA_START)


def _assert_safe(path: Path) -> None:
    bad = [c for row in _rows(path) for c in row if _is_formula(c)]
    assert not bad, f"{path.name}: formula cells {bad}"


def _hostile_images(folder: Path, source: Path) -> list[Path]:
    """One real image under hostile names, each copy a little different (the label store
    identifies images by content)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(Image.open(source).convert("RGB")).copy()
    out = []
    for i, stem in enumerate(HOSTILE_STEMS):
        p = folder / f"{stem}.png"
        rgb[0, 0] = i
        Image.fromarray(rgb).save(p)
        out.append(p)
    return out


# ------------------------------------------------------------------------------ the rule
VALUES = ["=cmd", "+1+1", "-x", "@a", "\tx", "\rx", "'=x", "''-y", "'plain", "plain", "",
          "-0.5", "+3", "-1e-3", ".5", "-7", "0.250000", "-", "+", "=", "'", "-1-2", "- 1",
          "1=1", "a;=b", "=", "−x"]


@pytest.mark.parametrize("value", VALUES)
def test_every_value_round_trips_and_no_cell_is_a_formula(value):
    cell = neutralise(value)
    assert restore(cell) == value
    assert not _is_formula(cell)


def test_plain_numbers_stay_numbers_and_only_formula_cells_change():
    text = csv_text(["image", "score"], [["-1", -0.5], ["+2", "1e-3"], ["=a", 3], ["b", "-c"]])
    assert text.splitlines() == ["image,score", "-1,-0.5", "+2,1e-3", "'=a,3", "b,'-c"]
    # a hand-written cell that only looks quoted is left as it is
    assert restore("'plain") == "'plain" and restore("it's") == "it's"


# ------------------------------------------------------------------------------ manifests
def test_manifest_writer_neutralises_and_read_manifest_restores(tiny_dataset, tmp_path):
    imgs = _hostile_images(tmp_path / "d", read_manifest_images(tiny_dataset)[0])
    samples = [Sample(image=p, terms=(HOSTILE_TERMS[i], "x"), stage=f"+{i}",
                      gene=f"-gene{i}" if i % 2 else f"@g{i}") for i, p in enumerate(imgs)]
    out = tmp_path / "d" / "manifest.csv"
    write_manifest(out, samples, extra_columns={"split": [-1, -2, 0, "=x", None]})
    _assert_safe(out)
    rows = _rows(out)
    assert rows[1][0] == "'=cmd|' -C calc'!A0.png" and rows[3][0] == "'-2+3.png"
    assert [r[-1] for r in rows[1:]] == ["-1", "-2", "0", "'=x", ""]  # numbers stay numbers
    back = read_manifest(out, require_positives=False)
    assert back.paths == [p for p in imgs]
    assert [s.terms for s in back.samples] == [s.terms for s in samples]
    assert back.genes == [s.gene for s in samples] and back.stages == [s.stage for s in samples]
    assert read_manifest_images(out) == imgs


# ------------------------------------------------------------------------------ CLI outputs
@pytest.fixture(scope="module")
def hostile_model(tiny_dataset, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A model trained from a manifest whose terms are hostile (written by write_manifest and
    read by train), and a folder of images with hostile names."""
    root = tmp_path_factory.mktemp("hostile_csv")
    data = read_manifest(tiny_dataset)
    rename = dict(zip(data.vocabulary[:len(HOSTILE_TERMS)], HOSTILE_TERMS, strict=False))
    samples = [Sample(image=s.image, terms=tuple(rename.get(t, t) for t in s.terms),
                      stage=s.stage, gene=s.gene) for s in data.samples]
    write_manifest(root / "manifest.csv", samples)
    _assert_safe(root / "manifest.csv")
    assert main(["train", str(root / "manifest.csv"), "--out", str(root / "model"),
                 "--ensemble", "3", "--no-cache", *FAST]) == 0
    vocab = [rename.get(t, t) for t in read_manifest(root / "manifest.csv").vocabulary]
    assert set(HOSTILE_TERMS) <= set(vocab)
    _hostile_images(root / "images", data.paths[0])
    return root / "model", root / "images", vocab


def test_predict_writes_neutralised_names_and_terms(hostile_model, tmp_path, monkeypatch):
    model, images, vocab = hostile_model
    monkeypatch.chdir(images)  # images given by relative name: the cell starts with the name
    out = tmp_path / "pred.csv"
    assert main(["predict", "--out", str(out), "--votes", "--no-cache", "--quiet", "--",
                 str(model), *(f"{s}.png" for s in HOSTILE_STEMS)]) == 0
    _assert_safe(out)
    header = [restore(h) for h in _rows(out)[0]]
    assert header[0] == "image" and set(HOSTILE_TERMS) <= set(header[1:])
    assert "'=1+1" in _rows(out)[0] and "'-gut vote" in _rows(out)[0]
    assert all(r[0].startswith("'") for r in _rows(out)[1:])
    probs = np.array([[float(v) for v in r[1:1 + len(vocab)]] for r in _rows(out)[1:]])
    assert ((probs >= 0) & (probs <= 1)).all()  # probability cells are untouched numbers
    shutil.copytree(images, tmp_path, dirs_exist_ok=True)  # read back beside the CSV
    assert read_manifest_images(out) == [tmp_path / f"{s}.png" for s in HOSTILE_STEMS]


def test_suggest_writes_neutralised_names(hostile_model, tmp_path, monkeypatch):
    model, images, _ = hostile_model
    monkeypatch.chdir(images)
    out = images.parent / "next.csv"  # beside the images' folder: read back from there
    assert main(["suggest", "--n", "3", "--out", str(out), "--no-cache", "--quiet", "--",
                 str(model), *(f"{s}.png" for s in HOSTILE_STEMS)]) == 0
    _assert_safe(out)
    rows = _rows(out)
    assert len(rows) == 4 and all(r[0].startswith("'") for r in rows[1:])
    monkeypatch.chdir(tmp_path)
    shutil.copytree(images, tmp_path / "copy")
    shutil.copyfile(out, tmp_path / "copy" / "next.csv")
    back = read_manifest_images(tmp_path / "copy" / "next.csv")  # checks each file exists
    assert {p.name for p in back} <= {f"{s}.png" for s in HOSTILE_STEMS} and len(back) == 3


@pytest.mark.parametrize("consensus", [None, "majority"])
def test_labels_import_and_export_round_trip_hostile_names(tiny_dataset, tmp_path, consensus):
    imgs = _hostile_images(tmp_path / "imgs", read_manifest_images(tiny_dataset)[0])
    terms = ["=1+1;-gut", "+brain", "", "@eye;plain term", "-gut"]
    given = tmp_path / "imgs" / "ann.csv"
    write_manifest(given, [Sample(image=p, terms=tuple(filter(None, t.split(";"))),
                                  gene=f"-g{i}", stage=f"@{i}")
                           for i, (p, t) in enumerate(zip(imgs, terms, strict=True))])
    db, out = tmp_path / "team.sqlite", tmp_path / "export.csv"
    assert main(["labels", "import", str(db), str(given), "--annotator", "ann",
                 "--vocab", ";".join(HOSTILE_TERMS), "-q"]) == 0
    extra = ["--consensus", consensus] if consensus else ["--annotator", "ann"]
    assert main(["labels", "export", str(db), "--images", str(given), "--out", str(out),
                 *extra, "-q"]) == 0
    _assert_safe(out)
    back = read_manifest(out, vocabulary=HOSTILE_TERMS, require_positives=False)
    assert [p.name for p in back.paths] == [p.name for p in imgs]
    assert [set(s.terms) for s in back.samples] == \
        [set(filter(None, t.split(";"))) for t in terms]
    assert back.genes == [f"-g{i}" for i in range(5)]
    assert back.stages == [f"@{i}" for i in range(5)]


# ------------------------------------------------------------------------------ ';' pieces
PIECES = ["g;=2+3", "=HYPERLINK(x);b", "x;=1+2.png", "a;;@b", ";-c", "'=x;'-y", "1;-0.5",
          "a; =b"]


def _pieces_safe(path: Path) -> None:
    """What Excel in a ';'-separator locale evaluates: each ';'-piece of a cell."""
    bad = [c for row in _rows(path) for c in row for piece in c.split(";") if _is_formula(piece)]
    assert not bad, f"{path.name}: formula pieces {bad}"


@pytest.mark.parametrize("value", PIECES)
def test_each_semicolon_piece_is_neutralised_and_round_trips(value):
    cell = neutralise(value)
    assert restore(cell) == value
    assert not any(_is_formula(piece) for piece in cell.split(";"))


def test_labels_export_neutralises_formulas_behind_semicolons(tiny_dataset, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rgb = np.asarray(Image.open(read_manifest_images(tiny_dataset)[0]).convert("RGB")).copy()
    imgs = []
    for i, stem in enumerate(["x;=1+2", "plain", "y;+3;@z"]):
        rgb[0, 0] = i
        imgs.append(folder / f"{stem}.png")
        Image.fromarray(rgb).save(imgs[-1])
    given = folder / "ann.csv"
    write_manifest(given, [Sample(image=p, terms=("=HYPERLINK(x)",) if i else ("gut",),
                                  gene=["g;=2+3", "-g", "ok"][i], stage="13-16")
                           for i, p in enumerate(imgs)])
    db, out = tmp_path / "team.sqlite", tmp_path / "export.csv"
    vocab = "=HYPERLINK(x);gut"
    assert main(["labels", "import", str(db), str(given), "--annotator", "a", "--vocab", vocab,
                 "-q"]) == 0
    assert main(["labels", "export", str(db), "--images", str(given), "--out", str(out),
                 "--annotator", "a", "-q"]) == 0
    _pieces_safe(out)
    back = read_manifest(out, vocabulary=["=HYPERLINK(x)", "gut"], require_positives=False)
    assert [p.name for p in back.paths] == [p.name for p in imgs]
    assert back.genes == ["g;=2+3", "-g", "ok"]


# ------------------------------------------------------------------------------ outputs
@pytest.fixture
def labelled(tmp_path) -> tuple[Path, Path, Path]:
    """(label store, its images' manifest, a second, unrelated label store)."""
    from _store_helpers import build_store, make_images, manifest

    imgs = make_images(tmp_path / "imgs", 4)
    db, other = tmp_path / "store.sqlite", tmp_path / "theirs" / "other.db"
    build_store(db, imgs)
    other.parent.mkdir()
    build_store(other, imgs, annotator="erin")
    return db, manifest(tmp_path / "imgs", imgs, ["gut"] * 4, "m"), other


def _refused(capsys, args: list[str], words: str, *folders: Path) -> None:
    from _store_helpers import fingerprint

    before = fingerprint(*folders)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert fingerprint(*folders) == before


def test_no_output_replaces_an_input_or_a_label_store(labelled, tmp_path, capsys):
    db, m, other = labelled
    export = ["labels", "export", str(db), "--images", str(m), "--annotator", "carol", "-q"]
    (tmp_path / "link.csv").symlink_to(db)
    (tmp_path / "hard.csv").hardlink_to(m)
    for out, words in ((tmp_path / "imgs" / ".." / "store.sqlite", "is also an input"),
                       (tmp_path / "link.csv", "is also an input"),
                       (tmp_path / "hard.csv", "is also an input"),
                       (other, "is a SQLite file")):
        _refused(capsys, [*export, "--out", str(out)], words, tmp_path)
    # predict / evaluate: refused before the model or any image is touched
    _refused(capsys, ["predict", str(tmp_path / "model"), str(m), "--out", str(other), "-q"],
             "is a SQLite file", tmp_path)
    _refused(capsys, ["predict", str(tmp_path / "model"), str(m), "--out",
                      str(tmp_path / "imgs" / ".." / "imgs" / "m.csv"), "-q"],
             "is also an input", tmp_path)
    _refused(capsys, ["evaluate", str(m), "--json", str(tmp_path / "link.csv"), *FAST],
             "is a SQLite file", tmp_path)
    _refused(capsys, ["evaluate", str(m), "--json", str(tmp_path / "hard.csv"), *FAST],
             "is also an input", tmp_path)
    assert main([*export, "--out", str(tmp_path / "fine.csv")]) == 0  # an honest --out works


def test_the_atomic_writer_never_replaces_a_label_store(labelled):
    from napari_ish_annotator.core.utils.csvio import write_csv
    from napari_ish_annotator.core.utils.errors import InputError
    from napari_ish_annotator.core.utils.files import write_json_atomic

    db, m, other = labelled
    before = other.read_bytes()
    with pytest.raises(InputError, match="is a SQLite file"):
        write_csv(other, ["image"], [["x"]])
    with pytest.raises(InputError, match="is a SQLite file"):
        write_json_atomic(db.parent / "imgs" / ".." / "store.sqlite", {})
    assert other.read_bytes() == before and not list(other.parent.glob(".*tmp*"))
