"""Learning from features: logistic ensembles, folds, splits, metrics, calibration, evaluation, bundles."""
