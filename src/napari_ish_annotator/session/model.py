"""``session.model``: features, model, predictions, training, fine-tuning, Grad-CAM, the
"next to label" ranking and the ensemble's spread of a session's open images.

Each long step is a ``*_request`` (frozen, built here on the GUI thread), a step from
:mod:`.steps` run in a worker, and an ``apply_*`` that takes its frozen result.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.backbones.devices import resolve_device, resolve_device_type
from ..core.backbones.weights import weights_file_of
from ..core.features.extractor import ExtractorConfig
from ..core.learn.bundle import load_bundle, save_bundle
from ..core.learn.decision import calls
from ..core.learn.metrics import class_counts, has_both_classes, labelled_rows
from ..core.utils.errors import InputError
from ..core.workflow import write_predictions
from . import steps
from .owned import OwnedByOneThread
from .results import (
    ExtractedFeatures,
    FinetuneOutcome,
    LabelOrder,
    MemberSpread,
    ModelState,
    Predictions,
    TrainedModel,
)

if TYPE_CHECKING:
    from ..core.features.extractor import FeatureExtractor
    from ..core.finetune.config import FinetuneConfig
    from ..core.learn.bundle import ModelBundle
    from .labels import SessionLabels
    from .results import HeldOutScores, TrainReport
    from .shared import SessionState


class SessionModel(OwnedByOneThread):
    """The model side of a session (``session.model``): what it knows and what it can do.

    Its state is its own; the dataset, vocabulary, labels and signals are the session's.
    :meth:`forget` drops everything made for other images when new ones are opened.
    """

    def __init__(self, session: SessionState, labels: SessionLabels) -> None:
        super().__init__(session._owner)
        self.session = session
        self.labels = labels  # the same images' labels (what Train and "next to label" read)
        self._extractors = steps.Extractors(session.cache_dir)
        self.bundle: ModelBundle | None = None
        self.finetuned: Path | None = None  # checkpoint of the fine-tuned backbone in use
        self.previous_model: ModelState | None = None  # what "switch model" goes back to
        self.member_spread: MemberSpread | None = None  # a fine-tuned ensemble's spread
        self.label_order: LabelOrder | None = None  # the "next to label" ranking
        self.forget()

    def forget(self) -> None:
        """Drop the features, predictions and reports made for the images open until now."""
        self.extracted: ExtractedFeatures | None = None
        self.probabilities: np.ndarray | None = None
        self.votes: np.ndarray | None = None  # majority vote of each term's ensemble
        self.train_report: TrainReport | None = None
        self.held_out: HeldOutScores | None = None  # the last Train's out-of-fold p

    @property
    def features(self) -> np.ndarray | None:
        """Feature rows of the open images (see :attr:`extracted` for their signature)."""
        return None if self.extracted is None else self.extracted.X

    # ------------------------------------------------------------------ features & model
    def extractor_config(self, use_bundle: bool = True) -> ExtractorConfig:
        """The model's extractor settings when a model is loaded, else the panel's."""
        s = self.session.settings
        if use_bundle and self.bundle is not None:
            return replace(self.bundle.extractor, device=s.device, batch_size=s.batch_size)
        return ExtractorConfig(backbone=s.backbone, weights=s.weights, layer=s.layer,
                               input_size=s.input_size, device=s.device,
                               batch_size=s.batch_size, seed=s.seed)

    def extractor(self, config: ExtractorConfig | None = None) -> FeatureExtractor:
        """The (shared, cached) feature extractor for ``config`` (default: current)."""
        return self._extractors.get(self.extractor_config() if config is None else config)

    def device_name(self) -> str:
        s = self.session
        fx = self._extractors.latest()
        if fx is not None and "torch" in sys.modules:  # else a warm-cache step built it
            return str(fx.device)
        known = resolve_device_type(fx.config.device if fx is not None else s.settings.device)
        if known is not None:
            return known
        if "torch" not in sys.modules:  # importing torch (1.5 s) only to name the device: no
            return f"{s.settings.device} (GPU if present; known once a model runs)"
        try:
            return str(resolve_device(s.settings.device))
        except Exception:
            return s.settings.device

    def extract_request(self, config: ExtractorConfig | None = None) -> steps.ExtractRequest:
        s = self.session
        if not s.paths:
            raise InputError("no images are open; open a folder or manifest first")
        return steps.ExtractRequest(s.paths, self.extractor_config() if config is None
                                    else config, self._extractors, s.generation)

    def current_features(self, config: ExtractorConfig | None = None) -> ExtractedFeatures | None:
        """The session's features if they were made with ``config`` for the open images."""
        s = self.session
        f = self.extracted
        if f is None or len(f.X) != s.n_images or f.generation != s.generation:
            return None
        try:
            return f if f.signature == self.extractor(config).signature() else None
        except Exception:
            return None

    def apply_features(self, result: ExtractedFeatures | None) -> None:
        """Keep extracted features (ignored if made for a dataset since replaced)."""
        s = self.session
        if result is None or result.generation != s.generation:
            return
        self.extracted = result
        new = [f"{s.paths[i]}: skipped at feature extraction ({why})" for i, why in result.failed
               if 0 <= i < len(s.paths)]
        new = [m for m in new if m not in s.skipped]
        s.features_changed.emit()
        if new:  # listed and announced like the files skipped at open time
            s.skipped = (*s.skipped, *new)
            s.dataset_changed.emit()

    def predict_request(self) -> steps.PredictRequest:
        if self.bundle is None:
            raise InputError("no model yet: load a model bundle or train one in the Train panel")
        extract = self.extract_request()
        return steps.PredictRequest(self.bundle, self.current_features(), extract)

    def apply_predictions(self, result: Predictions) -> None:
        """Show a model's probabilities (dropped if made for a dataset since replaced)."""
        s = self.session
        if result.generation != s.generation:
            return
        self.apply_features(result.features)
        self.probabilities = np.asarray(result.probabilities, dtype=np.float32)
        self.votes = np.asarray(result.votes, dtype=bool)
        s.predictions_changed.emit()

    def set_bundle(self, bundle: ModelBundle, finetuned: Path | None = None) -> list[str]:
        """Use ``bundle``; returns its terms the labelled vocabulary leaves out.

        A folder's vocabulary is the biologist's (what its label file holds): a model with
        more terms predicts them (canvas, exports) but adds none to the list or the label
        file (Add term does, one by one). With no vocabulary yet the model's is taken."""
        s = self.session
        self.bundle = bundle
        self.finetuned = finetuned
        spread = self.member_spread
        if spread is not None and Path(spread.checkpoint) != self.network_checkpoint():
            self.member_spread = None  # made with another network than the new model's
        self.probabilities = None
        self.votes = None
        model_terms = list(bundle.classifier.vocabulary)
        if not s.vocabulary:
            s.vocabulary = model_terms
            if s.store is not None and not s.store_read_only:
                s.store.add_terms(s.vocabulary)
        s.model_changed.emit()
        s.vocabulary_changed.emit()
        s.predictions_changed.emit()
        return [t for t in model_terms if t not in s.vocabulary]

    def load_bundle(self, path: str | Path) -> list[str]:
        """Load a saved model; returns its terms this folder's vocabulary leaves out."""
        return self.set_bundle(load_bundle(path))

    def save_bundle(self, path: str | Path) -> None:
        if self.bundle is None:
            raise InputError("no model to save; train one first")
        save_bundle(path, self.bundle)

    @property
    def terms(self) -> list[str]:
        return list(self.bundle.classifier.vocabulary) if self.bundle is not None else []

    def probabilities_for(self, index: int | None = None) -> dict[str, float]:
        i = self.session.index if index is None else index
        if self.probabilities is None or not (0 <= i < len(self.probabilities)) or \
                np.isnan(self.probabilities[i]).all():  # skipped at extraction: no prediction
            return {}
        return {t: float(p) for t, p in zip(self.terms, self.probabilities[i],
                                            strict=False)}

    def called_for(self, index: int | None = None) -> dict[str, bool]:
        """Per model term: called present by the one decision rule (:mod:`..core.learn.decision`,
        calibrated p >= 0.5), what every view shows; {} without a prediction."""
        probs = self.probabilities_for(index)
        if not probs:
            return {}
        return dict(zip(probs, calls(list(probs.values())).tolist(), strict=True))

    def predicted_for(self, index: int | None = None) -> dict[str, bool]:
        """The ensembles' majority vote per model term (the paper's vote, not shown as a call)."""
        i = self.session.index if index is None else index
        if self.votes is None or not (0 <= i < len(self.votes)) or not self.probabilities_for(i):
            return {}
        return {t: bool(v) for t, v in zip(self.terms, self.votes[i], strict=False)}

    def top_terms(self, index: int, k: int = 3) -> list[tuple[str, float]]:
        probs = self.probabilities_for(index)
        return sorted(probs.items(), key=lambda kv: -kv[1])[:k]

    def export_predictions(self, path: str | Path) -> None:
        """predictions CSV: ``image`` + one probability column per model term (CONTRACTS)."""
        if self.probabilities is None:
            raise InputError("no predictions yet; press Predict first")
        keep = np.flatnonzero(~np.isnan(self.probabilities).all(axis=1))  # not the skipped
        write_predictions(path, [self.session.paths[i] for i in keep], self.terms,
                          self.probabilities[keep])

    # ------------------------------------------------------------------ training
    def training_counts(self) -> dict[str, tuple[int, int]]:
        return steps.term_counts(self.labels.label_matrix(), self.session.vocabulary)

    def check_trainable(self, Y: np.ndarray | None = None) -> None:
        Y = self.labels.label_matrix() if Y is None else Y
        n_pos, n_neg = class_counts(Y)
        ok = has_both_classes(Y)
        bad = [f"{t} ({int(n_pos[j])} present, {int(n_neg[j])} absent)"
               for j, t in enumerate(self.session.vocabulary) if not ok[j]]
        if bad:
            raise InputError(
                "cannot train: every term needs at least one 'present' and one 'absent' label; "
                "missing for: " + ", ".join(bad) + "; label more images or remove those terms")

    def train_request(self, cross_validate: bool = True, n_folds: int | None = None,
                      Y: np.ndarray | None = None) -> steps.TrainRequest:
        """Everything a Train run needs, frozen now (labels, settings, features).

        ``n_folds``: the gene-grouped folds of the one out-of-fold pass that gives the CV AUCs
        and the calibration (default: the calibration's own, so the model is ``train``'s).

        ``Y`` trains on other labels of the open images (e.g. the annotators' consensus,
        :func:`.annotators.consensus_train_request`) instead of the session's own.
        """
        s = self.session
        if not s.paths:
            raise InputError("no images are open; open a folder or manifest first")
        Y = self.labels.label_matrix().copy() if Y is None else Y  # the request owns its labels
        self.check_trainable(Y)
        settings = s.settings
        config = self.extractor_config(use_bundle=False)  # train with the panel's settings
        return steps.TrainRequest(
            Y, tuple(s.vocabulary), s.paths, s.genes, s.stages,
            {"n_members": settings.n_members, "C": settings.C, "seed": settings.seed},
            cross_validate, n_folds, settings.seed, self.current_features(config),
            self.extract_request(config))

    def apply_trained(self, result: TrainedModel) -> None:
        """Use a freshly trained model and its predictions (dropped if the dataset changed)."""
        s = self.session
        if result.predictions.generation != s.generation:
            return
        self.train_report = result.report
        self.held_out = result.held_out
        self.apply_features(result.features)
        finetuned = Path(s.settings.weights) if self.finetuned is not None and \
            str(self.finetuned) == s.settings.weights else None
        self.set_bundle(result.bundle, finetuned)
        self.apply_predictions(result.predictions)
        s.train_report_changed.emit()

    # ------------------------------------------------------------------ fine-tuning
    def finetune_request(self, config: FinetuneConfig, out: Path, init: Path | None = None
                         ) -> steps.FinetuneRequest:
        """Fine-tune on the labelled images, then refit on the checkpoint's features; ``init``
        (the fine-tuned checkpoint in use) continues that network with the current labels."""
        s = self.session
        if not s.paths:
            raise InputError("no images are open; open a folder or manifest first")
        if init is not None and Path(init) != self.network_checkpoint():
            raise InputError("no fine-tuned network is in use to continue; fine-tune first")
        train = self.train_request(True)
        rows = labelled_rows(train.Y)
        if len(rows) < 2:
            raise InputError("fine-tuning needs at least two labelled images; label more")
        settings = replace(s.settings, backbone=config.backbone,
                           input_size=int(config.input_size))
        refit, refit_settings = steps.finetune_refit(train, settings, Path(out))
        return steps.FinetuneRequest(tuple(s.paths[i] for i in rows), train.Y[rows],
                                     train.vocabulary, rows, config, Path(out),
                                     refit, refit_settings, Path(init) if init else None)

    def model_state(self) -> ModelState:
        return ModelState(self.session.settings, self.bundle, self.extracted, self.probabilities,
                          self.votes, self.train_report,
                          {"finetuned": self.finetuned, "held_out": self.held_out})

    def apply_finetuned(self, outcome: FinetuneOutcome) -> None:
        """Switch to the fine-tuned backbone's model; the current one becomes 'previous'."""
        s = self.session
        if outcome.trained.predictions.generation != s.generation:
            return
        previous = self.model_state()
        s.settings = outcome.settings
        self.finetuned = Path(outcome.settings.weights)
        self.apply_trained(outcome.trained)
        self.previous_model = previous
        s.settings_changed.emit()

    def switch_model(self) -> bool:
        """Swap the model in use with :attr:`previous_model` (False if there is none)."""
        s = self.session
        snap = self.previous_model
        if snap is None:
            return False
        current = self.model_state()
        s.settings = snap.settings
        self.train_report = snap.train_report
        self.held_out = snap.extra.get("held_out")
        self.extracted = snap.features if snap.features is not None and \
            snap.features.generation == s.generation else None
        s.features_changed.emit()
        if snap.bundle is not None:
            self.set_bundle(snap.bundle, snap.extra.get("finetuned"))
            if snap.probabilities is not None and len(snap.probabilities) == s.n_images:
                self.probabilities, self.votes = snap.probabilities, snap.votes
                s.predictions_changed.emit()
        else:
            self.bundle, self.finetuned, self.probabilities, self.votes = None, None, None, None
            self.member_spread = None
            s.model_changed.emit()
            s.predictions_changed.emit()
        self.previous_model = current
        s.settings_changed.emit()
        s.train_report_changed.emit()
        return True

    # ------------------------------------------------------------------ Grad-CAM
    def gradcam_request(self, terms: Sequence[str], index: int | None = None,
                        finetuned: bool = False) -> steps.GradcamRequest:
        """Grad-CAM of one image for ``terms`` (the fine-tuned network's own head if asked)."""
        s = self.session
        if self.bundle is None:
            raise InputError("Grad-CAM needs a model: load a bundle or train one first")
        if finetuned and self.finetuned is None:
            raise InputError("no fine-tuned model is in use; fine-tune in the Train panel first")
        i = s.index if index is None else index
        if not 0 <= i < s.n_images:
            raise InputError("no image is open; open a folder or manifest first")
        missing = [t for t in terms if t not in self.terms]
        if missing:
            raise InputError(f"the model has no classifier for {', '.join(missing)}; "
                             "retrain after labelling that term")
        return steps.GradcamRequest(i, s.paths[i], tuple(terms), self.bundle,
                                    self.extract_request(), self.finetuned if finetuned else None)

    # ------------------------------------------------------------------ next to label
    def apply_label_order(self, order: LabelOrder) -> None:
        """Keep a "next to label" ranking (:func:`.model_outputs.iter_suggest`; dropped if stale)."""
        s = self.session
        if order.generation != s.generation:
            return
        self.label_order = order
        s.label_order_changed.emit()

    def next_to_label(self, from_top: bool = False) -> int | None:
        """Go to the next ranked image after this one (cyclically; from the best one when
        this image is not ranked) that still has an unknown model term; None without a
        ranking or when every other ranked image is labelled. ``from_top`` (a new ranking):
        the best unlabelled one, this image included, so the user starts at the top."""
        s = self.session
        order = self.label_order
        if order is None or order.generation != s.generation or self.bundle is None:
            return None
        cols = [s.vocabulary.index(t) for t in self.terms if t in s.vocabulary]
        Y = self.labels.label_matrix()
        images = order.images.tolist()
        start = images.index(s.index) + 1 if s.index in images and not from_top else 0
        for i in images[start:] + images[:start]:
            if (Y[i, cols] < 0).any() and (i != s.index or from_top):
                s.set_index(int(i))
                return int(i)
        return None

    # ------------------------------------------------------------------ ensemble spread
    def network_checkpoint(self) -> Path | None:
        """The weights file behind the model in use: this session's fine-tuned checkpoint, or
        the file the model was trained with (e.g. ``finetune --ensemble K``'s, chosen as
        Weights). Whether it is a fine-tuning checkpoint is checked where it is read."""
        if self.finetuned is not None:
            return self.finetuned
        path = None if self.bundle is None else weights_file_of(self.bundle.extractor.weights)
        return path if path is not None and path.is_file() else None

    def apply_member_spread(self, spread: MemberSpread) -> None:
        """Show a fine-tuned ensemble's member spread (:func:`.model_outputs.iter_member_spread`)."""
        s = self.session
        network = self.network_checkpoint()
        if spread.generation != s.generation or network is None or \
                Path(spread.checkpoint) != network:
            return  # made for other images or another model
        self.member_spread = spread
        s.predictions_changed.emit()

    def spread_for(self, index: int | None = None) -> dict[str, float]:
        """{term: std over the ensemble's members} of one image ({} without a spread)."""
        s = self.session
        spread = self.member_spread
        i = s.index if index is None else index
        if spread is None or spread.generation != s.generation or \
                not 0 <= i < len(spread.std):
            return {}
        return {t: float(v) for t, v in zip(spread.vocabulary, spread.std[i], strict=True)}

