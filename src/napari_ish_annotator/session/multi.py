"""Several annotators, "next to label" and export for the session (issues 10 and 12; no Qt).

The session builds each request on the GUI thread from its own state (a label-store read,
no model fitting), the ``iter_*`` steps do the work in any thread and return frozen results,
and the session applies them. The science is ``core.consensus``, ``core.active`` and
``core.export``; this module only connects them to the open images.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import InputError
from ..core.progress import Progress, ProgressGen, sub_progress
from .steps import TrainRequest, failed_rows

if TYPE_CHECKING:
    from .state import AnnotatorSession

#: what the Train panel can learn from
TRAIN_SOURCES = ("my labels", "consensus of all annotators")


def _store(session: AnnotatorSession) -> Any:
    if session.store is None or not session.n_images:
        raise InputError("no labels are open; open images or a manifest first")
    return session.store


# ---------------------------------------------------------------------- annotators
def annotator_labels(session: AnnotatorSession) -> Any:
    """Every annotator's own labels of the open images (core.consensus.AnnotatorLabels)."""
    from ..core.consensus import annotator_labels as read

    return read(_store(session), session.paths, session.vocabulary)


def disagreement(session: AnnotatorSession, indices: Sequence[int] | None = None) -> np.ndarray:
    """(n,) True where two annotators gave different values for some term of an image; with
    ``indices``, only for those images (a label change re-reads its own image only)."""
    from ..core.consensus import disagreement_mask

    paths = session.paths if indices is None else [session.paths[i] for i in indices]
    return disagreement_mask(_store(session), paths, session.vocabulary)


def term_tooltips(session: AnnotatorSession, index: int | None = None) -> dict[str, str]:
    """{term: "alice: present, bob: absent"} for one image (default: the current one)."""
    from ..core.consensus import image_annotations

    i = session.index if index is None else index
    if session.store is None or not 0 <= i < session.n_images or not session.vocabulary:
        return {}
    notes = image_annotations(session.store, session.paths[i], session.vocabulary)
    return {t: notes.tooltip(t) for t in session.vocabulary}


def iter_agreement(labels: Any) -> ProgressGen[Any]:
    """core.consensus.agreement in a worker (it fits Dawid-Skene and imports scikit-learn)."""
    from ..core.consensus import agreement

    yield Progress(0, 1, "comparing annotators")
    return agreement(labels)


def consensus_train_request(session: AnnotatorSession, cross_validate: bool = True,
                            method: str = "dawid-skene") -> TrainRequest:
    """A Train request whose labels are the consensus of every annotator in the store.

    The consensus (numpy EM over at most 3^A label patterns per term) is cheap; the request
    is otherwise the session's own, so training, CV and prediction are the same step.
    """
    from ..core.consensus import consensus

    labels = annotator_labels(session)
    agreed = consensus(labels, method).labels
    if not (agreed >= 0).any():
        raise InputError("no consensus labels: nobody has labelled the open images yet; "
                         "label images or import annotators' manifests first")
    return session.train_request(cross_validate, Y=np.ascontiguousarray(agreed, dtype=np.int8))


# ---------------------------------------------------------------------- next to label
@dataclass(frozen=True)
class SuggestRequest:
    classifier: Any
    X: np.ndarray            # feature rows of the candidates
    candidates: np.ndarray   # their image indices
    genes: tuple[str | None, ...]
    generation: int


@dataclass(frozen=True)
class LabelOrder:
    """Images to label next, best first (core.active's ranking of the unlabelled ones)."""

    images: np.ndarray  # image indices
    score: np.ndarray
    generation: int


def suggest_request(session: AnnotatorSession) -> SuggestRequest:
    """Rank the open images that still have an unknown model term and readable features."""
    if session.bundle is None:
        raise InputError("'next to label' needs a model: train one or load a bundle first")
    X = session.features
    if X is None or len(X) != session.n_images:
        raise InputError("'next to label' needs the images' features: press Extract "
                         "features or Predict first")
    model = session.model_vocabulary
    Y = session.label_matrix()
    cols = [session.vocabulary.index(t) for t in model if t in session.vocabulary]
    open_cells = (Y[:, cols] < 0).any(axis=1) if cols else np.ones(len(Y), bool)
    candidates = np.flatnonzero(open_cells & ~failed_rows(X))
    if not len(candidates):
        raise InputError("every open image is labelled for every model term; "
                         "open more images to label")
    return SuggestRequest(session.bundle.classifier, np.asarray(X[candidates]), candidates,
                          tuple(session.genes[i] for i in candidates), session.generation)


def iter_suggest(req: SuggestRequest) -> ProgressGen[LabelOrder]:
    """core.active.suggest over the candidates (members' decisions: a worker's job)."""
    from ..core.active import suggest

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


@dataclass(frozen=True)
class MemberSpread:
    """Std over a fine-tuned ensemble's members of each term's probability, per image."""

    vocabulary: tuple[str, ...]
    std: np.ndarray  # (n, T) float32
    n_members: int
    generation: int
    checkpoint: Path  # the ensemble it was made with (a switched model drops it)


def spread_request(session: AnnotatorSession) -> SpreadRequest:
    if session.finetuned is None:
        raise InputError("no fine-tuned model is in use; fine-tune an ensemble "
                         "(ish-annotator finetune --ensemble K) and use it as weights first")
    if not session.n_images:
        raise InputError("no images are open; open a folder or manifest first")
    return SpreadRequest(Path(session.finetuned), session.paths, session.settings.device,
                         session.generation)


def iter_member_spread(req: SpreadRequest, batch: int = 8) -> ProgressGen[MemberSpread]:
    """Every member's multi-task output for the open images (core.finetune.load_ensemble)."""
    from ..core.backbones import resolve_device
    from ..core.finetune import load_ensemble

    yield Progress(0, len(req.paths), "loading the ensemble")
    ensemble = load_ensemble(req.checkpoint, str(resolve_device(req.device)))
    if len(ensemble.members) < 2:
        raise InputError("this fine-tuned checkpoint is a single network, not an ensemble; "
                         "fine-tune with --ensemble K (K >= 2) to see the members' spread",
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
    bundle: Any
    out: Path
    options: Any  # core.export.ExportOptions


def export_request(session: AnnotatorSession, out: str | Path, test: bool = True
                   ) -> ExportRequest:
    """Export the model in use as a bioimage.io .zip (checks what can be checked now)."""
    from ..core.export.bioimageio import ExportOptions

    if session.bundle is None:
        raise InputError("no model to export; train one or load a bundle first")
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise InputError("a bioimage.io package is a .zip file; choose a name ending in .zip",
                         path=out)
    authors = (session.annotator_name,) if session.annotator_name else ()
    return ExportRequest(session.bundle, out, ExportOptions(authors=authors, test=test))


def iter_export(req: ExportRequest) -> ProgressGen[Any]:
    """Save the bundle to a temporary folder, then core.export's packaging (cancellable)."""
    from ..core.bundle import save_bundle
    from ..core.export.bioimageio import iter_export_bioimageio, require_bioimageio

    require_bioimageio()  # before any work: one message naming the [bioimageio] extra
    with tempfile.TemporaryDirectory(prefix=".ish-export-") as tmp:
        yield Progress(0, 1, "saving the model")
        folder = Path(tmp) / "model"
        save_bundle(folder, req.bundle)
        result = yield from sub_progress(iter_export_bioimageio(folder, req.out, req.options),
                                         0, prefix="export: ")
    return result
