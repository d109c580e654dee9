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

Files that cannot be used raise :class:`~napari_ish_annotator.core.errors.InputError`
naming the file and what to do. :func:`collect_inputs` is strict (first problem raises);
:func:`scan_inputs` is the forgiving variant (``predict --skip-bad``): it skips bad files and
reports them. Both list inputs with ``core.opening.list_inputs``, as the napari session does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import sha256_file

SUPPORTED_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
_TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
_SUPPORTED_TEXT = "PNG, JPEG, TIFF or BMP"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError("image file not found; check the path (relative paths are resolved "
                         "from the current folder, or from the manifest's folder)", path=path)
    if path.is_dir():
        raise InputError("is a folder, not an image file; pass the folder as an input to "
                         "load every image inside it", path=path)
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InputError(f"unsupported file type {path.suffix or '(no suffix)'!r}; convert it to "
                         f"{_SUPPORTED_TEXT}", path=path)


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file into an ``H x W x 3`` uint8 RGB array (see module docstring)."""
    path = Path(path)
    _check_file(path)
    try:
        reader = _read_tiff if path.suffix.lower() in _TIFF_SUFFIXES else _read_pillow
        rgb = reader(path)
    except InputError:
        raise
    except Exception as exc:
        from PIL import Image

        if isinstance(exc, Image.DecompressionBombError):
            raise InputError(f"image is too large to load safely ({exc}); crop or downscale "
                             "it to a single embryo", path=path) from exc
        if not isinstance(exc, (OSError, ValueError, SyntaxError, EOFError, MemoryError,
                                IndexError, KeyError)):
            raise
        raise InputError(f"cannot decode the image ({type(exc).__name__}: {exc}); the file is "
                         f"corrupt, truncated or not really {_SUPPORTED_TEXT} - re-export it",
                         path=path) from exc
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError("image has zero width or height; re-export it", path=path)
    return rgb


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)  # phone/camera JPEGs may be stored rotated
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
            return array_to_rgb(np.asarray(img).astype(np.uint16), path=path)
        arr = np.asarray(img)
    # "I" is a 32-bit integer container; Pillow uses it for 16-bit PNGs
    if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16)
    return array_to_rgb(arr, path=path)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    # tifffile logs warnings ("contains no pages", bad tags) straight to stderr; the problem
    # is reported once, as an InputError naming the file, so the CLI keeps to one line.
    with _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise InputError("TIFF file has no images; re-export it", path=path)
        page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
        photometric = getattr(page.photometric, "name", str(page.photometric))
        if photometric in ("PALETTE", "CIELAB", "SEPARATED", "YCBCR"):
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


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")  # also skips macOS "._name.png" resource forks


def list_images(folder: str | Path) -> list[Path]:
    """Supported images directly inside ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("folder not found; check the path", path=folder)
    return sorted(
        (p for p in folder.iterdir()
         if p.is_file() and not _is_hidden(p) and p.suffix.lower() in SUPPORTED_SUFFIXES),
        key=lambda p: p.name,
    )


@dataclass(frozen=True)
class InputProblem:
    """A file that was skipped while collecting inputs, and why (shown to the user)."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    @classmethod
    def from_error(cls, path: Path, exc: InputError) -> InputProblem:
        """The problem an :class:`InputError` about ``path`` describes (without the path
        prefix the error's text already starts with)."""
        msg, prefix = str(exc), f"{path}: "
        return cls(path, msg[len(prefix):] if msg.startswith(prefix) else msg)


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand image files, folders and manifests (``*.csv``) into image paths (strict).

    The listing rule is :func:`~napari_ish_annotator.core.opening.list_inputs`; here any
    missing path, unsupported file, image-less folder or bad manifest raises
    :class:`InputError`. Images are not decoded here; use :func:`scan_inputs` for that.
    """
    from .opening import list_inputs

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no inputs given; pass image files, folders or manifest CSVs")
    return list(list_inputs(inputs, strict=True).paths)


def scan_inputs(inputs: Sequence[str | Path], decode: bool = True
                ) -> tuple[list[Path], list[InputProblem]]:
    """Forgiving :func:`collect_inputs` (``predict --skip-bad``): ``(usable_paths, problems)``.

    Bad entries are skipped and reported: missing paths, unsupported files, image-less
    folders, bad manifests, and with ``decode=True`` images that fail to decode (corrupt or
    truncated). Decoding every file costs time; ``decode=False`` checks names and types only.
    """
    from .opening import list_inputs

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    listing = list_inputs(inputs)
    problems = list(listing.problems)
    usable: list[Path] = []
    for p in listing.paths:
        try:
            if decode:
                read_rgb(p)
            else:
                _check_file(p)
        except InputError as exc:
            problems.append(InputProblem.from_error(p, exc))
            continue
        usable.append(p)
    return usable, problems
