"""The inference trunk: the truncated backbone as feature extraction runs it, close to the
machine's limit.

``benchmarks/bench_peak.py`` measures extraction in GFLOP/s against a matmul peak measured in
the same run, layer by layer. On a CPU oneDNN runs the convolutions at or above the matmul peak
(bf16 on AMX, fp32 on AVX-512); what kept the trunk well below it was everything around them:

* *ReLU after each conv*: a separate pass over the activation (read and write, e.g. 6.4 MB at
  224 px behind conv1_2 in bf16) that cost about as long as a conv on AMX. oneDNN applies the
  ReLU as a post-op of the convolution (:func:`fuse_conv_relu`; the same op torch.compile
  emits, with bit-identical results), so it costs nothing.
* *2x2 max pooling*: torch's channels-last bf16 kernel ran at a third of memory speed (12 ms
  of the trunk's 123 ms for 5 images); two element-wise maxima over strided views give the
  same values in less than half the time (:func:`replace_max_pools`).
* *Batch size*: a tensor above glibc's mmap threshold (at most 32 MB) is fresh, page-faulting
  memory every call; at batch 8 and 224 px the first activations are 51 MB in bf16 and the
  trunk ran at half speed. :func:`compute_batch` keeps every activation below the threshold.
* *Precision and memory format*: bf16 where the CPU computes it natively (AMX / AVX512-BF16,
  see :mod:`.preprocess`), channels-last (oneDNN's native layout; plain NCHW made it convert
  every layer's input).

Torch is imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: glibc's largest mmap threshold: bigger blocks are mmapped (and page-faulted) on every call
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024


def _pointwise_conv_op():
    """oneDNN's convolution with a fused post-op, or None where this torch build lacks it."""
    import torch

    try:
        op = torch.ops.mkldnn._convolution_pointwise
        return op if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


def _conv_relu_class():
    import torch

    class ConvReLU(torch.nn.Module):
        """``relu(conv(x))`` in one oneDNN call (CPU inference only)."""

        def __init__(self, conv: torch.nn.Conv2d):
            super().__init__()
            self.weight = conv.weight
            self.bias = conv.bias
            self.padding = list(conv.padding)
            self.stride = list(conv.stride)
            self.dilation = list(conv.dilation)
            self.groups = conv.groups

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                self.groups, "relu", [], "")

    return ConvReLU


def fuse_conv_relu(trunk: torch.nn.Sequential) -> torch.nn.Sequential:
    """``trunk`` with each ``Conv2d`` directly followed by a ``ReLU`` run as one oneDNN call.

    Only plain zero-padded 2-d convolutions of a flat ``Sequential`` are fused (VGG16's trunk);
    other trunks, and torch builds without the op, come back unchanged. Shares the
    parameters; for CPU inference (the op has no autograd and no GPU kernel).
    """
    import torch

    if _pointwise_conv_op() is None or not isinstance(trunk, torch.nn.Sequential):
        return trunk
    ConvReLU = _conv_relu_class()
    children = list(trunk)
    out: list[torch.nn.Module] = []
    i = 0
    while i < len(children):
        m = children[i]
        nxt = children[i + 1] if i + 1 < len(children) else None
        if (type(m) is torch.nn.Conv2d and type(nxt) is torch.nn.ReLU
                and m.padding_mode == "zeros" and isinstance(m.padding, tuple)):
            out.append(ConvReLU(m))
            i += 2
        else:
            out.append(m)
            i += 1
    if len(out) == len(children):
        return trunk
    return torch.nn.Sequential(*out)


def _max_pool_class():
    import torch

    class MaxPool2x2(torch.nn.Module):
        """``max_pool2d(x, 2, 2)`` (floor rounding) as two element-wise maxima of strided
        views: the same values, in the input's memory format."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
            rows = torch.maximum(x[..., 0:h:2, :w], x[..., 1:h:2, :w])
            return torch.maximum(rows[..., 0::2], rows[..., 1::2])

    return MaxPool2x2


def replace_max_pools(trunk: torch.nn.Sequential) -> torch.nn.Sequential:
    """``trunk`` with each plain 2x2, stride-2 ``MaxPool2d`` (VGG16's) as :class:`MaxPool2x2`;
    other pools and trunks come back unchanged (inference only: it returns no indices)."""
    import torch

    if not isinstance(trunk, torch.nn.Sequential):
        return trunk
    MaxPool2x2 = _max_pool_class()

    def plain(m: torch.nn.Module) -> bool:
        def pair(v):
            return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

        return (type(m) is torch.nn.MaxPool2d and pair(m.kernel_size) == (2, 2)
                and pair(m.stride) == (2, 2) and pair(m.padding) == (0, 0)
                and pair(m.dilation) == (1, 1) and not m.ceil_mode and not m.return_indices)

    children = list(trunk)
    if not any(plain(m) for m in children):
        return trunk
    return torch.nn.Sequential(*[MaxPool2x2() if plain(m) else m for m in children])


def compute_batch(device_type: str, largest_activation_bytes: int, batch_size: int) -> int:
    """How many images go through the network at once: the whole decoded batch on a GPU;
    on a CPU as many as keep every activation below glibc's mmap threshold (at least one)."""
    if device_type != "cpu":
        return batch_size
    return max(1, min(batch_size, _MMAP_THRESHOLD_MAX // max(1, int(largest_activation_bytes))))


def largest_activation_bytes(module: torch.nn.Module, input_size: int, itemsize: int) -> int:
    """Bytes of the biggest output of ``module``'s children for one square image (meta run)."""
    import copy

    import torch

    probe = copy.deepcopy(module).to("meta")
    dtype = next((p.dtype for p in probe.parameters()), torch.float32)
    x = torch.empty(1, 3, input_size, input_size, device="meta", dtype=dtype)
    biggest = x.numel()
    with torch.no_grad():
        for child in (probe if isinstance(probe, torch.nn.Sequential) else [probe]):
            x = child(x)
            biggest = max(biggest, x.numel())
    return int(biggest) * int(itemsize)


def inference_trunk(trunk: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                    channels_last: bool) -> torch.nn.Module:
    """A private copy of ``trunk`` for inference: no gradients, ``dtype``, memory format and,
    on a CPU, fused conv+ReLU and faster 2x2 max pooling."""
    import copy

    import torch

    m = copy.deepcopy(trunk).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    m = m.to(device=device, dtype=dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        m = replace_max_pools(fuse_conv_relu(m))
    return m
