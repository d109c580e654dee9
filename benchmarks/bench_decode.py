"""Decoding speed per CPU core for 320x128 ISH images (issue 28): can the CPU keep a GPU fed?

    python benchmarks/bench_decode.py [--n 400] [--repeats 3] [--size 224]

Writes synthetic embryos (the BDGP size, 320 x 128) as PNG, BMP and JPEG, then measures the CPU
time of ONE thread (``torch.set_num_threads(1)``, ``time.thread_time``) for each way of turning
a file into pixels:

* ``read_rgb`` - today's decoder (Pillow, after the header check of core/data/images.py);
* ``pillow`` - bare ``Image.open(...).convert("RGB")`` (what read_rgb costs without checks);
* ``pillow-draft`` - JPEG only: Pillow's draft mode (DCT scaling, a 2x smaller picture);
* ``torchvision`` - ``torchvision.io.decode_image`` on the file's bytes (C++, no GIL);
* ``numpy-bmp`` - 24-bit BMP rows read straight into a numpy array;
* ``decode_rgb`` - the extraction path now (core/features/decoding.py: vetting + fastest exact);
* ``+resize`` - decode_rgb plus the resize to uint8 (what a decoding worker does per image
  for a GPU, which normalises on the device);
* ``+preprocess`` - decode_rgb plus resize and normalise to float32 (what it does on the CPU).

It prints images/s per core and, for each alternative, the max abs difference from Pillow's
pixels. A GPU at 3,000 img/s needs 3,000 / (img/s per core) cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_ish_annotator.core.data.images import read_rgb
from napari_ish_annotator.core.features.decoding import decode_rgb
from napari_ish_annotator.core.features.preprocess import preprocess_np, resize_uint8
from napari_ish_annotator.core.synthetic.embryos import generate_dataset

FORMATS = ("png", "bmp", "jpg")


def write_images(folder: Path, n: int) -> dict[str, list[Path]]:
    """``n`` synthetic 320x128 embryos in each format (JPEG quality 90, as BDGP's)."""
    from PIL import Image

    manifest = generate_dataset(folder / "src", n_images=min(n, 64), seed=0)
    sources = sorted(p for p in manifest.parent.rglob("*.png"))
    out: dict[str, list[Path]] = {f: [] for f in FORMATS}
    for i in range(n):
        with Image.open(sources[i % len(sources)]) as im:
            rgb = im.convert("RGB").resize((320, 128))
        for fmt in FORMATS:
            path = folder / fmt / f"img{i:05d}.{fmt}"
            path.parent.mkdir(exist_ok=True)
            rgb.save(path, quality=90) if fmt == "jpg" else rgb.save(path)
            out[fmt].append(path)
    return out


def _pillow(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _pillow_draft(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (im.width // 2, im.height // 2))
        return np.asarray(im.convert("RGB"))


def _torchvision(path: Path) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode, decode_image

    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    return decode_image(data, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


def read_bmp24(data: bytes) -> np.ndarray | None:
    """A plain 24-bit uncompressed BMP (BDGP's format) as ``H x W x 3`` RGB, straight from
    its bytes; None for any other BMP flavour (palette, 32-bit, RLE, bit fields: Pillow's)."""
    if len(data) < 54 or data[:2] != b"BM":
        return None
    offset = int.from_bytes(data[10:14], "little")
    header = int.from_bytes(data[14:18], "little")
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = int.from_bytes(data[22:26], "little", signed=True)
    planes, bpp = int.from_bytes(data[26:28], "little"), int.from_bytes(data[28:30], "little")
    compression = int.from_bytes(data[30:34], "little")
    if header < 40 or planes != 1 or bpp != 24 or compression != 0 or width <= 0 or height == 0:
        return None
    stride = (width * 3 + 3) & ~3
    if offset < 14 + header or offset + stride * abs(height) > len(data):
        return None  # truncated: Pillow says what is wrong
    rows = np.frombuffer(data, np.uint8, count=stride * abs(height), offset=offset)
    bgr = rows.reshape(abs(height), stride)[:, :width * 3].reshape(abs(height), width, 3)
    if height > 0:  # bottom-up, the usual BMP
        bgr = bgr[::-1]
    return np.ascontiguousarray(bgr[..., ::-1])



def _numpy_bmp(path: Path) -> np.ndarray:
    rgb = read_bmp24(path.read_bytes())
    if rgb is None:
        raise ValueError(f"{path} is not a plain 24-bit BMP")
    return rgb


def decoders(size: int) -> dict[str, Callable[[Path], np.ndarray]]:
    """Name -> decoder; ``+preprocess`` returns the network input, not pixels."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return {
        "read_rgb": read_rgb,
        "pillow": _pillow,
        "pillow-draft": _pillow_draft,
        "torchvision": _torchvision,
        "numpy-bmp": _numpy_bmp,
        "decode_rgb": decode_rgb,
        "decode_rgb+resize": lambda p: resize_uint8(decode_rgb(p), size),
        "decode_rgb+preprocess": lambda p: preprocess_np(decode_rgb(p), size, mean, std),
    }


def applies(name: str, fmt: str) -> bool:
    if name == "pillow-draft":
        return fmt == "jpg"
    if name == "numpy-bmp":
        return fmt == "bmp"
    if name == "torchvision":
        return fmt != "bmp"  # it decodes JPEG, PNG, WebP and GIF only
    return True


def times_per_image(fns: dict[str, Callable[[Path], np.ndarray]], paths: list[Path],
                    repeats: int) -> dict[str, float]:
    """CPU seconds of this thread per image for each decoder (``time.thread_time``: what one
    core spends, not the wall time a busy machine stretches); the best of ``repeats`` rounds,
    the decoders taking turns within a round."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.thread_time()
            for p in paths:
                fn(p)
            best[name] = min(best[name], (time.thread_time() - t0) / len(paths))
    return best


def max_diff(fn: Callable[[Path], np.ndarray], paths: list[Path]) -> int | None:
    """Max abs pixel difference from Pillow's RGB over ``paths`` (None: another shape)."""
    worst = 0
    for p in paths:
        a, b = fn(p), _pillow(p)
        if a.shape != b.shape:
            return None
        worst = max(worst, int(np.abs(a.astype(np.int16) - b).max()))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="images per format")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224, help="network input size")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_images(Path(tmp), args.n)
        sizes = {f: np.mean([p.stat().st_size for p in files[f]]) / 1024 for f in FORMATS}
        print(f"{args.n} images per format, 320x128; mean file size: "
              + ", ".join(f"{f} {s:.1f} KiB" for f, s in sizes.items()))
        print("| decoder | format | img/s per core | ms/img | max abs diff vs Pillow |")
        print("|---|---|---:|---:|---:|")
        for fmt in FORMATS:
            fns = {n: fn for n, fn in decoders(args.size).items() if applies(n, fmt)}
            for fn in fns.values():
                fn(files[fmt][0])  # warm-up: imports, lazy init
            seconds = times_per_image(fns, files[fmt], args.repeats)
            for name, fn in fns.items():
                diff = "-" if "+" in name else max_diff(fn, files[fmt][:50])
                print(f"| {name} | {fmt} | {1 / seconds[name]:,.0f} | "
                      f"{seconds[name] * 1e3:.2f} | {diff} |", flush=True)
    print(f"one thread (torch.set_num_threads(1)); torch {torch.__version__}, "
          f"Pillow {__import__('PIL').__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
