"""``ish-annotator suspicious``: the labels a model that never saw the image's gene disagrees
with most, to re-check first (rule and measurement: :mod:`..core.learn.review`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..core.data.manifest import read_manifest
from ..core.labels.consensus import annotator_labels
from ..core.labels.store import LabelStore
from ..core.learn.metrics import labelled_mask
from ..core.learn.review import iter_out_of_fold_probabilities, rank_suspicious
from ..core.utils.csvio import write_csv
from ..core.utils.errors import InputError
from ..core.workflow import iter_features, make_extractor
from . import _common as c

LABEL_WORD = {1: "present", 0: "absent"}


def _labels(args: argparse.Namespace, dataset) -> np.ndarray:
    """The manifest's labels, or ``--annotator``'s latest labels in ``--labels STORE``."""
    if args.labels is None:
        if args.annotator is not None:
            raise InputError("--annotator chooses whose labels in --labels STORE to review; "
                             "give --labels STORE too, or leave --annotator out")
        return dataset.labels().astype(np.int8)
    if not args.annotator or not args.annotator.strip():
        raise InputError("--labels STORE needs --annotator NAME: whose labels to review",
                         path=args.labels)
    if not Path(args.labels).is_file():
        raise InputError("label store not found; give the .sqlite file the plugin or "
                         "'ish-annotator labels import' wrote", path=args.labels)

    with LabelStore(args.labels, read_only=True) as store:
        return annotator_labels(store, dataset.paths, dataset.vocabulary,
                                [args.annotator.strip()]).labels[0].astype(np.int8)


def cmd_suspicious(args: argparse.Namespace) -> int:

    if args.folds < 2:
        raise InputError(f"--folds must be at least 2, got {args.folds}")
    dataset = read_manifest(args.manifest, vocabulary=c.vocabulary(args), require_positives=False)
    Y = _labels(args, dataset)
    if not (Y >= 0).any():
        raise InputError("no image of the manifest has a label to review"
                         + (f" by {args.annotator!r}" if args.labels else ""),
                         path=args.labels or args.manifest)
    labelled = labelled_mask(Y)
    paths = [p for p, k in zip(dataset.paths, labelled, strict=True) if k]
    extractor = make_extractor(c.extractor_config(args), c.cache_dir(args))
    X = c.run(iter_features(extractor, paths), args, "features")
    P = np.full(Y.shape, np.nan)
    P[labelled] = c.run(iter_out_of_fold_probabilities(
        X, Y[labelled], dataset.groups()[labelled], c.ensemble_config(args), dataset.vocabulary,
        args.folds), args, "out-of-fold fits")
    ranked = rank_suspicious(Y, P)
    vocab, genes = dataset.vocabulary, dataset.genes
    write_csv(args.out, ["image", "term", "label", "p", "score", "gene"],
              ([str(dataset.paths[s.row]), vocab[s.term], LABEL_WORD[s.label], f"{s.p:.6f}",
                f"{s.score:.6f}", genes[s.row] or ""] for s in ranked))
    unscored = int((Y >= 0).sum()) - len(ranked)
    c.say(args, f"wrote {len(ranked)} labels, most suspicious first, to {args.out}"
                + (f"; {unscored} label(s) of terms without both a present and an absent "
                   "label in some fold are left out" if unscored else ""))
    return c.EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("suspicious", help="labels the model disagrees with most (out-of-fold, "
                                          "gene held out), most suspicious first")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", required=True, type=Path,
                   help="review CSV to write: image, term, label, p, score, gene")
    p.add_argument("--labels", type=Path, default=None, metavar="STORE",
                   help="review this label store's labels of the manifest's images (with "
                        "--annotator) instead of the manifest's terms")
    p.add_argument("--annotator", default=None, metavar="NAME",
                   help="whose labels in --labels STORE to review")
    p.add_argument("--folds", type=int, default=5,
                   help="gene-grouped folds for the out-of-fold probabilities (default "
                        "%(default)s)")
    c.add_layer(p)
    c.add_backbone(p)
    c.add_classifier(p)
    c.add_dask(p)
    c.add_common(p)
    p.set_defaults(handler=cmd_suspicious, outputs=[("out", False)])
