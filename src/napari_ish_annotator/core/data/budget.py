"""The one budget every image reader applies from the header, before decoding.

Width x height must fit :func:`max_pixels` (default 100 Mpx), and the bytes the samples
decode to (width x height x samples x bytes per sample) must fit :data:`BYTES_PER_PIXEL`
bytes per pixel of it: a 146-byte TIFF can claim 10000 x 10000 pixels of 8 samples of 64
bits (6.4 GB), which a pixel count alone lets through. ``--max-pixels`` (CLI) or
``ISH_ANNOTATOR_MAX_PIXELS`` (GUI, scripts and the processes started afterwards) raise it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from ..utils.errors import InputError
from .headers import ImageHeader

#: the pixel budget when neither ``set_max_pixels`` nor the environment says otherwise
DEFAULT_MAX_PIXELS = 100_000_000
#: environment variable holding the budget; also how child processes inherit a raised one
MAX_PIXELS_ENV = "ISH_ANNOTATOR_MAX_PIXELS"
#: decoded bytes each pixel of the budget may take: 4 samples of 16 bits (16-bit RGBA), the
#: richest layout the project supports
BYTES_PER_PIXEL = 8
#: decoded bytes each pixel of the budget may take: 4 samples of 16 bits (16-bit RGBA), the
#: richest layout the project supports
BYTES_PER_PIXEL = 8


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



def too_large(path: Path, n: int, dims: str = "") -> InputError:
    """The one message for an image over the budget: the file, its size, how to go on."""
    return InputError(f"image is {dims or n} pixels ({n / 1e6:.1f} Mpx), over the "
                      f"{max_pixels() / 1e6:g} Mpx limit; crop or downscale it, or raise the "
                      f"limit with --max-pixels {n} (GUI and scripts: {MAX_PIXELS_ENV}={n})",
                      path=path)


def check_pixels(path: Path, width: int, height: int, depth: int = 1) -> None:
    n = int(width) * int(height) * max(int(depth), 1)
    if n > max_pixels():
        raise too_large(path, n, f"{width}x{height}" + (f"x{depth}" if depth > 1 else ""))


def check_header(path: Path, header: ImageHeader) -> None:
    """The budget, from the header: the pixels, then the bytes they decode to."""
    check_pixels(path, header.width, header.height, header.depth)
    limit = max_pixels() * BYTES_PER_PIXEL
    if header.decoded_bytes > limit:
        need = -(-header.decoded_bytes // BYTES_PER_PIXEL)
        raise InputError(
            f"image decodes to {header.decoded_bytes / 1e9:.1f} GB ({header.describe()}), over "
            f"the {limit / 1e9:.1f} GB the {max_pixels() / 1e6:g} Mpx limit allows "
            f"({BYTES_PER_PIXEL} bytes a pixel, as 16-bit RGBA); supported images have 1-4 "
            f"samples of 8 or 16 bits - re-export it, or raise the limit with --max-pixels "
            f"{need} (GUI and scripts: {MAX_PIXELS_ENV}={need})", path=path)


#: Pillow's own decompression-bomb limit (it warns above it, refuses above twice it)
_PILLOW_DEFAULT_LIMIT = 1024 * 1024 * 1024 // 4 // 3


_pillow_lock = threading.Lock()
_pillow_users: list = [0, None]  # opens under way, Pillow's limit before the first of them


@contextlib.contextmanager
def follow_in_pillow(budget: int) -> Iterator[None]:
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
