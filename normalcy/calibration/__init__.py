"""Calibrated decisions: conformal p-values (hold-out or cross-conformal), groups, per-decision uncertainty,
severity grades and severity evaluation; imports only errors and numpy/scipy at module level (scikit-learn and the
image reader lazily, for automatic groups), so every detector can use it."""
