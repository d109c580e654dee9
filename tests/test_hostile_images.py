"""Hostile images (issue 18): tiny files that claim huge pixel counts are refused from their
header, by every reader, within seconds and without memory; a raised ``--max-pixels`` lets a
large image through and Grad-CAM's memory stays proportional to the image."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from napari_ish_annotator.core.data import budget, images
from napari_ish_annotator.core.data.budget import max_pixels, pixel_budget
from napari_ish_annotator.core.data.images import check_image, read_rgb
from napari_ish_annotator.core.utils.errors import InputError
from napari_ish_annotator.core.utils.hashing import content_hash

SRC = str(Path(images.__file__).parents[3])  # the src folder
FAST = ["--weights", "random", "--input-size", "64", "--device", "cpu", "--quiet"]
MB = 1024 * 1024
#: the child's own peak RSS in KiB: VmHWM of its memory map. (ru_maxrss is no good here: Linux
#: carries the spawning process's peak over exec, so a child of a 3 GB pytest reports 3 GB.)
PEAK_RSS_SOURCE = (
    "def PEAK_RSS_KB():\n"
    "    try:\n"
    "        with open('/proc/self/status') as fh:\n"
    "            return next(int(ln.split()[1]) for ln in fh if ln.startswith('VmHWM:'))\n"
    "    except (OSError, StopIteration):  # not Linux: not measured\n"
    "        return 0\n")


def write_png_bomb(path: Path, width: int, height: int) -> Path:
    """A 1-bit grayscale PNG of zeros, streamed through zlib (17 KB for 12000 x 12000)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row = b"\x00" + bytes((width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * min(500, height - r)) for r in range(0, height, 500))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat + z.flush()) + chunk(b"IEND", b""))
    return path


def write_tiff_bomb(path: Path, side: int = 30000, tile: int = 1024) -> Path:
    """A deflate TIFF of ``side`` x ``side`` zeros (~1 MB at 30000), written tile by tile:
    the writer never holds the image."""
    import tifffile

    zeros = np.zeros((tile, tile), np.uint8)
    n = -(-side // tile)
    tifffile.imwrite(path, (zeros for _ in range(n * n)), shape=(side, side), dtype=np.uint8,
                     tile=(tile, tile), compression="zlib", photometric="minisblack")
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bombs")
    return {"tif": write_tiff_bomb(root / "bomb.tif"),
            "png": write_png_bomb(root / "bomb.png", 12000, 12000)}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, str, Path]:
    """(model folder, a term, the training images folder): VGG16 with random weights at 64 px."""
    from napari_ish_annotator.cli import main
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    root = tmp_path_factory.mktemp("hostile_model")
    manifest = generate_dataset(root / "data", n_images=12, stage="13-16", seed=5, size=(64, 128),
                                min_positives=3, write_masks=False)
    out = root / "model"
    assert main(["train", str(manifest), "--out", str(out), "--ensemble", "3", "--cache",
                 str(root / "cache"), *FAST]) == 0
    term = json.loads((out / "model.json").read_text())["vocabulary"][0]
    return out, term, manifest.parent / "images"


def run_cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, list[str], float, float]:
    """``ish-annotator ARGV`` in a fresh process: (exit code, stderr lines, seconds, its own
    peak RSS in MB, measured by the process itself; 0 where /proc is missing)."""
    code = (PEAK_RSS_SOURCE + "import sys\n"
            "from napari_ish_annotator.cli import main\n"
            "code = main(sys.argv[1:])\n"
            "print(PEAK_RSS_KB())\n"
            "sys.exit(code)\n")
    environ = {**os.environ, "PYTHONPATH": SRC, **(env or {})}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env=environ, timeout=300)
    seconds = time.monotonic() - start
    rss_mb = int(done.stdout.strip().splitlines()[-1]) / 1024  # Linux: KiB
    return done.returncode, done.stderr.strip().splitlines(), seconds, rss_mb


# ------------------------------------------------------------------ in-process, header only

@pytest.mark.parametrize("kind, size", [("tif", "30000x30000"), ("png", "12000x12000")])
def test_readers_refuse_from_the_header(bombs, kind, size):
    path = bombs[kind]
    assert path.stat().st_size < 1.2 * MB
    for reader in (read_rgb, check_image):
        start = time.monotonic()
        with pytest.raises(InputError) as err:
            reader(path)
        assert time.monotonic() - start < 2.0  # nothing decoded
        text = str(err.value)
        assert text.startswith(str(path)) and "\n" not in text
        assert size in text and "--max-pixels" in text and budget.MAX_PIXELS_ENV in text


def test_one_budget_for_every_format(tmp_path, monkeypatch):
    """PNG, JPEG, BMP and TIFF all obey the same budget, lowered or raised."""
    import tifffile
    from PIL import Image

    rgb = np.full((40, 50, 3), 200, np.uint8)
    paths = []
    for suffix in (".png", ".jpg", ".bmp"):
        Image.fromarray(rgb).save(tmp_path / f"e{suffix}")
        paths.append(tmp_path / f"e{suffix}")
    tifffile.imwrite(tmp_path / "e.tif", rgb, photometric="rgb")
    paths.append(tmp_path / "e.tif")
    assert max_pixels() == budget.DEFAULT_MAX_PIXELS
    with pixel_budget(1999):  # 40 x 50 = 2000 pixels
        assert max_pixels() == 1999 and os.environ[budget.MAX_PIXELS_ENV] == "1999"
        for p in paths:
            with pytest.raises(InputError, match="50x40 pixels"):
                read_rgb(p)
    assert max_pixels() == budget.DEFAULT_MAX_PIXELS  # restored
    with pixel_budget(2000):
        assert all(read_rgb(p).shape == (40, 50, 3) for p in paths)
    monkeypatch.setenv(budget.MAX_PIXELS_ENV, "lots")
    with pytest.raises(InputError, match=budget.MAX_PIXELS_ENV):
        read_rgb(paths[0])


def test_raised_budget_lets_pillow_decode_past_its_own_limit(tmp_path, monkeypatch):
    """Pillow refuses above twice its own limit (179 Mpx by default); a raised budget must
    not be refused by Pillow first (here Pillow's limit is scaled down to keep it small)."""
    from PIL import Image

    monkeypatch.setattr(budget, "_PILLOW_DEFAULT_LIMIT", 1000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = write_png_bomb(tmp_path / "wide.png", 300, 20)  # 6000 > 2 x 1000
    with pixel_budget(5000), pytest.raises(InputError, match=r"300x20 pixels \(0.0 Mpx\)"):
        read_rgb(path)
    with pixel_budget(6000):
        assert read_rgb(path).shape == (20, 300, 3)
        assert Image.MAX_IMAGE_PIXELS == 1000  # raised only while the image opened (issue 25)


# ------------------------------------------------------------------ the command line

def test_predict_and_gradcam_exit_2_in_seconds_with_one_line(bombs, model, tmp_path):
    folder, term, _ = model
    for kind in ("tif", "png"):
        for argv in (["predict", str(folder), str(bombs[kind]), "--out", str(tmp_path / "p.csv"),
                      "--cache", str(tmp_path / "cache")],
                     ["gradcam", str(folder), str(bombs[kind]), "--term", term,
                      "--out", str(tmp_path / "h.png")]):
            code, err, seconds, rss = run_cli(*argv, "--quiet")
            assert code == 2, err
            assert len(err) == 1 and bombs[kind].name in err[0] and "--max-pixels" in err[0], err
            assert seconds < 60 and rss < 1500, (argv[0], kind, seconds, rss)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "h.png").exists()


def test_predict_skip_bad_skips_oversized_images_with_a_warning(bombs, model, tmp_path):
    folder, _, images_dir = model
    batch = tmp_path / "batch"
    batch.mkdir()
    good = sorted(images_dir.glob("*.png"))[:2]
    for p in good:
        (batch / p.name).write_bytes(p.read_bytes())
    (batch / "zz_bomb.png").write_bytes(bombs["png"].read_bytes())
    out = tmp_path / "pred.csv"
    code, err, seconds, rss = run_cli("predict", str(folder), str(batch), "--out", str(out),
                                      "--skip-bad", "--quiet")
    assert code == 0, err
    assert len(err) == 1 and "warning" in err[0] and "zz_bomb.png" in err[0] \
        and "12000x12000" in err[0], err
    assert [line.split(",")[0].rsplit("/", 1)[-1] for line in out.read_text().splitlines()[1:]] \
        == [p.name for p in good]
    assert rss < 1500


@pytest.mark.slow
def test_raised_budget_gradcam_memory_is_proportional_to_the_image(model, tmp_path):
    """With --max-pixels raised, Grad-CAM of a 16 Mpx image works; its peak memory over a
    small image's stays within ~25 bytes per pixel (image 3, map 4, overlay 3, PNG encoding
    4: the map is built at the layer's resolution and only the displayed one is full size).
    Before, the colour mapping alone made float64 RGBA copies: ~120 bytes per pixel."""
    from PIL import Image

    folder, term, images_dir = model
    side = 4000
    ramp = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
    big = tmp_path / "big.png"
    Image.fromarray(np.stack([np.tile(ramp, (side, 1))] * 3, axis=-1)).save(big)
    small = sorted(images_dir.glob("*.png"))[0]

    def gradcam(image: Path, *extra: str):
        npy = tmp_path / f"{image.stem}.npy"
        result = run_cli("gradcam", str(folder), str(image), "--term", term, "--out",
                         str(tmp_path / f"{image.stem}-heat.png"), "--npy", str(npy), "--overlay",
                         "--device", "cpu", "--quiet", *extra)
        return (*result, npy)

    code, err, _, _, _ = gradcam(big, "--max-pixels", str(side * side - 1))
    assert code == 2 and "4000x4000" in err[0] and "--max-pixels 16000000" in err[0], err
    code, err, _, base, _ = gradcam(small)
    assert code == 0, err
    code, err, _, peak, npy = gradcam(big, "--max-pixels", str(side * side))
    assert code == 0, err
    heat = np.load(npy, allow_pickle=False)
    assert heat.shape == (side, side) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert Image.open(tmp_path / "big.png").size == (side, side)
    assert (peak - base) * MB < 25 * side * side, (base, peak)


# ------------------------------------------------------------------ the napari session

def test_session_lists_the_same_one_line_problem(bombs, tmp_path):
    from _gui_helpers import make_dataset
    from napari_ish_annotator.session import AnnotatorSession

    folder = tmp_path / "mixed"
    make_dataset(folder, n=3)
    (folder / "manifest.csv").unlink()
    (folder / "zz_bomb.tif").write_bytes(bombs["tif"].read_bytes())
    session = AnnotatorSession()
    session.open([folder])
    assert session.n_images == 3
    skipped = [s for s in session.skipped if "zz_bomb.tif" in s]
    assert len(skipped) == 1 and "30000x30000" in skipped[0] and "--max-pixels" in skipped[0]
    with pytest.raises(InputError, match="no readable images found.*30000x30000"):
        session.open([bombs["tif"]])


# ------------------------------------------------------------------ issue 23: what a file is

#: a PostScript program that never ends (Ghostscript would run it for ever)
ENDLESS_PS = b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 10 10\n{ 1 pop } loop\nshowpage\n"


def tiff_claim(width: int = 10000, height: int = 10000, samples: int = 8, bits: int = 64,
               depth: int = 1) -> bytes:
    """A 146-byte TIFF whose one IFD claims ``width x height`` pixels of ``samples`` float
    samples of ``bits`` bits (and an ImageDepth when ``depth`` > 1); no pixel data."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 1), (262, 3, 1),
            (273, 4, 8), (277, 3, samples), (278, 4, height), (279, 4, 0xFFFFFFFF),
            (284, 3, 1), (339, 3, 3)] + ([(32997, 4, depth)] if depth > 1 else [])
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, typ, 1)
        + (struct.pack("<HH", v, 0) if typ == 3 else struct.pack("<I", v))
        for tag, typ, v in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def test_the_content_not_the_name_chooses_the_decoder(tmp_path):
    """A GIF named .jpg and PostScript named .png are refused, saying what they are (Pillow
    would decode the GIF and hand the PostScript to Ghostscript); a PNG named .jpg is read."""
    from PIL import Image

    Image.new("RGB", (8, 6), (10, 200, 30)).save(tmp_path / "x.jpg", format="GIF")
    Image.new("RGB", (8, 6), (10, 200, 30)).save(tmp_path / "png.jpg", format="PNG")
    (tmp_path / "loop.png").write_bytes(ENDLESS_PS)
    (tmp_path / "doc.tif").write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    for name, what in (("x.jpg", "a GIF image"), ("loop.png", "a PostScript program"),
                       ("doc.tif", "a PDF document")):
        for reader in (read_rgb, check_image):
            start = time.monotonic()
            with pytest.raises(InputError) as err:
                reader(tmp_path / name)
            assert time.monotonic() - start < 2
            assert str(err.value) == (f"{tmp_path / name}: the file is {what}, whatever its "
                                      "name says; supported: PNG, JPEG, TIFF or BMP - convert "
                                      "it to one of them")
    assert images.vet_image(tmp_path / "png.jpg").format == "PNG"
    assert (read_rgb(tmp_path / "png.jpg") == (10, 200, 30)).all()


def test_samples_and_bit_depth_count_in_the_budget(tmp_path):
    """The 146-byte TIFF of 10000 x 10000 pixels (within 100 Mpx) of 8 samples of 64 bits
    is 6.4 GB decoded: refused from its header, in a process whose peak stays small."""
    bomb = tmp_path / "samples.tif"
    bomb.write_bytes(tiff_claim())
    assert bomb.stat().st_size == 146
    code = (PEAK_RSS_SOURCE + "import sys\nfrom napari_ish_annotator.core.data import images\n"
            "base = PEAK_RSS_KB()\n"
            "try:\n    images.read_rgb(sys.argv[1])\nexcept images.InputError as exc:\n"
            "    print(exc)\nprint(base, PEAK_RSS_KB())\n")
    done = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": SRC})
    message, rss = done.stdout.strip().splitlines()
    base, peak = (int(v) for v in rss.split())
    assert message == (
        f"{bomb}: image decodes to 6.4 GB (10000x10000, 8 samples of 64 bits), over the 0.8 GB "
        "the 100 Mpx limit allows (8 bytes a pixel, as 16-bit RGBA); supported images have "
        "1-4 samples of 8 or 16 bits - re-export it, or raise the limit with --max-pixels "
        f"800000000 (GUI and scripts: {budget.MAX_PIXELS_ENV}=800000000)")
    assert (peak - base) * 1024 < 50 * MB, (base, peak)
    # a volume's planes count too; a raised budget lets the header through (to tifffile)
    (tmp_path / "deep.tif").write_bytes(tiff_claim(1000, 1000, 1, 8, depth=500))
    with pytest.raises(InputError, match=r"1000x1000x500 pixels \(500.0 Mpx\)"):
        check_image(tmp_path / "deep.tif")
    with pixel_budget(800_000_000):
        assert images.vet_image(bomb).decoded_bytes == 6_400_000_000


def test_every_reader_budgets_the_decoded_bytes(tmp_path):
    """JPEG (components x precision), PNG, BMP and TIFF headers give the decoded bytes."""
    import tifffile
    from PIL import Image

    rgb = np.full((30, 40, 3), 120, np.uint8)
    Image.fromarray(rgb).save(tmp_path / "e.jpg")
    Image.fromarray(rgb).save(tmp_path / "e.bmp")
    Image.fromarray(np.zeros((30, 40), np.uint16)).save(tmp_path / "e16.png")
    tifffile.imwrite(tmp_path / "e.tif", np.zeros((2, 30, 40, 4), np.uint16), photometric="rgb")
    got = {p: images.vet_image(tmp_path / p) for p in ("e.jpg", "e.bmp", "e16.png", "e.tif")}
    assert {p: (h.format, h.width, h.height, h.samples, h.bits) for p, h in got.items()} == {
        "e.jpg": ("JPEG", 40, 30, 3, 8), "e.bmp": ("BMP", 40, 30, 3, 8),
        "e16.png": ("PNG", 40, 30, 1, 16), "e.tif": ("TIFF", 40, 30, 4, 16)}
    # a JPEG frame header claiming 255 components: 306 kB from 1200 pixels
    data = bytearray((tmp_path / "e.jpg").read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 9] = 255
    (tmp_path / "many.jpg").write_bytes(bytes(data))
    with pixel_budget(1200), pytest.raises(InputError, match=r"40x30, 255 samples of 8 bits"):
        read_rgb(tmp_path / "many.jpg")


def _call_within(seconds: float, fn, *args):
    """``fn(*args)`` in a daemon thread: (finished, its exception)."""
    import threading

    box: list[BaseException | None] = []

    def target():
        try:
            fn(*args)
            box.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(box), (box[0] if box else None)


def test_a_fifo_or_device_named_png_is_never_opened(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for reader in (read_rgb, check_image, content_hash):
        done, exc = _call_within(10, reader, fifo)
        assert done and isinstance(exc, InputError), exc
    assert "is a named pipe (FIFO), not an image file" in str(_call_within(10, read_rgb, fifo)[1])
    if os.path.exists("/dev/zero"):
        done, exc = _call_within(10, read_rgb, Path("/dev/zero"))
        assert done and isinstance(exc, InputError) and "character device" in str(exc)
    # swapped in after the path was checked: the open descriptor is checked, without blocking
    monkeypatch.setattr(images, "check_image_path", lambda path: None)
    done, exc = _call_within(10, read_rgb, fifo)
    assert done and isinstance(exc, InputError) and "named pipe" in str(exc), exc


def _gs_left(marker: str) -> list[str]:
    """Processes whose command line names ``marker`` (a Ghostscript left running)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker in cmd and "pytest" not in cmd:
                found.append(cmd)
    return found


def test_predict_on_a_folder_with_postscript_and_a_fifo_finishes(model, tmp_path):
    """predict: exit 2 with one line naming the file; --skip-bad warns and skips both; no
    Ghostscript is started, nothing blocks."""
    folder, _, images_dir = model
    good = sorted(images_dir.glob("*.png"))[:2]
    for bad in ("zz_loop.png", "zz_pipe.png"):
        batch = tmp_path / bad.split(".")[0]
        batch.mkdir()
        for p in good:
            (batch / p.name).write_bytes(p.read_bytes())
        if bad == "zz_pipe.png":
            os.mkfifo(batch / bad)
        else:
            (batch / bad).write_bytes(ENDLESS_PS)
        code, err, seconds, _ = run_cli("predict", str(folder), str(batch), "--out",
                                        str(tmp_path / "p.csv"), "--quiet")
        assert code == 2 and len(err) == 1 and bad in err[0], err
        assert ("PostScript program" if "loop" in bad else "named pipe (FIFO)") in err[0]
        assert seconds < 120 and not (tmp_path / "p.csv").exists()
    both = tmp_path / "zz_loop"
    os.mkfifo(both / "zz_pipe.png")
    out = tmp_path / "pred.csv"
    code, err, seconds, _ = run_cli("predict", str(folder), str(both), "--out", str(out),
                                    "--skip-bad", "--quiet")
    assert code == 0 and len(err) == 2 and all("warning" in line for line in err), err
    assert [line.split(",")[0].rsplit("/", 1)[-1] for line in out.read_text().splitlines()[1:]] \
        == [p.name for p in good]
    assert seconds < 120 and not _gs_left("zz_loop.png")


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_a_tiff_tag_of_the_wrong_type_in_pillows_path_is_one_line(tmp_path, suffix):
    """Found by the long fuzz run: a palette TIFF (which Pillow decodes, not tifffile) whose
    StripOffsets tag is typed FLOAT made Pillow raise TypeError past the decode errors."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((12, 16), np.uint8)).convert("P").save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    assert data[:4] == b"II*\x00"
    ifd = struct.unpack("<I", data[4:8])[0]
    entries = [ifd + 2 + 12 * k for k in range(struct.unpack("<H", data[ifd:ifd + 2])[0])]
    strip_offsets = next(e for e in entries if struct.unpack("<H", data[e:e + 2])[0] == 273)
    data[strip_offsets + 2:strip_offsets + 4] = struct.pack("<H", 11)  # LONG -> FLOAT
    path = tmp_path / f"palette{suffix}"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="cannot decode") as caught:
        read_rgb(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)
