"""Let the C allocator keep freed memory for reuse, so large tensors do not cost fresh page faults on every call.

glibc hands blocks above a dynamic threshold (128 KiB to 32 MiB) straight back to the kernel when freed; a backbone
pass allocates activations of several MB per image, so each image then pays page faults for memory it just freed.
Measured with `benchmarks/profile_image.py` and in docs/performance.md: a third of the backbone's CPU time at batch 1
went to the kernel. The entry points (CLI commands, the service) call `keep_freed_memory` once; the library never
changes process-wide allocator settings by itself.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
KEEP_BYTES = 1 << 30  # freed memory kept for reuse before the heap's top is returned to the system


def keep_freed_memory(limit: int = KEEP_BYTES) -> bool:
    """Serve every block from the heap (no per-block mappings) and keep up to `limit` freed bytes (glibc; else no-op).

    The cost: the process keeps its peak heap (up to `limit` of it) instead of returning it to the system between
    images. Returns True when the allocator accepted both settings.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols to reach (static or unusual builds)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, int(limit))) and bool(mallopt(M_MMAP_MAX, 0))
