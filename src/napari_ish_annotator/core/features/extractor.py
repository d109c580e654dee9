"""Fixed-backbone feature extraction (the paper's "transfer learning" step), fast and cached.

Speed comes from running only the truncated trunk a layer needs, in reduced precision where
it is safe, channels-last and with conv+ReLU fused on a CPU (:mod:`..backbones.trunk`; measured
against the machine's matmul peak by ``benchmarks/bench_peak.py``, see
``docs/benchmarks.md``), and from decoding the next batches' images while the current batch is
computed (:mod:`.decoding`: threads on a CPU, worker processes on a GPU). Features are always
rounded through float16, the cache's storage type, so a cached run returns exactly what a
fresh run returns (and a float16 result matrix, as the pipeline uses, holds them without
loss).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ... import __version__
from ..backbones.devices import resolve_device, resolve_device_type
from ..backbones.specs import get_spec
from ..backbones.trunk import compute_batch, inference_trunk, largest_activation_bytes
from ..backbones.weights import (
    LoadedBackbone,
    WeightsIdentity,
    load_backbone,
    remember_identity,
    weights_identity,
)
from ..utils.errors import InputError
from ..utils.hashing import content_hash
from ..utils.progress import CancelToken, Progress, ProgressCallback, ProgressGen, drive
from .cache import FeatureCache
from .decoding import (
    Preprocessor,
    decoded_in_processes,
    decoded_in_threads,
    default_decode_workers,
    device_input,
    process_workers,
)
from .preprocess import RESIZE_METHOD, resolve_precision, resolve_precision_type, torch_dtype

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class ExtractorConfig:
    """Everything that decides which features an image gets (plus device/batching)."""

    backbone: str = "vgg16"
    weights: str = "imagenet"
    layer: str | None = None  # None -> the backbone's default layer ("21" for VGG16)
    input_size: int = 224
    keep_aspect: bool = False
    device: str = "auto"
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16"
    batch_size: int = 8
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def array_hash(arr: np.ndarray) -> str:
    """Content hash of an in-memory image (shape, dtype and bytes)."""
    a = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"ndarray:{a.shape}:{a.dtype.str}:".encode())
    h.update(a.data)
    return h.hexdigest()


def _image_key(image: Any) -> str:
    if isinstance(image, np.ndarray):
        return array_hash(image)

    return content_hash(image, "image")


class FeatureExtractor:
    """Features of one backbone layer for images (paths or HxWx3 uint8 arrays).

    Lazy: the cache signature is worked out without torch where possible (weights identity,
    device, precision and feature shape as plain data), and the network is built only when an
    image is not in the cache. A run whose features are all cached never imports torch.
    """

    def __init__(self, config: ExtractorConfig, cache_dir: str | Path | None = None,
                 loaded: LoadedBackbone | None = None, decode_workers: int | None = None):
        self.config = config
        if loaded is not None and loaded.spec.name != config.backbone:
            raise InputError(f"the loaded backbone is {loaded.spec.name}, the settings ask for "
                             f"{config.backbone}")
        self._loaded = loaded
        self._memo_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.spec = get_spec(config.backbone)
        self.layer = self.spec.layer(config.layer).name
        self.layer_index = self.spec.layers[self.layer].index
        size = int(config.input_size)
        if size < self.spec.min_input_size:
            raise InputError(f"input size {size} is too small for {self.spec.name}; use at least "
                             f"{self.spec.min_input_size} ({self.spec.input_size} is standard)")
        self.input_size = size
        if int(config.batch_size) < 1:
            raise InputError(f"batch size must be at least 1, got {config.batch_size}")
        self.batch_size = int(config.batch_size)
        self._device: torch.device | None = None
        self.device_type = resolve_device_type(config.device)
        precision = resolve_precision_type(config.precision, self.device_type)
        identity = loaded.identity if loaded is not None else weights_identity(
            config.backbone, config.weights, config.seed, self._memo_dir)
        if identity is None or precision is None:  # only torch can tell: build it now
            identity = self.loaded.identity
            self.device_type = self.device.type
            precision = resolve_precision(config.precision, self.device)
        self.precision = precision
        #: decoding processes (0: two threads); None -> :func:`default_decode_workers`
        self.decode_workers = (default_decode_workers(self.device_type)
                               if decode_workers is None else max(0, int(decode_workers)))
        self.identity: WeightsIdentity = identity
        self.weights_id = identity.weights_id
        self.mean = tuple(float(v) for v in identity.mean)
        self.std = tuple(float(v) for v in identity.std)
        self.pixel_scale = float(identity.pixel_scale)
        if identity.available_upto is not None and self.layer_index > identity.available_upto:
            self.loaded.truncated(self.layer)  # the weights do not cover the layer: its error
        self.shape = self.spec.feature_shape(self.layer, size)
        self.dim = int(np.prod(self.shape))
        self.cache = FeatureCache(cache_dir, self.signature()) if cache_dir is not None else None
        self._module: torch.nn.Module | None = None
        self._grad_module: torch.nn.Module | None = None
        self._channels_last: bool | None = None
        self._compute_batch: int | None = None
        #: decode batches to uint8 and normalise them where the network runs (on a GPU: a
        #: quarter of the bytes to copy, no float work on the decoding cores; same values)
        self.normalise_on_device = self.device_type == "cuda"
        #: ``(row, reason)`` of the images the last ``on_error="skip"`` extraction skipped
        self.last_failed: list[tuple[int, str]] = []

    # ------------------------------------------------------------------ lazy parts
    @property
    def loaded(self) -> LoadedBackbone:
        """The backbone with its weights, loaded (and torch imported) on first use."""
        if self._loaded is None:
            loaded = load_backbone(self.config.backbone, self.config.weights,
                                   seed=self.config.seed)
            known = getattr(self, "identity", None)
            if known is not None and known.key() != loaded.identity.key():  # a bug, not input
                raise RuntimeError(f"weights identity worked out without torch ({known}) differs "
                                   f"from the loaded one ({loaded.identity})")
            if self._memo_dir is not None:
                remember_identity(self._memo_dir, loaded)
            self._loaded = loaded
        return self._loaded

    @property
    def device(self) -> torch.device:
        if self._device is None:
            self._device = resolve_device(self.config.device)
        return self._device

    # ------------------------------------------------------------------ identity
    def signature(self) -> dict:
        """Everything the features depend on except the image content."""
        return {
            "backbone": self.spec.name,
            "weights_id": self.weights_id,
            "layer": self.layer,
            "layer_index": self.layer_index,
            "input_size": self.input_size,
            "keep_aspect": bool(self.config.keep_aspect),
            "normalisation": {"mean": list(self.mean), "std": list(self.std),
                              "pixel_scale": self.pixel_scale},
            "resize": RESIZE_METHOD,
            "precision": self.precision,
            "shape": list(self.shape),
            "package_version": __version__,
        }

    # ------------------------------------------------------------------ modules
    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.precision)

    @property
    def channels_last(self) -> bool:
        """Channels-last memory (oneDNN's and the GPUs' native layout) unless set otherwise:
        on this project's AVX-512 test CPU it made the fp32 trunk 1.25x faster and bf16 needs
        it (``benchmarks/bench_peak.py``)."""
        return True if self._channels_last is None else self._channels_last

    @channels_last.setter
    def channels_last(self, value: bool | None) -> None:
        self._channels_last = value
        self._module = None

    @property
    def module(self) -> torch.nn.Module:
        """The inference network: a private copy of the truncated trunk in the run's precision
        (see :func:`..backbones.trunk.inference_trunk`)."""
        if self._module is None:
            self._module = inference_trunk(self.loaded.truncated(self.layer), self.device,
                                           self.dtype, self.channels_last)
        return self._module

    @property
    def compute_batch(self) -> int:
        """Images per network call (:func:`..backbones.trunk.compute_batch`); decoding, progress and
        the cache still go by :attr:`batch_size`."""
        if self._compute_batch is None:
            import torch

            itemsize = torch.empty((), dtype=self.dtype).element_size()
            biggest = largest_activation_bytes(self.loaded.truncated(self.layer),
                                               self.input_size, itemsize)
            self._compute_batch = compute_batch(self.device.type, biggest, self.batch_size)
        return self._compute_batch

    # ------------------------------------------------------------------ compute
    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 -> ``(3, S, S)`` float32, normalised; the whole embryo, no centre crop."""
        import torch

        return torch.from_numpy(self.preprocessor(rgb))

    @property
    def preprocessor(self) -> Preprocessor:
        return Preprocessor(self.input_size, bool(self.config.keep_aspect), self.mean, self.std,
                            self.pixel_scale)

    @property
    def _batch_preprocessor(self) -> Preprocessor:
        """The decoding ahead's (uint8 out when :attr:`normalise_on_device`)."""
        return replace(self.preprocessor, normalise=not self.normalise_on_device)

    def activation(self, batch: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """``(B, C, H, W)`` float32 at the layer for a preprocessed batch.

        ``grad=True`` runs the fp32 trunk that shares parameters with ``loaded.module`` with
        autograd on (for Grad-CAM by backprop or fine-tuning); call it outside inference mode.
        """
        import torch

        if batch.ndim == 3:
            batch = batch[None]
        if grad:
            if self._grad_module is None:
                self._grad_module = self.loaded.truncated(self.layer).to(self.device)
            with torch.enable_grad():
                return self._grad_module(batch.to(self.device, torch.float32))
        m = self.module
        step = self.compute_batch
        with torch.inference_mode():
            x = device_input(batch, self.device, self.mean, self.std, self.pixel_scale
                             ).to(self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if len(x) <= step:
                return m(x).to(torch.float32).contiguous()
            out = None
            for start in range(0, len(x), step):
                y = m(x[start:start + step])
                if out is None:
                    out = torch.empty((len(x), *y.shape[1:]), dtype=torch.float32,
                                      device=y.device)
                out[start:start + len(y)] = y
            return out

    def _load_batch(self, items: Sequence[Any]) -> torch.Tensor:
        return self._batch_preprocessor.stack(items)

    def _load_batch_skipping(self, items: Sequence[Any]
                             ) -> tuple[torch.Tensor | None, dict[int, str]]:
        """:meth:`_load_batch`; bad images left out, as ``{position in items: reason}``."""
        return self._batch_preprocessor.batch(items)

    def _process_workers(self, n_batches: int) -> int:
        """Decoding processes for ``n_batches`` (0: threads); see :func:`.decoding.process_workers`."""
        batch_bytes = (self.batch_size * 3 * self.input_size ** 2
                       * (1 if self.normalise_on_device else 4))
        return process_workers(self.decode_workers, n_batches, batch_bytes)

    def _decoded_in_threads(self, item_batches: list[list[Any]], skip: bool) -> Iterator:
        return decoded_in_threads(self._load_batch_skipping if skip else self._load_batch,
                                  item_batches)

    def _decoded_in_processes(self, item_batches: list[list[Any]], skip: bool,
                              workers: int) -> Iterator:
        return decoded_in_processes(self._batch_preprocessor, item_batches, skip, workers,
                                    pin_memory=self.device.type == "cuda")

    def iter_extract(self, images: Sequence[Path | str | np.ndarray],
                     out: np.ndarray | None = None, on_error: str = "raise"
                     ) -> ProgressGen[np.ndarray]:
        """``(n, C*H*W)`` features, reading hits from the cache; one step per batch.

        ``out`` may be a preallocated ``(n, C*H*W)`` array, e.g. a ``np.memmap`` when the
        features of many images (1.6 MB each at layer 21) do not fit in memory, or a float16
        array (half the memory, and lossless: features are rounded through float16 anyway).
        The rare image whose features overflow float16 cannot be held in a float16 ``out``:
        an in-memory one is then widened once to a float32 copy, which is returned instead of
        ``out`` (a float16 memmap raises :class:`InputError`). Without ``out`` the result is
        float32.

        ``on_error="skip"`` fills the rows of images that cannot be read or decoded with NaN
        instead of stopping (one corrupt file must not end a job over thousands of images);
        their ``(row, reason)`` pairs are in :attr:`last_failed`. ``"raise"`` (the default)
        raises the image's :class:`InputError`.
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        skip = on_error == "skip"
        self.last_failed = []
        images = list(images)
        n = len(images)
        if out is None:
            out = np.empty((n, self.dim), dtype=np.float32)
        elif out.shape != (n, self.dim):
            raise ValueError(f"out has shape {out.shape}, expected {(n, self.dim)}")
        if n == 0:
            return out
        failed: dict[int, str] = {}
        # group identical images (by content when cached) so each is computed once
        if self.cache is not None:
            keys = []
            for i, im in enumerate(images):
                try:
                    keys.append(_image_key(im))
                except (InputError, OSError) as exc:
                    if not skip:
                        raise
                    failed[i] = str(exc)
                    keys.append(f"failed:{i}")
                if i % 256 == 255:  # reading thousands of files takes a while: stay cancellable
                    yield Progress(0, n, f"checking the cache {i + 1}/{n}")
        else:
            keys = [str(i) for i in range(n)]
        rows: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            if i not in failed:
                rows.setdefault(k, []).append(i)
        for i in failed:
            out[i] = np.nan
        todo: list[str] = []
        done = len(failed)
        for k, idx in rows.items():
            hit = self.cache.get(k) if self.cache is not None else None
            if hit is not None:
                out[idx] = hit.reshape(1, -1)
                done += len(idx)
            else:
                todo.append(k)
        yield Progress(done, n, f"{done} of {n} from the cache" if done else "starting")
        if todo:
            out = yield from self._iter_compute(images, todo, rows, out, done, failed, skip)
        self.last_failed = sorted(failed.items())
        return out

    def _iter_compute(self, images: list, todo: list[str], rows: dict[str, list[int]],
                      out: np.ndarray, done: int, failed: dict[int, str], skip: bool
                      ) -> ProgressGen[np.ndarray]:
        """Compute the features of the cache misses ``todo`` (one image per key) into their
        ``rows`` of ``out``; failed images go into ``failed`` (``skip``) or raise. Here:
        batches on this machine, decoded ahead in threads or processes; see also
        :class:`.distributed.DistributedExtractor`."""
        n = len(images)
        batches = [todo[s:s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        item_batches = [[images[rows[k][0]] for k in b] for b in batches]
        workers = self._process_workers(len(batches))
        decoded = (self._decoded_in_processes(item_batches, skip, workers) if workers >= 1
                   else self._decoded_in_threads(item_batches, skip))
        try:
            for batch_keys, x in zip(batches, decoded, strict=True):
                if skip:
                    x, bad = x
                    for pos, why in bad.items():
                        idx = rows[batch_keys[pos]]
                        out[idx] = np.nan
                        failed.update((i, why) for i in idx)
                        done += len(idx)
                    batch_keys = [k for pos, k in enumerate(batch_keys) if pos not in bad]
                if batch_keys:
                    out, done = self._store_batch(x, batch_keys, rows, images, out, done)
                yield Progress(done, n, f"extracted {done}/{n} (layer {self.layer})")
        finally:
            decoded.close()
        return out

    def _store_batch(self, x: torch.Tensor, batch_keys: list[str], rows: dict[str, list[int]],
                     images: list, out: np.ndarray, done: int) -> tuple[np.ndarray, int]:
        """Features of one decoded batch into the cache and ``out`` (widened if need be).

        Rounding to float16 happens where the network ran: on a GPU that halves the copy to
        the host and spares the CPU a conversion (the same round-to-nearest-even either way).
        """
        import torch

        y = self.activation(x)
        y16 = y.to(torch.float16)  # values beyond float16 become inf: handled below
        finite = torch.isfinite(y16.flatten(1)).all(dim=1).cpu().numpy()
        feats16 = y16.cpu().numpy().reshape(len(batch_keys), *self.shape)
        for b, (k, f16) in enumerate(zip(batch_keys, feats16, strict=True)):
            stored = self.cache.put(k, f16) if self.cache is not None else False
            idx = rows[k]
            if stored or finite[b]:
                row = f16
            else:  # outside float16's range: keep the float32 values
                row = y[b].cpu().numpy()
                if out.dtype == np.float16:
                    out = _widen(out, images[idx[0]])
            out[idx] = row.reshape(1, -1)
            done += len(idx)
        return out, done

    def extract(self, images: Sequence[Path | str | np.ndarray],
                progress: ProgressCallback | Callable[[int, int, str], None] | None = None,
                cancel: CancelToken | None = None, out: np.ndarray | None = None,
                on_error: str = "raise") -> np.ndarray:
        """Blocking form of :meth:`iter_extract` (``cancel`` stops at a batch boundary)."""
        return drive(self.iter_extract(images, out=out, on_error=on_error), progress, cancel)


def _widen(out: np.ndarray, image: Any) -> np.ndarray:
    """A float32 copy of a float16 feature matrix, for a row that does not fit float16."""
    name = "an in-memory image" if isinstance(image, np.ndarray) else str(image)
    if isinstance(out, np.memmap):
        raise InputError(f"the features of {name} exceed the float16 range, so they cannot be "
                         "stored in the float16 feature file; use a float32 one")
    wide = np.empty(out.shape, dtype=np.float32)
    for r0 in range(0, out.shape[0], 256):  # no full-size float32 temporary besides `wide`
        wide[r0:r0 + 256] = out[r0:r0 + 256]
    return wide
