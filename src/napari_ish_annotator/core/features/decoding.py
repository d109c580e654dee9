"""Decoding images ahead of the network: the batches the extractor computes next.

On the CPU a small thread pool decodes the next batches while the current one is computed
(PNG/JPEG decoding releases the GIL). On a GPU, which computes a batch faster than one
process decodes it, worker processes (torch ``DataLoader`` workers) decode instead. Images that
cannot be decoded are either raised (their :class:`InputError`) or left out and reported.

Files are untrusted: every decoder reads an image only through
:func:`..data.images.open_image` (or after :func:`..data.images.vet_image`), which opens
regular files only, without blocking, picks the format from the content and checks the
header against the budget, so no worker blocks on a FIFO or runs a PostScript program.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.images import open_image, read_rgb
from ..utils.errors import InputError
from .preprocess import as_rgb, normalise, normalise_np, resize_uint8

if TYPE_CHECKING:  # pragma: no cover
    import torch


def default_decode_workers(device_type: str, cpu_count: int | None = None) -> int:
    """Decoding processes used when none are asked for: on a GPU up to 8 (leaving two cores
    to the main process), since a GPU computes a batch faster than one core decodes it; on
    the CPU none (the network needs the cores; two decoding threads keep up with it)."""
    if device_type != "cuda":
        return 0
    cores = os.cpu_count() if cpu_count is None else cpu_count
    return max(0, min(8, (cores or 1) - 2))


def _shm_free_bytes() -> int | None:
    """Free bytes in /dev/shm, where DataLoader workers hand over their batches (None: n/a).
    Containers often give it only 64 MB."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return int(st.f_bavail * st.f_frsize)


def _mp_context() -> str:
    """``fork`` starts workers instantly but is unsafe while other threads run (napari's
    worker threads, Qt): then ``spawn``. The queue feeder threads of a finished extraction's
    workers, which may linger a moment, do not count."""
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and t.name != "QueueFeederThread"]
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread() \
            and not others:
        return "fork"
    return "spawn"


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def _plain_png(data: bytes) -> bool:
    """8-bit RGB or gray PNG without transparency: libpng gives Pillow's pixels exactly."""
    if len(data) < 33 or data[:8] != _PNG_MAGIC or data[12:16] != b"IHDR":
        return False
    bit_depth, colour_type = data[24], data[25]
    idat = data.find(b"IDAT")
    return bit_depth == 8 and colour_type in (0, 2) and b"tRNS" not in data[:max(idat, 0)]


def decode_rgb(path: str | Path) -> np.ndarray:
    """``H x W x 3`` uint8 RGB of an image file, as :func:`~..data.images.read_rgb` gives it,
    faster for the formats a GPU is fed with (benchmarks/bench_decode.py, docs/benchmarks.md):

    * the file is read only through :func:`~..data.images.open_image`, the one door (regular
      files, format by content, header within the budget; its :class:`InputError` raised
      unchanged), and the bytes decoded are the ones it handed out;
    * plain 8-bit RGB/gray PNG and JPEG: torchvision's C++ decoders (libpng, libjpeg-turbo,
      the GIL released) - PNG pixels identical to Pillow's, JPEG within
      :data:`JPEG_TOLERANCE` (0 measured);
    * anything else (BMP - Pillow's BMP reader is a copy, numpy was no faster -, TIFF,
      16-bit, palette, alpha, files over :data:`_FAST_MAX_BYTES`): ``read_rgb``.
    """
    path = Path(path)
    with open_image(path) as (fh, header):
        fast = header.format in ("PNG", "JPEG") and \
            os.fstat(fh.fileno()).st_size <= _FAST_MAX_BYTES
        data = fh.read() if fast else b""
    if not fast or (header.format == "PNG" and not _plain_png(data)):
        return read_rgb(path)
    import torch

    decoders = _torchvision_decoders()
    if decoders is None:
        return read_rgb(path)
    ImageReadMode, decode_jpeg, decode_png = decoders  # noqa: N806 - torchvision's names
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        if header.format == "PNG":
            chw = decode_png(buffer, mode=ImageReadMode.RGB)
        else:
            chw = decode_jpeg(buffer, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:  # corrupt or a flavour libjpeg/libpng refuse: Pillow's verdict
        return read_rgb(path)
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())


@functools.cache
def _torchvision_decoders() -> tuple[Any, Any, Any] | None:
    """torchvision's PNG/JPEG decoders, or None (then Pillow decodes).

    They are deprecated since torchvision 0.29 (for TorchCodec) and say so on every call: a
    warning that tells a biologist nothing, which napari shows as one notification per image.
    That one message, from torchvision.io only, is filtered here, once; Pillow takes over
    when the decoders are gone."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg, decode_png
    except ImportError:
        return None
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities",
                            category=DeprecationWarning, module=r"torchvision\.io")
    return ImageReadMode, decode_jpeg, decode_png


#: files larger than this are left to Pillow, which reads them in steps
_FAST_MAX_BYTES = 64 << 20


#: max abs difference of :func:`decode_rgb`'s JPEG pixels from Pillow's (both libjpeg-turbo;
#: the chroma upsampling may differ by rounding)
JPEG_TOLERANCE = 2


@dataclass(frozen=True)
class Preprocessor:
    """Decode + resize + normalise, as one picklable object (it runs in decoding processes)."""

    input_size: int
    keep_aspect: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_scale: float
    #: False: leave ``(3, S, S)`` uint8 for the device to normalise (a quarter of the bytes
    #: to copy, and the CPU spared the float arithmetic that costs as much as decoding)
    normalise: bool = True

    def __call__(self, image: Any) -> np.ndarray:
        """Path or HxWx3 array -> ``(3, S, S)`` float32, normalised (or uint8, see
        :attr:`normalise`); the whole embryo."""
        rgb = as_rgb(image) if isinstance(image, np.ndarray) else decode_rgb(image)
        x = resize_uint8(rgb, self.input_size, self.keep_aspect).numpy()
        if not self.normalise:
            return np.ascontiguousarray(x)
        return normalise_np(x, self.mean, self.std, self.pixel_scale)

    def stack(self, items: Sequence[Any]) -> torch.Tensor:
        """The batch of ``items``; the first image that cannot be decoded raises."""
        import torch

        return torch.from_numpy(np.stack([self(im) for im in items]))

    def batch(self, items: Sequence[Any]) -> tuple[torch.Tensor | None, dict[int, str]]:
        """Decoded batch of ``items``; images that cannot be decoded are left out and
        returned as ``{position in items: reason}``."""
        import torch

        arrays, failed = [], {}
        for pos, im in enumerate(items):
            try:
                arrays.append(self(im))
            except InputError as exc:
                failed[pos] = str(exc)
        return (torch.from_numpy(np.stack(arrays)) if arrays else None), failed


def device_input(batch: torch.Tensor, device: torch.device, mean, std, pixel_scale: float
                 ) -> torch.Tensor:
    """A decoded batch on ``device`` as float32 network input: a pinned batch (decoding
    processes for a GPU) is copied without waiting, a uint8 one (:attr:`Preprocessor.normalise`
    False) normalised there - the same float32 values as on the host."""
    import torch

    x = batch.to(device, non_blocking=batch.device.type == "cpu" and batch.is_pinned())
    if x.dtype == torch.uint8:
        return normalise(x, mean, std, pixel_scale)
    return x


class _DecodeBatches:
    """Map-style dataset for a ``DataLoader``: item ``j`` is the decoded batch ``j``."""

    def __init__(self, preprocessor: Preprocessor, batches: list[list[Any]]):
        self.preprocessor = preprocessor
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, j: int) -> tuple[torch.Tensor | None, dict[int, str]]:
        return self.preprocessor.batch(self.batches[j])


def process_workers(wanted: int, n_batches: int, batch_bytes: int) -> int:
    """Decoding processes for ``n_batches`` of ``batch_bytes`` each: they pay their start-up
    only when there are batches to overlap, and each keeps two batches in shared memory, which
    must fit (with room to spare) or the workers die; 0 means decoding threads."""
    workers = min(wanted, n_batches - 1)
    free = _shm_free_bytes() if workers > 0 else None
    if free is not None:
        workers = min(workers, free // (4 * batch_bytes))
    return max(0, int(workers))


def decoded_in_threads(load: Callable[[list[Any]], Any], item_batches: list[list[Any]]
                       ) -> Iterator:
    """``load(batch)`` of each batch in order, two decoding ahead in a thread pool."""
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ish-decode")
    try:
        pending = [pool.submit(load, b) for b in item_batches[:2]]
        for j in range(len(item_batches)):
            x = pending.pop(0).result()
            if j + 2 < len(item_batches):  # keep two batches decoding ahead
                pending.append(pool.submit(load, item_batches[j + 2]))
            yield x
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def decoded_in_processes(preprocessor: Preprocessor, item_batches: list[list[Any]], skip: bool,
                         workers: int, pin_memory: bool) -> Iterator:
    """Decoded batches in order from ``DataLoader`` worker processes (shared-memory transfer,
    pinned for a GPU). Workers always skip bad images; without ``skip`` the first one's
    :class:`InputError` is raised here, with its own message."""
    from torch.utils.data import DataLoader

    loader = DataLoader(_DecodeBatches(preprocessor, item_batches), batch_size=None,
                        num_workers=workers, prefetch_factor=2, pin_memory=pin_memory,
                        multiprocessing_context=_mp_context())
    it = iter(loader)
    try:
        for x, failed in it:
            if failed and not skip:
                raise InputError(failed[min(failed)])
            yield (x, failed) if skip else x
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)  # now, not when collected
        if shutdown is not None:
            try:
                shutdown()
            except RuntimeError as error:  # a worker died while being stopped: its batches
                if "DataLoader worker" not in str(error):  # are not wanted any more (a
                    raise  # cancel, or all were read); torch has ended the others
