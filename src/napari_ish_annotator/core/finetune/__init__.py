"""Multi-task fine-tuning of the pretrained trunk on the user's labelled images (TL+MTL).

The paper's second stage: put a shared hidden layer and one sigmoid output per controlled-
vocabulary term on top of the pretrained CNN, train everything after a frozen prefix with the
sum of the per-term binary cross-entropies, then use the *fine-tuned* layer-21 activations as
features for the per-term logistic ensembles. The checkpoint written here is accepted wherever
``--weights FILE`` is (``core.backbones`` reads its ``"backbone_state_dict"``), so the TL+MTL
pipeline is simply the TL pipeline with other weights.

The package, one concern per module:

* :mod:`.config` - :class:`FinetuneConfig`, results and progress records;
* :mod:`.network` - the multi-task head, the frozen depth, the masked loss (unknown labels
  ``-1`` give neither loss nor gradient);
* :mod:`.data` - label checks, the gene-grouped validation split (the one in
  :mod:`..learn.splits`), images in memory (through :mod:`..features.preprocess`, the path feature
  extraction uses), augmentation, the frozen-layer cache;
* :mod:`.trainer` - :class:`Trainer`: epoch loop, validation (per-term AUC of
  :mod:`..learn.metrics`), early stopping, a checkpoint per epoch; :func:`iter_finetune` is the
  entry point;
* :mod:`.checkpoint` - atomic writes, checked reads (``weights_only=True``), inference models;
* :mod:`.starting` - the base weights, or a saved network continued with new labels (``--init``);
* :mod:`.ensemble` - K networks in one checkpoint, mean and spread of their predictions;

Grad-CAM through the multi-task head is :func:`..explain.finetuned.gradcam_mtl`. The names
below are reached lazily (:func:`..utils.lazy.attach`); torch is imported where it runs.
"""

from __future__ import annotations

from ..utils.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "config": ["FORMAT", "FORMAT_VERSION", "FinetuneConfig", "FinetuneProgress", "FinetuneResult"],
    "network": ["build_head", "masked_bce", "resolve_frozen"],
    "data": ["check_labels"],
    "trainer": ["Trainer", "finetune", "iter_finetune", "iter_finetune_dataset"],
    "checkpoint": ["FinetunedModel", "is_ensemble", "load_checkpoint", "load_finetuned"],
    "starting": ["WarmStart", "load_warm_start"],
    "ensemble": ["EnsembleProbabilities", "EnsembleResult", "FinetunedEnsemble", "finetune_ensemble", "iter_finetune_ensemble", "iter_finetune_ensemble_dataset", "load_ensemble"],
})
