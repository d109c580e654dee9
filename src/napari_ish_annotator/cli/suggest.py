"""``ish-annotator suggest``: which unlabelled images to label next (active learning)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.data.inputs import collect_inputs
from ..core.data.manifest import read_manifest_genes
from ..core.labels.store import LabelStore
from ..core.learn.active import iter_suggest, write_suggestions
from ..core.learn.bundle import load_bundle
from ..core.utils.errors import InputError
from . import _common as c


def _genes(inputs: list[Path]) -> dict[Path, str | None]:
    """Genes of images listed in manifest inputs (other inputs: unknown)."""
    genes: dict[Path, str | None] = {}
    for item in inputs:
        if Path(item).suffix.lower() == ".csv" and Path(item).is_file():
            genes.update(read_manifest_genes(item))
    return genes


def cmd_suggest(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise InputError(f"--n must be at least 1, got {args.n}")
    out = Path(args.out).absolute()
    if any(Path(item).absolute() == out for item in args.inputs):
        raise InputError("is both an input and the --out file; choose another --out",
                         path=args.out)
    bundle = load_bundle(args.model_dir)
    images = collect_inputs(args.inputs)
    n_given = len(images)
    if args.labels is not None:  # leave out images anybody has labelled already

        with LabelStore(args.labels, read_only=True) as store:
            images = [Path(p) for p in store.unlabelled(images)]
    if not images:
        raise InputError("every input image is already labelled in the label store; give "
                         "unlabelled images", path=args.labels)
    genes = _genes(args.inputs)
    gene_of = [genes.get(image) for image in images]
    device = None if args.device == "auto" else args.device
    suggestion = c.run(iter_suggest(bundle, images, gene_of, args.n, c.cache_dir(args), device,
                                    args.chunk_size), args, "suggest")
    write_suggestions(args.out, images, suggestion)
    c.say(args, f"ranked {len(images)} unlabelled image(s)"
                + (f" ({n_given - len(images)} labelled ones left out)"
                   if n_given != len(images) else "")
                + f"; wrote the best {len(suggestion.order)} to {args.out}")
    return c.EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("suggest", help="rank unlabelled images by how much a label would help")
    p.add_argument("model_dir", type=Path)
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="images, folders or manifests (a manifest's gene column spreads the "
                        "picks across genes)")
    p.add_argument("--n", type=int, required=True, help="how many images to suggest")
    p.add_argument("--out", required=True, type=Path, help="CSV to write: image,score best first")
    p.add_argument("--labels", type=Path, default=None, metavar="STORE",
                   help="label store: images with any label in it are left out")
    p.add_argument("--chunk-size", type=int, default=256,
                   help="images whose features are held in memory at once")
    c.add_cache(p)
    c.add_common(p)
    p.set_defaults(handler=cmd_suggest, outputs=[("out", False)])
