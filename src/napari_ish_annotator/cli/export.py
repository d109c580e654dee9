"""``ish-annotator export``: a trained model (bundle or fine-tuned checkpoint) as a bioimage.io
model package that bioimageio.core and the bioimage.io model zoo run."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.export.bioimageio import (
    CITATION_DOI,
    CITATION_TEXT,
    ExportOptions,
    iter_export_bioimageio,
)
from ..core.export.packages import require_bioimageio
from ..core.utils.errors import InputError
from . import _common as c


def cmd_export(args: argparse.Namespace) -> int:
    options = ExportOptions(
        name=args.name, description=args.description, authors=tuple(args.author or ()),
        license=args.license, cite_text=args.cite_text, cite_doi=args.cite_doi or None,
        image=args.image, test=not args.no_test)
    result = c.run(iter_export_bioimageio(args.model, args.out, options), args, "export")
    c.say(args, f"wrote the bioimage.io package of the {result.kind} ({len(result.vocabulary)} "
                f"terms; bioimageio.core test: {result.test_status}) to {result.path}")
    return c.EXIT_OK


def check_export(args: argparse.Namespace) -> None:
    """Fail before loading any network when bioimageio is missing or --out is not a .zip."""
    if Path(args.out).suffix.lower() != ".zip":
        raise InputError("a bioimage.io package is a .zip file; give --out NAME.zip",
                         path=args.out)
    require_bioimageio()


def register(sub) -> None:
    p = sub.add_parser("export", help="write a model as a bioimage.io package (docs/bioimageio.md)")
    p.add_argument("model", type=Path, metavar="MODEL",
                   help="model folder (train --out) or fine-tuning checkpoint (finetune --out)")
    p.add_argument("--format", default="bioimageio", choices=["bioimageio"],
                   help="package format (default %(default)s: bioimage.io model spec 0.5)")
    p.add_argument("--out", required=True, type=Path, help="package to write (.zip)")
    p.add_argument("--image", type=Path, default=None,
                   help="embryo image for the test tensors and the Grad-CAM cover (default: "
                        "a synthetic embryo; one of your own images is better)")
    p.add_argument("--name", default=None, help="model name (default: from backbone and terms)")
    p.add_argument("--description", default=None, help="one-sentence description")
    p.add_argument("--author", action="append", default=None, metavar="NAME",
                   help="an author (repeat for several; default: none - the package never "
                        "carries this account's user name)")
    p.add_argument("--license", default="BSD-3-Clause",
                   help="SPDX license identifier (default %(default)s)")
    p.add_argument("--cite-text", default=CITATION_TEXT,
                   help="citation text (default: Zhang et al., KDD 2015)")
    p.add_argument("--cite-doi", default=CITATION_DOI,
                   help="citation DOI (default %(default)s; '' for none)")
    p.add_argument("--no-test", action="store_true",
                   help="skip bioimageio.core's model test of the package before writing it")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or messages")
    c.add_max_pixels(p)
    p.set_defaults(handler=cmd_export, outputs=[("out", False)], check=check_export)
