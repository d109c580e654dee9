"""Export a trained model as a bioimage.io model package (spec 0.5), built with bioimageio.spec.

The package holds the whole model as one network (see :mod:`.network`): a float32 RGB image
``(batch, channel=3, y, x)`` of any size with 0-255 values goes in, per-term probabilities
``(batch, channel)`` come out, ``channel_names`` = the vocabulary in order. Weights come twice:
TorchScript (runs with torch alone) and a PyTorch state dict with its architecture source
(``network.py``, which builds the trunk with this package). Test tensors come from a real
image, the cover shows it with the top term's Grad-CAM, and ``README.md`` documents method,
backbone and weights identity, training-set fingerprint and size and per-term metrics.

Everything is written into a temporary folder; the zip replaces ``out`` only once it is
complete and (unless ``test=False``) has passed ``bioimageio.core``'s model test, so a failed
export leaves nothing behind. bioimageio.spec/core are optional
(``pip install napari-ish-annotator[bioimageio]``) and imported only here.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import __version__
from ..data.images import read_rgb
from ..explain.gradcam import overlay
from ..features.preprocess import border_colour
from ..synthetic.embryos import make_embryo
from ..utils.errors import InputError
from ..utils.extras import versions
from ..utils.files import atomic_path, check_output_path, write_png_atomic
from ..utils.progress import Progress, ProgressGen, drive
from .model import ExportableModel, load_exportable
from .packages import as_input as _as_input
from .packages import failed_details, require_bioimageio, run_package_test

__all__ = ["CITATION_DOI", "CITATION_TEXT", "ExportOptions", "ExportResult",
           "iter_export_bioimageio", "export_bioimageio"]

#: what bioimageio.spec's description and package writer depend on (named in error messages)
_STACK = ("bioimageio.spec", "bioimageio.core", "pydantic", "pydantic-core")
CITATION_TEXT = ("Zhang W, Li R, Zeng T, Sun Q, Kumar S, Ye J, Ji S. Deep model based transfer and "
                 "multi-task learning for biological image analysis. KDD 2015, 1475-1484.")
CITATION_DOI = "10.1145/2783258.2783304"
TAGS = ("drosophila", "in-situ-hybridization", "image-classification", "gene-expression",
        "pytorch", "napari-ish-annotator")
_STEPS = 6


@dataclass(frozen=True)
class ExportOptions:
    """What the package says about itself; defaults suit a lab sharing its own model."""

    name: str | None = None                 # default: from backbone, layer and vocabulary
    description: str | None = None
    authors: tuple[str, ...] = ()           # default: none (never the account's user name)
    license: str = "BSD-3-Clause"           # an SPDX identifier
    cite_text: str = CITATION_TEXT
    cite_doi: str | None = CITATION_DOI
    image: Path | None = None               # test/cover image; default: a synthetic embryo
    test: bool = True                       # run bioimageio.core's model test before writing


@dataclass(frozen=True)
class ExportResult:
    path: Path
    kind: str                               # "bundle" or "checkpoint"
    vocabulary: tuple[str, ...]
    test_probabilities: tuple[float, ...]   # the network's output for the test image
    cover_term: str
    weight_formats: tuple[str, ...]
    test_status: str                        # bioimageio.core's verdict, or "not run"


def _stack_failure(exc: Exception, what: str) -> InputError:
    """A failure inside bioimageio.spec/pydantic as one line naming the installed versions:
    an incompatibility nobody listed in ``core.utils.extras.KNOWN_BREAKS`` yet."""
    first = " ".join(str(exc).split())[:400]
    return InputError(f"{what} failed inside bioimageio.spec with {versions(*_STACK)} "
                      f"({type(exc).__name__}: {first}); these versions may not work together - "
                      "use the tested ones listed in docs/bioimageio.md")


def check_options(options: ExportOptions) -> None:
    """License, DOI and image checked before any network is loaded (one clear error)."""
    from bioimageio.spec.model import v0_5 as spec
    from pydantic import ValidationError

    checks = [("license", options.license, spec.LicenseId,
               "use an SPDX identifier such as BSD-3-Clause, MIT or CC-BY-4.0")]
    if options.cite_doi:
        checks.append(("citation DOI", options.cite_doi, spec.Doi,
                       "give a DOI such as 10.1145/2783258.2783304, or '' for none"))
    for what, value, kind, hint in checks:
        try:
            kind(value)
        except (ValidationError, ValueError):
            raise InputError(f"{what} {value!r} is not valid for bioimage.io; {hint}") from None
    if options.image is not None and not Path(options.image).is_file():
        raise InputError("image not found; give an embryo image file with --image",
                         path=options.image)
    if any(not str(a).strip() for a in options.authors):
        raise InputError("an author name is empty; give --author 'First Last'")


def _test_image(path: Path | None, vocabulary: Sequence[str]) -> tuple[np.ndarray, str]:
    """``--image``, else a synthetic embryo stained where the model's first term lies."""
    if path is not None:
        return read_rgb(path), Path(path).name

    rng = np.random.default_rng(0)
    image, _ = make_embryo(list(vocabulary[:1]), list(vocabulary), rng, size=(160, 320))
    return image, f"a synthetic embryo stained for {vocabulary[0]!r} (core.synthetic, seed 0)"


def _torchscript(model: ExportableModel):
    """Script the network; the trunk is traced at the fixed size the preprocessing gives it
    (some trunks, e.g. EfficientNet's dynamic padding, are not scriptable)."""
    import torch

    from .network import TermNetwork

    net = model.network
    example = torch.zeros(1, 3, model.input_size, model.input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trunk = torch.jit.trace(net.trunk, example, check_trace=False)
        return torch.jit.script(TermNetwork(torch.jit.script(net.prep), trunk,
                                            torch.jit.script(net.head)))


def _cover(model: ExportableModel, image: np.ndarray, probabilities: np.ndarray,
           path: Path) -> str:
    """Image | image with the most probable term's Grad-CAM, side by side (2:1, as bioimage.io
    recommends for covers)."""
    from PIL import Image, ImageOps

    term = model.vocabulary[int(np.argmax(probabilities))]
    heat = model.gradcam(image, term)
    half = 320
    fill = border_colour(image)
    panels = [ImageOps.pad(Image.fromarray(im), (half, half), color=fill)
              for im in (image, overlay(image, heat))]
    canvas = Image.new("RGB", (2 * half, half), fill)
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * half, 0))
    write_png_atomic(path, np.asarray(canvas))
    return term


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))


def _documentation(model: ExportableModel, options: ExportOptions, image_name: str,
                   cover_term: str) -> str:
    t = model.training
    lines = [f"# {_name(model, options)}", "",
             options.description or _description(model), "",
             "## Method", ""]
    if model.kind == "bundle":
        lines += [
            "Transfer learning as in Zhang et al. (KDD 2015): a fixed ImageNet-style CNN "
            "gives the features of one layer; every anatomical term has an ensemble of L2 "
            "logistic regressions, each fitted on all positives and an equally large "
            "undersample of the negatives. Inside this one network: resize and normalisation "
            "exactly as napari-ish-annotator's feature extraction, the backbone up to the "
            "layer, the feature row minus the training mean and divided by its L2 norm, every "
            "ensemble member as one row of a linear layer, sigmoids, the mean per term and "
            f"the package's probability calibration (method: {model.calibration['method']}; "
            "p = sigmoid(a * logit(p_mean) + b)).", ""]
    else:
        lines += [
            "Multi-task fine-tuning as in Zhang et al. (KDD 2015): the CNN trunk with a "
            "pooled hidden layer and one sigmoid output per term, trained with the sum of "
            "per-term binary cross-entropies (unknown labels masked). Inside this one "
            "network: resize and normalisation as in training, the fine-tuned trunk, the "
            "multi-task head and its sigmoids.", ""]
    lines += ["## Backbone and weights", "",
              f"- backbone: `{model.backbone}`, layer: `{model.layer}`",
              f"- weights: `{model.weights_id}`",
              f"- input size inside the network: {model.input_size} px "
              f"({'padded to a square with the border colour, then ' if model.keep_aspect else ''}"
              "bilinear antialiased resize)", "",
              "## Training data", "",
              f"- fingerprint: `{t.get('fingerprint') or 'not recorded'}`",
              f"- images: {_fmt(t.get('n_images'))}", ""]
    counts = t.get("term_counts") or {}
    metrics = (model.metrics or {}).get("terms") or {}
    names = sorted({k for m in metrics.values() if isinstance(m, dict) for k in m})
    header = ["#", "term", "positives", "negatives", *names]
    lines += ["## Terms (output channels, in order)", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, term in enumerate(model.vocabulary):
        c = counts.get(term) or {}
        m = metrics.get(term) or {}
        row = [str(i), term, _fmt(c.get("positives")), _fmt(c.get("negatives"))]
        row += [_fmt(m.get(k)) for k in names]
        lines.append("| " + " | ".join(row) + " |")
    if not metrics:
        lines += ["", "Per-term metrics: not recorded with this model (run `ish-annotator "
                  "evaluate`)."]
    lines += ["", "## Validation", "",
              "Per-term metrics above are those recorded with the model (the fine-tuning's "
              "validation split; for ensembles, run `ish-annotator evaluate` on your data). "
              "The test output is this network's float32 output for the test image. "
              "napari-ish-annotator's test suite checks that such packages pass "
              "`bioimageio test` and that bioimageio.core's output agrees with "
              "`ish-annotator predict` within 0.02 per term.", "",
              "## Use", "",
              "Input: float32 RGB, axes (batch, channel=3, y, x), any size, values 0-255 (an "
              "8-bit image as it is). Output: (batch, terms) probabilities.", "",
              "```", "bioimageio predict this_package.zip --inputs embryo.png", "```", "",
              f"The test tensors and the cover come from {image_name}; the cover shows the "
              f"Grad-CAM of the most probable term, `{cover_term}`.", "",
              "Exported with napari-ish-annotator (see docs/bioimageio.md there)."]
    return "\n".join(lines) + "\n"


def _name(model: ExportableModel, options: ExportOptions) -> str:
    if options.name:
        return options.name
    what = "fine-tuned" if model.kind == "checkpoint" else "ensembles"
    return f"ISH term annotator {model.backbone} {what} {len(model.vocabulary)} terms"


def _description(model: ExportableModel) -> str:
    return (f"Annotates Drosophila embryo in-situ hybridisation images with "
            f"{len(model.vocabulary)} anatomical terms ({model.backbone}, "
            f"{'multi-task fine-tuned' if model.kind == 'checkpoint' else 'per-term ensembles'}).")


def _environment(path: Path) -> None:
    import torch

    path.write_text(
        "name: napari-ish-annotator\nchannels:\n  - conda-forge\ndependencies:\n"
        "  - python>=3.10\n  - pip\n  - pip:\n"
        f"      - torch>={torch.__version__.split('+')[0]}\n"
        f"      - napari-ish-annotator>={__version__}\n", encoding="utf-8")


def _describe(model: ExportableModel, options: ExportOptions, files: dict[str, Path]):
    """The bioimageio.spec ModelDescr (validated on construction)."""
    import torch
    from bioimageio.spec.model import v0_5 as spec

    version = spec.Version(torch.__version__.split("+")[0])
    vocabulary = list(model.vocabulary)
    authors = options.authors  # none unless given: never the OS account name
    cite = [spec.CiteEntry(text=options.cite_text,
                           doi=spec.Doi(options.cite_doi) if options.cite_doi else None,
                           url=None if options.cite_doi else
                           "https://github.com/napari-ish-annotator")]
    space = [spec.SpaceInputAxis(id=spec.AxisId(a), size=spec.ParameterizedSize(min=1, step=1))
             for a in ("y", "x")]
    inputs = [spec.InputTensorDescr(
        id=spec.TensorId("image"),
        description="RGB embryo image, 0-255 values, any size",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=["red", "green", "blue"]),
              *space],
        test_tensor=spec.FileDescr(source=files["test_input"]),
        sample_tensor=spec.FileDescr(source=files["sample_input"]),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 255.0)))]
    outputs = [spec.OutputTensorDescr(
        id=spec.TensorId("probabilities"),
        description="probability of each term, in vocabulary order",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=vocabulary)],
        test_tensor=spec.FileDescr(source=files["test_output"]),
        sample_tensor=spec.FileDescr(source=files["sample_output"]),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))]
    state_dict = spec.PytorchStateDictWeightsDescr(
        source=files["state_dict"], pytorch_version=version,
        architecture=spec.ArchitectureFromFileDescr(
            source=files["architecture"], callable=spec.Identifier("build_network"),
            kwargs=model.architecture),
        dependencies=spec.FileDescr(source=files["environment"]))
    torchscript = spec.TorchscriptWeightsDescr(source=files["torchscript"],
                                               pytorch_version=version,
                                               parent="pytorch_state_dict")
    config = {"napari_ish_annotator": {
        "kind": model.kind, "backbone": model.backbone, "layer": model.layer,
        "weights_id": model.weights_id, "input_size": model.input_size,
        "keep_aspect": model.keep_aspect, "vocabulary": vocabulary,
        "calibration": {"method": model.calibration["method"]},
        "training_fingerprint": model.training.get("fingerprint") or None,
        "training_images": model.training.get("n_images")}}
    return spec.ModelDescr(
        name=_name(model, options), description=options.description or _description(model),
        authors=[spec.Author(name=a) for a in authors], cite=cite,
        license=spec.LicenseId(options.license), tags=list(TAGS),
        documentation=spec.FileDescr(source=files["documentation"]),
        covers=[spec.FileDescr(source=files["cover"])],
        inputs=inputs, outputs=outputs,
        weights=spec.WeightsDescr(pytorch_state_dict=state_dict, torchscript=torchscript),
        config=config)


def iter_export_bioimageio(source: str | Path, out: str | Path,
                           options: ExportOptions | None = None) -> ProgressGen[ExportResult]:
    """Write the bioimage.io package of a bundle folder or fine-tuning checkpoint to ``out``."""
    import tifffile
    import torch

    options = options or ExportOptions()
    out = check_output_path(out)
    if out.suffix.lower() != ".zip":
        raise InputError("a bioimage.io package is a .zip file; give --out NAME.zip", path=out)
    require_bioimageio()
    check_options(options)
    yield Progress(0, _STEPS, "loading the model")
    model = load_exportable(source)
    image, image_name = _test_image(options.image, model.vocabulary)
    yield Progress(1, _STEPS, "running the network on the test image")
    x = _as_input(image)
    with torch.no_grad():
        y = model.network(torch.from_numpy(x)).numpy().astype(np.float32)
    with tempfile.TemporaryDirectory(prefix=".ish-bioimageio-", dir=out.parent) as tmp:
        d = Path(tmp)
        files = {k: d / n for k, n in (
            ("test_input", "test_input.npy"), ("test_output", "test_output.npy"),
            ("sample_input", "sample_input.tif"), ("sample_output", "sample_output.tif"),
            ("state_dict", "weights.pt"), ("torchscript", "weights_torchscript.pt"),
            ("architecture", "network.py"), ("environment", "environment.yaml"),
            ("cover", "cover.png"), ("documentation", "README.md"))}
        np.save(files["test_input"], x)
        np.save(files["test_output"], y)
        tifffile.imwrite(files["sample_input"], x)  # the same, for people and imageio
        tifffile.imwrite(files["sample_output"], y)
        yield Progress(2, _STEPS, "saving the weights (state dict and TorchScript)")
        torch.save(model.network.state_dict(), files["state_dict"])
        scripted = _torchscript(model)
        with torch.no_grad():
            y_ts = scripted(torch.from_numpy(x)).numpy()
        if not np.allclose(y_ts, y, atol=1e-4):
            raise RuntimeError(f"TorchScript output differs from the network's by "
                               f"{np.abs(y_ts - y).max():.2g}")
        with warnings.catch_warnings():  # deprecated in favour of torch.export, which
            warnings.simplefilter("ignore")  # bioimage.io's TorchScript format is not
            torch.jit.save(scripted, str(files["torchscript"]))
        strip_debug_records(files["torchscript"])
        files["architecture"].write_bytes(Path(__file__).with_name("network.py").read_bytes())
        _environment(files["environment"])
        yield Progress(3, _STEPS, "drawing the cover (Grad-CAM)")
        cover_term = _cover(model, image, y[0], files["cover"])
        files["documentation"].write_text(
            _documentation(model, options, image_name, cover_term), encoding="utf-8")
        yield Progress(4, _STEPS, "building and validating the description")
        try:
            descr = _describe(model, options, files)
        except InputError:
            raise
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            raise _stack_failure(exc, "building the package description") from exc
        status = yield from _package_and_test(descr, d / "package.zip", options.test)
        with atomic_path(out, suffix=".zip") as target:
            shutil.copyfile(d / "package.zip", target)
    yield Progress(_STEPS, _STEPS, f"wrote {out}")
    return ExportResult(path=out, kind=model.kind, vocabulary=model.vocabulary,
                        test_probabilities=tuple(float(v) for v in y[0]),
                        cover_term=cover_term, weight_formats=("pytorch_state_dict",
                                                               "torchscript"),
                        test_status=status)


def _package_and_test(descr, path: Path, test: bool) -> ProgressGen[str]:
    from bioimageio.spec import save_bioimageio_package

    try:
        save_bioimageio_package(descr, output_path=path)
    except (ValueError, TypeError) as exc:
        raise _stack_failure(exc, "writing the package") from exc
    if not test:
        return "not run"
    yield Progress(5, _STEPS, "testing the package with bioimageio.core")
    summary = run_package_test(path)
    if summary.status != "passed":
        raise InputError(f"the exported package failed bioimageio.core's test: "
                         f"{failed_details(summary)}; nothing was written")
    return str(summary.status)


def export_bioimageio(source: str | Path, out: str | Path, options: ExportOptions | None = None,
                      progress=None, cancel=None) -> ExportResult:
    """Blocking form of :func:`iter_export_bioimageio`."""
    return drive(iter_export_bioimageio(source, out, options), progress, cancel)


def strip_debug_records(path: Path) -> None:
    """Rewrite a TorchScript archive without its ``*.debug_pkl`` records.

    They map each op to its Python source: file names with this machine's absolute paths
    (the checkout, site-packages, the home folder) and the source text. TorchScript runs
    without them; an error inside the model then names no source line, which a user of the
    package could not open anyway.
    """
    tmp = path.with_name(path.name + ".strip")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if info.filename.endswith(".debug_pkl"):
                continue
            clean = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            clean.compress_type = info.compress_type
            dst.writestr(clean, src.read(info))
    tmp.replace(path)
