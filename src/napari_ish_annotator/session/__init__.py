"""The annotation state of one viewer, with no Qt and no napari (scripts and tests use it too).

:class:`AnnotatorSession` holds the dataset, label store, vocabulary, features, model and
predictions and announces changes through psygnal signals; :mod:`.steps` are the long steps
as progress generators (frozen request in, frozen :mod:`.results` out).
"""

from ..core.workflow import failed_rows
from . import annotators, model_outputs
from .labels import LABEL_CYCLE
from .model import needs_network
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
from .state import UNCERTAIN_BAND, AnnotatorSession, WrongThreadError
from .steps import LABEL_FALLBACK, MIN_CV_PER_CLASS

__all__ = [
    "LABEL_CYCLE", "LABEL_FALLBACK", "MIN_CV_PER_CLASS", "UNCERTAIN_BAND", "AnnotatorSession",
    "ExtractedFeatures", "FinetuneOutcome", "GradcamMaps", "ModelState", "OpenedDataset",
    "Predictions", "SessionSettings", "StoreSwitch", "TrainReport", "TrainedModel",
    "WrongThreadError", "annotators", "failed_rows", "model_outputs", "needs_network",
]
