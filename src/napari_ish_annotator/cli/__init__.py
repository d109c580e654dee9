"""``ish-annotator``: the command-line face of the core, for batch work on thousands of images.

Sub-commands and options follow ``CONTRACTS.md``; each lives in its own module with a
``register(subparsers)`` function. Bad input ends with one line on stderr naming the file and
the problem, and exit status 2; long work shows a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import __version__
from ..core.data.budget import pixel_budget
from ..core.utils.errors import InputError
from ..core.utils.files import check_output_path
from ..core.utils.progress import Cancelled
from . import _common as c
from . import demo, evaluate, export, finetune, gradcam, labels, predict, suggest, suspicious, train

if TYPE_CHECKING:  # pragma: no cover
    from ..core.features.distributed import DaskExecutor

# Each module adds its sub-parser with handler, output paths to check up front, and an
# optional extra check; the order is the order of `ish-annotator --help`.
COMMANDS = [demo, train, predict, evaluate, gradcam, finetune, labels, suggest, suspicious, export]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (CONTRACTS.md), pointing to --help for the rest."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ish-annotator",
        description="Annotate Drosophila embryo ISH images with anatomical terms "
                    "(VGG16 transfer learning + undersampled logistic-regression ensembles).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def check_outputs(args: argparse.Namespace) -> None:
    """Output paths checked before any work starts, so a typo in --out fails in a second
    instead of after hours of feature extraction."""
    inputs = c.input_paths(args)  # an output never overwrites an input or a label store
    for attr, folder in getattr(args, "outputs", []):
        value = getattr(args, attr, None)
        if value is not None:
            check_output_path(value, folder=folder, inputs=inputs,
                              option="--" + attr.replace("_", "-"))
    if hasattr(args, "cache") and not getattr(args, "uses_own_cache", False):
        cache = c.cache_dir(args)
        if cache is not None and args.cache:  # asked for: must work
            check_output_path(cache, folder=True)
        elif cache is not None:  # the default one (e.g. a read-only home): go on without it
            try:
                check_output_path(cache, folder=True)
            except InputError as exc:
                print(f"ish-annotator {args.command}: warning: feature cache not usable "
                      f"({exc}); continuing without it - pass --cache DIR or --no-cache",
                      file=sys.stderr)
                args.no_cache = True
    check = getattr(args, "check", None)
    if check is not None:
        check(args)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (batch schedulers at a time limit): unwind like Ctrl-C so temp files go."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None, executor: DaskExecutor | None = None) -> int:
    """Run one ``ish-annotator`` command; the exit status. ``executor``: where features are
    computed when the caller already holds a dask cluster (tests, embedding programs), as
    ``--dask`` would give; by default, here."""
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        # the budget first: --dask local workers started below inherit it
        with pixel_budget(getattr(args, "max_pixels", None)):
            check_outputs(args)
            with c.dask_session(args, executor) as args.executor:
                return int(args.handler(args))
    except InputError as exc:
        print(f"ish-annotator {args.command}: error: {exc}", file=sys.stderr)
        return c.EXIT_INPUT
    except (Cancelled, KeyboardInterrupt) as exc:
        terminated = isinstance(exc, _Terminated)
        print(f"ish-annotator {args.command}: {'terminated' if terminated else 'cancelled'}",
              file=sys.stderr)
        return c.EXIT_TERMINATED if terminated else c.EXIT_CANCELLED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if os.environ.get("ISH_ANNOTATOR_DEBUG_IMPORTS"):  # tests/benchmarks of the warm path
            print(f"ish-annotator: torch imported: {'yes' if 'torch' in sys.modules else 'no'}",
                  file=sys.stderr)
