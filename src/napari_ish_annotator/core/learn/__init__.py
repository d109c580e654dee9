"""Learning from feature rows: the per-term logistic ensembles and everything around them.

* :mod:`.logistic` - one term's members (:class:`EnsembleConfig`, the Gram-matrix fit, votes);
* :mod:`.ensembles` - :class:`EnsembleClassifier` over all terms, the Gram blocks (was ``classify``);
* :mod:`.calibration` - Platt scaling and prior correction;
* :mod:`.folds`, :mod:`.splits` - out-of-fold decisions and gene-grouped splits;
* :mod:`.metrics` - the per-term metrics and the one "labelled rows"/"both classes" rule;
* :mod:`.evaluation` - cross-validation and held-out evaluation (CONTRACTS.md summary), and
  the same figures for gene x stage records; :mod:`.table` prints them, :mod:`.report` draws them;
* :mod:`.groups` - gene x stage records: which images form one, their combined probability;
* :mod:`.decision` - the one call rule shown to a biologist;
* :mod:`.bundle` - the model bundle on disk;
* :mod:`.active` - which images to label next.

The names below are reached lazily (:func:`..utils.lazy.attach`): importing one module of
this package imports none of its siblings.
"""

from __future__ import annotations

from ..utils.lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "logistic": ["EnsembleConfig", "fit_logistic_gram", "majority_vote"],
    "ensembles": ["EnsembleClassifier", "GramBlock", "TermEnsemble", "gram_matrix", "iter_gram"],
    "calibration": ["Calibration", "DEFAULT_METHOD", "METHODS", "iter_calibrate"],
    "folds": ["iter_fold_decisions", "iter_out_of_fold"],
    "splits": ["group_ids", "grouped_folds", "held_out_genes", "random_partitions", "validation_split"],
    "metrics": ["CALIBRATION_METRICS", "METRICS", "class_counts", "labelled_mask", "labelled_rows", "defined_mean", "expected_calibration_error", "has_both_classes", "mean_auc", "per_term_auc", "term_metrics", "trainable_terms"],
    "evaluation": ["Evaluation", "HeldOut", "iter_cross_validate", "score_groups", "score_predictions"],
    "table": ["format_table"],
    "groups": ["GroupRecords", "combine_probabilities", "group_labels", "parse_by", "record_groups"],
    "report": ["split_aucs", "write_report"],
    "decision": ["CALL_THRESHOLD", "calls", "calls_text"],
    "bundle": ["ModelBundle", "check_bundle_target", "load_bundle", "save_bundle"],
    "active": ["iter_suggest", "rank", "suggest", "write_suggestions"],
})
