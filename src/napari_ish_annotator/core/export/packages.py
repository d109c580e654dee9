"""Running bioimage.io model packages with bioimageio.core: testing the ones we export and
predicting with received ones, which are untrusted (docs/bioimageio.md, "Running a package").

A package's ``pytorch_state_dict`` weights need its architecture source (our ``network.py``,
or whatever a received package ships): loading them imports and runs that Python. Its
TorchScript is code too (it has file operators). :func:`predict_package` therefore runs
neither unless the caller passes ``trust_code=True``: it rebuilds our own packages from this
installation's code (:mod:`.rebuild`) after vetting the zip (:mod:`.received`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..utils.errors import InputError
from ..utils.extras import check_compatible, require_extra
from .received import vet_package

__all__ = ["as_input", "failed_details", "predict_package",
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


def predict_package(path: str | Path, images: Sequence[np.ndarray],
                    trust_code: bool = False) -> np.ndarray:
    """Per-term probabilities ``(n, T)`` of HxWx3 images from a bioimage.io package.

    Every package is vetted first (:func:`.received.vet_package`: zip names, sizes, a bounded
    safe YAML parse, files referenced only inside the zip - no URL is fetched). A received
    package is untrusted: without ``trust_code`` nothing it ships is run - neither its Python
    (``network.py``) nor its TorchScript, which can read and write files. A package exported
    by this project is rebuilt from this installation's network code and the package's state
    dict (:mod:`.rebuild`); any other package is refused with one line. ``trust_code=True``
    hands the vetted package to bioimageio.core, which picks a weight format and may import
    and run the package's code.
    """
    package = vet_package(path)
    if not trust_code:
        import torch

        from .rebuild import rebuild_network  # network.py imports torch at its head

        network = rebuild_network(package)
        with torch.no_grad():
            rows = [network(torch.from_numpy(as_input(im))).numpy().reshape(-1)
                    for im in images]
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    return _predict_trusted(path, images)


def _predict_trusted(path: str | Path, images: Sequence[np.ndarray]) -> np.ndarray:
    """bioimageio.core's own loading and running (the package's code may run)."""
    require_bioimageio("running a bioimage.io package")
    from bioimageio.core import create_prediction_pipeline, load_model_description, predict

    try:
        descr = load_model_description(str(path), perform_io_checks=False)
        if not hasattr(descr, "weights"):
            raise InputError("not a bioimage.io model package (no weights)", path=path)
        pipeline = create_prediction_pipeline(descr, devices=["cpu"])
        rows = []
        for image in images:
            sample = predict(model=pipeline, inputs={"image": as_input(image)})
            rows.append(np.asarray(sample.members["probabilities"].data).reshape(-1))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a received package is bad input
        raise InputError(f"bioimage.io could not run this package ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]})", path=path) from None
    return np.stack(rows)
