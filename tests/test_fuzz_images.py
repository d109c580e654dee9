"""Fuzzing the image header check and the budget (issue 23): valid PNG, JPEG, BMP and TIFF
files with mutated headers (IHDR, SOF, BMP info header, TIFF IFD) must each end in a decoded
RGB image within the budget or one :class:`InputError` line naming the file, within a time
bound and without memory growth, and the file is never changed.

The default suite runs a short fixed-seed run; ``pytest -m fuzz tests/test_fuzz_images.py``
runs the long one (it prints how many examples it tried).
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from napari_ish_annotator.core.data.budget import pixel_budget  # noqa: E402
from napari_ish_annotator.core.data.images import check_image, read_rgb  # noqa: E402
from napari_ish_annotator.core.utils.errors import InputError  # noqa: E402

BUDGET = 1_000_000  # pixels: at most 8 MB decoded per example
SUFFIXES = (".png", ".jpg", ".tif", ".bmp")  # the name never decides
SECONDS_PER_EXAMPLE = 10.0


def _seeds() -> list[tuple[str, bytes]]:
    """Small valid files of each format and flavour."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    out = []

    def pil(img: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    out.append(("PNG", pil(Image.fromarray(rgb), "PNG")))
    out.append(("PNG", pil(Image.fromarray(rgb).convert("P"), "PNG")))
    out.append(("PNG", pil(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "PNG")))
    out.append(("JPEG", pil(Image.fromarray(rgb), "JPEG", quality=80)))
    out.append(("JPEG", pil(Image.fromarray(rgb[..., 0]), "JPEG", progressive=True)))
    out.append(("BMP", pil(Image.fromarray(rgb), "BMP")))
    out.append(("BMP", pil(Image.fromarray(rgb).convert("P"), "BMP")))
    for kw in ({"photometric": "rgb"}, {"compression": "zlib", "photometric": "rgb"},
               {"photometric": "minisblack", "planarconfig": "separate"}):
        buf = io.BytesIO()
        tifffile.imwrite(buf, rgb if "planarconfig" not in kw else np.moveaxis(rgb, -1, 0)
                         .astype(np.uint16), **kw)
        out.append(("TIFF", buf.getvalue()))
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.stack([rgb[..., 0]] * 3))  # three pages
    out.append(("TIFF", buf.getvalue()))
    return out


SEEDS = _seeds()
#: header fields worth hitting with extreme values: (format, offset, struct format)
FIELDS = {"PNG": [(16, ">I"), (20, ">I"), (24, "B"), (25, "B"), (26, "B"), (28, "B")],
          "BMP": [(2, "<I"), (10, "<I"), (14, "<I"), (18, "<i"), (22, "<i"), (28, "<H"),
                  (30, "<I"), (46, "<I")],
          "JPEG": [], "TIFF": [(4, "<I")]}
EXTREMES = (0, 1, 2, 3, 7, 8, 16, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)


def _jpeg_fields(data: bytes) -> list[tuple[int, str]]:
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    return [(sof + 2, ">H"), (sof + 4, "B"), (sof + 5, ">H"), (sof + 7, ">H"), (sof + 9, "B")]


def _tiff_fields(data: bytes) -> list[tuple[int, str]]:
    """Every value of the first IFD (tifffile writes little-endian)."""
    (ifd,) = struct.unpack("<I", data[4:8])
    if ifd + 2 > len(data):
        return []
    (n,) = struct.unpack("<H", data[ifd:ifd + 2])
    fields = [(ifd, "<H")]
    for i in range(min(n, 40)):
        entry = ifd + 2 + 12 * i
        fields += [(entry, "<H"), (entry + 2, "<H"), (entry + 4, "<I"), (entry + 8, "<I")]
    return fields


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    fmt, data = draw(st.sampled_from(SEEDS))
    buf = bytearray(data)
    fields = FIELDS[fmt] + (_jpeg_fields(data) if fmt == "JPEG" else
                            _tiff_fields(data) if fmt == "TIFF" else [])
    for _ in range(draw(st.integers(0, 4))):
        off, code = draw(st.sampled_from(fields))
        size = struct.calcsize(code)
        value = draw(st.sampled_from(EXTREMES) | st.integers(0, 2 ** (8 * size) - 1))
        value = value % 2 ** (8 * size)
        if code.endswith("i"):
            value -= 2 ** 32 if value >= 2 ** 31 else 0
        if off + size <= len(buf):
            buf[off:off + size] = struct.pack(code, value)
    for _ in range(draw(st.integers(0, 3))):  # stray bytes in the first 512
        pos = draw(st.integers(0, min(511, len(buf) - 1)))
        buf[pos] = draw(st.integers(0, 255))
    if fmt == "PNG" and draw(st.booleans()):  # a right CRC lets Pillow past the IHDR
        buf[29:33] = struct.pack(">I", zlib.crc32(bytes(buf[12:29])))
    if draw(st.booleans()):
        buf = buf[:draw(st.integers(0, len(buf)))]
    return draw(st.sampled_from(SUFFIXES)), bytes(buf)


def _peak_kb() -> int:
    try:
        with open("/proc/self/status") as fh:
            return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):  # not Linux: not measured
        return 0


def _check_one(folder: Path, suffix: str, data: bytes) -> str:
    """One example: 'ok' or 'refused'; anything else fails the test."""
    path = folder / f"fuzz{suffix}"
    path.write_bytes(data)
    outcome = "ok"
    for reader in (check_image, read_rgb):
        start = time.monotonic()
        try:
            with pixel_budget(BUDGET):
                rgb = reader(path)
        except InputError as exc:
            text = str(exc)
            assert text.startswith(f"{path}: ") and "\n" not in text, text
            outcome = "refused"
        else:
            if reader is read_rgb:
                assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
                assert rgb.shape[0] * rgb.shape[1] <= BUDGET
        assert time.monotonic() - start < SECONDS_PER_EXAMPLE
    assert path.read_bytes() == data  # only ever read
    return outcome


def _run(max_examples: int, derandomize: bool) -> dict[str, int]:
    counts = {"ok": 0, "refused": 0}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        @settings(max_examples=max_examples, derandomize=derandomize, deadline=None,
                  database=None, suppress_health_check=list(HealthCheck))
        @given(mutated())
        def run(example):
            counts[_check_one(folder, *example)] += 1

        base = _peak_kb()
        run()
        assert (_peak_kb() - base) * 1024 < 400 * 2**20, "memory grew while fuzzing"
    return counts


def test_mutated_headers_end_in_a_refusal_or_an_image():
    """The short fixed-seed run of the default suite."""
    start = time.monotonic()
    counts = _run(300, derandomize=True)
    assert counts["ok"] and counts["refused"], counts  # both outcomes are exercised
    assert time.monotonic() - start < 60


@pytest.mark.fuzz
def test_mutated_headers_long_run(request):
    """The long run: ``pytest -m fuzz -s tests/test_fuzz_images.py`` (ISH_FUZZ_EXAMPLES sets
    the number of examples, default 20000)."""
    if "fuzz" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the long fuzz run: select it with -m fuzz")
    counts = _run(int(os.environ.get("ISH_FUZZ_EXAMPLES", "20000")), derandomize=False)
    print(f"\nfuzzed {sum(counts.values())} examples: {counts}")
