"""The one preprocessing path: image -> network input, for feature extraction AND fine-tuning.

Features extracted by :mod:`.features` and the images a fine-tuned network is trained and
evaluated on must be prepared identically, or the fine-tuned trunk sees other inputs at
``--weights CKPT`` time than during training. So every step lives here once:

* :func:`as_rgb` - a path or an array -> ``H x W x 3`` uint8.
* :func:`resize_uint8` - optional square padding with the :func:`border_colour` (``keep_aspect``),
  then a bilinear, antialiased resize of the whole embryo (no centre crop) -> ``(3, S, S)`` uint8.
* :func:`normalise_np` / :func:`normalise` - the backbone's ``mean``/``std``/``pixel_scale``
  as one offset and one scale in float32 (:func:`normalisation_constants`), so the numpy path
  (decode threads of the extractor) and the torch path (fine-tuning batches, on the GPU if
  there is one) give bit-identical tensors.
* :func:`resolve_precision` - which reduced precision a device may use, including the check
  that a CPU asked for bf16 really computes it natively.

Torch is imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.images import array_to_rgb, read_rgb
from ..utils.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RESIZE_METHOD = "bilinear-antialias"  # part of the feature cache signature

# "auto" on a CPU with native bf16 (AVX512-BF16 / AMX): benchmarks/bench_extraction.py showed
# the ensembles' votes unchanged (0 of 320) at 1.7-2x the fp32 speed; see docs/benchmarks.md.
CPU_AUTO_BF16 = True


# --------------------------------------------------------------------------- precision

def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bf16 convolutions natively (AVX512-BF16 or AMX)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, "_is_avx512_bf16_supported", None),
              getattr(cpu, "_is_amx_tile_supported", None)]
    try:
        native = any(bool(f()) for f in checks if f is not None)
        return native and bool(torch.backends.mkldnn.is_available())
    except Exception:  # noqa: BLE001 - private probes; absent means "not known to be fast"
        return False


def cpu_flags_native_bf16() -> bool | None:
    """:func:`cpu_has_native_bf16` from the kernel's CPU flags (the same CPUID bits), without
    importing torch; None where ``/proc/cpuinfo`` does not exist (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "avx512_bf16" in flags or "amx_tile" in flags
    except OSError:
        return None
    return False


def _precision(precision: str, device_type: str, native_bf16: Callable[[], bool | None],
               cpu_auto_bf16: bool) -> str | None:
    """The one rule behind :func:`resolve_precision` (None: ``native_bf16`` does not know)."""
    text = (precision or "auto").strip().lower()
    if text not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if text == "auto":
        if device_type == "cuda":
            return "fp16"
        if device_type == "cpu" and cpu_auto_bf16:
            native = native_bf16()
            return None if native is None else ("bf16" if native else "fp32")
        return "fp32"
    if device_type == "cpu" and text == "fp16":
        raise InputError("precision fp16 is for GPUs; on the CPU use bf16 (if the CPU supports "
                         "it) or fp32")
    if device_type == "cpu" and text == "bf16":
        native = native_bf16()
        if native is None:
            return None
        if not native:
            raise InputError("this CPU has no native bf16 support (AVX512-BF16/AMX), so bf16 "
                             "would be slow; use --precision fp32 or auto")
    return text


def resolve_precision(precision: str, device: torch.device, cpu_auto_bf16: bool | None = None) -> str:
    """``auto`` -> fp16 on CUDA, bf16 on CPUs with native bf16 (if ``cpu_auto_bf16``), else fp32.

    ``cpu_auto_bf16`` defaults to :data:`CPU_AUTO_BF16` (inference); training passes False
    (bf16 gradients are only used when asked for). An explicit fp16 on a CPU, or bf16 on a
    CPU without native support (it would be emulated and slow), is an :class:`InputError`.
    """
    auto_bf16 = CPU_AUTO_BF16 if cpu_auto_bf16 is None else cpu_auto_bf16
    return _precision(precision, device.type, cpu_has_native_bf16, auto_bf16)  # type: ignore[return-value]


def resolve_precision_type(precision: str, device_type: str | None) -> str | None:
    """:func:`resolve_precision` without torch (the feature cache key of the warm path), or
    None where only torch can tell."""
    if device_type is None:
        return None
    return _precision(precision, device_type, cpu_flags_native_bf16, CPU_AUTO_BF16)


def torch_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a resolved precision name."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# --------------------------------------------------------------------------- pixels

def as_rgb(image: Any) -> np.ndarray:
    """A path (read and decoded) or an array (converted if need be) -> ``H x W x 3`` uint8."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
            return image

        return array_to_rgb(image)

    return read_rgb(image)


def border_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    """Median colour of the outermost pixels (the slide background around the embryo).

    ``rgb`` is one ``H x W x 3`` image or a stack ``N x H x W x 3`` (then the median over the
    borders of all of them: the fill colour for augmentation of a whole training set).
    """
    a = np.asarray(rgb)
    if a.ndim == 3:
        a = a[None]
    edges = np.concatenate([a[:, 0], a[:, -1], a[:, :, 0], a[:, :, -1]], axis=1).reshape(-1, 3)
    return tuple(int(v) for v in np.median(edges, axis=0).round())  # type: ignore[return-value]


def resize_uint8(rgb: np.ndarray, size: int, keep_aspect: bool = False) -> torch.Tensor:
    """``H x W x 3`` uint8 -> ``(3, size, size)`` uint8: the whole embryo, no centre crop.

    ``keep_aspect`` first pads the image to a square with its :func:`border_colour`; otherwise
    the image is squashed to the square (the paper's choice).
    """
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    rgb = np.ascontiguousarray(rgb)
    if not rgb.flags.writeable:  # decoded images may be read-only; torch wants writable memory
        rgb = rgb.copy()
    t = torch.from_numpy(rgb).permute(2, 0, 1)
    if keep_aspect and t.shape[1] != t.shape[2]:
        h, w = int(t.shape[1]), int(t.shape[2])
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        t = TF.pad(t, [left, top, side - w - left, side - h - top], fill=list(border_colour(rgb)))
    if tuple(t.shape[1:]) != (size, size):
        t = TF.resize(t, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return t


def normalisation_affine(mean: Sequence[float], std: Sequence[float], pixel_scale: float = 1.0
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``(offset, factor)``, float32 ``(3,)``: a 0-255 pixel ``v`` becomes ``(v - offset) * factor``.

    The one place the normalisation of a backbone's weights (``mean``/``std`` on pixels scaled
    to ``[0, pixel_scale]``) is turned into arithmetic on 0-255 pixels: extraction, fine-tuning
    and the exported bioimage.io network (which stores these two vectors) all use it.
    """
    offset = np.asarray(mean, np.float32) * np.float32(255.0 / pixel_scale)
    factor = np.float32(pixel_scale / 255.0) / np.asarray(std, np.float32)
    return offset.astype(np.float32), factor.astype(np.float32)


def normalisation_constants(mean, std, pixel_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`normalisation_affine` shaped ``(3, 1, 1)`` to broadcast over ``(..., 3, S, S)``."""
    offset, factor = normalisation_affine(mean, std, pixel_scale)
    return offset.reshape(3, 1, 1), factor.reshape(3, 1, 1)


def normalise_np(x_uint8: np.ndarray, mean, std, pixel_scale: float = 1.0) -> np.ndarray:
    """``(..., 3, S, S)`` uint8 -> float32 network input, in numpy.

    Used in decode threads: small torch element-wise ops start OpenMP regions, which stall for
    tens of ms when the cores are busy.
    """
    offset, scale = normalisation_constants(mean, std, pixel_scale)
    return (x_uint8.astype(np.float32) - offset) * scale


def normalise(x_uint8: torch.Tensor, mean, std, pixel_scale: float = 1.0) -> torch.Tensor:
    """``(..., 3, S, S)`` uint8 tensor -> float32 network input on the tensor's device."""
    import torch

    offset, scale = normalisation_constants(mean, std, pixel_scale)
    off = torch.from_numpy(offset).to(x_uint8.device)
    sc = torch.from_numpy(scale).to(x_uint8.device)
    return (x_uint8.to(torch.float32) - off) * sc


def preprocess_np(image: Any, size: int, mean, std, pixel_scale: float = 1.0,
                  keep_aspect: bool = False) -> np.ndarray:
    """A path or array -> ``(3, size, size)`` float32 network input (numpy)."""
    return normalise_np(resize_uint8(as_rgb(image), size, keep_aspect).numpy(), mean, std,
                        pixel_scale)
