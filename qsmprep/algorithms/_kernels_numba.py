"""Fused numba builders for the k-space kernels of :mod:`qsmprep.algorithms.kernels`.

Importing this module raises ``ImportError`` when numba is not installed; ``kernels`` then
builds the same arrays with numpy.
"""

from __future__ import annotations

import numba
import numpy as np

from qsmprep.algorithms._numba_cache import ensure_writable_cache

ensure_writable_cache(__file__)  # before the first cached kernel is defined


@numba.njit(parallel=True, fastmath=False, error_model="numpy", cache=True)
def dipole(a0, a1, a2, n0, n1, n2, q0, q1, q2, out):  # pragma: no cover - jit
    """``out = 1/3 - ((a0 + a1 + a2)^2 + n0 + n1 + n2) / (q0 + q1 + q2)`` on the grid spanned
    by the 1-D axes (``a_i = k_i b_i``, 0 on a Nyquist plane; ``n_i = (k_i b_i)^2`` there, 0
    elsewhere; ``q_i = k_i^2``). ``a0, a1, q0, q1`` are float64 and the rest float32: the
    sums and casts follow the numpy build's order, so the result equals it bit for bit.
    ``out[0, 0, 0]`` (``k = 0``, 0 / 0) is left to the caller. One pass over the grid
    instead of about eight."""
    third = np.float32(1.0 / 3.0)
    for i in numba.prange(out.shape[0]):
        for j in range(out.shape[1]):
            s01 = np.float32(a0[i] + a1[j])
            q01 = np.float32(q0[i] + q1[j])
            m0, m1 = n0[i], n1[j]
            for k in range(out.shape[2]):
                s = s01 + a2[k]
                d = s * s + m0 + m1 + n2[k]
                out[i, j, k] = third - d / (q01 + q2[k])

