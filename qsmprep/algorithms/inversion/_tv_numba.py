"""Fused numba kernels for the TV split steps of :mod:`._common` (periodic boundaries).

Importing this module raises ``ImportError`` when numba is not installed; ``_common`` then
falls back to numpy.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def _shrink(p, t):
    if p > t:
        return p - t
    if p < -t:
        return p + t
    return np.float32(0.0)


@numba.njit(parallel=True, fastmath=False, cache=True)
def split_update(x, u0, u1, u2, z0, z1, z2, t, ih0, ih1, ih2):  # pragma: no cover - jit
    """z = shrink(grad x + u, t); u = grad x + u - z; return sum |grad x - z|."""
    n0, n1, n2 = x.shape
    total = 0.0
    for i in numba.prange(n0):
        ip = i + 1 if i + 1 < n0 else 0
        for j in range(n1):
            jp = j + 1 if j + 1 < n1 else 0
            for k in range(n2):
                kp = k + 1 if k + 1 < n2 else 0
                xc = x[i, j, k]
                g0 = (x[ip, j, k] - xc) * ih0
                g1 = (x[i, jp, k] - xc) * ih1
                g2 = (x[i, j, kp] - xc) * ih2
                p0 = g0 + u0[i, j, k]
                p1 = g1 + u1[i, j, k]
                p2 = g2 + u2[i, j, k]
                s0 = _shrink(p0, t)
                s1 = _shrink(p1, t)
                s2 = _shrink(p2, t)
                z0[i, j, k] = s0
                z1[i, j, k] = s1
                z2[i, j, k] = s2
                u0[i, j, k] = p0 - s0
                u1[i, j, k] = p1 - s1
                u2[i, j, k] = p2 - s2
                total += np.sqrt((g0 - s0) ** 2 + (g1 - s1) ** 2 + (g2 - s2) ** 2)
    return total


@numba.njit(parallel=True, fastmath=False, cache=True)
def split_adjoint(z0, z1, z2, u0, u1, u2, ih0, ih1, ih2):  # pragma: no cover - jit
    """grad^T (z - u) for forward differences with periodic boundaries."""
    n0, n1, n2 = z0.shape
    out = np.empty(z0.shape, dtype=np.float32)
    for i in numba.prange(n0):
        im = i - 1 if i > 0 else n0 - 1
        for j in range(n1):
            jm = j - 1 if j > 0 else n1 - 1
            for k in range(n2):
                km = k - 1 if k > 0 else n2 - 1
                w0 = z0[i, j, k] - u0[i, j, k]
                w1 = z1[i, j, k] - u1[i, j, k]
                w2 = z2[i, j, k] - u2[i, j, k]
                out[i, j, k] = (
                    (z0[im, j, k] - u0[im, j, k] - w0) * ih0
                    + (z1[i, jm, k] - u1[i, jm, k] - w1) * ih1
                    + (z2[i, j, km] - u2[i, j, km] - w2) * ih2
                )
    return out
