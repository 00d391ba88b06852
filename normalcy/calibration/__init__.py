"""Calibrated decisions: conformal p-values, thresholds, severity grades and severity evaluation; imports only
errors and numpy/scipy, so every detector can use it."""
