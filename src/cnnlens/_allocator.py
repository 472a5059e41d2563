"""Keep freed memory in the process instead of handing it back to the system after every batch (glibc only).

PyTorch's CPU tensors come from ``malloc``. glibc gives the top of its heap back to the kernel once more
than its trim threshold is free there, and that threshold follows the largest block freed so far (up to
32 MiB x 2): a method whose batches free tens of MiB at a time (LIME's and feature ablation's masked
batches, Score-CAM's masked images) has its heap cut back after each one, and the next batch touches fresh
pages again, zero-filled by the kernel one page fault at a time. Measured on fer_mlp (one CPU thread):
feature ablation of one image 63-65 ms while the heap was kept, 85-89 ms with ~20,000 page faults per call
and, in streaks, 340 ms; LIME of one image 818 ms -> 515 ms with the heap kept. Captum's calls, in small
batches, did not move.

:func:`retain_freed_memory` sets glibc's thresholds so the heap stays at its peak for the life of the process
(``mallopt``: trim threshold 1 GiB, mmap threshold fixed at 32 MiB, i.e. the glibc environment variables
``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` set from inside). The ``cnnlens`` command calls it at
start; a library user opts in. It changes how the whole process allocates, which is why cnnlens never does
it behind a library caller's back.
"""

from __future__ import annotations

import ctypes
import sys

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: What :func:`retain_freed_memory` sets: free memory kept at the heap's top, and the size from which a block
#: gets its own mapping (glibc's largest allowed value on 64-bit systems: larger blocks are mapped anyway).
TRIM_BYTES, MMAP_BYTES = 1 << 30, 32 << 20
#: glibc's defaults (128 KiB each; setting them explicitly also turns off glibc's adaptive thresholds).
DEFAULT_BYTES = 128 << 10


def retain_freed_memory(on: bool = True) -> bool:
    """Keep (``on``) or hand back (``False``: glibc's default sizes, not adaptive) freed heap memory for the
    rest of the process; True where it took effect, False where the C library is not glibc (macOS,
    Windows, musl), which leaves everything as it was.

    >>> from cnnlens.explain import accel
    >>> accel.retain_freed_memory()   # before a long explain loop in your own script
    True
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has mallopt as a no-op)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim, mmap = (TRIM_BYTES, MMAP_BYTES) if on else (DEFAULT_BYTES, DEFAULT_BYTES)
    return bool(mallopt(M_TRIM_THRESHOLD, trim)) and bool(mallopt(M_MMAP_THRESHOLD, mmap))


__all__ = ["retain_freed_memory"]
