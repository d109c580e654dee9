"""``ish-annotator evaluate``: the paper's Table 2 by grouped CV or on a held-out manifest,
and ``--compare CKPT`` for TL against TL+MTL on the same folds."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.data.manifest import read_manifest
from ..core.finetune import load_checkpoint
from ..core.learn.groups import parse_by
from ..core.learn.metrics import METRICS
from ..core.learn.table import format_table
from ..core.utils.errors import InputError
from ..core.utils.files import write_json_atomic
from ..core.workflow import iter_evaluate
from . import _common as c


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.compare:
        if args.by:
            raise InputError("--by evaluates one model's records; drop --compare (or --by)")
        if args.report:
            raise InputError("--report draws one model's figures; drop --compare (or --report)")
        if args.repeats is not None:
            raise InputError("--compare runs k-fold or --test; drop --repeats")
        return cmd_evaluate_compare(args)

    _check_protocol(args)
    by = parse_by(args.by) if args.by else None
    dataset = read_manifest(args.manifest, vocabulary=c.vocabulary(args))
    test = None
    if args.test:
        test = read_manifest(args.test, vocabulary=dataset.vocabulary, require_positives=False)
    results = c.run(
        iter_evaluate(dataset, c.extractor_config(args), c.ensemble_config(args),
                      layers=c.parse_layers(args.layers, args.backbone), folds=args.folds,
                      test_dataset=test, cache_dir=c.cache_dir(args), repeats=args.repeats,
                      test_fraction=args.test_fraction, by=by, report=args.report,
                      executor=c.executor(args)),
        args, "evaluate")
    print(format_table(results))
    if args.json:
        write_json_atomic(args.json, results)
        c.say(args, f"wrote metrics to {args.json}")
    if args.report:
        c.say(args, f"wrote figures and {Path(args.report) / 'index.md'}")
    return c.EXIT_OK


def _check_protocol(args: argparse.Namespace) -> None:
    """``--repeats``/``--test-fraction`` against ``--test``/``--folds``, before any extraction."""
    if args.repeats is not None and args.test:
        raise InputError("--repeats draws its own test genes; drop --test (or --repeats)")
    if args.repeats is not None and args.folds_given:
        raise InputError("--repeats and --folds are two protocols; give one of them")
    if args.test_fraction_given and args.repeats is None:
        raise InputError("--test-fraction needs --repeats R (the paper's random partitions)")
    if args.repeats is not None and args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    if not 0.0 < args.test_fraction < 1.0:
        raise InputError(f"--test-fraction must be between 0 and 1, got {args.test_fraction}")


class _Given(argparse.Action):
    """Store the value and remember that the user gave the option (defaults are not 'given')."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def format_compare_table(results: dict[str, dict]) -> str:
    """The paper's Table 2 layout: one row per (method, layer), mean metrics over terms."""
    header = f"{'method':<8}  {'layer':>5}  " + "  ".join(f"{m:>11}" for m in METRICS)
    lines = ["Mean over terms", header, "-" * len(header)]
    for method, res in results.items():
        for layer, summary in res.get("layers", {}).items():
            mean = summary.get("mean", {})
            cells = []
            for m in METRICS:
                v = mean.get(m)
                cells.append(f"{'n/a' if v is None or v != v else f'{v:.4f}':>11}")
            lines.append(f"{method:<8}  {layer:>5}  " + "  ".join(cells))
    return "\n".join(lines)


def cmd_evaluate_compare(args: argparse.Namespace) -> int:
    """TL (``--weights``) and TL+MTL (the checkpoint) on the same folds / the same test set."""
    from dataclasses import replace

    ckpt_path = Path(args.compare)
    ckpt = load_checkpoint(ckpt_path)  # fail fast on a bad file, before any extraction
    if ckpt["backbone"] != args.backbone:
        raise InputError(f"the checkpoint is for backbone {ckpt['backbone']!r}; pass --backbone "
                         f"{ckpt['backbone']}", path=ckpt_path)
    dataset = read_manifest(args.manifest, vocabulary=c.vocabulary(args))
    test = None
    if args.test:
        test = read_manifest(args.test, vocabulary=dataset.vocabulary, require_positives=False)
    elif ckpt.get("training_fingerprint") == dataset.fingerprint():
        c.say(args, "note: the checkpoint was fine-tuned on these very images, so cross-validated "
                    "TL+MTL figures are optimistic; fine-tune on a training manifest and pass the "
                    "held-out images with --test for a fair comparison")
    layers = c.parse_layers(args.layers, args.backbone)
    tl_config = c.extractor_config(args)
    mtl_config = replace(tl_config, weights=str(ckpt_path),
                         input_size=int(ckpt.get("input_size", tl_config.input_size)))
    if mtl_config.input_size != tl_config.input_size:
        c.say(args, f"note: TL+MTL uses the checkpoint's input size {mtl_config.input_size}")
    ens = c.ensemble_config(args)
    results = {}
    for name, config in (("TL", tl_config), ("TL+MTL", mtl_config)):
        results[name] = c.run(iter_evaluate(dataset, config, ens, layers=layers, folds=args.folds,
                                            test_dataset=test, cache_dir=c.cache_dir(args),
                                            executor=c.executor(args)),
                              args, f"evaluate {name}")
    print(format_compare_table(results))
    if args.json:
        payload = dict(results["TL"])  # CONTRACTS layout for the baseline ...
        payload["tl_mtl"] = {"checkpoint": str(ckpt_path), **results["TL+MTL"]}  # ... plus TL+MTL
        write_json_atomic(args.json, payload)
        c.say(args, f"wrote metrics to {args.json}")
    return c.EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="cross-validated or held-out metrics (paper Table 2)")
    p.add_argument("manifest", type=Path)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--test", type=Path, default=None, help="held-out test manifest")
    group.add_argument("--folds", type=int, default=5, action=_Given,
                       help="k for grouped k-fold CV (default 5)")
    p.add_argument("--repeats", type=int, default=None, metavar="R",
                   help="the paper's protocol: R seeded random gene-grouped train/test "
                        "partitions; prints mean ± std, --json adds \"std\" beside \"mean\"")
    p.add_argument("--test-fraction", type=float, default=0.25, action=_Given, metavar="F",
                   help="share of the genes held out in each --repeats partition "
                        "(default %(default)s)")
    p.add_argument("--layers", default=None,
                   help="comma-separated layers, e.g. 17,21,24,30 (default: the backbone's "
                        "default layer, 21 for VGG16)")
    p.add_argument("--json", type=Path, default=None, help="write metrics JSON here")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="write PNG figures (AUC per term with mean ± std over the splits, ROC "
                        "curves of the best and worst terms, a reliability diagram) and an "
                        "index.md showing them into DIR")
    p.add_argument("--by", default=None, metavar="gene,stage",
                   help="also evaluate gene x stage records (the annotation curators submit): "
                        "the held-out genes' image probabilities combined per record, same "
                        "splits; --json adds \"groups\" beside \"layers\"")
    p.add_argument("--layer", default=None, help=argparse.SUPPRESS)
    p.add_argument("--compare", metavar="CKPT", default=None,
                   help="also evaluate TL+MTL with this fine-tuned checkpoint on the "
                        "same folds and print both")
    c.add_backbone(p)
    c.add_classifier(p)
    c.add_dask(p)
    c.add_common(p)
    p.set_defaults(handler=cmd_evaluate, outputs=[("json", False), ("report", True)],
                   folds_given=False, test_fraction_given=False)
