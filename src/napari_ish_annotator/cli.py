"""``ish-annotator``: the command-line face of the core, for batch work on thousands of images.

Sub-commands and options follow ``CONTRACTS.md``. Bad input ends with one line on stderr
naming the file and the problem, and exit status 2; long work shows a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .core.errors import InputError
from .core.progress import Cancelled, TqdmCallback, drive

EXIT_OK, EXIT_INPUT, EXIT_CANCELLED, EXIT_TERMINATED = 0, 2, 130, 143

Handler = Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------- helpers
def _run(gen, args: argparse.Namespace, desc: str):
    """Drive a progress generator with a tqdm bar on stderr (hidden with --quiet).

    Shown also when stderr is a log file, so batch jobs (``2> log``) report progress.
    """
    with TqdmCallback(desc=desc, disable=bool(args.quiet)) as bar:
        return drive(gen, bar)


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)


def _extractor_config(args: argparse.Namespace, layer: str | None = None):
    from .core.features import ExtractorConfig

    return ExtractorConfig(
        backbone=args.backbone, weights=args.weights, layer=layer or args.layer,
        input_size=args.input_size, keep_aspect=args.keep_aspect, device=args.device,
        precision=args.precision, batch_size=args.batch_size, seed=args.seed,
    )


def _ensemble_config(args: argparse.Namespace):
    from .core.classify import EnsembleConfig

    return EnsembleConfig(n_members=args.ensemble, C=args.C, seed=args.seed)


def _vocabulary(args: argparse.Namespace) -> list[str] | None:
    from .core.manifest import parse_vocabulary

    spec = getattr(args, "terms", None)
    return parse_vocabulary(spec) if spec else None


def _cache_dir(args: argparse.Namespace) -> Path | None:
    from .core.cache import default_cache_dir

    if getattr(args, "no_cache", False):
        return None
    return Path(args.cache) if args.cache else default_cache_dir()


# ----------------------------------------------------------------------------- sub-commands
def cmd_train(args: argparse.Namespace) -> int:
    from .core.bundle import save_bundle
    from .core.manifest import read_manifest
    from .core.pipeline import iter_train

    dataset = read_manifest(args.manifest, vocabulary=_vocabulary(args))
    bundle = _run(iter_train(dataset, _extractor_config(args), _ensemble_config(args),
                             cache_dir=_cache_dir(args)), args, "train")
    save_bundle(args.out, bundle)
    _say(args, f"saved model for {len(dataset.vocabulary)} terms trained on "
               f"{len(dataset.samples)} images to {args.out}")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from .core.bundle import load_bundle
    from .core.images import collect_inputs
    from .core.pipeline import write_predictions

    out = Path(args.out).absolute()
    for item in args.inputs:
        if Path(item).absolute() == out or (Path(item).exists() and out.exists()
                                            and Path(item).samefile(out)):
            raise InputError("is both an input and the --out file; predictions would overwrite "
                             "it - choose another --out", path=item)
    bundle = load_bundle(args.model_dir)
    if args.chunk_size < 1:
        raise InputError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    images = _skip_bad_inputs(args) if args.skip_bad else collect_inputs(args.inputs)
    if not images:
        raise InputError("no images found; give image files, folders of images or manifests",
                         path=" ".join(map(str, args.inputs)))
    device = None if args.device == "auto" else args.device
    try:
        probabilities = _run(_iter_predict_chunked(bundle, images, _cache_dir(args), device,
                                                   args.chunk_size), args, "predict")
    except InputError as exc:
        if args.skip_bad or exc.path is None or Path(exc.path) not in set(images):
            raise
        raise InputError(f"{exc} (or pass --skip-bad to leave unreadable images out)") from exc
    write_predictions(args.out, images, bundle.classifier.vocabulary, probabilities)
    _say(args, f"wrote probabilities of {len(bundle.classifier.vocabulary)} terms for "
               f"{len(images)} images to {args.out}")
    return EXIT_OK


def _skip_bad_inputs(args: argparse.Namespace) -> list[Path]:
    """``predict --skip-bad``: decode every input once, warn about each unusable one.

    One corrupt file among thousands should not stop a batch job, nor should each re-run
    reveal only the next bad file. Non-image files inside folders stay silently ignored,
    as without the option.
    """
    from .core.images import scan_inputs

    images, problems = scan_inputs(args.inputs, decode=True)
    for problem in problems:
        if not problem.message.startswith("skipped: not a supported image type"):
            print(f"ish-annotator predict: warning: skipped {problem}", file=sys.stderr)
    return images


def _iter_predict_chunked(bundle, images: Sequence[Path], cache_dir: Path | None,
                          device: str | None, chunk_size: int):
    """Probabilities ``(n, T)``, extracting and scoring ``chunk_size`` images at a time.

    Only one chunk's features are in memory at once: at VGG16 layer 21 an image has 401,408
    floats (0.8 MB as float16), so 5,000 images at once would need 4 GB; the probabilities
    are tiny.
    """
    from dataclasses import replace

    import numpy as np

    from .core.pipeline import iter_features, make_extractor
    from .core.progress import sub_progress

    config = bundle.extractor if device is None else replace(bundle.extractor, device=device)
    extractor = make_extractor(config, cache_dir)  # loads the network once for all chunks
    n = len(images)
    probabilities = np.empty((n, len(bundle.classifier.vocabulary)), dtype=np.float64)
    for start in range(0, n, chunk_size):
        part = list(images[start:start + chunk_size])
        X = yield from sub_progress(iter_features(extractor, part), offset=start, scale_total=n)
        probabilities[start:start + len(part)] = bundle.classifier.predict_proba(X)
        del X
    return probabilities


def _parse_layers(text: str | None, backbone: str = "vgg16") -> list[str]:
    from .core.backbones import get_spec

    spec = get_spec(backbone)
    if text is None:  # the backbone's default layer (21 for VGG16)
        return [spec.default_layer]
    layers = [part.strip() for part in text.split(",") if part.strip()]
    if not layers:
        raise InputError(f"--layers {text!r} names no layer; use e.g. --layers 17,21,24,30")
    for layer in layers:  # now, not after the earlier layers' extraction and fitting
        spec.layer(layer)
    return layers


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .core.evaluate import format_table
    from .core.manifest import read_manifest
    from .core.pipeline import iter_evaluate

    dataset = read_manifest(args.manifest, vocabulary=_vocabulary(args))
    test = None
    if args.test:
        test = read_manifest(args.test, vocabulary=dataset.vocabulary, require_positives=False)
    results = _run(
        iter_evaluate(dataset, _extractor_config(args), _ensemble_config(args),
                      layers=_parse_layers(args.layers, args.backbone), folds=args.folds, test_dataset=test,
                      cache_dir=_cache_dir(args)),
        args, "evaluate")
    print(format_table(results))
    if args.json:
        from .core.io import write_json_atomic

        write_json_atomic(args.json, results)
        _say(args, f"wrote metrics to {args.json}")
    return EXIT_OK


def cmd_gradcam(args: argparse.Namespace) -> int:
    import numpy as np

    from .core.bundle import load_bundle
    from .core.gradcam import gradcam_for_image, heat_to_rgb, overlay
    from .core.images import read_rgb
    from .core.io import write_png_atomic
    from .core.pipeline import make_extractor

    bundle = load_bundle(args.model_dir)
    if args.term not in bundle.classifier.vocabulary:
        raise InputError(f"term {args.term!r} is not in the model's vocabulary: "
                         f"{'; '.join(bundle.classifier.vocabulary)}", path=args.model_dir)
    image = read_rgb(args.image)
    config = bundle.extractor
    if args.device != "auto":
        from dataclasses import replace

        config = replace(config, device=args.device)
    heat = gradcam_for_image(bundle, make_extractor(config), image, args.term, method=args.method)
    picture = overlay(image, heat) if args.overlay else heat_to_rgb(heat)
    write_png_atomic(args.out, picture)
    if args.npy:
        from .core.io import write_npy_atomic

        write_npy_atomic(args.npy, heat.astype(np.float32))
    _say(args, f"wrote Grad-CAM of {args.term!r} ({heat.shape[0]}x{heat.shape[1]}) to {args.out}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    if args.headless:
        from .demo import run_headless_demo

        return run_headless_demo(args)
    from .demo import run_gui_demo

    return run_gui_demo(args)


# ----------------------------------------------------------------------------- parser
def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="where the CNN runs (auto: CUDA, then MPS, then CPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed for undersampling and random weights")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or messages")


def _add_backbone(parser: argparse.ArgumentParser, default_weights: str = "imagenet",
                  default_backbone: str = "vgg16") -> None:
    parser.add_argument("--backbone", default=default_backbone,
                        help="feature network: vgg16 (the paper's), resnet50 or "
                             "efficientnet_lite0 (offline ImageNet weights; see "
                             "docs/backbones.md); default %(default)s")
    parser.add_argument("--weights", default=default_weights,
                        help="imagenet | imagenet:V1 | random | path to a state dict or "
                             "fine-tuned checkpoint (default %(default)s)")
    parser.add_argument("--input-size", type=int, default=224, help="network input size in pixels")
    parser.add_argument("--keep-aspect", action="store_true",
                        help="pad the image to a square before resizing instead of squashing it")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=8)
    _add_cache(parser)


def _add_cache(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--cache", default=None,
                       help="feature cache folder (default: $ISH_ANNOTATOR_CACHE or "
                            "~/.cache/napari-ish-annotator); it grows by about 0.8 MB per "
                            "image at VGG16 layer 21")
    group.add_argument("--no-cache", action="store_true",
                       help="do not store features on disk (e.g. images predicted only once)")


def _add_classifier(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ensemble", type=int, default=11, help="logistic regressions per term")
    parser.add_argument("--C", type=float, default=10.0,
                        help="inverse L2 regularisation strength on the centred, unit-norm "
                             "feature rows (default %(default)s; higher = sharper probabilities)")
    parser.add_argument("--terms", "--vocab", dest="terms", default=None,
                        help="vocabulary: 'term a;term b' or a text file with one term per line")


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

    p = sub.add_parser("demo", help="open napari with sample embryos, or run the pipeline headless")
    p.add_argument("--headless", metavar="OUT", default=None,
                   help="no window: write predictions, metrics and Grad-CAM overlays into OUT")
    p.add_argument("--n-images", type=int, default=80, help="synthetic embryos to generate")
    _add_backbone(p, default_weights="auto", default_backbone="auto")
    _add_classifier(p)
    p.add_argument("--layer", default=None, help="feature layer (default: the backbone's, 21)")
    _add_common(p)
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("train", help="fit the per-term classifiers on a manifest")
    p.add_argument("manifest", type=Path)
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.add_argument("--layer", default=None, help="feature layer (VGG16: 17, 21, 24, 30; default 21)")
    _add_backbone(p)
    _add_classifier(p)
    _add_common(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("predict", help="per-term probabilities for images, folders or manifests")
    p.add_argument("model_dir", type=Path)
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    p.add_argument("--out", required=True, type=Path, help="predictions CSV to write")
    _add_cache(p)
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out (with a warning) images that are missing or cannot be "
                        "decoded, instead of stopping; every image is decoded once up front")
    p.add_argument("--chunk-size", type=int, default=256,
                   help="images whose features are held in memory at once (default "
                        "%(default)s: about 200 MB at VGG16 layer 21)")
    _add_common(p)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("evaluate", help="cross-validated or held-out metrics (paper Table 2)")
    p.add_argument("manifest", type=Path)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--test", type=Path, default=None, help="held-out test manifest")
    group.add_argument("--folds", type=int, default=5, help="k for grouped k-fold CV (default 5)")
    p.add_argument("--layers", default=None,
                   help="comma-separated layers, e.g. 17,21,24,30 (default: the backbone's "
                        "default layer, 21 for VGG16)")
    p.add_argument("--json", type=Path, default=None, help="write metrics JSON here")
    p.add_argument("--layer", default=None, help=argparse.SUPPRESS)
    _add_backbone(p)
    _add_classifier(p)
    _add_common(p)
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("gradcam", help="Grad-CAM heat map of one term for one image")
    p.add_argument("model_dir", type=Path)
    p.add_argument("image", type=Path)
    p.add_argument("--term", required=True)
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--npy", type=Path, default=None, help="also write the float map in [0, 1]")
    p.add_argument("--overlay", action="store_true", help="blend the map over the image")
    p.add_argument("--method", default="hirescam", choices=["hirescam", "gradcam"])
    _add_common(p)
    p.set_defaults(handler=cmd_gradcam)

    for register in EXTRA_COMMANDS:
        register(sub, _add_common, _add_backbone, _add_classifier)
    return parser


def _register_finetune(*hooks: Callable[..., None]) -> None:
    """``finetune`` and ``evaluate --compare CKPT`` (issue 4) live in ``cli_finetune.py``."""
    from .cli_finetune import register

    register(*hooks)


# Sub-commands defined in other modules register here (e.g. fine-tuning).
EXTRA_COMMANDS: list[Callable[..., None]] = [_register_finetune]


# Output paths per sub-command, as (attribute, is_folder): checked before any work starts,
# so a typo in --out fails in a second instead of after hours of feature extraction.
OUTPUTS: dict[str, list[tuple[str, bool]]] = {
    "demo": [("headless", True)], "train": [("out", True)], "predict": [("out", False)],
    "evaluate": [("json", False)], "gradcam": [("out", False), ("npy", False)],
    "finetune": [("out", False)],
}


def _check_outputs(args: argparse.Namespace) -> None:
    from .core.io import check_output_path

    for attr, folder in OUTPUTS.get(args.command, []):
        value = getattr(args, attr, None)
        if value is not None:
            check_output_path(value, folder=folder)
    if hasattr(args, "cache") and args.command != "demo":  # the demo caches inside OUT
        cache = _cache_dir(args)
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
    if args.command == "train":
        from .core.bundle import check_bundle_target

        check_bundle_target(args.out)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (batch schedulers at a time limit): unwind like Ctrl-C so temp files go."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        _check_outputs(args)
        return int(args.handler(args))
    except InputError as exc:
        print(f"ish-annotator {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (Cancelled, KeyboardInterrupt) as exc:
        terminated = isinstance(exc, _Terminated)
        print(f"ish-annotator {args.command}: {'terminated' if terminated else 'cancelled'}",
              file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_CANCELLED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

