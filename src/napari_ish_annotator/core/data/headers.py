"""What an image file really is, read from its first bytes and its header, never its name.

Files from other labs may be anything named ``.png``: a PostScript program (Pillow would
hand it to Ghostscript, which runs it), a GIF, a tiny TIFF claiming 6 GB of samples. So the
decoder is chosen from the magic bytes, only among the supported formats (PNG, JPEG, TIFF,
BMP), and the header is parsed here, with bounded reads, to know the decoded size before
any decoder sees the file. :mod:`.images` applies the budget and opens the decoders.
"""

from __future__ import annotations

import numbers
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

#: the formats decoded, in the names Pillow's ``formats=`` takes
SUPPORTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "TIFF", "BMP")

_SUPPORTED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"))

#: other formats named in messages, so the user learns what the file really is
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "a GIF image"), (b"GIF89a", "a GIF image"),
    (b"%!PS", "a PostScript program"), (b"\xc5\xd0\xd3\xc6", "an EPS (PostScript) file"),
    (b"%PDF", "a PDF document"), (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xffO\xffQ", "a JPEG 2000 codestream"), (b"8BPS", "a Photoshop document"),
    (b"\x00\x00\x01\x00", "a Windows icon"), (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"), (b"\x7fELF", "a program (ELF executable)"),
    (b"#!", "a script"), (b"qoif", "a QOI image"), (b"v/1\x01", "an OpenEXR image"),
    (b"SQLite format 3\x00", "an SQLite database"), (b"\x89HDF", "an HDF5 file"),
    (b"\x93NUMPY", "a NumPy array"), (b"<?xml", "an XML/SVG document"),
    (b"<svg", "an SVG drawing"), (b"icns", "a macOS icon"), (b"DDS ", "a DDS texture"))


def sniff(head: bytes) -> tuple[str | None, str]:
    """``(format, description)`` from a file's first bytes: format is one of
    :data:`SUPPORTED_FORMATS` or None, and the description says what the file is."""
    for magic, fmt in _SUPPORTED_MAGIC:
        if head.startswith(magic):
            return fmt, f"a {fmt} image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return None, "a WebP image"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace").strip()
        return None, ("a HEIF/AVIF image" if brand[:3] in ("hei", "hev", "mif", "avi", "msf")
                      else f"an MP4/QuickTime file ({brand})")
    for magic, what in _OTHER_MAGIC:
        if head.startswith(magic):
            return None, what
    if len(head) >= 2 and head[:1] == b"P" and head[1:2] in b"1234567":
        return None, "a Netpbm (PNM) image"
    if not head:
        return None, "an empty file"
    text = head.lstrip()[:16].lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return None, "an HTML page"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return None, "a text file"
    return None, f"not a known image format (it starts with {head[:8].hex(' ')})"


class HeaderError(ValueError):
    """The header cannot be read or describes no image this project decodes."""


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says it decodes to (before any pixel is decoded)."""

    format: str  # one of SUPPORTED_FORMATS
    width: int
    height: int
    samples: int = 1  # per pixel
    bits: int = 8  # per sample
    depth: int = 1  # planes of a volume (TIFF ImageDepth)

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.depth

    @property
    def decoded_bytes(self) -> int:
        """Bytes the decoded samples take: every sample at least one byte, as decoders
        store them."""
        return self.pixels * self.samples * max(1, -(-self.bits // 8))

    def describe(self) -> str:
        """``10000x10000, 8 samples of 64 bits`` (messages)."""
        size = f"{self.width}x{self.height}" + (f"x{self.depth}" if self.depth > 1 else "")
        return f"{size}, {self.samples} sample{'s' * (self.samples != 1)} of {self.bits} bits"


def _read(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise HeaderError("the file ends inside its header (truncated)")
    return data


def _sized(fmt: str, width: int, height: int, samples: int, bits: int,
           depth: int = 1) -> ImageHeader:
    if width < 1 or height < 1 or depth < 1:
        raise HeaderError(f"the {fmt} header gives no size ({width}x{height})")
    if samples < 1 or bits < 1:
        raise HeaderError(f"the {fmt} header gives {samples} samples of {bits} bits")
    return ImageHeader(fmt, width, height, samples, bits, depth)


_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png(fh: BinaryIO) -> ImageHeader:
    fh.seek(8)
    length, tag = struct.unpack(">I4s", _read(fh, 8))
    if tag != b"IHDR" or length != 13:
        raise HeaderError("the PNG does not start with its IHDR header")
    width, height, bits, colour = struct.unpack(">IIBB", _read(fh, 10))
    if colour not in _PNG_SAMPLES or bits not in (1, 2, 4, 8, 16):
        raise HeaderError(f"the PNG header has colour type {colour} with bit depth {bits}")
    if width >= 2**31 or height >= 2**31:
        raise HeaderError(f"the PNG header claims {width}x{height} pixels")
    # a palette decodes to 8-bit colours
    return _sized("PNG", width, height, _PNG_SAMPLES[colour], 8 if colour == 3 else bits)


#: JPEG markers that start a frame (SOF0-15 less DHT, JPG and DAC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: segments before the frame header: real files have a dozen or two
_MAX_JPEG_SEGMENTS = 1024


def _jpeg(fh: BinaryIO) -> ImageHeader:
    fh.seek(2)
    skipped = 0
    for _ in range(_MAX_JPEG_SEGMENTS):
        byte = _read(fh, 1)
        while byte != b"\xff":  # garbage between segments: tolerated briefly, as decoders do
            skipped += 1
            if skipped > 4096:
                raise HeaderError("the JPEG has no marker where one belongs (corrupt)")
            byte = _read(fh, 1)
        marker = _read(fh, 1)[0]
        while marker == 0xFF:  # fill bytes
            marker = _read(fh, 1)[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            continue
        if marker in (0xD9, 0xDA):
            raise HeaderError("the JPEG has no frame header before its image data")
        (length,) = struct.unpack(">H", _read(fh, 2))
        if length < 2:
            raise HeaderError(f"the JPEG has a segment of length {length}")
        if marker in _SOF:
            bits, height, width, comps = struct.unpack(">BHHB", _read(fh, 6))
            if height == 0:
                raise HeaderError("the JPEG leaves its height to a DNL marker (unsupported)")
            return _sized("JPEG", width, height, comps, bits)
        fh.seek(length - 2, 1)
    raise HeaderError(f"the JPEG has over {_MAX_JPEG_SEGMENTS} segments before its frame "
                      "header")


_BMP_INFO_SIZES = frozenset({40, 52, 56, 64, 108, 124})


def _bmp(fh: BinaryIO) -> ImageHeader:
    fh.seek(14)
    (size,) = struct.unpack("<I", _read(fh, 4))
    if size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _planes, count = struct.unpack("<HHHH", _read(fh, 8))
    elif size in _BMP_INFO_SIZES:
        width, height, _planes, count = struct.unpack("<iiHH", _read(fh, 12))
        height = abs(height)  # negative: stored top-down
    else:
        raise HeaderError(f"the BMP has an unknown header of {size} bytes")
    if count not in (1, 2, 4, 8, 16, 24, 32, 64):
        raise HeaderError(f"the BMP header gives {count} bits per pixel")
    # palettes and packed 16/24-bit pixels decode to 8-bit samples (RGB; RGBA at 32 bits)
    samples = 1 if count <= 8 else 4 if count >= 32 else 3
    return _sized("BMP", width, height, samples, 16 if count == 64 else 8)


def tiff_header(page: Any) -> ImageHeader:
    """The header of a tifffile page (the one decoded: the first)."""
    values = {}
    for name in ("imagewidth", "imagelength", "samplesperpixel", "bitspersample", "imagedepth"):
        value = getattr(page, name, 1)
        if isinstance(value, (tuple, list)) and value and name == "bitspersample":
            value = max(value)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise HeaderError(f"the TIFF has a malformed {name} tag ({type(value).__name__})")
        values[name] = int(value)
    bits = values["bitspersample"]
    dtype = getattr(page, "dtype", None)
    if dtype is not None:
        bits = max(bits, 8 * int(dtype.itemsize))
    return _sized("TIFF", values["imagewidth"], values["imagelength"],
                  values["samplesperpixel"], bits, values["imagedepth"])


_READERS = {"PNG": _png, "JPEG": _jpeg, "BMP": _bmp}


def read_header(fh: BinaryIO, fmt: str) -> ImageHeader:
    """The header of a PNG, JPEG or BMP file (TIFF: :func:`tiff_header` of its first page);
    :class:`HeaderError` when it is unusable. Reads at most a few KiB per segment."""
    try:
        return _READERS[fmt](fh)
    except struct.error as exc:  # pragma: no cover - _read returns whole fields
        raise HeaderError(f"the {fmt} header is truncated ({exc})") from None
