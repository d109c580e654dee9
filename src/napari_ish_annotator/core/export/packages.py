"""Running bioimage.io model packages with bioimageio.core: testing the ones we export and
predicting with received ones, which are untrusted (docs/bioimageio.md, "Running a package").

A package's ``pytorch_state_dict`` weights need its architecture source (our ``network.py``,
or whatever a received package ships): loading them imports and runs that Python. TorchScript
does not: it is TorchScript IR run by torch's own interpreter, and its archive's pickles hold
only tensors and torch types. :func:`predict_package` therefore runs only TorchScript unless
the caller passes ``trust_code=True``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..utils.errors import InputError
from ..utils.extras import check_compatible, require_extra

__all__ = ["SAFE_WEIGHT_FORMATS", "as_input", "failed_details", "predict_package",
           "run_package_test"]


def require_bioimageio(purpose: str = "the bioimage.io export") -> None:
    """InputError saying what to install (or which versions to use) when bioimageio.spec/core
    are missing, do not import, or are a known-broken combination (``core.utils.extras``)."""
    for module in ("bioimageio.spec", "bioimageio.core"):
        require_extra(module, "bioimageio", purpose)
    check_compatible("bioimageio")


def as_input(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> the network's ``(1, 3, H, W)`` float32 input."""
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None].astype(np.float32))


def run_package_test(path: str | Path):
    """``bioimageio test`` of a package, offline: the ValidationSummary.

    It runs every weight format, including ``pytorch_state_dict``, whose architecture is the
    package's own ``network.py``: use it on packages you made, not on received ones."""
    from bioimageio.core import test_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return test_model(str(path), devices=["cpu"])


def failed_details(summary) -> str:
    """The failed checks of a ValidationSummary, one line."""
    bad = [f"{d.name}: {'; '.join(str(e.msg) for e in d.errors)}"
           for d in summary.details if d.status == "failed"]
    return " | ".join(bad) or str(summary.status)


#: formats whose loading runs no Python from the package: TorchScript is TorchScript IR run by
#: torch's own interpreter (its archive's pickles hold only tensors and torch types)
SAFE_WEIGHT_FORMATS = ("torchscript",)


def predict_package(path: str | Path, images: Sequence[np.ndarray],
                    trust_code: bool = False) -> np.ndarray:
    """Per-term probabilities ``(n, T)`` of HxWx3 images, run by bioimageio.core from the
    package (its own weights, its own loader): how other tools see the exported model.

    A received package is untrusted: without ``trust_code`` only its TorchScript weights run
    (no Python from the package). Packages without TorchScript need their own Python
    (``pytorch_state_dict`` imports the package's architecture file, e.g. ``network.py``;
    Keras/TensorFlow formats can hold Python layers): they are refused with an InputError
    unless ``trust_code=True``, which lets bioimageio.core choose the format (it may then
    import and run the package's code).
    """
    require_bioimageio("running a bioimage.io package")
    from bioimageio.core import create_prediction_pipeline, load_model_description, predict

    try:
        descr = load_model_description(str(path), perform_io_checks=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable package is the user's bad input
        raise InputError(f"not a readable bioimage.io model package ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]})", path=path) from exc
    if not hasattr(descr, "weights"):
        raise InputError("not a bioimage.io model package (no weights)", path=path)
    formats = [k for k in type(descr.weights).model_fields if getattr(descr.weights, k, None)]
    safe = [f for f in SAFE_WEIGHT_FORMATS if f in formats]
    if not safe and not trust_code:
        raise InputError(f"refusing to run this package: it has no TorchScript weights, and its "
                         f"{'/'.join(formats) or 'weights'} would import and run Python code "
                         "from the package (e.g. its network.py); run it only if you trust its "
                         "authors, by passing trust_code=True to predict_package", path=path)
    pipeline = create_prediction_pipeline(descr, devices=["cpu"],
                                          weight_format=None if trust_code else safe[0])
    rows = []
    for image in images:
        sample = predict(model=pipeline, inputs={"image": as_input(image)})
        rows.append(np.asarray(sample.members["probabilities"].data).reshape(-1))
    return np.stack(rows)
