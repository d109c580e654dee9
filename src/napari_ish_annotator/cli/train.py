"""``ish-annotator train``: fit the per-term classifiers on a manifest into a model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.data.manifest import read_manifest
from ..core.learn.bundle import check_bundle_target, save_bundle
from ..core.workflow import iter_train
from . import _common as c


def cmd_train(args: argparse.Namespace) -> int:
    dataset = read_manifest(args.manifest, vocabulary=c.vocabulary(args))
    bundle = c.run(iter_train(dataset, c.extractor_config(args), c.ensemble_config(args),
                              cache_dir=c.cache_dir(args), executor=c.executor(args)),
                   args, "train")
    save_bundle(args.out, bundle)
    c.say(args, f"saved model for {len(dataset.vocabulary)} terms trained on "
                f"{len(dataset.samples)} images to {args.out}")
    return c.EXIT_OK


def check_target(args: argparse.Namespace) -> None:
    """An existing folder that is not a model bundle is never overwritten."""
    check_bundle_target(args.out)


def register(sub) -> None:
    p = sub.add_parser("train", help="fit the per-term classifiers on a manifest")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    c.add_layer(p)
    c.add_backbone(p)
    c.add_classifier(p)
    c.add_dask(p)
    c.add_common(p)
    p.set_defaults(handler=cmd_train, outputs=[("out", True)], check=check_target)
