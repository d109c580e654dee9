"""Frozen inputs and results of the session's steps.

A step (see :mod:`.steps`) gets one request built on the GUI thread from the session's state,
runs anywhere, and returns one result; only :class:`~.state.AnnotatorSession` applies results.
Arrays inside are never written after construction (treat them as read-only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.learn.metrics import defined_mean
from ..core.utils.errors import InputError

if TYPE_CHECKING:
    from ..core.data.manifest import Dataset
    from ..core.finetune.config import FinetuneResult
    from ..core.labels.store import LabelStore
    from ..core.learn.bundle import ModelBundle


@dataclass(frozen=True)
class SessionSettings:
    """Model/extraction choices the panels edit (defaults follow the paper).

    Frozen: :meth:`AnnotatorSession.update_settings` replaces it, so a worker holding a
    snapshot never sees it change under it.
    """

    backbone: str = "vgg16"
    weights: str = "imagenet"
    layer: str = "21"
    device: str = "auto"
    input_size: int = 224
    batch_size: int = 8
    seed: int = 0
    n_members: int = 11
    C: float = 10.0
    stage: str = "13-16"


@dataclass(frozen=True)
class OpenedDataset:
    """Checked images with their manifest metadata, the vocabulary and an open label store."""

    paths: tuple[Path, ...]
    genes: tuple[str | None, ...]
    stages: tuple[str | None, ...]
    manifest_terms: tuple[tuple[str, ...] | None, ...]
    dataset: Dataset
    skipped: tuple[str, ...]
    source: Path
    stage: str
    vocabulary: tuple[str, ...]
    store: LabelStore
    store_read_only: bool
    pending_error: InputError | None
    labels: np.ndarray | None = None  # (n, T) label matrix read in the worker


@dataclass(frozen=True)
class StoreSwitch:
    """Another label file, opened with the session's images registered in it."""

    path: Path
    store: LabelStore
    read_only: bool
    error: InputError | None
    generation: int


@dataclass(frozen=True)
class ExtractedFeatures:
    """Feature rows of every open image (NaN rows: images that failed to decode)."""

    X: np.ndarray
    signature: dict
    generation: int
    failed: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Predictions:
    """Probabilities (n, T) float32 and the ensembles' majority votes (n, T) bool."""

    probabilities: np.ndarray
    votes: np.ndarray
    generation: int
    features: ExtractedFeatures | None = None  # extracted on the way, if they were missing


@dataclass(frozen=True)
class TrainReport:
    """What a Train run saw: label counts per term and cross-validated AUCs."""

    counts: dict[str, tuple[int, int]]
    auc: dict[str, float]
    n_labelled_images: int
    cv_note: str = ""
    #: {term: std over the gene folds of each fold's AUC} (terms two folds could score)
    auc_std: dict[str, float] = field(default_factory=dict)

    @property
    def mean_auc(self) -> float | None:
        return defined_mean(self.auc.values()) if self.auc else None


@dataclass(frozen=True)
class HeldOutScores:
    """A Train run's calibrated out-of-fold p ``(n, T)`` of ``bundle``'s terms: each image
    labelled then was scored by ensembles that held its gene out (NaN elsewhere). The
    Gallery's "label contradicts the model" sort ranks by them, as ``ish-annotator
    suspicious`` does: a model that saw a label cannot say the label looks wrong."""

    bundle: ModelBundle
    probabilities: np.ndarray
    generation: int

    @classmethod
    def of(cls, bundle: ModelBundle, raw: np.ndarray, rows: np.ndarray, n: int,
           generation: int) -> HeldOutScores:
        """From the raw out-of-fold scores of ``rows``, calibrated as the bundle's own p."""
        P = np.full((n, len(bundle.classifier.vocabulary)), np.nan)
        P[rows] = bundle.calibration_or_identity().apply(raw)
        return cls(bundle, P, generation)


@dataclass(frozen=True)
class TrainedModel:
    """A fitted bundle, its report and the predictions it makes for every open image."""

    bundle: ModelBundle
    report: TrainReport
    predictions: Predictions
    features: ExtractedFeatures | None = None
    held_out: HeldOutScores | None = None  # the CV pass's p, when Train cross-validated


@dataclass(frozen=True)
class LabelOrder:
    """Images to label next, best first (core.learn.active's ranking of the unlabelled ones)."""

    images: np.ndarray  # image indices
    score: np.ndarray
    generation: int


@dataclass(frozen=True)
class MemberSpread:
    """Std over a fine-tuned ensemble's members of each term's probability, per image."""

    vocabulary: tuple[str, ...]
    std: np.ndarray  # (n, T) float32
    n_members: int
    generation: int
    checkpoint: Path  # the ensemble it was made with (a switched model drops it)


@dataclass(frozen=True)
class GradcamMaps:
    """Grad-CAM maps in [0, 1] of one image for ``terms``: the image's height x width, or a
    smaller map of the same aspect for a large image, ``scale`` (rows, columns) times the image's
    pixel size (:func:`core.explain.gradcam.display_shape`)."""

    index: int
    terms: tuple[str, ...]
    maps: np.ndarray
    probabilities: np.ndarray
    source: str = "ensemble"  # or "finetuned": the fine-tuned network's own MTL head
    scale: tuple[float, float] = (1.0, 1.0)


@dataclass(frozen=True)
class FinetuneOutcome:
    """A fine-tuning run and the model refitted on its backbone."""

    finetune: FinetuneResult  # history, best epoch, checkpoint
    trained: TrainedModel
    settings: SessionSettings  # the settings the refit used (weights = the checkpoint)


@dataclass(frozen=True)
class ModelState:
    """Everything that changes when the session switches model (for 'switch back')."""

    settings: SessionSettings
    bundle: ModelBundle | None = None
    features: ExtractedFeatures | None = None
    probabilities: np.ndarray | None = None
    votes: np.ndarray | None = None
    train_report: TrainReport | None = None
    extra: dict = field(default_factory=dict)
