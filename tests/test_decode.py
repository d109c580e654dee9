"""The fast decoding path (issue 28): the same pixels as Pillow, the one vetting, and
normalising on the device giving the same features as on the host."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from napari_ish_annotator.core.backbones.weights import load_backbone
from napari_ish_annotator.core.data.budget import MAX_PIXELS_ENV
from napari_ish_annotator.core.data.images import read_rgb
from napari_ish_annotator.core.features import decoding
from napari_ish_annotator.core.features.decoding import JPEG_TOLERANCE, Preprocessor, decode_rgb
from napari_ish_annotator.core.features.extractor import ExtractorConfig, FeatureExtractor
from napari_ish_annotator.core.utils.errors import InputError


def embryo(seed: int = 0, size=(128, 320)) -> np.ndarray:
    """A smooth pale ellipse with a dark stain and a little noise (JPEG-like content)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    body = np.exp(-(((yy - h / 2) / (h * 0.35)) ** 2 + ((xx - w / 2) / (w * 0.4)) ** 2))
    img = 220 - 60 * body[..., None] * np.array([1.0, 1.1, 1.3])
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path, array, **kw):
    Image.fromarray(array).save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_png_pixels_equal_pillow(tmp_path, mode):
    rgb = embryo(1)
    path = save(tmp_path / "a.png", np.asarray(Image.fromarray(rgb).convert(mode)))
    got = decode_rgb(path)
    assert got.dtype == np.uint8 and got.shape == (128, 320, 3) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, read_rgb(path))


@pytest.mark.parametrize("quality,subsampling", [(90, 2), (75, 0), (95, 1)])
def test_jpeg_pixels_within_the_stated_tolerance(tmp_path, quality, subsampling):
    path = save(tmp_path / "a.jpg", embryo(2), quality=quality, subsampling=subsampling)
    got, ref = decode_rgb(path), read_rgb(path)
    assert got.shape == ref.shape
    assert int(np.abs(got.astype(np.int16) - ref).max()) <= JPEG_TOLERANCE


def test_jpeg_orientation_follows_exif_like_read_rgb(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the picture is shown 128 wide, 320 high
    path = tmp_path / "rot.jpg"
    Image.fromarray(embryo(3)).save(path, quality=95, exif=exif.tobytes())
    got, ref = decode_rgb(path), read_rgb(path)
    assert got.shape == ref.shape == (320, 128, 3)
    assert int(np.abs(got.astype(np.int16) - ref).max()) <= JPEG_TOLERANCE


@pytest.mark.parametrize("name,make", [
    ("bmp.bmp", lambda p, a: save(p, a)),
    ("rgba.png", lambda p, a: save(p, np.dstack([a, np.full(a.shape[:2], 128, np.uint8)]))),
    ("deep.png", lambda p, a: save(p, (a[..., 0].astype(np.uint16) * 257))),
    ("palette.png", lambda p, a: Image.fromarray(a).convert("P").save(p) or p),
    ("trns.png", lambda p, a: Image.fromarray(a).save(p, transparency=(220, 220, 220)) or p),
    ("tiff.tif", lambda p, a: save(p, a)),
])
def test_other_flavours_are_read_rgb_exactly(tmp_path, name, make):
    """Alpha, 16-bit, palette, tRNS, BMP and TIFF keep read_rgb's conversion."""
    path = make(tmp_path / name, embryo(4))
    np.testing.assert_array_equal(decode_rgb(path), read_rgb(path))


def test_bad_files_fail_the_one_vetting(tmp_path, monkeypatch):
    """Every file goes through open_image first: its InputError, naming the file, not a crash."""
    good = save(tmp_path / "good.png", embryo(5))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="truncated.png"):
        decode_rgb(truncated)
    jpeg = save(tmp_path / "cut.jpg", embryo(5), quality=90)
    cut = tmp_path / "cut2.jpg"
    cut.write_bytes(jpeg.read_bytes()[:40])
    with pytest.raises(InputError, match="cut2.jpg"):
        decode_rgb(cut)
    with pytest.raises(InputError, match="not found"):
        decode_rgb(tmp_path / "missing.png")
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")  # the pixel budget, from the header
    calls = []
    monkeypatch.setattr(decoding, "read_rgb", lambda p: calls.append(p))
    with pytest.raises(InputError, match="Mpx limit"):
        decode_rgb(good)
    assert calls == []  # refused before any decoder ran


def test_a_png_named_jpg_is_decoded_by_its_content(tmp_path):
    path = tmp_path / "really_png.jpg"
    path.write_bytes(save(tmp_path / "x.png", embryo(6)).read_bytes())
    np.testing.assert_array_equal(decode_rgb(path), read_rgb(tmp_path / "x.png"))


def test_preprocessor_uint8_then_normalised_equals_float():
    import torch

    from napari_ish_annotator.core.features.decoding import device_input

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    full = Preprocessor(64, False, mean, std, 1.0)
    raw = Preprocessor(64, False, mean, std, 1.0, normalise=False)
    images = [embryo(s, (40, 90)) for s in range(3)]
    u8 = raw.stack(images)
    assert u8.dtype == torch.uint8 and u8.shape == (3, 3, 64, 64)
    x = device_input(u8, torch.device("cpu"), mean, std, 1.0)
    torch.testing.assert_close(x, full.stack(images), rtol=0, atol=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_normalising_on_the_device_gives_the_same_features(tmp_path, workers):
    """The GPU's way (uint8 batches, normalised where the network runs), run on the CPU."""
    loaded = load_backbone("vgg16", "random", seed=0)
    paths = [save(tmp_path / f"e{i}.png", embryo(i, (40, 80))) for i in range(5)]
    paths.append(save(tmp_path / "e.jpg", embryo(9, (40, 80)), quality=90))

    def run(on_device: bool) -> np.ndarray:
        cfg = ExtractorConfig(weights="random", input_size=64, device="cpu", precision="fp32",
                              batch_size=2)
        fx = FeatureExtractor(cfg, loaded=loaded, decode_workers=workers)
        assert fx.normalise_on_device is False  # the CPU default
        fx.normalise_on_device = on_device
        return fx.extract(paths)

    np.testing.assert_array_equal(run(True), run(False))


def test_jpeg_bytes_from_memory_match_pillow_too():
    """JPEG_TOLERANCE covers in-memory JPEG of every chroma subsampling Pillow writes."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    for subsampling in (0, 1, 2):
        buf = io.BytesIO()
        Image.fromarray(embryo(7)).save(buf, format="JPEG", quality=85, subsampling=subsampling)
        data = buf.getvalue()
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        got = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                          mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
        assert int(np.abs(got.astype(np.int16) - ref).max()) <= JPEG_TOLERANCE


def test_hostile_files_are_refused_by_the_one_door(tmp_path):
    """A GIF (or PostScript) named .png and a FIFO named .jpg never reach a decoder."""
    import os

    gif = tmp_path / "gif.png"
    Image.fromarray(embryo(8)).save(gif, format="GIF")
    with pytest.raises(InputError, match="gif.png"):
        decode_rgb(gif)
    script = tmp_path / "script.png"
    script.write_bytes(b"%!PS-Adobe-3.0\n(hello) print\n")
    with pytest.raises(InputError, match="script.png"):
        decode_rgb(script)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.jpg"
        os.mkfifo(fifo)
        with pytest.raises(InputError, match="fifo.jpg"):  # at once: nothing blocks
            decode_rgb(fifo)


def test_the_fast_decoders_raise_no_deprecation_warning_for_napari_to_show(tmp_path):
    """torchvision warns on every decode that its decoders are deprecated; napari turned each
    one into a notification over the canvas. A fresh process with every DeprecationWarning
    shown decodes PNG and JPEG through the fast path silently, still with torchvision."""
    import subprocess
    import sys

    rgb = (np.arange(16 * 24 * 3) % 251).astype(np.uint8).reshape(16, 24, 3)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "b.jpg", quality=95)
    script = (
        "import sys\n"
        "from napari_ish_annotator.core.features.decoding import decode_rgb\n"
        "for name in ('a.png', 'b.jpg', 'a.png'):\n"
        f"    decode_rgb({str(tmp_path)!r} + '/' + name)\n"
        "print('torchvision.io' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-W", "default::DeprecationWarning", "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"  # the fast path ran
    assert "decoding and encoding capabilities" not in done.stderr, done.stderr
