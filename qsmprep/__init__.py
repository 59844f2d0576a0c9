"""qsmprep: quantitative susceptibility mapping as a BIDS-App."""

import os

# Idle OpenMP threads sleep instead of spinning. qsmprep alternates numba's parallel kernels
# (OpenMP threads) with multi-threaded FFTs (their own threads); with spinning idle threads the
# two pools fight for the cores between calls. Measured on the 2-core test machine, TV at
# 164x205x205: 1.85-2.11 s spinning, 1.56-1.76 s sleeping (docs/benchmarks.md). It must be set
# before the OpenMP runtime starts, so here; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from qsmprep import _malloc  # noqa: E402
from qsmprep.__about__ import __version__  # noqa: E402

# Large freed arrays stay in the process instead of being unmapped and faulted in again at the
# next FFT (glibc only; QSMPREP_MALLOC_TUNING=0 opts out). See qsmprep/_malloc.py.
MALLOC_TUNED = _malloc.tune()

__all__ = ["MALLOC_TUNED", "__version__"]
