"""Extraction against the machine's limit: VGG16 layer-21 GFLOP/s vs the matmul peak, one run.

Measured in one process, with the thread count the extractor uses (torch's default: one per
core), interleaved round by round so that load from other processes hits every figure alike:

* **peak** - ``torch.mm`` on square matrices (several sizes; the best counts) in fp32 and bf16;
  ``2 n^3`` FLOPs per product.
* **network** - :class:`FeatureExtractor`'s inference trunk (``features[:21]``, relu4_2) on an
  already-decoded batch, as :meth:`FeatureExtractor.activation` runs it, in fp32 and in the
  precision ``--precision auto`` picks here. FLOPs: ``2 Cin Cout k k H W`` per convolution at
  the input size used (24.2 GFLOP per 224 px image); ReLU and pooling are not counted.
* **end to end** - ``FeatureExtractor.extract`` over synthetic 320x640 PNGs (``core.synthetic``)
  with no cache: decoding, resizing, the network and the float16 rounding, all of it; decoding
  uses the same two cores, so it is below the network figure by the decoding's share.
* **before** (``--compare``) - the network as it ran before this benchmark existed: one network
  call per batch of 8, ReLU as a separate pass, fp32 in NCHW.

Every figure is the best round; ``median`` shows the spread. On a machine shared with other
work, ``--clock cpu`` measures one thread by its own CPU time instead (``time.thread_time``;
end to end: the process's CPU time, decoding threads included): GFLOP per CPU-second of one
core against the one-core peak measured the same way, a ratio that time taken by other
processes does not change (shared caches and memory bandwidth still do). ``--layers`` adds a per-layer table
of the auto-precision trunk (each conv's GFLOP/s, the time left in pooling and the rest).

    python benchmarks/bench_peak.py                       # ~1-2 min on 2 idle cores
    python benchmarks/bench_peak.py --rounds 7 --layers --compare --json peak.json
    python benchmarks/bench_peak.py --clock cpu --compare   # busy machine: per-core CPU time
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_flags() -> list[str]:
    """The bf16/AMX flags the kernel reports (what ``--precision auto`` looks at)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                            if f in have]
    except OSError:
        pass
    return []


def conv_flops(trunk, input_size: int) -> list[tuple[str, int]]:
    """``(name, FLOPs)`` of each convolution of ``trunk`` for one square image (meta run)."""
    import copy

    import torch

    probe = copy.deepcopy(trunk).to("meta")
    out: list[tuple[str, int]] = []
    x = torch.empty(1, 3, input_size, input_size, device="meta")
    with torch.no_grad():
        for i, child in enumerate(probe):
            x = child(x)
            if isinstance(child, torch.nn.Conv2d):
                k = child.kernel_size[0] * child.kernel_size[1]
                f = 2 * child.in_channels // child.groups * child.out_channels * k * x.shape[2] \
                    * x.shape[3]
                out.append((f"{i}:conv{child.in_channels}->{child.out_channels}@{x.shape[2]}", f))
    return out


CLOCK = time.perf_counter  # --clock cpu: time.thread_time (one thread, its own CPU time)


def mm_gflops(dtype, n: int, min_seconds: float = 0.25) -> float:
    """Best GFLOP/s of ``torch.mm`` on ``n x n`` matrices over a few repetitions."""
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    c = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=c)
    best = float("inf")
    t_end = time.perf_counter() + min_seconds
    while True:
        t0 = CLOCK()
        torch.mm(a, b, out=c)
        best = min(best, CLOCK() - t0)
        if time.perf_counter() > t_end:
            break
    return 2 * n ** 3 / best / 1e9


def best_time(fn, repeats: int, min_seconds: float = 0.0) -> float:
    """Shortest of at least ``repeats`` calls (more until ``min_seconds`` passed): on a shared
    machine the shortest call is the one least disturbed by other processes."""
    best = float("inf")
    t_end = time.perf_counter() + min_seconds
    done = 0
    while done < repeats or time.perf_counter() < t_end:
        t0 = CLOCK()
        fn()
        best = min(best, CLOCK() - t0)
        done += 1
    return best


def plain_module(loaded, layer, dtype, channels_last):
    """The trunk as it ran before: a private copy, separate ReLUs (no fusion)."""
    import copy

    import torch

    m = copy.deepcopy(loaded.truncated(layer)).eval().to(dtype=dtype)
    for p in m.parameters():
        p.requires_grad_(False)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def layer_table(fx, x, repeats: int) -> list[dict]:
    """Per child of ``fx.module``: milliseconds at its compute batch and GFLOP/s of convs."""
    import torch

    rows = []
    with torch.inference_mode():
        h = x.to(fx.dtype)
        if fx.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for i, child in enumerate(fx.module):
            inp = h
            dt = best_time(lambda child=child, inp=inp: child(inp), repeats)
            h = child(inp)
            w = getattr(child, "weight", None)
            flops = 0
            if w is not None and w.ndim == 4:
                flops = 2 * w.shape[0] * w.shape[1] * w.shape[2] * w.shape[3] * h.shape[0] \
                    * h.shape[2] * h.shape[3]
            rows.append({"layer": i, "kind": type(child).__name__, "shape": list(h.shape),
                         "ms": round(1e3 * dt, 2),
                         "gflops": round(flops / dt / 1e9) if flops else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-images", type=int, default=16, help="PNGs for the end-to-end figure")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1536, 2048, 4096],
                    help="matrix sizes for the peak")
    ap.add_argument("--min-seconds", type=float, default=1.0,
                    help="time each network figure for at least this long per round")
    ap.add_argument("--layers", action="store_true", help="per-layer table")
    ap.add_argument("--compare", action="store_true", help="also the network as it ran before")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: one thread timed by its own CPU time (for a busy machine)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    global CLOCK
    if args.clock == "cpu":
        torch.set_num_threads(1)
        CLOCK = time.thread_time

    from napari_ish_annotator.core.backbones.weights import load_backbone
    from napari_ish_annotator.core.data.manifest import read_manifest
    from napari_ish_annotator.core.features.extractor import (
        ExtractorConfig,
        FeatureExtractor,
    )
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    loaded = load_backbone("vgg16", "random", seed=0)

    def make(precision: str) -> FeatureExtractor:
        return FeatureExtractor(ExtractorConfig(weights="random", precision=precision,
                                                batch_size=args.batch_size,
                                                input_size=args.input_size, device="cpu"),
                                loaded=loaded)

    fx = {"fp32": make("fp32")}
    auto = make("auto")
    fx.setdefault(auto.precision, auto)
    per_conv = conv_flops(loaded.truncated(auto.layer), args.input_size)
    flops_img = sum(f for _, f in per_conv)
    info = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "clock": args.clock, "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "auto_precision": auto.precision, "input_size": args.input_size,
        "batch_size": args.batch_size, "compute_batch": {k: f.compute_batch for k, f in fx.items()},
        "gflop_per_image": round(flops_img / 1e9, 3),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }
    print("# " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)

    x = torch.from_numpy(np.random.default_rng(0).standard_normal(
        (args.batch_size, 3, args.input_size, args.input_size)).astype(np.float32))
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if args.compare:
        before = make("fp32")
        before._channels_last = False
        before._module = plain_module(loaded, before.layer, torch.float32, False)
        before._compute_batch = args.batch_size
        fx_before = {"fp32 before": before}
    else:
        fx_before = {}
    with tempfile.TemporaryDirectory(prefix="bench-peak-") as tmp:
        manifest = generate_dataset(tmp, args.n_images, seed=0, size=(320, 640),
                                    write_masks=False)
        paths = read_manifest(manifest).paths
        for f in [*fx.values(), *fx_before.values()]:  # warm-up: oneDNN primitives, pages
            f.activation(x)
        auto.extract(paths[: args.batch_size])
        samples: dict[str, list[float]] = {}
        for r in range(args.rounds):
            line = []
            for prec in fx:
                g = max(mm_gflops(dtypes[prec], n) for n in args.sizes)
                samples.setdefault(f"peak {prec}", []).append(g)
                line.append(f"peak {prec} {g:.0f}")
            for name, f in [*fx.items(), *fx_before.items()]:
                dt = best_time(lambda f=f: f.activation(x), 2, args.min_seconds)
                g = len(x) * flops_img / dt / 1e9
                samples.setdefault(f"network {name}", []).append(g)
                line.append(f"network {name} {g:.0f}")
            t0 = time.process_time() if args.clock == "cpu" else time.perf_counter()
            auto.extract(paths)
            dt = (time.process_time() if args.clock == "cpu" else time.perf_counter()) - t0
            g = len(paths) * flops_img / dt / 1e9
            samples.setdefault(f"end to end {auto.precision}", []).append(g)
            line.append(f"end to end {auto.precision} {g:.0f}")
            print(f"round {r + 1}: " + ", ".join(line) + " GFLOP/s", flush=True)
        layers = layer_table(auto, x[: auto.compute_batch], 5) if args.layers else None

    info["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    peak = {p: max(samples[f"peak {p}"]) for p in fx}
    rows = []
    for name, vals in samples.items():
        prec = "bf16" if "bf16" in name else "fp32"
        best = max(vals)
        rows.append({"figure": name, "gflops": round(best), "median": round(statistics.median(vals)),
                     "of_peak": None if name.startswith("peak") else round(best / peak[prec], 3),
                     "peak_used": prec, "images_per_s": None if name.startswith("peak")
                     else round(best * 1e9 / flops_img, 1)})
    print(f"\nVGG16 features[:21] at {args.input_size} px: {flops_img / 1e9:.2f} GFLOP per image "
          f"({len(per_conv)} convs)")
    print(f"{'figure':<24} {'GFLOP/s':>8} {'median':>8} {'of peak':>8} {'img/s':>7}")
    for row in rows:
        frac = "" if row["of_peak"] is None else f"{100 * row['of_peak']:.0f}% {row['peak_used']}"
        ips = "" if row["images_per_s"] is None else f"{row['images_per_s']:.1f}"
        print(f"{row['figure']:<24} {row['gflops']:>8} {row['median']:>8} {frac:>8} {ips:>7}")
    if layers:
        print(f"\nper layer ({auto.precision}, {auto.compute_batch} image(s) per call):")
        total = sum(r["ms"] for r in layers)
        for r in layers:
            g = "" if r["gflops"] is None else f"{r['gflops']:>6} GFLOP/s"
            print(f"  {r['layer']:>2} {r['kind']:<10} {str(r['shape']):<20} {r['ms']:>7.2f} ms  {g}")
        conv_ms = sum(r["ms"] for r in layers if r["gflops"])
        print(f"  total {total:.1f} ms: convolutions {conv_ms:.1f} ms, the rest "
              f"{total - conv_ms:.1f} ms")
    print(f"load average before {info['load_average_before']}, after "
          f"{info['load_average_after']} (1, 5, 15 min) on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "rows": rows, "samples": samples,
                                         "per_conv_flops": per_conv, "layers": layers},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
