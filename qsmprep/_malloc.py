"""Keep freed large arrays in the process (glibc): no page faults on every FFT output.

glibc serves allocations above its mmap threshold (at most 32 MB) with fresh ``mmap`` pages
and unmaps them when freed. Every FFT, every ADMM step allocates a new 40-50 MB array at 1 mm,
so each one pays its page faults and the kernel zeroing them: on the 2-core test machine that
was about a third of a TV inversion (1.4-1.8 s -> 1.1 s at 164x205x205, docs/benchmarks.md),
with the same peak memory. Raising the mmap and trim thresholds to 1 GiB keeps such arrays on
the heap, where the next one of the same size reuses the pages.

``import qsmprep`` calls :func:`tune` once. It does nothing when the C library is not glibc,
when the user set glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, or when
``QSMPREP_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

#: Allocations up to this size stay on the heap, and up to this much free heap is kept.
THRESHOLD_BYTES = 1 << 30
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune(environ: os._Environ | dict | None = None) -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring).

    Returns True when the thresholds were set, False when skipped (not glibc, opted out,
    or the user's own ``MALLOC_*_THRESHOLD_`` variables are set).
    """
    env = os.environ if environ is None else environ
    if env.get("QSMPREP_MALLOC_TUNING", "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if "MALLOC_MMAP_THRESHOLD_" in env or "MALLOC_TRIM_THRESHOLD_" in env:
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - unusual libc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, THRESHOLD_BYTES) == 1
    return bool(mallopt(_M_TRIM_THRESHOLD, THRESHOLD_BYTES) == 1 and ok)
