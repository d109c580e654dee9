"""``ish-annotator predict``: per-term probabilities for images, folders or manifests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.data.inputs import iter_scan_inputs, list_inputs
from ..core.learn.bundle import load_bundle
from ..core.learn.groups import combine_probabilities, parse_by, record_groups
from ..core.utils.errors import InputError
from ..core.workflow import iter_predict_chunked, write_predictions, write_records
from . import _common as c


def cmd_predict(args: argparse.Namespace) -> int:
    out = Path(args.out).absolute()
    for item in args.inputs:
        if Path(item).absolute() == out or (Path(item).exists() and out.exists()
                                            and Path(item).samefile(out)):
            raise InputError("is both an input and the --out file; predictions would overwrite "
                             "it - choose another --out", path=item)
    bundle = load_bundle(args.model_dir)
    for note in bundle.notes:
        c.say(args, note)
    if args.chunk_size < 1:
        raise InputError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    by = parse_by(args.by) if args.by else None
    images, genes, stages = _skip_bad_inputs(args) if args.skip_bad else _inputs(args.inputs)
    if not images:
        raise InputError("no images found; give image files, folders of images or manifests",
                         path=" ".join(map(str, args.inputs)))
    device = None if args.device == "auto" else args.device
    try:
        probabilities, votes = c.run(iter_predict_chunked(
            bundle, images, c.cache_dir(args), device, args.chunk_size,
            executor=c.executor(args)), args, "predict")
    except InputError as exc:
        if args.skip_bad or exc.path is None or Path(exc.path) not in set(images):
            raise
        raise InputError(f"{exc} (or pass --skip-bad to leave unreadable images out)") from exc
    if by:
        records = record_groups(genes, stages, by)
        write_records(args.out, records, bundle.classifier.vocabulary,
                      combine_probabilities(probabilities, records))
        c.say(args, f"wrote {len(records)} {' x '.join(by)} records of {len(images)} images "
                    f"to {args.out}")
        return c.EXIT_OK
    write_predictions(args.out, images, bundle.classifier.vocabulary, probabilities,
                      votes if args.votes else None)
    c.say(args, f"wrote probabilities of {len(bundle.classifier.vocabulary)} terms for "
                f"{len(images)} images to {args.out}")
    return c.EXIT_OK


def _inputs(inputs: list[Path]) -> tuple[list[Path], list[str | None], list[str | None]]:
    """The images the inputs name (strict), with each one's gene and stage where a manifest
    gives them."""
    if not inputs:
        raise InputError("no inputs given; pass image files, folders or manifest CSVs")
    listing = list_inputs(inputs, strict=True)
    return (list(listing.paths), [s.gene if s else None for s in listing.samples],
            [s.stage if s else None for s in listing.samples])


def _skip_bad_inputs(args: argparse.Namespace
                     ) -> tuple[list[Path], list[str | None], list[str | None]]:
    """``predict --skip-bad``: decode every input once, warn about each unusable one.

    One corrupt (or oversized) file among thousands should not stop a batch job, nor should
    each re-run reveal only the next bad file. Non-image files inside folders stay silently
    ignored, as without the option.
    """
    scanned = c.run(iter_scan_inputs(args.inputs, check="decode"), args, "checking images")
    for problem in scanned.problems:
        if not problem.ignorable:
            print(f"ish-annotator predict: warning: skipped {problem}", file=sys.stderr)
    return list(scanned.paths), list(scanned.genes), list(scanned.stages)


def register(sub) -> None:
    p = sub.add_parser("predict", help="per-term probabilities for images, folders or manifests")
    p.add_argument("model_dir", type=Path)
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    p.add_argument("--out", required=True, type=Path, help="predictions CSV to write")
    c.add_cache(p)
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out (with a warning) images that are missing or cannot be "
                        "decoded, instead of stopping; every image is decoded once up front")
    p.add_argument("--chunk-size", type=int, default=256,
                   help="images whose features are held in memory at once (default "
                        "%(default)s: about 200 MB at VGG16 layer 21)")
    p.add_argument("--votes", action="store_true",
                   help="also write '<term> vote' columns: the paper's decision, the ensemble "
                        "members' majority vote (1 present, 0 absent)")
    p.add_argument("--by", default=None, metavar="gene,stage",
                   help="write one row per gene x stage record instead of per image: gene, "
                        "stage, images, one probability per term (the images' log-odds "
                        "averaged) and calls; images without a gene or stage are records of "
                        "their own")
    c.add_dask(p)
    c.add_common(p)
    p.set_defaults(handler=cmd_predict, outputs=[("out", False)])
