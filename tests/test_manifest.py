"""Manifest CSV parsing, validation errors, writing and dataset helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_ish_annotator.core.data.manifest import (
    Dataset,
    Sample,
    normalise_stage,
    parse_vocabulary,
    read_manifest,
    read_manifest_images,
    write_manifest,
)
from napari_ish_annotator.core.utils.errors import InputError


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 6), (200, 190, 180)).save(tmp_path / "img" / f"e{i}.png")
    return tmp_path


def _write(folder: Path, text: str, name: str = "m.csv") -> Path:
    p = folder / name
    p.write_text(text, encoding="utf-8")
    return p


def test_basic_read(folder):
    p = _write(folder, "image,terms,stage,gene,view\n"
                       "img/e0.png, brain ; midgut;brain,13-17,sna,lateral\n"
                       "img/e1.png,,13-16,sna,lateral\n"
                       "\n"
                       f"{(folder / 'img' / 'e2.png').as_posix()},hindgut;midgut,,twi,\n")
    ds = read_manifest(p)
    assert ds.vocabulary == ["brain", "midgut", "hindgut"]
    assert ds.samples[0].terms == ("brain", "midgut")
    assert ds.samples[0].stage == "13-16" and ds.samples[0].gene == "sna"
    assert ds.samples[2].stage is None
    assert ds.paths[0] == folder / "img" / "e0.png"
    assert ds.paths[2].is_absolute()
    np.testing.assert_array_equal(ds.labels(), [[1, 1, 0], [0, 0, 0], [0, 1, 1]])
    assert ds.labels().dtype == np.uint8
    assert ds.genes == ["sna", "sna", "twi"] and ds.stages == ["13-16", "13-16", None]
    assert ds.source == p and len(ds) == 3


def test_given_vocabulary_and_negatives(folder):
    p = _write(folder, "image,terms\nimg/e0.png,a;b;zzz\nimg/e1.png,b\n")
    ds = read_manifest(p, vocabulary="b;a")
    assert ds.vocabulary == ["b", "a"]
    np.testing.assert_array_equal(ds.labels(), [[1, 1], [1, 0]])
    with pytest.raises(InputError, match="no positive.*'c'"):
        read_manifest(p, vocabulary=["a", "c"])
    ds = read_manifest(p, vocabulary=["a", "c"], require_positives=False)
    np.testing.assert_array_equal(ds.labels()[:, 1], [0, 0])


def test_groups_gene_stage(folder):
    p = _write(folder, "image,terms,stage,gene\n"
                       "img/e0.png,a,11-12,g1\nimg/e1.png,a,11-12,g1\n"
                       "img/e2.png,a,13-16,g1\nimg/e3.png,a,,\n")
    g = read_manifest(p).groups()  # by gene (stages of one gene share their pattern)
    assert g[0] == g[1] == g[2] and len(set(g.tolist())) == 2
    p1 = _write(folder, "image,terms,stage,gene\n"
                        "img/e0.png,a,11-12,g1\nimg/e1.png,a,11-12,g1\n"
                        "img/e2.png,a,13-16,g1\n", "one.csv")
    g = read_manifest(p1).groups()  # one gene only: by gene and stage
    assert g[0] == g[1] != g[2]
    p2 = _write(folder, "image,terms\nimg/e0.png,a\nimg/e1.png,a\n", "n.csv")
    assert len(set(read_manifest(p2).groups().tolist())) == 2


def test_fingerprint_stable_and_sensitive(folder, tmp_path):
    p = _write(folder, "image,terms\nimg/e0.png,a\nimg/e1.png,b\n")
    f1 = read_manifest(p).fingerprint()
    assert f1 == read_manifest(p).fingerprint() and len(f1) == 64
    p2 = _write(folder, "image,terms,gene\nimg/e0.png,a,x\nimg/e1.png,b;a,y\n", "o.csv")
    assert read_manifest(p2).fingerprint() != f1
    assert read_manifest(p, vocabulary="b;a").fingerprint() != f1


def test_one_training_fingerprint_for_manifests_and_label_matrices(folder, tmp_path):
    """A manifest and an annotation store's label matrix (absolute paths, -1 unknown) that
    hold the same labels get the same fingerprint, wherever the data folder lives."""
    from napari_ish_annotator.core.data.manifest import training_fingerprint

    p = _write(folder, "image,terms\nimg/e0.png,a\nimg/e1.png,b\n")
    ds = read_manifest(p)
    moved = [tmp_path / "elsewhere" / "e0.png", tmp_path / "elsewhere" / "e1.png"]
    Y = np.array([[1, 0], [0, 1]], dtype=np.int8)
    assert training_fingerprint(moved, Y, ["a", "b"]) == ds.fingerprint()
    Y[0, 1] = -1  # an unknown label is not an absent one
    assert training_fingerprint(moved, Y, ["a", "b"]) != ds.fingerprint()


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="not found") as e:
        read_manifest(tmp_path / "none.csv")
    assert "none.csv" in str(e.value)
    with pytest.raises(InputError, match="folder"):
        read_manifest(tmp_path)


def test_missing_column_suggests(folder):
    p = _write(folder, "Image,terms\nimg/e0.png,a\n")
    with pytest.raises(InputError, match="missing required column 'image'.*'Image'"):
        read_manifest(p)
    p = _write(folder, "image,term\nimg/e0.png,a\n")
    with pytest.raises(InputError, match="'terms'.*did you mean 'term'"):
        read_manifest(p)
    p = _write(folder, "file,labels\nimg/e0.png,a\n")
    with pytest.raises(InputError, match="'image'") as e:
        read_manifest(p)
    assert "did you mean" not in str(e.value)


def test_empty_and_header_only(folder):
    with pytest.raises(InputError, match="empty"):
        read_manifest(_write(folder, ""))
    with pytest.raises(InputError, match="no rows"):
        read_manifest(_write(folder, "image,terms\n\n"))


def test_empty_vocabulary(folder):
    p = _write(folder, "image,terms\nimg/e0.png,\nimg/e1.png, ; \n")
    with pytest.raises(InputError, match="no terms"):
        read_manifest(p)
    with pytest.raises(InputError, match="vocabulary is empty"):
        read_manifest(p, vocabulary=" ; ")


def test_non_utf8(folder):
    p = folder / "latin.csv"
    p.write_bytes("image,terms\nimg/e0.png,gl\xe9nd\n".encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8.*line 2"):
        read_manifest(p)


def test_utf8_bom_and_tabs(folder):
    p = folder / "bom.csv"
    p.write_bytes("\ufeffimage,terms\nimg/e0.png,a\n".encode())
    assert read_manifest(p).vocabulary == ["a"]
    t = _write(folder, "image\tterms\nimg/e0.png\ta;b\n", "t.tsv")
    assert read_manifest(t).vocabulary == ["a", "b"]


def test_semicolon_csv_from_excel_with_decimal_comma_locale(folder):
    """German/French Excel saves 'CSV' with ';' and quotes cells that contain ';'."""
    p = _write(folder, 'image;terms;stage\nimg/e0.png;"a;b";13-16\nimg/e1.png;c;13-16\n')
    dataset = read_manifest(p)
    assert dataset.vocabulary == ["a", "b", "c"]
    assert dataset.samples[0].terms == ("a", "b") and dataset.stages == ["13-16", "13-16"]


def test_windows_backslash_paths_resolve_on_posix(folder):
    """A manifest typed on Windows ('img\\e0.png') must find the image on Linux/macOS too."""
    p = _write(folder, "image,terms\nimg\\e0.png,a\nimg\\e1.png,\n")
    assert read_manifest(p).paths == [folder / "img" / "e0.png", folder / "img" / "e1.png"]


def test_missing_image_names_row(folder):
    p = _write(folder, "image,terms\nimg/e0.png,a\n\nimg/missing.png,a\n")
    with pytest.raises(InputError, match=r"row 4.*missing\.png.*not found"):
        read_manifest(p)
    ds = read_manifest(p, check_files=False)
    assert len(ds) == 2
    p = _write(folder, "image,terms\n,a\n", "e.csv")
    with pytest.raises(InputError, match="row 2.*empty 'image'"):
        read_manifest(p)
    (folder / "x.gif").write_bytes(b"GIF89a")
    p = _write(folder, "image,terms\nx.gif,a\n", "g.csv")
    with pytest.raises(InputError, match="row 2.*unsupported"):
        read_manifest(p)


def test_malformed_row(folder):
    p = _write(folder, "image,terms\nimg/e0.png,a,b,c\n")
    with pytest.raises(InputError, match="row 2.*fields"):
        read_manifest(p)


def test_read_manifest_images_only_needs_image(folder):
    p = _write(folder, "image\nimg/e1.png\nimg/e0.png\n")
    assert [x.name for x in read_manifest_images(p)] == ["e1.png", "e0.png"]
    with pytest.raises(InputError, match="'terms'"):
        read_manifest(p)


def test_write_roundtrip(folder, tmp_path):
    samples = [Sample(folder / "img" / "e0.png", ("brain", "midgut"), "13-16", "sna"),
               Sample(folder / "img" / "e1.png", (), None, None)]
    out = folder / "sub" / "out.csv"
    write_manifest(out, samples, extra_columns={"split": ["train", "test"]})
    text = out.read_text()
    assert text.splitlines()[0] == "image,terms,stage,gene,split"
    assert "../img/e0.png" in text  # relative to the CSV's folder
    assert not list(out.parent.glob("*.tmp-*"))
    ds = read_manifest(out)
    assert [p.resolve() for p in ds.paths] == [
        s.image.resolve() for s in samples]
    assert [s.terms for s in ds.samples] == [s.terms for s in samples]
    assert ds.samples[0].stage == "13-16" and ds.samples[1].gene is None
    with pytest.raises(ValueError):
        write_manifest(out, samples, extra_columns={"split": ["train"]})


def test_dataset_direct():
    ds = Dataset([Sample(Path("a.png"), ("x",)), Sample(Path("b.png"), ("y", "x"))], ["x", "y"])
    np.testing.assert_array_equal(ds.labels(), [[1, 0], [1, 1]])
    assert ds.groups().tolist() == [0, 1]


@pytest.mark.parametrize("text,expected", [
    ("13-17", "13-16"), ("11_12", "11-12"), (" stage 9 - 10 ", "9-10"), ("4–6", "4-6"),
    ("", None), (None, None), ("late", "late"), ("07-08", "7-8"),
])
def test_normalise_stage(text, expected):
    assert normalise_stage(text) == expected


def test_parse_vocabulary(tmp_path):
    assert parse_vocabulary("a; b ;a") == ["a", "b"]
    assert parse_vocabulary("a,b") == ["a", "b"]
    assert parse_vocabulary(["x", " y ", ""]) == ["x", "y"]
    assert parse_vocabulary("embryonic/larval muscle system") == ["embryonic/larval muscle system"]
    f = tmp_path / "v.txt"
    f.write_text("# comment\nembryonic brain\n\nventral nerve cord\n")
    assert parse_vocabulary(f) == ["embryonic brain", "ventral nerve cord"]
    assert parse_vocabulary(str(f)) == ["embryonic brain", "ventral nerve cord"]
    with pytest.raises(InputError, match="not found"):
        parse_vocabulary(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="empty"):
        parse_vocabulary([])
