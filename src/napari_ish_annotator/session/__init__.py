"""The annotation state of one viewer, with no Qt and no napari (scripts and tests use it too).

:class:`AnnotatorSession` holds the dataset, label store and vocabulary and announces changes
through psygnal signals; its parts ``session.labels`` (labels) and ``session.model`` (features,
model, predictions) have their own state and methods. :mod:`.steps` are the long steps as
progress generators (frozen request in, frozen :mod:`.results` out).
"""

from ..core.workflow import failed_rows
from . import annotators, model_outputs
from .labels import LABEL_CYCLE, SessionLabels
from .model import SessionModel
from .owned import WrongThreadError
from .results import (
    ExtractedFeatures,
    FinetuneOutcome,
    GradcamMaps,
    ModelState,
    OpenedDataset,
    Predictions,
    SessionSettings,
    StoreSwitch,
    TrainedModel,
    TrainReport,
)
from .state import UNCERTAIN_BAND, AnnotatorSession
from .steps import LABEL_FALLBACK, MIN_CV_PER_CLASS, needs_network

__all__ = [
    "LABEL_CYCLE", "LABEL_FALLBACK", "MIN_CV_PER_CLASS", "UNCERTAIN_BAND", "AnnotatorSession",
    "ExtractedFeatures", "FinetuneOutcome", "GradcamMaps", "ModelState", "OpenedDataset",
    "Predictions", "SessionLabels", "SessionModel", "SessionSettings", "StoreSwitch",
    "TrainReport", "TrainedModel", "WrongThreadError", "annotators", "failed_rows", "model_outputs", "needs_network",
]
