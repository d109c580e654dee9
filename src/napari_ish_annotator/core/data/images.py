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
* One pixel budget (:func:`max_pixels`, default 100 Mpx) for every format, checked from the
  file's header *before* anything is decoded: a 1 MB deflate TIFF or a 17 KB PNG can claim
  30000 x 30000 pixels and would otherwise take gigabytes. ``--max-pixels`` (CLI) or
  ``ISH_ANNOTATOR_MAX_PIXELS`` (GUI, scripts, decoding and dask worker processes started
  afterwards) raise it.

Files that cannot be used raise :class:`~napari_ish_annotator.core.utils.errors.InputError`
naming the file and what to do. :func:`check_image` is the cheap header-only check; listing
inputs (folders, manifests) is :mod:`.opening`'s job, which builds on this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.errors import InputError
from ..utils.files import sha256_file

SUPPORTED_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
#: how messages name the supported types
SUPPORTED_TEXT = "PNG, JPEG, TIFF or BMP"
_TIFF_SUFFIXES = frozenset({".tif", ".tiff"})


def has_image_suffix(path: str | Path) -> bool:
    """The one suffix test: ``path`` names a supported image type (its content is checked
    when it is read)."""
    return Path(path).suffix.lower() in SUPPORTED_SUFFIXES

#: the pixel budget when neither ``set_max_pixels`` nor the environment says otherwise
DEFAULT_MAX_PIXELS = 100_000_000
#: environment variable holding the budget; also how child processes inherit a raised one
MAX_PIXELS_ENV = "ISH_ANNOTATOR_MAX_PIXELS"


def parse_pixels(text: str) -> int:
    """A pixel count from text ("1e8", "100_000_000"); ValueError unless it is at least 1."""
    value = int(float(str(text).replace("_", "")))
    if value < 1:
        raise ValueError(f"{text!r} is below 1")
    return value


def max_pixels() -> int:
    """The pixel budget (width x height) every image reader applies before decoding."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        return parse_pixels(text)
    except ValueError:
        raise InputError(f"{MAX_PIXELS_ENV}={text!r} is not a positive number of pixels; "
                         f"set it to e.g. {DEFAULT_MAX_PIXELS} or unset it") from None


def set_max_pixels(value: int | None) -> None:
    """Set the pixel budget for this process and the processes it starts later (decoding
    workers, ``--dask local`` workers); None restores the default."""
    if value is None:
        os.environ.pop(MAX_PIXELS_ENV, None)
        return
    if int(value) < 1:
        raise InputError(f"--max-pixels must be at least 1, got {value}")
    os.environ[MAX_PIXELS_ENV] = str(int(value))


@contextlib.contextmanager
def pixel_budget(value: int | None) -> Iterator[None]:
    """:func:`set_max_pixels` for the block, then the previous budget (None: unchanged);
    the CLI wraps each command in it, so a test calling ``main`` twice starts afresh."""
    if value is None:
        yield
        return
    old = os.environ.get(MAX_PIXELS_ENV)
    set_max_pixels(value)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(MAX_PIXELS_ENV, None)
        else:
            os.environ[MAX_PIXELS_ENV] = old


#: Pillow's own decompression-bomb limit (it warns above it, refuses above twice it)
_PILLOW_DEFAULT_LIMIT = 1024 * 1024 * 1024 // 4 // 3


_pillow_lock = threading.Lock()
_pillow_users = [0, None]  # opens under way, Pillow's limit before the first of them


@contextlib.contextmanager
def _pillow_follows(budget: int) -> Iterator[None]:
    """Pillow's bomb limit raised to a raised budget while images open (so Pillow does not
    refuse first), then put back when the last concurrent open ends: nothing process-wide
    outlives the read. A limit someone made stricter than Pillow's default is left alone."""
    from PIL import Image

    with _pillow_lock:
        if _pillow_users[0] == 0:
            _pillow_users[1] = Image.MAX_IMAGE_PIXELS
        _pillow_users[0] += 1
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and _PILLOW_DEFAULT_LIMIT <= limit < budget:
            Image.MAX_IMAGE_PIXELS = budget
    try:
        yield
    finally:
        with _pillow_lock:
            _pillow_users[0] -= 1
            if _pillow_users[0] == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_users[1]


def _too_large(path: Path, n: int, dims: str = "") -> InputError:
    """The one message for an image over the budget: the file, its size, how to go on."""
    return InputError(f"image is {dims or n} pixels ({n / 1e6:.1f} Mpx), over the "
                      f"{max_pixels() / 1e6:g} Mpx limit; crop or downscale it, or raise the "
                      f"limit with --max-pixels {n} (GUI and scripts: {MAX_PIXELS_ENV}={n})",
                      path=path)


def _check_pixels(path: Path, width: int, height: int, depth: int = 1) -> None:
    n = int(width) * int(height) * max(int(depth), 1)
    if n > max_pixels():
        raise _too_large(path, n, f"{width}x{height}" + (f"x{depth}" if depth > 1 else ""))


def check_image_path(path: Path) -> None:
    """Raise :class:`InputError` unless ``path`` is an existing file of a supported type
    (nothing is read)."""
    if not path.exists():
        raise InputError("image file not found; check the path (relative paths are resolved "
                         "from the current folder, or from the manifest's folder)", path=path)
    if path.is_dir():
        raise InputError("is a folder, not an image file; pass the folder as an input to "
                         "load every image inside it", path=path)
    if not has_image_suffix(path):
        raise InputError(f"unsupported file type {path.suffix or '(no suffix)'!r}; convert it to "
                         f"{SUPPORTED_TEXT}", path=path)


def _decode_error(path: Path, exc: BaseException) -> InputError:
    return InputError(f"cannot decode the image ({type(exc).__name__}: {exc}); the file is "
                      f"corrupt, truncated or not really {SUPPORTED_TEXT} - re-export it",
                      path=path)


#: what decoders raise for a bad file (anything else is a bug and propagates)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, MemoryError, IndexError, KeyError)


def check_image(path: str | Path) -> None:
    """Raise :class:`InputError` unless ``path`` is a supported image whose header reads and
    whose size fits the pixel budget. Reads the header only, so thousands of files are
    checked in seconds (the napari session, ``--skip-bad``)."""
    path = Path(path)
    check_image_path(path)
    if path.stat().st_size == 0:
        raise InputError("file is empty; re-export it", path=path)
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            with _open_tiff(path) as (_tif, page):
                if page is not None:
                    return
        with _open_pillow(path):
            pass
    except InputError:
        raise
    except _DECODE_ERRORS as exc:
        raise _decode_error(path, exc) from exc


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file into an ``H x W x 3`` uint8 RGB array (see module docstring).

    The pixel budget is checked from the header first: an oversized image is refused before
    any pixel is decoded."""
    path = Path(path)
    check_image_path(path)
    try:
        reader = _read_tiff if path.suffix.lower() in _TIFF_SUFFIXES else _read_pillow
        rgb = reader(path)
    except InputError:
        raise
    except _DECODE_ERRORS as exc:
        raise _decode_error(path, exc) from exc
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError("image has zero width or height; re-export it", path=path)
    return rgb


@contextlib.contextmanager
def _open_pillow(path: Path) -> Iterator[Any]:
    """``Image.open`` (header only) with the pixel budget checked; Pillow's bomb warning is
    silenced and its bomb error reported like our own limit."""
    from PIL import Image

    with _pillow_follows(max_pixels()), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as exc:  # over twice Pillow's limit
            found = re.search(r"\((\d+) pixels\)", str(exc))
            if found and int(found.group(1)) > max_pixels():
                raise _too_large(path, int(found.group(1))) from None
            raise InputError(f"image is too large to load safely ({exc}); crop or downscale "
                             "it", path=path) from exc
    with img:
        _check_pixels(path, *img.size)
        yield img


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import ImageOps

    with _open_pillow(path) as img:
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
def _open_tiff(path: Path) -> Iterator[tuple[Any, Any]]:
    """``(TiffFile, first page)`` with the page's size checked against the pixel budget from
    its tags; the page is None for a TIFF flavour Pillow must decode (palette, YCbCr...)."""
    import tifffile

    # tifffile logs warnings ("contains no pages", bad tags) straight to stderr; the problem
    # is reported once, as an InputError naming the file, so the CLI keeps to one line.
    with _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise InputError("TIFF file has no images; re-export it", path=path)
        page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
        _check_pixels(path, page.imagewidth, page.imagelength, getattr(page, "imagedepth", 1))
        photometric = getattr(page.photometric, "name", str(page.photometric))
        yield tif, None if photometric in ("PALETTE", "CIELAB", "SEPARATED", "YCBCR") else page


def _read_tiff(path: Path) -> np.ndarray:
    with _open_tiff(path) as (_tif, page):
        if page is None:
            return _read_pillow(path)
        try:
            arr = page.asarray()
        except (ValueError, NotImplementedError, KeyError, ImportError):
            # e.g. JPEG/LZW flavours needing imagecodecs: let Pillow try before giving up
            return _read_pillow(path)
        axes = page.axes
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


def content_hash(path: str | Path) -> str:
    """SHA-256 hex digest of the file bytes: identity of an image for caches and labels."""
    path = Path(path)
    if not path.is_file():
        raise InputError("image file not found; check the path", path=path)
    return sha256_file(path)


def is_hidden(path: Path) -> bool:
    """Hidden files are never images to open."""
    return path.name.startswith(".")  # also skips macOS "._name.png" resource forks


def list_images(folder: str | Path) -> list[Path]:
    """Supported images directly inside ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("folder not found; check the path", path=folder)
    return sorted(
        (p for p in folder.iterdir()
         if p.is_file() and not is_hidden(p) and has_image_suffix(p)),
        key=lambda p: p.name,
    )
