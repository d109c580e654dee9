"""What every ``ish-annotator`` command shares: option groups, progress bars, messages.

Command modules import from here and never from each other, so there is no import circle
between commands (or between a command and the demo).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from ..core.backbones.specs import VGG16, get_spec
from ..core.data.budget import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, parse_pixels
from ..core.data.manifest import parse_vocabulary
from ..core.features import distributed
from ..core.features.cache import default_cache_dir
from ..core.features.extractor import ExtractorConfig
from ..core.learn.logistic import EnsembleConfig
from ..core.utils.errors import InputError
from ..core.utils.progress import TqdmCallback, drive

EXIT_OK, EXIT_INPUT, EXIT_CANCELLED, EXIT_TERMINATED = 0, 2, 130, 143


def run(gen, args: argparse.Namespace, desc: str):
    """Drive a progress generator with a tqdm bar on stderr (hidden with --quiet).

    Shown also when stderr is a log file, so batch jobs (``2> log``) report progress.
    """
    with TqdmCallback(desc=desc, disable=bool(args.quiet)) as bar:
        return drive(gen, bar)


def say(args: argparse.Namespace, text: str) -> None:
    """A message on stderr unless --quiet (stdout stays for tables a script may parse)."""
    if not args.quiet:
        print(text, file=sys.stderr)


def input_paths(args: argparse.Namespace) -> list[str | Path]:
    """Every path-like argument of the command that is not one of its outputs: what an
    output may never overwrite (:func:`..core.utils.files.refuse_overwrite`). Over-inclusive
    on purpose: an option value that happens to name an existing file counts too."""
    outputs = {attr for attr, _ in getattr(args, "outputs", [])}
    found: list[str | Path] = []
    for attr, value in vars(args).items():
        if attr in outputs or attr in ("outputs", "handler", "check"):
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str | Path) and str(item):
                found.append(item)
    return found


def extractor_config(args: argparse.Namespace, layer: str | None = None):
    """The feature-extraction settings the backbone options describe."""
    return ExtractorConfig(
        backbone=args.backbone, weights=args.weights, layer=layer or args.layer,
        input_size=input_size(args), keep_aspect=args.keep_aspect, device=args.device,
        precision=args.precision, batch_size=args.batch_size, seed=args.seed,
    )


def input_size(args: argparse.Namespace) -> int:
    """``--input-size``, or the backbone's own (224; 299 for inception_v3) when not given."""
    return int(args.input_size) if args.input_size else get_spec(args.backbone).input_size


def ensemble_config(args: argparse.Namespace):
    """The per-term ensemble settings the classifier options describe."""
    return EnsembleConfig(n_members=args.ensemble, C=args.C, seed=args.seed)


def vocabulary(args: argparse.Namespace) -> list[str] | None:
    """``--terms``/``--vocab`` as a list, or None for 'every term of the manifest'."""
    spec = getattr(args, "terms", None)
    return parse_vocabulary(spec) if spec else None


def cache_dir(args: argparse.Namespace) -> Path | None:
    """The feature cache folder, or None with ``--no-cache``."""
    if getattr(args, "no_cache", False):
        return None
    return Path(args.cache) if args.cache else default_cache_dir()


def add_layer(p: argparse.ArgumentParser) -> None:
    """``--layer``: one feature layer; the help lists VGG16's from its spec (the one list)."""
    p.add_argument("--layer", default=None,
                   help=f"feature layer (VGG16: {', '.join(VGG16.layers)}; default: the "
                        f"backbone's, {VGG16.default_layer} for VGG16)")


def parse_layers(text: str | None, backbone: str = "vgg16") -> list[str]:
    """``--layers 17,21`` checked against the backbone now, not after hours of extraction."""
    spec = get_spec(backbone)
    if text is None:  # the backbone's default layer (21 for VGG16)
        return [spec.default_layer]
    layers = [part.strip() for part in text.split(",") if part.strip()]
    if not layers:
        raise InputError(f"--layers {text!r} names no layer; use e.g. --layers 17,21,24,30")
    for layer in layers:
        spec.layer(layer)
    return layers


# ----------------------------------------------------------------------------- option groups
def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="where the CNN runs (auto: CUDA, then MPS, then CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed for undersampling and random weights")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or messages")
    add_max_pixels(parser)


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels``: the one pixel budget of every image reader (core.data.images)."""
    parser.add_argument("--max-pixels", type=_pixels, default=None, metavar="N",
                        help="refuse images over N pixels (width x height), checked before "
                             f"decoding (default {DEFAULT_MAX_PIXELS:_}, or ${MAX_PIXELS_ENV})")


def _pixels(text: str) -> int:
    try:
        return parse_pixels(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of pixels") from None


def add_backbone(parser: argparse.ArgumentParser, default_weights: str = "imagenet",
                 default_backbone: str = "vgg16") -> None:
    parser.add_argument("--backbone", default=default_backbone,
                        help="feature network: vgg16 (the paper's), resnet50, inception_v3 "
                             "or efficientnet_lite0 (offline ImageNet weights; see "
                             "docs/backbones.md); default %(default)s")
    parser.add_argument("--weights", default=default_weights,
                        help="imagenet | imagenet:V1 | random | path to a state dict or "
                             "fine-tuned checkpoint (default %(default)s)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="network input size in pixels (default: the backbone's, 224; "
                             "299 for inception_v3)")
    parser.add_argument("--keep-aspect", action="store_true",
                        help="pad the image to a square before resizing instead of squashing it")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=8)
    add_cache(parser)


def add_dask(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dask", default=None, metavar="ADDRESS",
                        help="extract features on a dask cluster: local[:N] starts N worker "
                             "processes here (TLS, only this run can join), tcp://HOST:PORT, "
                             "tls://HOST:PORT or a scheduler file joins a running one (see "
                             "docs/cluster.md; needs the [cluster] extra)")
    for flag, what in (("ca", "the cluster's certificate authority"),
                       ("cert", "this client's certificate"), ("key", "this client's key")):
        parser.add_argument(f"--dask-{flag}", default=None, metavar="PEM",
                            help=f"joining a tls:// scheduler: PEM file of {what} (default: "
                                 "dask's configuration, distributed.comm.tls.*)")


def dask_session(args: argparse.Namespace, given: distributed.DaskExecutor | None = None
                 ) -> contextlib.AbstractContextManager[distributed.DaskExecutor | None]:
    """The command's executor: ``given`` (a caller's cluster), the ``--dask`` cluster for the
    whole command, or None (extract here). Commands pass it on as ``executor=``."""
    address = getattr(args, "dask", None)
    if given is not None or not address:
        if not address and any(getattr(args, f"dask_{k}", None) for k in ("ca", "cert", "key")):
            raise InputError("--dask-ca/--dask-cert/--dask-key need --dask tls://HOST:PORT")
        return contextlib.nullcontext(given)
    return _dask_session(address, args)


@contextlib.contextmanager
def _dask_session(address: str, args: argparse.Namespace
                  ) -> Iterator[distributed.DaskExecutor]:
    tls = distributed.TLSFiles(getattr(args, "dask_ca", None), getattr(args, "dask_cert", None),
                               getattr(args, "dask_key", None))
    with distributed.connect(address, tls) as client:
        yield distributed.DaskExecutor(client)


def executor(args: argparse.Namespace) -> distributed.DaskExecutor | None:
    """Where this command computes features (set by :func:`..main` from ``--dask``)."""
    return getattr(args, "executor", None)


def add_cache(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--cache", default=None,
                       help="feature cache folder (default: $ISH_ANNOTATOR_CACHE or "
                            "~/.cache/napari-ish-annotator); it grows by about 0.8 MB per "
                            "image at VGG16 layer 21")
    group.add_argument("--no-cache", action="store_true",
                       help="do not store features on disk (e.g. images predicted only once)")


def add_classifier(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ensemble", type=int, default=11, help="logistic regressions per term")
    parser.add_argument("--C", type=float, default=10.0,
                        help="inverse L2 regularisation strength on the centred, unit-norm "
                             "feature rows (default %(default)s; higher = sharper probabilities)")
    add_vocabulary(parser)


def add_vocabulary(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--terms", "--vocab", dest="terms", default=None,
                        help="vocabulary: 'term a;term b' or a text file with one term per line")
