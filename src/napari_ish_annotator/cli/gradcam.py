"""``ish-annotator gradcam``: where in the embryo a term's evidence lies, through a model
bundle's logistic ensemble or through a fine-tuned checkpoint's own term output."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.data.images import read_rgb
from ..core.explain.finetuned import gradcam_mtl
from ..core.explain.gradcam import gradcam_for_image, heat_to_rgb, overlay
from ..core.finetune import load_ensemble
from ..core.learn.bundle import load_bundle
from ..core.utils.errors import InputError
from ..core.utils.files import write_npy_atomic, write_png_atomic
from ..core.workflow import make_extractor
from . import _common as c


def cmd_gradcam(args: argparse.Namespace) -> int:
    if Path(args.model_dir).is_file():  # a fine-tuning checkpoint: its multi-task head
        return cmd_gradcam_mtl(args)
    import numpy as np

    bundle = load_bundle(args.model_dir)
    for note in bundle.notes:
        c.say(args, note)
    if args.term not in bundle.classifier.vocabulary:
        raise InputError(f"term {args.term!r} is not in the model's vocabulary: "
                         f"{'; '.join(bundle.classifier.vocabulary)}", path=args.model_dir)
    image = read_rgb(args.image)
    config = bundle.extractor
    if args.device != "auto":
        from dataclasses import replace

        config = replace(config, device=args.device)
    heat = gradcam_for_image(bundle, make_extractor(config), image, args.term, method=args.method)
    _write(args, image, np.asarray(heat, dtype=np.float32), "")
    return c.EXIT_OK


def cmd_gradcam_mtl(args: argparse.Namespace) -> int:
    """Grad-CAM through a fine-tuned checkpoint's own term output (MODEL_DIR is a .pt file);
    for an ensemble checkpoint the mean of its members' maps."""
    import numpy as np

    model = load_ensemble(args.model_dir, device="cpu" if args.device == "auto" else args.device)
    if args.term not in model.vocabulary:
        raise InputError(f"term {args.term!r} is not in the checkpoint's vocabulary: "
                         f"{'; '.join(model.vocabulary)}", path=args.model_dir)
    image = read_rgb(args.image)
    heat = gradcam_mtl(model, image, [args.term])[0]
    _write(args, image, np.asarray(heat, dtype=np.float32), " through the fine-tuned head")
    return c.EXIT_OK


def _write(args: argparse.Namespace, image, heat, how: str) -> None:
    write_png_atomic(args.out, overlay(image, heat) if args.overlay else heat_to_rgb(heat))
    if args.npy:
        write_npy_atomic(args.npy, heat)
    c.say(args, f"wrote Grad-CAM of {args.term!r}{how} ({heat.shape[0]}x{heat.shape[1]}) "
                f"to {args.out}")


def register(sub) -> None:
    p = sub.add_parser("gradcam", help="Grad-CAM heat map of one term for one image")
    p.add_argument("model_dir", type=Path, help="model folder, or a fine-tuning checkpoint file")
    p.add_argument("image", type=Path)
    p.add_argument("--term", required=True)
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--npy", type=Path, default=None, help="also write the float map in [0, 1]")
    p.add_argument("--overlay", action="store_true", help="blend the map over the image")
    p.add_argument("--method", default="hirescam", choices=["hirescam", "gradcam"])
    c.add_common(p)
    p.set_defaults(handler=cmd_gradcam, outputs=[("out", False), ("npy", False)])
