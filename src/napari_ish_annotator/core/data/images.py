"""Reading ISH images of any common format into one shape: ``H x W x 3`` uint8 RGB.

Every consumer (feature extraction, Grad-CAM overlays, the napari viewer) sees the same
array, so the model never depends on how a lab happened to save its pictures:

* PNG, JPEG, BMP (BDGP ships BMP) are decoded with Pillow; TIFF with tifffile (8/16-bit,
  grayscale/RGB/RGBA, planar or interleaved), falling back to Pillow for TIFF flavours
  tifffile cannot decode without extra codecs (e.g. palette or JPEG-compressed TIFF).
* 16-bit data are mapped to 8 bit by dividing by 257 (65535 -> 255), *not* by stretching
  each image to its own min/max: a fixed mapping keeps absolute stain intensities comparable
  across images, which is what the classifier learns from (a faint pattern must stay faint).
* Grayscale is replicated to three channels; an alpha channel is composited on white,
  matching the bright background of brightfield ISH images.
* Files from other labs are untrusted. :func:`open_image` is the one door to an image file:
  only a regular file is opened (a FIFO or device named ``.png`` would block or worse), and
  without blocking; the format is chosen from its magic bytes among PNG, JPEG, TIFF and BMP,
  never from its name (Pillow would hand PostScript to Ghostscript); and its header is read
  (:mod:`.headers`) and checked against the budget before any decoder sees the file.
* One budget (:func:`max_pixels`, default 100 Mpx) for every format, checked from the
  header *before* anything is decoded: a 1 MB deflate TIFF or a 17 KB PNG can claim
  30000 x 30000 pixels, a 146-byte TIFF 10000 x 10000 pixels of 8 samples of 64 bits.
  Width x height must fit it, and the decoded bytes (width x height x samples x bytes per
  sample) must fit :data:`BYTES_PER_PIXEL` bytes per pixel of it. ``--max-pixels`` (CLI) or
  ``ISH_ANNOTATOR_MAX_PIXELS`` (GUI, scripts, decoding and dask worker processes started
  afterwards) raise it.

Files that cannot be used raise :class:`~napari_ish_annotator.core.utils.errors.InputError`
naming the file and what to do. :func:`check_image` is the cheap header-only check; listing
inputs (folders, manifests) is :mod:`.inputs`' job, which builds on this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..utils.errors import InputError
from .budget import (
    check_header,
    check_pixels,
    follow_in_pillow,
    max_pixels,
    too_large,
)
from .headers import HeaderError, ImageHeader, read_header, sniff, tiff_header

__all__ = ["SUPPORTED_SUFFIXES", "SUPPORTED_TEXT", "array_to_rgb", "check_image",
           "check_image_path", "has_image_suffix", "open_image", "read_rgb", "vet_image"]

SUPPORTED_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
#: how messages name the supported types
SUPPORTED_TEXT = "PNG, JPEG, TIFF or BMP"


def has_image_suffix(path: str | Path) -> bool:
    """The one suffix test: ``path`` names a supported image type (its content is checked
    when it is read)."""
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES


_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(path: Path, mode: int) -> InputError:
    what = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return InputError(f"is {what}, not an image file; only regular files are read - copy the "
                      "image itself", path=path)


def check_image_path(path: Path) -> None:
    """Raise :class:`InputError` unless ``path`` is an existing regular file of a supported
    type (nothing is opened or read)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        broken = " (a broken link)" if path.is_symlink() else ""
        raise InputError(f"image file not found{broken}; check the path (relative paths are "
                         "resolved from the current folder, or from the manifest's folder)",
                         path=path) from None
    except OSError as exc:  # a link loop, no permission, a name too long
        raise InputError(f"cannot reach the file ({exc.strerror or exc}); check the path and "
                         "its permissions", path=path) from None
    if stat.S_ISDIR(mode):
        raise InputError("is a folder, not an image file; pass the folder as an input to "
                         "load every image inside it", path=path)
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode)
    if not has_image_suffix(path):
        raise InputError(f"unsupported file type {path.suffix or '(no suffix)'!r}; convert it to "
                         f"{SUPPORTED_TEXT}", path=path)


#: open without blocking (a FIFO swapped in after the check) and never as a terminal
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


def _open_regular(path: Path) -> BinaryIO:
    """The file opened for reading, if it is still a regular file once open (checked on the
    descriptor: the path may have been swapped since it was listed)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise InputError(f"cannot open the image ({exc.strerror or exc}); check the file and "
                         "its permissions", path=path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator[tuple[BinaryIO, ImageHeader]]:
    """The one door to an image file: ``(open file at offset 0, its header)`` once the file
    is a regular file, its content (not its name) is PNG, JPEG, TIFF or BMP and its header
    fits the budget; :class:`InputError` otherwise. Decoders read the file handed out here,
    with that format only (never by path: the path may change meanwhile)."""
    path = Path(path)
    check_image_path(path)
    with _open_regular(path) as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise InputError("file is empty; re-export it", path=path)
        fmt, what = sniff(fh.read(32))
        if fmt is None:
            raise InputError(f"the file is {what}, whatever its name says; supported: "
                             f"{SUPPORTED_TEXT} - convert it to one of them", path=path)
        try:
            if fmt == "TIFF":
                with _tiff_file(path, fh) as (_tif, page):
                    header = tiff_header(page)
            else:
                header = read_header(fh, fmt)
        except HeaderError as exc:
            raise InputError(f"cannot read the image: {exc}; re-export it", path=path) from None
        except InputError:
            raise
        except _DECODE_ERRORS as exc:
            raise _decode_error(path, exc) from exc
        check_header(path, header)
        fh.seek(0)
        yield fh, header


def vet_image(path: str | Path) -> ImageHeader:
    """The header of a usable image (:func:`open_image`'s checks, nothing decoded): any
    decoder reads a file only after this, or through :func:`open_image`."""
    with open_image(path) as (_fh, header):
        return header


def _decode_error(path: Path, exc: BaseException) -> InputError:
    return InputError(f"cannot decode the image ({type(exc).__name__}: {exc}); the file is "
                      f"corrupt, truncated or not really {SUPPORTED_TEXT} - re-export it",
                      path=path)


#: what decoders raise for a bad file (anything else is a bug and propagates); found by
#: fuzzing (tests/test_fuzz_images.py): imagecodecs' errors are RuntimeErrors, tifffile's
#: and Pillow's arithmetic on nonsense tags gives struct and arithmetic errors
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, MemoryError, IndexError, KeyError,
                  RuntimeError, struct.error, ArithmeticError)
#: what tifffile and Pillow raise for tags of the wrong type (caught around their calls)
_TIFF_TAG_ERRORS = (TypeError, AttributeError)


def check_image(path: str | Path) -> None:
    """Raise :class:`InputError` unless ``path`` is a supported image whose header reads and
    whose size fits the budget. Reads the header only, so thousands of files are checked in
    seconds (the napari session, ``--skip-bad``)."""
    path = Path(path)
    try:
        with open_image(path) as (fh, header):
            if header.format != "TIFF":  # Pillow's own header checks too
                with _open_pillow(path, fh, header.format):
                    pass
    except InputError:
        raise
    except _DECODE_ERRORS as exc:
        raise _decode_error(path, exc) from exc


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file into an ``H x W x 3`` uint8 RGB array (see module docstring).

    The budget is checked from the header first: an oversized image is refused before any
    pixel is decoded."""
    path = Path(path)
    try:
        with open_image(path) as (fh, header):
            if header.format == "TIFF":
                rgb = _read_tiff(path, fh)
            else:
                rgb = _read_pillow(path, fh, header.format)
    except InputError:
        raise
    except _DECODE_ERRORS as exc:
        raise _decode_error(path, exc) from exc
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError("image has zero width or height; re-export it", path=path)
    return rgb


@contextlib.contextmanager
def _open_pillow(path: Path, fh: BinaryIO, fmt: str) -> Iterator[Any]:
    """``Image.open`` (header only) of ``fh`` as ``fmt`` only, with the pixel budget checked;
    Pillow's bomb warning is silenced and its bomb error reported like our own limit."""
    from PIL import Image

    fh.seek(0)
    with follow_in_pillow(max_pixels()), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(fh, formats=[fmt])
        except Image.DecompressionBombError as exc:  # over twice Pillow's limit
            found = re.search(r"\((\d+) pixels\)", str(exc))
            if found and int(found.group(1)) > max_pixels():
                raise too_large(path, int(found.group(1))) from None
            raise InputError(f"image is too large to load safely ({exc}); crop or downscale "
                             "it", path=path) from exc
    with img:
        check_pixels(path, *img.size)
        yield img


def _read_pillow(path: Path, fh: BinaryIO, fmt: str) -> np.ndarray:
    try:
        return _pillow_rgb(path, fh, fmt)
    except _TIFF_TAG_ERRORS as exc:  # Pillow's TIFF tag code too (TIFF files, EXIF blocks)
        raise _decode_error(path, exc) from exc


def _pillow_rgb(path: Path, fh: BinaryIO, fmt: str) -> np.ndarray:
    from PIL import ImageOps

    with _open_pillow(path, fh, fmt) as img:
        img.load()
        # phone/camera JPEGs may be stored rotated; in place: no copy when they are not
        ImageOps.exif_transpose(img, in_place=True)
        mode = img.mode
        if mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode == "PA":
            img = img.convert("RGBA")
        elif mode == "1":
            img = img.convert("L")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
            img = img.convert("RGBA" if mode in ("RGBa", "La") else "RGB")
        elif mode.startswith("I;16"):
            return array_to_rgb(_pixels(img).astype(np.uint16, copy=False), path=path)
        arr = _pixels(img)
    # "I" is a 32-bit integer container; Pillow uses it for 16-bit PNGs
    if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)
    return array_to_rgb(arr, path=path)


#: pixels copied out of Pillow per step
_BAND_PIXELS = 1 << 22


def _pixels(img: Any) -> np.ndarray:
    """``np.asarray(img)`` a band of rows at a time: Pillow's own conversion first copies the
    whole image into one bytes object, which for a large image costs as much again."""
    width, height = img.size
    if width * height <= _BAND_PIXELS:
        return np.asarray(img)
    step = max(1, _BAND_PIXELS // width)
    first = np.asarray(img.crop((0, 0, width, min(step, height))))
    out = np.empty((height, *first.shape[1:]), dtype=first.dtype)
    out[:len(first)] = first
    for r in range(step, height, step):
        out[r:r + step] = np.asarray(img.crop((0, r, width, min(r + step, height))))
    return out


@contextlib.contextmanager
def _tiff_file(path: Path, fh: BinaryIO) -> Iterator[tuple[Any, Any]]:
    """``(TiffFile, first page)`` of ``fh``; only the first page is parsed (and decoded)."""
    import tifffile

    # tifffile logs warnings ("contains no pages", bad tags) straight to stderr; the problem
    # is reported once, as an InputError naming the file, so the CLI keeps to one line.
    fh.seek(0)
    with _quiet_logger("tifffile"):
        try:
            tif = tifffile.TiffFile(fh, name=path.name)
        except _TIFF_TAG_ERRORS as exc:
            raise _decode_error(path, exc) from exc
    with _quiet_logger("tifffile"), tif:
        if not tif.pages:
            raise InputError("TIFF file has no images; re-export it", path=path)
        yield tif, tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]


def _read_tiff(path: Path, fh: BinaryIO) -> np.ndarray:
    """tifffile's decoding of the first page; palette, YCbCr... and compressions that need
    codecs tifffile lacks go to Pillow (as TIFF only)."""
    with _tiff_file(path, fh) as (_tif, page):
        photometric = getattr(page.photometric, "name", str(page.photometric))
        arr = None
        if photometric not in ("PALETTE", "CIELAB", "SEPARATED", "YCBCR"):
            # e.g. JPEG/LZW flavours needing imagecodecs: let Pillow try
            try:
                arr = page.asarray()
            except (ValueError, NotImplementedError, KeyError, ImportError):
                arr = None
            except _TIFF_TAG_ERRORS as exc:
                raise _decode_error(path, exc) from exc
        axes = page.axes
    if arr is None:
        return _read_pillow(path, fh, "TIFF")
    # Reorder to Y, X, S (samples); planar TIFFs come as S, Y, X.
    arr = np.asarray(arr)
    if arr.ndim == 3 and "S" in axes and axes.index("S") == 0:
        arr = np.moveaxis(arr, 0, -1)
    elif arr.ndim > 3 or (arr.ndim == 3 and "S" not in axes):
        # multi-page stacks: use the first plane, as a viewer would show by default
        while arr.ndim > 3 or (arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4)):
            arr = arr[0]
    return array_to_rgb(arr, path=path)


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR + 10)
    try:
        yield
    finally:
        logger.setLevel(level)


def _to_unit_float(arr: np.ndarray, path: Path | None) -> np.ndarray:
    """Scale samples to [0, 1] with a fixed, dtype-defined mapping (no per-image stretch)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float32))
        if a.size and a.max() > 1.0:
            a = a / 255.0 if a.max() <= 255.0 else a / 65535.0
        return np.clip(a, 0.0, 1.0)
    if np.issubdtype(arr.dtype, np.integer) and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        return arr.astype(np.float32) / (255.0 if arr.max() <= 255 else 65535.0)
    raise InputError(f"unsupported sample type {arr.dtype}; save the image as 8- or 16-bit",
                     path=path)


def array_to_rgb(arr: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Convert a decoded array (gray, gray+alpha, RGB, RGBA; 8/16-bit) to uint8 RGB.

    uint16 is divided by 257 (exactly, with rounding) so 16-bit intensities keep their
    absolute meaning; alpha is composited on white.
    """
    p = Path(path) if path is not None else None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"unsupported image layout {arr.shape}; expected grayscale, RGB or "
                         "RGBA", path=p)
    channels = arr.shape[-1]
    if channels in (1, 3) and arr.dtype == np.uint8:
        out = arr
    elif channels in (1, 3) and arr.dtype == np.uint16:
        out = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(x / 257)
    else:
        unit = _to_unit_float(arr, p)
        color = unit[..., :3] if channels >= 3 else unit[..., :1]
        if channels in (2, 4):
            alpha = unit[..., -1:]
            color = color * alpha + (1.0 - alpha)  # composite on white
        out = np.clip(np.rint(color * 255.0), 0, 255).astype(np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)
