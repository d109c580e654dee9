"""What the session does with a trained model besides predicting (issue 12; no Qt): rank
the images to label next (``core.learn.active``), the fine-tuned ensemble's member spread
(``core.finetune``), and the bioimage.io export (``core.export``).

Each is a request built on the GUI thread, an ``iter_*`` step run in any thread that returns
a frozen result, and (for the first two) the session's ``apply_*``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.backbones.devices import resolve_device
from ..core.export.bioimageio import ExportOptions, iter_export_bioimageio
from ..core.export.packages import require_bioimageio
from ..core.finetune import load_ensemble
from ..core.learn.active import suggest
from ..core.learn.bundle import save_bundle
from ..core.utils.errors import InputError
from ..core.utils.progress import Progress, ProgressGen, sub_progress
from ..core.workflow import failed_rows
from .results import LabelOrder, MemberSpread

if TYPE_CHECKING:
    from ..core.learn.bundle import ModelBundle
    from ..core.learn.ensembles import EnsembleClassifier
    from .state import AnnotatorSession

# ---------------------------------------------------------------------- next to label
@dataclass(frozen=True)
class SuggestRequest:
    classifier: EnsembleClassifier
    X: np.ndarray            # feature rows of the candidates
    candidates: np.ndarray   # their image indices
    genes: tuple[str | None, ...]
    generation: int


def suggest_request(session: AnnotatorSession) -> SuggestRequest:
    """Rank the open images that still have an unknown model term and readable features."""
    if session.model.bundle is None:
        raise InputError("'next to label' needs a model: train one or load a bundle first")
    X = session.model.features
    if X is None or len(X) != session.n_images:
        raise InputError("'next to label' needs the images' features: press Extract "
                         "features or Predict first")
    model = session.model.terms
    Y = session.labels.label_matrix()
    cols = [session.vocabulary.index(t) for t in model if t in session.vocabulary]
    open_cells = (Y[:, cols] < 0).any(axis=1) if cols else np.ones(len(Y), bool)
    candidates = np.flatnonzero(open_cells & ~failed_rows(X))
    if not len(candidates):
        raise InputError("every open image is labelled for every model term; "
                         "open more images to label")
    return SuggestRequest(session.model.bundle.classifier, np.asarray(X[candidates]), candidates,
                          tuple(session.genes[i] for i in candidates), session.generation)


def iter_suggest(req: SuggestRequest) -> ProgressGen[LabelOrder]:
    """core.learn.active.suggest over the candidates (members' decisions: a worker's job)."""
    yield Progress(0, 1, "ranking images to label")
    s = suggest(req.classifier, req.X, list(req.genes))
    return LabelOrder(req.candidates[s.order], np.asarray(s.score), req.generation)


# ---------------------------------------------------------------------- ensemble spread
@dataclass(frozen=True)
class SpreadRequest:
    checkpoint: Path
    paths: tuple[Path, ...]
    device: str
    generation: int


def spread_request(session: AnnotatorSession) -> SpreadRequest:
    """The spread of the network behind the model in use (:meth:`network_checkpoint`)."""
    if not session.n_images:
        raise InputError("no images are open; open a folder or manifest first")
    network = session.model.network_checkpoint()
    if network is None:
        raise InputError("no fine-tuned model is in use; choose a fine-tuned ensemble (a file "
                         "from ish-annotator finetune with an ensemble) with Weights file… in "
                         "the Model panel, then Train or Predict")
    return SpreadRequest(network, session.paths, session.settings.device, session.generation)


def iter_member_spread(req: SpreadRequest, batch: int = 8) -> ProgressGen[MemberSpread]:
    """Every member's multi-task output for the open images (core.finetune.load_ensemble)."""
    yield Progress(0, len(req.paths), "loading the ensemble")
    ensemble = load_ensemble(req.checkpoint, str(resolve_device(req.device)))
    if len(ensemble.members) < 2:
        raise InputError("this fine-tuned checkpoint is a single network, so it has no "
                         "spread; choose an ensemble made by the ish-annotator finetune command "
                         "(two members or more) as Weights",
                         path=req.checkpoint)
    parts = []
    for start in range(0, len(req.paths), batch):
        chunk = list(req.paths[start:start + batch])
        parts.append(ensemble.predict_proba(chunk, batch_size=batch).std)
        yield Progress(start + len(chunk), len(req.paths), "ensemble members")
    return MemberSpread(tuple(ensemble.vocabulary), np.concatenate(parts).astype(np.float32),
                        len(ensemble.members), req.generation, req.checkpoint)


# ---------------------------------------------------------------------- bioimage.io
@dataclass(frozen=True)
class ExportRequest:
    bundle: ModelBundle
    out: Path
    options: ExportOptions


def export_request(session: AnnotatorSession, out: str | Path, test: bool = True
                   ) -> ExportRequest:
    """Export the model in use as a bioimage.io .zip (checks what can be checked now)."""
    if session.model.bundle is None:
        raise InputError("no model to export; train one or load a bundle first")
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise InputError("a bioimage.io package is a .zip file; choose a name ending in .zip",
                         path=out)
    authors = (session.annotator_name,) if session.annotator_name else ()
    return ExportRequest(session.model.bundle, out, ExportOptions(authors=authors, test=test))


def iter_export(req: ExportRequest) -> ProgressGen[Any]:
    """Save the bundle to a temporary folder, then core.export's packaging (cancellable)."""
    require_bioimageio()  # before any work: one message naming the [bioimageio] extra
    with tempfile.TemporaryDirectory(prefix=".ish-export-") as tmp:
        yield Progress(0, 1, "saving the model")
        folder = Path(tmp) / "model"
        save_bundle(folder, req.bundle)
        result = yield from sub_progress(iter_export_bioimageio(folder, req.out, req.options),
                                         0, prefix="export: ")
    return result
