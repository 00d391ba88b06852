"""Making anomalies: Perlin-noise blends, cut-paste and transplanted defects with exact masks (anomalies.py,
noise.py) and writing them as MVTec-layout folders (folders.py); imports only data and errors, so detectors
(semisup) may use it.

The names of the old module `normalcy.synth` (now `anomalies.py`) are re-exported here.
"""

from normalcy.synth.anomalies import (
    KINDS,
    cut_paste,
    jitter_colour,
    perlin_blend,
    place_defect,
    poisson_blend,
    quantize,
    resize,
    transplant,
)

__all__ = ["KINDS", "cut_paste", "jitter_colour", "perlin_blend", "place_defect", "poisson_blend", "quantize",
           "resize", "transplant"]
