"""Peak memory and time of ``ish-annotator gradcam`` (and of a refused predict) on large images
(issue 18: a 17 KB 12000x12000 PNG made gradcam ask for 4.3 GiB).

    python benchmarks/bench_large_image.py [--sides 6000,12000]

Trains a small model (VGG16, random weights, 96 px input) on synthetic embryos, writes one
PNG per side, runs ``gradcam --overlay --npy`` with ``--max-pixels`` raised to fit it, each in
a fresh process that reports its own peak RSS; then ``predict`` and ``gradcam`` on a 30000x30000
deflate TIFF under the default budget (refused from the header).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="6000,12000", help="image sides in pixels")
    args = parser.parse_args()
    from PIL import Image

    from napari_ish_annotator.cli import main as cli
    from napari_ish_annotator.core.synthetic.embryos import generate_dataset

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from test_hostile_images import run_cli, write_tiff_bomb

    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        root = Path(tmp)
        manifest = generate_dataset(root / "data", n_images=12, stage="13-16", seed=3,
                                    size=(96, 192), min_positives=3, write_masks=False)
        model = root / "model"
        assert cli(["train", str(manifest), "--out", str(model), "--ensemble", "3", "--weights",
                    "random", "--input-size", "96", "--device", "cpu", "--quiet"]) == 0
        term = json.loads((model / "model.json").read_text())["vocabulary"][0]
        for side in (int(s) for s in args.sides.split(",")):
            image = root / f"side{side}.png"
            ramp = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
            Image.fromarray(np.tile(ramp, (side, 1))).convert("RGB").save(image)
            code, err, seconds, rss = run_cli(
                "gradcam", str(model), str(image), "--term", term, "--out", str(root / "h.png"),
                "--npy", str(root / "h.npy"), "--overlay", "--device", "cpu", "--quiet",
                "--max-pixels", str(side * side))
            print(f"gradcam {side}x{side} ({side * side / 1e6:.0f} Mpx): exit {code}, "
                  f"{seconds:.1f} s, peak RSS {rss:.0f} MB {' '.join(err)[-200:]}")
        bomb = write_tiff_bomb(root / "bomb.tif")
        for argv in (["predict", str(model), str(bomb), "--out", str(root / "p.csv")],
                     ["gradcam", str(model), str(bomb), "--term", term, "--out",
                      str(root / "b.png")]):
            code, _, seconds, rss = run_cli(*argv, "--quiet")
            print(f"{argv[0]} on a {bomb.stat().st_size / 1e6:.1f} MB 30000x30000 TIFF: exit "
                  f"{code}, {seconds:.1f} s, peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
