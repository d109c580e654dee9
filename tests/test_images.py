"""Image readers: every supported format/depth to HxWx3 uint8, and every bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_ish_annotator.core.data.images import (
    SUPPORTED_SUFFIXES,
    array_to_rgb,
    read_rgb,
)
from napari_ish_annotator.core.data.inputs import collect_inputs, list_images, scan_inputs
from napari_ish_annotator.core.utils.errors import InputError


@pytest.fixture
def rgb8() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)


def test_supported_suffixes():
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"} == set(SUPPORTED_SUFFIXES)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".tiff"])
def test_lossless_rgb_roundtrip(tmp_path, rgb8, suffix):
    p = tmp_path / f"img{suffix}"
    if suffix in (".tif", ".tiff"):
        tifffile.imwrite(p, rgb8, photometric="rgb")
    else:
        Image.fromarray(rgb8).save(p)
    out = read_rgb(p)
    assert out.dtype == np.uint8 and out.shape == (12, 20, 3)
    np.testing.assert_array_equal(out, rgb8)


def test_jpeg_close(tmp_path):
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[..., 0] = 200
    smooth[..., 1] = np.linspace(0, 255, 48, dtype=np.uint8)[None, :]
    smooth[..., 2] = 90
    p = tmp_path / "a.JPEG"
    Image.fromarray(smooth).save(p, quality=95)
    out = read_rgb(p)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth.astype(int)).mean() < 4


def test_gray_png_and_bmp_replicated(tmp_path):
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10) * 4
    for name in ("g.png", "g.bmp"):
        Image.fromarray(gray, mode="L").save(tmp_path / name)
        out = read_rgb(tmp_path / name)
        assert out.shape == (6, 10, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], gray)


def test_palette_bmp(tmp_path, rgb8):
    img = Image.fromarray(rgb8).convert("P", palette=Image.ADAPTIVE, colors=16)
    p = tmp_path / "pal.bmp"
    img.save(p)
    np.testing.assert_array_equal(read_rgb(p), np.asarray(img.convert("RGB")))


def test_16bit_gray_tiff_divided_by_257(tmp_path):
    a = np.array([[0, 257, 65535], [1000, 30000, 65280]], dtype=np.uint16)
    p = tmp_path / "g16.tif"
    tifffile.imwrite(p, a)
    out = read_rgb(p)
    expected = np.rint(a / 257).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 2], expected)
    # fixed mapping, no per-image stretch: a dim image stays dim
    dim = np.full((4, 4), 2570, np.uint16)
    tifffile.imwrite(tmp_path / "dim.tif", dim)
    assert read_rgb(tmp_path / "dim.tif").max() == 10


def test_16bit_rgb_tiff_interleaved_and_planar(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 65536, size=(8, 9, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", a, photometric="rgb")
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(a, -1, 0), photometric="rgb",
                     planarconfig="separate")
    expected = np.rint(a / 257).astype(np.uint8)
    np.testing.assert_array_equal(read_rgb(tmp_path / "c.tif"), expected)
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.tif"), expected)


def test_16bit_png(tmp_path):
    a = np.array([[0, 65535], [25700, 514]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    out = read_rgb(p)
    np.testing.assert_array_equal(out[..., 1], [[0, 255], [100, 2]])


def test_rgba_png_and_tiff_composited_on_white(tmp_path):
    a = np.zeros((2, 2, 4), np.uint8)
    a[..., 0] = 200
    a[0, 0, 3] = 255  # opaque red-ish
    a[0, 1, 3] = 0    # transparent -> white
    a[1, :, 3] = 128  # half
    Image.fromarray(a, mode="RGBA").save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="rgb", extrasamples=["unassalpha"])
    for name in ("a.png", "a.tif"):
        out = read_rgb(tmp_path / name)
        np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
        np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
        half = 128 / 255
        np.testing.assert_allclose(out[1, 0], np.rint([200 * half + 255 * (1 - half),
                                                       255 * (1 - half), 255 * (1 - half)]),
                                   atol=1)


def test_16bit_rgba_tiff(tmp_path):
    a = np.zeros((2, 2, 4), np.uint16)
    a[..., 2] = 65535
    a[..., 3] = 65535
    a[1, 1, 3] = 0
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="rgb", extrasamples=["unassalpha"])
    out = read_rgb(tmp_path / "a.tif")
    np.testing.assert_array_equal(out[0, 0], [0, 0, 255])
    np.testing.assert_array_equal(out[1, 1], [255, 255, 255])


def test_gray_alpha_png(tmp_path):
    a = np.zeros((1, 2, 2), np.uint8)
    a[0, 0] = [50, 255]
    a[0, 1] = [50, 0]
    Image.fromarray(a, mode="LA").save(tmp_path / "la.png")
    out = read_rgb(tmp_path / "la.png")
    np.testing.assert_array_equal(out[0, 0], [50, 50, 50])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])


def test_array_to_rgb_rejects_bad_layout():
    with pytest.raises(InputError, match="layout"):
        array_to_rgb(np.zeros((2, 3, 7), np.uint8))
    with pytest.raises(InputError, match="sample type"):
        array_to_rgb(np.full((2, 2), -5, np.int32))


def test_missing_directory_and_unsupported(tmp_path):
    with pytest.raises(InputError, match="not found") as exc:
        read_rgb(tmp_path / "nope.png")
    assert "nope.png" in str(exc.value)
    with pytest.raises(InputError, match="folder"):
        read_rgb(tmp_path)
    gif = tmp_path / "x.gif"
    Image.new("RGB", (4, 4)).save(gif)
    with pytest.raises(InputError, match="unsupported file type '.gif'.*convert"):
        read_rgb(gif)


def test_corrupt_and_truncated(tmp_path, rgb8):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png at all")
    with pytest.raises(InputError, match="bad.png: the file is a text file, whatever its name"):
        read_rgb(bad)
    big = np.random.default_rng(2).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    good = tmp_path / "good.png"
    Image.fromarray(big).save(good)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="corrupt, truncated"):
        read_rgb(trunc)
    tiff = tmp_path / "t.tif"
    tifffile.imwrite(tiff, big)
    ttrunc = tmp_path / "tt.tif"
    ttrunc.write_bytes(tiff.read_bytes()[:100])
    with pytest.raises(InputError, match="tt.tif"):
        read_rgb(ttrunc)
    jt = tmp_path / "j.jpg"
    jt.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 10)
    with pytest.raises(InputError, match="j.jpg"):
        read_rgb(jt)


def test_page_less_tiff_is_one_input_error_without_tifffile_warnings(tmp_path, caplog):
    """tifffile would log 'contains no pages' to stderr: a second line next to the CLI error."""
    p = tmp_path / "empty.tif"
    with tifffile.TiffWriter(p):
        pass  # header only, no image: what an interrupted export leaves behind
    with pytest.raises(InputError, match="empty.tif"):
        read_rgb(p)
    assert not [r for r in caplog.records if r.name.startswith("tifffile")], caplog.text


def _folder(tmp_path, rgb8):
    d = tmp_path / "imgs"
    d.mkdir()
    for name in ("b.png", "a.TIF", "c.bmp"):
        if name.endswith("TIF"):
            tifffile.imwrite(d / name, rgb8, photometric="rgb")
        else:
            Image.fromarray(rgb8).save(d / name)
    (d / "notes.txt").write_text("hello")
    (d / "._b.png").write_bytes(b"junk")
    (d / "sub").mkdir()
    Image.fromarray(rgb8).save(d / "sub" / "deep.png")
    (d / "broken.jpg").write_bytes(b"garbage")
    return d


def test_list_images_sorted_non_recursive(tmp_path, rgb8):
    d = _folder(tmp_path, rgb8)
    assert [p.name for p in list_images(d)] == ["a.TIF", "b.png", "broken.jpg", "c.bmp"]
    with pytest.raises(InputError):
        list_images(tmp_path / "missing")


def test_collect_inputs_strict(tmp_path, rgb8):
    d = _folder(tmp_path, rgb8)
    single = tmp_path / "single.png"
    Image.fromarray(rgb8).save(single)
    (tmp_path / "m.csv").write_text("image,terms\nsingle.png,\nimgs/c.bmp,x\n")
    got = collect_inputs([single, d, tmp_path / "m.csv"])
    assert [p.name for p in got] == ["single.png", "a.TIF", "b.png", "broken.jpg", "c.bmp"]
    with pytest.raises(InputError, match="missing.png"):
        collect_inputs([tmp_path / "missing.png"])
    with pytest.raises(InputError, match="unsupported"):
        collect_inputs([d / "notes.txt"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no PNG"):
        collect_inputs([empty])
    (tmp_path / "bad.csv").write_text("image,terms\nnothere.png,\n")
    with pytest.raises(InputError, match="row 2"):
        collect_inputs([tmp_path / "bad.csv"])
    with pytest.raises(InputError):
        collect_inputs([])


def test_folder_of_gene_subfolders_says_subfolders_are_not_searched(tmp_path, rgb8):
    (tmp_path / "bdgp" / "CG1234").mkdir(parents=True)
    Image.fromarray(rgb8).save(tmp_path / "bdgp" / "CG1234" / "e1.bmp")
    with pytest.raises(InputError, match="subfolders are not searched"):
        collect_inputs([tmp_path / "bdgp"])


def test_scan_inputs_skips_and_reports(tmp_path, rgb8):
    d = _folder(tmp_path, rgb8)
    (d / "movie.gif").write_bytes(b"GIF89a")
    (d / "trunc.png").write_bytes((d / "b.png").read_bytes()[:60])  # header reads, pixels don't
    for check in ("decode", "header"):
        scanned = scan_inputs([d, tmp_path / "ghost.png"], check=check)
        problems = scanned.problems
        by_name = {p.path.name: p.message for p in problems}
        usable = ["a.TIF", "b.png", "c.bmp"] + (["trunc.png"] if check == "header" else [])
        assert [p.name for p in scanned.paths] == sorted(usable)
        assert set(by_name) == {"movie.gif", "broken.jpg", "ghost.png"} | (
            {"trunc.png"} if check == "decode" else set())  # notes.txt: not an image
        assert "not a supported image" in by_name["movie.gif"]
        assert [p.path.name for p in problems if p.ignorable] == ["movie.gif"]
        assert "is a text file, whatever its name says" in by_name["broken.jpg"]
        assert "not found" in by_name["ghost.png"]
        assert str(problems[0]).startswith(str(problems[0].path))
    scanned = scan_inputs([d], check="path")
    assert "broken.jpg" in [p.name for p in scanned.paths]
    assert [p.path.name for p in scanned.problems] == ["movie.gif"]
    with pytest.raises(InputError, match="no readable images found"):
        scan_inputs([d / "broken.jpg"])


def test_one_listing_rule_for_the_cli_and_the_session(tmp_path, rgb8):
    """predict, predict --skip-bad and the napari session list the same images for the same
    inputs (they had three listing functions with different rules)."""
    session_scan = scan_inputs  # one function, called with the session's settings

    d = _folder(tmp_path, rgb8)
    single = tmp_path / "single.png"
    Image.fromarray(rgb8).save(single)
    (tmp_path / "m.csv").write_text("image,terms,gene\nsingle.png,brain,g1\nimgs/c.bmp,,g2\n")
    inputs = [d, tmp_path / "m.csv"]
    strict = collect_inputs(inputs)
    forgiving = list(scan_inputs(inputs, check="path").paths)
    session = session_scan(inputs, check="path", dataset_folders=True)
    names = ["a.TIF", "b.png", "broken.jpg", "c.bmp", "single.png"]  # c.bmp once
    assert [p.name for p in strict] == [p.name for p in forgiving] == names
    assert [p.name for p in session.paths] == names
    assert session.genes == (None, None, None, None, "g1")  # c.bmp came from the folder first
    assert session.manifest_terms[-1] == ("brain",) and session.vocabulary == ("brain",)

    # a manifest with only an image column (prediction inputs) opens everywhere
    (tmp_path / "images-only.csv").write_text("image\nsingle.png\n")
    only = [tmp_path / "images-only.csv"]
    assert collect_inputs(only) == list(scan_inputs(only, check="decode").paths) \
        == list(session_scan(only, dataset_folders=True).paths)
    assert session_scan(only).dataset is None


def test_decompression_bomb_is_input_error(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    p = tmp_path / "big.png"
    PILImage.new("RGB", (64, 64)).save(p)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # 64*64 > 2 * 100 -> error
    with pytest.raises(InputError, match="too large"):
        read_rgb(p)


def test_non_regular_files_named_like_images_are_listed_as_problems(tmp_path, rgb8):
    """A FIFO or a folder named .png inside a folder is never opened: the strict listing
    (predict) stops at it, the scan (--skip-bad, napari) lists it and keeps the rest."""
    import os

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(rgb8).save(d / "a.png")
    os.mkfifo(d / "pipe.png")
    (d / "dir.tif").mkdir()
    with pytest.raises(InputError, match=r"dir.tif: is a folder"):
        collect_inputs([d])
    scanned = scan_inputs([d], check="decode")
    assert [p.name for p in scanned.paths] == ["a.png"]
    by_name = {p.path.name: p.message for p in scanned.problems}
    assert by_name["pipe.png"].startswith("is a named pipe (FIFO), not an image file")
    assert set(by_name) == {"pipe.png", "dir.tif"}
    (d / "dir.tif").rmdir()
    with pytest.raises(InputError, match=r"pipe.png: is a named pipe \(FIFO\)"):
        collect_inputs([d])
