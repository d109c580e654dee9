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

import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..utils.errors import InputError
from .preprocess import preprocess_np

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


@dataclass(frozen=True)
class Preprocessor:
    """Decode + resize + normalise, as one picklable object (it runs in decoding processes)."""

    input_size: int
    keep_aspect: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_scale: float

    def __call__(self, image: Any) -> np.ndarray:
        """Path or HxWx3 array -> ``(3, S, S)`` float32, normalised; the whole embryo."""
        return preprocess_np(image, self.input_size, self.mean, self.std, self.pixel_scale,
                             keep_aspect=self.keep_aspect)

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
            shutdown()
