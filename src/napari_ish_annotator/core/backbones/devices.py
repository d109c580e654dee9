"""Which device a computation runs on (``--device``): with torch, and without it where possible."""

from __future__ import annotations

import glob
import os
import sys
from typing import TYPE_CHECKING

from ..utils.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def resolve_device_type(device: str = "auto") -> str | None:
    """The device type :func:`resolve_device` picks, where that is known without importing
    torch: ``"cpu"`` when asked for, or for ``auto`` on a Linux machine with no GPU device
    node; None where only torch can tell (a GPU may be present)."""
    text = (device or "auto").strip().lower()
    if text == "cpu":
        return "cpu"
    if text == "auto" and sys.platform.startswith("linux") and not glob.glob("/dev/nvidia*") \
            and not os.path.exists("/dev/kfd"):  # no NVIDIA or ROCm device
        return "cpu"
    return None


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA, then MPS, then CPU; an explicit device that is absent is an InputError."""
    import torch

    text = (device or "auto").strip().lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_ok:
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was asked for but no CUDA GPU is usable here; "
                             "use --device auto or --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {text!r} does not exist (this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s))")
        return dev
    if dev.type == "mps":
        if not mps_ok:
            raise InputError("device 'mps' was asked for but Apple MPS is not available here; "
                             "use --device auto or --device cpu")
        return dev
    raise InputError(f"unsupported device {device!r}; use auto, cpu, cuda or mps")
