#!/usr/bin/env python
"""Time synthetic embryo rendering (core/synthetic.make_embryo) at the default 320 x 640.

Prints median and best milliseconds per image over a few stages; the design target is
< 50 ms per image on one CPU core.  Usage: python benchmarks/bench_synthetic.py [N]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from napari_ish_annotator.core.data.vocabulary import STAGE_RANGES, default_vocabulary
from napari_ish_annotator.core.synthetic.embryos import make_embryo


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    for stage in STAGE_RANGES:
        vocab = default_vocabulary(stage)
        rng = np.random.default_rng(0)
        make_embryo(vocab[:3], vocab, rng)  # warm-up (grid caches)
        times = []
        for i in range(n):
            present = [vocab[i % 10], vocab[(3 * i + 1) % 10]]
            t0 = time.perf_counter()
            make_embryo(present, vocab, rng, size=(320, 640))
            times.append(time.perf_counter() - t0)
        print(f"stage {stage:>5}: median {1000 * np.median(times):5.1f} ms, "
              f"best {1000 * min(times):5.1f} ms per 640x320 image (n={n})")


if __name__ == "__main__":
    main()
