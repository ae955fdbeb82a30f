"""Hyperparameter search with Optuna: the study (``study``), its search space (``space``)
and the report of its trials (``report``). Each trial is an ordinary training run."""
