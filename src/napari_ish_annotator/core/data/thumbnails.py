"""Small previews of embryo images for the Gallery, cached on disk by content hash.

Why cached: decoding a 1,000 x 2,000 px BMP takes tens of milliseconds, a Gallery of 2,000
embryos would decode 2,000 of them on every opening; a 96-px preview is 30 KB and loads in
well under a millisecond. Files are decoded only through :func:`.images.read_rgb` (pixel
budget, hostile-file rules); previews are ``.npy`` files read with ``allow_pickle=False`` and
checked for shape and dtype, so a planted or damaged cache file is remade, never trusted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..utils.errors import InputError
from ..utils.files import write_npy_atomic
from ..utils.hashing import content_hash
from .images import read_rgb

__all__ = ["THUMB_SIZE", "make_thumbnail", "thumbnail", "iter_thumbnails"]

#: the longer side of a preview, in pixels
THUMB_SIZE = 96


def make_thumbnail(rgb: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """``rgb`` shrunk (aspect kept) so its longer side is ``size``; uint8 ``H x W x 3``."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    shape = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(shape, Image.BILINEAR))


def _cached(path: Path, size: int) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    ok = (arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
          and max(arr.shape[:2]) == size and min(arr.shape[:2]) >= 1)
    return arr if ok else None


def thumbnail(image: str | Path, cache_dir: str | Path | None, size: int = THUMB_SIZE
              ) -> np.ndarray:
    """The preview of ``image``: from ``cache_dir/thumbnails`` when its content was seen
    before, else decoded, shrunk and stored there (a cache that cannot be written is skipped)."""
    image = Path(image)
    if cache_dir is None:
        return make_thumbnail(read_rgb(image), size)
    digest = content_hash(image, "image")
    where = Path(cache_dir) / "thumbnails" / str(size) / digest[:2] / f"{digest}.npy"
    if where.is_file():
        arr = _cached(where, size)
        if arr is not None:
            return arr
    thumb = make_thumbnail(read_rgb(image), size)
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        write_npy_atomic(where, thumb)
    except (OSError, InputError):
        pass  # a read-only or full disk: previews still show, only slower next time
    return thumb


def iter_thumbnails(images: Sequence[str | Path], indices: Sequence[int],
                    cache_dir: str | Path | None, size: int = THUMB_SIZE
                    ) -> Iterator[tuple[int, np.ndarray | None]]:
    """``(i, preview)`` of ``images[i]`` for ``i`` in ``indices``, in that order (the visible
    ones first); the preview is None for an image that cannot be read. A napari worker runs
    it and stops between two images when cancelled."""
    for i in indices:
        try:
            thumb = thumbnail(images[i], cache_dir, size)
        except InputError:
            thumb = None
        yield int(i), thumb
