"""Bounded reading of model files from elsewhere: JSON, ``.npy``/``.npz`` and torch zips.

A received model file states its own sizes (an ``.npy`` header, a zip record's size, a
``model.json`` count). Read naively, 146 bytes can ask for gigabytes, and a deflated zip
record can hold 3 GB in 66 MB. Everything here checks what a file declares against what the
caller expects and a memory budget *before* allocating, opens only regular files (a FIFO
would block for ever) and never unpickles. Each refusal is one :class:`InputError` line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import InputError

__all__ = ["MAX_INPUT_SIZE", "NpzReader", "load_json", "model_budget", "open_regular",
           "over_budget", "read_npy", "read_npy_header", "torch_load"]

#: largest network input side a received model may ask for (the paper uses 224 px)
MAX_INPUT_SIZE = 2048
#: default memory a model's arrays may take; ``ISH_ANNOTATOR_MAX_MODEL_BYTES`` raises it
DEFAULT_MODEL_BUDGET = 4 << 30
_MAX_NPY_HEADER = 10_000
_MAX_JSON_BYTES = 64 << 20
_MAX_JSON_DEPTH = 64
_MAX_ZIP_RECORDS = 100_000


def model_budget() -> int:
    """Bytes a model file may make us allocate (``ISH_ANNOTATOR_MAX_MODEL_BYTES``, else 4 GiB)."""
    raw = os.environ.get("ISH_ANNOTATOR_MAX_MODEL_BYTES", "").strip()
    if not raw:
        return DEFAULT_MODEL_BUDGET
    if not raw.isdigit():
        raise InputError(f"ISH_ANNOTATOR_MAX_MODEL_BYTES={raw!r} is not a whole number of bytes; "
                         "unset it or give e.g. 8589934592 for 8 GiB")
    return int(raw)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def over_budget(nbytes: int, what: str, path: str | Path | None) -> InputError:
    """The one line for a declared size over :func:`model_budget`."""
    return InputError(f"{what} would take {_gib(nbytes)}, over the {_gib(model_budget())} a model "
                      "file may use; do not use this file, or raise ISH_ANNOTATOR_MAX_MODEL_BYTES "
                      "if you trust it and have the memory", path=path)


@contextlib.contextmanager
def open_regular(path: str | Path, what: str = "file") -> Iterator[IO[bytes]]:
    """Open ``path`` for reading only if it is a regular file (without blocking on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InputError(f"cannot open the {what} ({exc.strerror})", path=path) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"the {what} is not a regular file (a pipe, device or folder); "
                             "remove it", path=path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping at ``limit`` (iterative: no recursion)."""
    stack, deepest = [(obj, 1)], 0
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


def load_json(path: str | Path, what: str, hint: str, max_bytes: int = _MAX_JSON_BYTES) -> Any:
    """Parse a JSON file with bounded size and depth, finite numbers only; errors are one line."""
    with open_regular(path, what) as fh:  # read() preallocates what it is asked for
        data = fh.read(min(os.fstat(fh.fileno()).st_size, max_bytes) + 1)
    if len(data) > max_bytes:
        raise InputError(f"the {what} is larger than {max_bytes >> 20} MiB; {hint}", path=path)
    try:
        obj = json.loads(data.decode("utf-8"), parse_float=_finite_float,
                         parse_constant=_no_constant)
    except RecursionError:
        raise InputError(f"the {what} is nested too deeply to be real; {hint}", path=path) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"cannot read the {what} ({' '.join(str(exc).split())[:200]}); {hint}",
                         path=path) from None
    if _depth(obj, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise InputError(f"the {what} is nested more than {_MAX_JSON_DEPTH} levels; {hint}",
                         path=path)
    return obj


# ----------------------------------------------------------------------------- npy / npz

def read_npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of an ``.npy`` stream, header bytes only (ValueError)."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(fh, max_header_size=_MAX_NPY_HEADER)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(fh, max_header_size=_MAX_NPY_HEADER)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject or dtype.itemsize == 0:
        raise ValueError(f"dtype {dtype} holds Python objects or nothing")
    return tuple(int(v) for v in shape), bool(fortran), dtype


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * int(dtype.itemsize)  # Python ints: no overflow


Expect = Callable[[tuple[int, ...], np.dtype], str | None]


def _fill(fh: IO[bytes], shape: tuple[int, ...], fortran: bool, dtype: np.dtype) -> np.ndarray:
    arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    view = memoryview(arr.reshape(-1, order="A")).cast("B") if arr.size else memoryview(b"")
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            raise ValueError(f"the array data ends after {got} of {len(view)} bytes")
        got += n
    return arr


def read_npy(fh: IO[bytes], expect: Expect, size: int | None, budget: int
             ) -> tuple[np.ndarray | None, str]:
    """Read one ``.npy`` stream after checking its header: ``(array, "")`` or ``(None, why)``.

    ``expect(shape, dtype)`` returns why the header is not what the caller wants (or None);
    ``size`` is the stream's total length where known: header plus data must fill it exactly.
    """
    try:
        shape, fortran, dtype = read_npy_header(fh)
    except (ValueError, SyntaxError, OSError, EOFError) as exc:
        return None, f"unreadable array header ({' '.join(str(exc).split())[:120]})"
    why = expect(shape, dtype)
    if why:
        return None, why
    nbytes = _nbytes(shape, dtype)
    if size is not None and fh.tell() + nbytes != size:
        return None, (f"its header declares {nbytes} bytes of data but the record holds "
                      f"{size - fh.tell()}")
    if nbytes > budget:
        return None, f"it would take {_gib(nbytes)}, over the {_gib(budget)} budget"
    try:
        return _fill(fh, shape, fortran, dtype), ""
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        return None, f"damaged array data ({' '.join(str(exc).split())[:120]})"


class NpzReader:
    """An ``.npz`` whose members are read only after their headers match expectations, within
    one memory budget for all members together (a regular file, no pickle)."""

    def __init__(self, path: str | Path, what: str, hint: str, budget: int | None = None):
        self.path, self.what, self.hint = Path(path), what, hint
        self.budget = model_budget() if budget is None else budget
        self._stack = contextlib.ExitStack()
        fh = self._stack.enter_context(open_regular(path, what))
        try:
            self._zip = self._stack.enter_context(zipfile.ZipFile(fh))
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            self._stack.close()
            raise self.refuse(f"is not a readable .npz archive ({exc})") from None
        if len(infos) > _MAX_ZIP_RECORDS:
            self._stack.close()
            raise self.refuse(f"holds {len(infos)} records")
        self._infos = {i.filename[:-4]: i for i in infos if i.filename.endswith(".npy")}
        self.files = list(self._infos)

    def refuse(self, why: str) -> InputError:
        return InputError(f"{self.what} {why}; {self.hint}", path=self.path)

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def read(self, name: str, shape: tuple[int, ...] | None = None, kinds: str = "f"
             ) -> np.ndarray:
        """Member ``name`` if its header says ``shape`` (None: any) and a dtype kind in
        ``kinds``; refused (one line) otherwise, before its data is read."""
        info = self._infos.get(name)
        if info is None:
            raise self.refuse(f"has no array {name!r}")

        def expect(got: tuple[int, ...], dtype: np.dtype) -> str | None:
            if shape is not None and got != tuple(shape):
                return f"has shape {got}, expected {tuple(shape)}"
            if dtype.kind not in kinds:
                return f"has dtype {dtype}, expected {'floating point' if kinds == 'f' else kinds}"
            return None

        try:
            with self._zip.open(info) as fh:
                arr, why = read_npy(fh, expect, info.file_size, self.budget)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            arr, why = None, f"cannot be read ({' '.join(str(exc).split())[:120]})"
        if arr is None:
            raise self.refuse(f"array {name!r}: {why}")
        self.budget -= arr.nbytes
        return arr


# ----------------------------------------------------------------------------- torch files

def _check_torch_zip(fh: IO[bytes], path: str | Path, what: str, hint: str,
                     budget: int) -> None:
    head = fh.read(2)
    fh.seek(0)
    if head[:1] == b"\x80":
        raise InputError(f"the {what} is a bare pickle (an old torch format that can run code "
                         f"when loaded), which this tool never opens; {hint}", path=path)
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise InputError(f"cannot read the {what}: it is not a torch file (torch.save's zip format); "
                         f"{hint}",
                         path=path) from None
    fh.seek(0)
    if len(infos) > _MAX_ZIP_RECORDS:
        raise InputError(f"the {what} holds {len(infos)} records; {hint}", path=path)
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED
              or i.file_size != i.compress_size]
    if packed:
        raise InputError(f"the {what} holds compressed records ({packed[0][:80]}), which "
                         "torch.save never writes and which could inflate without bound; "
                         f"{hint}", path=path)
    total = sum(i.file_size for i in infos)
    if total > budget:
        raise over_budget(total, f"the {what}", path)


def torch_load(path: str | Path, what: str, hint: str, budget: int | None = None,
               data: bytes | None = None) -> Any:
    """``torch.load(weights_only=True)`` of a regular file (or of ``data``, e.g. a package
    member, with ``path`` naming it) that passed the checks above: torch's zip format, stored
    records only, within the budget (one handle: what is checked is what is loaded). Every
    failure is one line."""
    import io

    budget = model_budget() if budget is None else budget
    with contextlib.ExitStack() as stack:
        fh = io.BytesIO(data) if data is not None else stack.enter_context(
            open_regular(path, what))
        _check_torch_zip(fh, path, what, hint, budget)
        return _load(fh, path, what, hint)


def _load(fh: IO[bytes], path: str | Path, what: str, hint: str) -> Any:
    import torch

    try:
        return torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad file
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            first = "it holds Python objects that only a full (code-running) unpickling loads"
        raise InputError(f"cannot read the {what} ({type(exc).__name__}: {first[:200]}); "
                         f"{hint}", path=path) from None
