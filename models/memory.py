"""CPU training's allocator setting: keep freed memory for the next step instead of returning it.

glibc's malloc serves large blocks (the embedding table's dense gradient, 49,408 x 128 floats = 25 MB;
a batch's conv activations) with their own mmap and gives them back to the kernel when freed, so every
step asks for the same tens of megabytes again and the kernel zero-fills them page by page: the corpus
model's CPU step took ~18,000 page faults. Raising the mmap and trim thresholds keeps the freed blocks in
the heap, where the next step reuses them (docs/benchmarks.md: the step 0.40 -> 0.34 s).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and stay there when freed; a glibc that refuses it (older
# ones cap the setting at 32 MB on 64-bit) gets the cap.
MMAP_THRESHOLDS = (256 << 20, 32 << 20)
# Free heap memory above this is returned to the kernel: the steps' working set stays below it.
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc malloc's thresholds for this process (once); False where the C library has no mallopt
    (macOS, musl) or refuses, and nothing changes there."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if not any(mallopt(_M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLDS):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
