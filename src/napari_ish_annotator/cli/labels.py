"""``ish-annotator labels``: several annotators' labels in one store, their agreement and
their consensus (see docs/consensus.md)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..core.data.inputs import collect_inputs
from ..core.data.manifest import read_manifest
from ..core.labels.consensus import METHODS, agreement, annotator_labels, consensus
from ..core.labels.store import LabelStore
from ..core.learn.metrics import labelled_mask
from ..core.utils.errors import InputError
from ..core.utils.files import write_json_atomic
from . import _common as c


def cmd_import(args: argparse.Namespace) -> int:
    name = args.annotator.strip()
    if not name:
        raise InputError("--annotator is empty; give the name of whoever made these labels")
    vocab = c.vocabulary(args)
    # read (and check) the whole manifest before the store is opened or created
    dataset = read_manifest(args.manifest, vocabulary=vocab, require_positives=False)
    if vocab is not None:  # terms outside the vocabulary are not recorded
        keep = set(vocab)
        dataset = replace(dataset, samples=[replace(s, terms=tuple(t for t in s.terms if t in keep))
                                            for s in dataset.samples])
    with LabelStore(args.store, annotator=name) as store:
        written = store.import_dataset(dataset, annotator=name)
    c.say(args, f"{written} label(s) of {len(dataset)} images x {len(dataset.vocabulary)} "
                f"terms recorded as {name!r} in {args.store}"
                + (" (all already there)" if written == 0 else ""))
    return c.EXIT_OK


def _open(path: Path):
    return LabelStore(path, read_only=True)


def cmd_agreement(args: argparse.Namespace) -> int:
    with _open(args.store) as store:
        images = store.labelled_images()
        if not images:
            raise InputError("the label store has no labels yet; import annotators' manifests "
                             "first (ish-annotator labels import STORE MANIFEST --annotator "
                             "NAME)", path=args.store)
        result = agreement(annotator_labels(store, images, c.vocabulary(args)))
    print(result.format_table())
    if args.json is not None:
        write_json_atomic(args.json, result.to_json())
        c.say(args, f"wrote {args.json}")
    return c.EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    if args.annotator is not None and args.min_agreement is not None:
        raise InputError("--min-agreement applies to a consensus; leave it out with "
                         "--annotator")
    # --out is neither an input nor any label store: checked up front (cli.check_outputs)
    images = collect_inputs([args.images])
    with _open(args.store) as store:
        if not store.labelled_images():
            raise InputError("the label store has no labels yet; import annotators' "
                             "manifests first", path=args.store)
        missing = store.unlabelled(images)
        if missing:
            raise InputError(f"{len(missing)} of {len(images)} images have no labels in the "
                             f"store (first: {missing[0]}); import their labels first or "
                             "export only labelled images", path=args.images)
        vocab = c.vocabulary(args) or store.terms()
        if args.annotator is not None:
            matrix = annotator_labels(store, images, vocab, [args.annotator]).labels[0]
            what, unsettled = f"{args.annotator!r}'s labels", 0
        else:
            result = consensus(annotator_labels(store, images, vocab), args.consensus,
                               args.min_agreement or 0.0)
            matrix, unsettled = result.labels, result.n_unsettled
            what = f"{args.consensus} consensus"
        keep = labelled_mask(matrix)
        kept = [image for image, k in zip(images, keep, strict=True) if k]
        if not kept:
            raise InputError(f"no image has a label in the {what}; nothing to export "
                             "(lower --min-agreement or pick another annotator)",
                             path=args.store)
        store.export_manifest(args.out, kept, vocab, matrix=matrix[keep])
    c.say(args, f"wrote {what} of {len(kept)} images to {args.out}; left out "
                f"{len(images) - len(kept)} image(s) without a settled label"
                + (f", {unsettled} term label(s) left unknown (tie or below "
                   "--min-agreement)" if unsettled else ""))
    return c.EXIT_OK


def _verb(verbs, name: str, text: str, handler, output: str | None):
    """One ``labels`` action: STORE first, its own options added by the caller, then the
    shared --vocab/--quiet; ``output`` names the argument checked as a file to write."""
    q = verbs.add_parser(name, help=text)
    q.add_argument("store", type=Path, help="label store (.sqlite)")
    q.set_defaults(handler=handler, outputs=[(output, False)] if output else [])
    return q


def _check_store(args: argparse.Namespace) -> None:
    """``labels import`` writes INTO its store (a SQLite file by design): only a writable
    place is checked here; opening the store vets it (core.labels.connection)."""
    from ..core.utils.files import check_output_path

    check_output_path(args.store)


def _shared(q) -> None:
    c.add_vocabulary(q)
    q.add_argument("--quiet", "-q", action="store_true", help="no messages")


def register(sub) -> None:
    p = sub.add_parser("labels", help="several annotators' labels: import, agreement, "
                                      "consensus export")
    verbs = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    q = _verb(verbs, "import", "record a manifest's terms as one annotator's labels (the "
                               "store is created if needed)", cmd_import, None)
    q.set_defaults(check=_check_store)
    q.add_argument("manifest", type=Path)
    q.add_argument("--annotator", required=True, help="whose labels these are")
    _shared(q)

    q = _verb(verbs, "agreement", "agreement per term and each annotator's estimated "
                                  "accuracy", cmd_agreement, "json")
    q.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    _shared(q)

    q = _verb(verbs, "export", "a manifest of one annotator's labels or of the consensus of "
                               "all", cmd_export, "out")
    q.add_argument("--images", required=True, type=Path, metavar="MANIFEST|FOLDER",
                   help="the images to export")
    q.add_argument("--out", required=True, type=Path, help="manifest CSV to write")
    who = q.add_mutually_exclusive_group()
    who.add_argument("--annotator", default=None, help="export this annotator's own labels")
    who.add_argument("--consensus", nargs="?", const=METHODS[0], default=METHODS[0],
                     choices=METHODS, help="consensus of all annotators (default "
                                           "%(default)s)")
    q.add_argument("--min-agreement", type=float, default=None, metavar="X",
                   help="leave a term unknown where fewer than this share of the image's "
                        "annotators agree with the consensus (0-1); images left with no "
                        "label are left out and counted")
    _shared(q)
