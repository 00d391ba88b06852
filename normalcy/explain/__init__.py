"""Explaining and grouping detections: regions of a map, summary sentences, overlays, nearest known defect types,
an optional narrator, and defect-type discovery; may import detectors, never apps.

The names of the old module `normalcy.explain` (now `summary.py`) are re-exported here.
"""

from normalcy.explain.summary import add_nearest_types, attach, attach_all, explanation_for, sentence

__all__ = ["add_nearest_types", "attach", "attach_all", "explanation_for", "sentence"]
