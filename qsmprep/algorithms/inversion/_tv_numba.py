"""Fused numba kernels for the ADMM steps of :mod:`._common` (TV split, periodic boundaries)
and of :mod:`.single_step` (data, support and k-space steps).

Importing this module raises ``ImportError`` when numba is not installed; ``_common`` then
falls back to numpy.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from qsmprep.algorithms._numba_cache import ensure_writable_cache

ensure_writable_cache(__file__)  # before the first cached kernel is defined


@numba.njit(inline="always")
def _wrap(i, n):
    """Periodic neighbours ``(i + 1, i - 1)`` of index ``i`` on an axis of length ``n``."""
    return (i + 1 if i + 1 < n else 0), (i - 1 if i > 0 else n - 1)


@numba.njit(inline="always")
def _shrink(p, t):
    """Soft threshold ``p - clip(p, -t, t)`` (exact; 0 inside ``[-t, t]``). Without branches
    the loops vectorise instead of mispredicting on noisy data: ``split_update`` on
    192x240x240 random input 122 -> 25 ms."""
    return p - min(max(p, -t), t)


@numba.njit(inline="always")
def _row_sum(buf, n):
    """``sum(buf[:n])`` in eight independent float32 partial sums, added in float64. A
    running scalar sum inside a voxel loop keeps that loop from vectorising (fastmath is
    off, so the additions may not be reordered): ``split_update``'s residual cost 21 of its
    36 ms at 192x240x240 that way."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
    m = n - n % 8
    for k in range(0, m, 8):
        a0 += buf[k]
        a1 += buf[k + 1]
        a2 += buf[k + 2]
        a3 += buf[k + 3]
        a4 += buf[k + 4]
        a5 += buf[k + 5]
        a6 += buf[k + 6]
        a7 += buf[k + 7]
    for k in range(m, n):
        a0 += buf[k]
    return (np.float64(a0) + np.float64(a1) + np.float64(a2) + np.float64(a3)) + (
        np.float64(a4) + np.float64(a5) + np.float64(a6) + np.float64(a7)
    )


@numba.njit(parallel=True, fastmath=False, cache=True)
def split_update(x, u0, u1, u2, w0, w1, w2, t, cu, ih0, ih1, ih2):  # pragma: no cover - jit
    """z = shrink(grad x + cu u, t); u = grad x + cu u - z; w = z - u (in place; ``cu``
    applies a pending rescaling of the stored dual, 1 otherwise, exact). Returns
    sum |grad x - z|_2 over the voxels: each voxel's term goes to a row buffer, so the voxel
    loop vectorises, and the row is summed by :func:`_row_sum` (float64 across rows)."""
    n0, n1, n2 = x.shape
    rows = np.zeros(n0)
    for i in numba.prange(n0):
        ip = i + 1 if i + 1 < n0 else 0
        buf = np.empty(n2, dtype=np.float32)
        total = 0.0
        for j in range(n1):
            jp = j + 1 if j + 1 < n1 else 0
            for k in range(n2):
                kp = k + 1 if k + 1 < n2 else 0
                xc = x[i, j, k]
                g0 = (x[ip, j, k] - xc) * ih0
                g1 = (x[i, jp, k] - xc) * ih1
                g2 = (x[i, j, kp] - xc) * ih2
                p0 = g0 + cu * u0[i, j, k]
                p1 = g1 + cu * u1[i, j, k]
                p2 = g2 + cu * u2[i, j, k]
                s0 = _shrink(p0, t)
                s1 = _shrink(p1, t)
                s2 = _shrink(p2, t)
                u0[i, j, k] = p0 - s0
                u1[i, j, k] = p1 - s1
                u2[i, j, k] = p2 - s2
                w0[i, j, k] = s0 - (p0 - s0)
                w1[i, j, k] = s1 - (p1 - s1)
                w2[i, j, k] = s2 - (p2 - s2)
                buf[k] = np.sqrt((g0 - s0) ** 2 + (g1 - s1) ** 2 + (g2 - s2) ** 2)
            total += _row_sum(buf, n2)
        rows[i] = total
    return rows.sum()


@numba.njit(parallel=True, fastmath=False, cache=True)
def grad_adjoint(w0, w1, w2, ih0, ih1, ih2, u0=None, u1=None, u2=None, c=0.0):  # pragma: no cover
    """grad^T w for forward differences with periodic boundaries; grad^T (w + c u) when the
    ``u`` arrays are given (numba compiles each case apart: the ``None`` test is resolved
    at compile time, so plain ``grad^T w`` reads only ``w``)."""
    n0, n1, n2 = w0.shape
    out = np.empty(w0.shape, dtype=np.float32)
    for i in numba.prange(n0):
        im = i - 1 if i > 0 else n0 - 1
        for j in range(n1):
            jm = j - 1 if j > 0 else n1 - 1
            for k in range(n2):
                km = k - 1 if k > 0 else n2 - 1
                d0 = w0[im, j, k] - w0[i, j, k]
                d1 = w1[i, jm, k] - w1[i, j, k]
                d2 = w2[i, j, km] - w2[i, j, k]
                if u0 is not None:
                    d0 += c * (u0[im, j, k] - u0[i, j, k])
                    d1 += c * (u1[i, jm, k] - u1[i, j, k])
                    d2 += c * (u2[i, j, km] - u2[i, j, k])
                out[i, j, k] = d0 * ih0 + d1 * ih1 + d2 * ih2
    return out


@numba.njit(parallel=True, fastmath=False, cache=True)
def relative_change(new, old):  # pragma: no cover - jit
    """||new - old|| / ||new|| in one pass (rows summed by :func:`_row_sum`)."""
    n0, n1, n2 = new.shape
    diff = np.zeros(n0)
    norm = np.zeros(n0)
    for i in numba.prange(n0):
        bd = np.empty(n2, dtype=np.float32)
        bs = np.empty(n2, dtype=np.float32)
        d = 0.0
        s = 0.0
        for j in range(n1):
            for k in range(n2):
                a = new[i, j, k]
                b = a - old[i, j, k]
                bd[k] = b * b
                bs[k] = a * a
            d += _row_sum(bd, n2)
            s += _row_sum(bs, n2)
        diff[i] = d
        norm[i] = s
    return np.sqrt(diff.sum()) / max(np.sqrt(norm.sum()), 1e-30)


@numba.njit(parallel=True, fastmath=False, cache=True)
def data_step(v, u, b, inv_den, rho):  # pragma: no cover - jit
    """Single-step data split, in place: p = v + u; a = (b + rho p) inv_den; u = p - a;
    v = a - u (the next x-step's input)."""
    n0, n1, n2 = v.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                p = v[i, j, k] + u[i, j, k]
                a = (b[i, j, k] + rho * p) * inv_den[i, j, k]
                un = p - a
                u[i, j, k] = un
                v[i, j, k] = a - un


@numba.njit(parallel=True, fastmath=False, cache=True)
def support_step(x, u, inside, adj, rho_w, rho_s):  # pragma: no cover - jit
    """Single-step support split and x-step right-hand side, in place: q = x + u; s = q inside
    the mask, 0 outside; u = q - s; adj = rho_s (s - u) + rho_w adj (adj = grad^T w on entry)."""
    n0, n1, n2 = x.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                q = x[i, j, k] + u[i, j, k]
                s = q if inside[i, j, k] else np.float32(0.0)
                un = q - s
                u[i, j, k] = un
                adj[i, j, k] = rho_s * (s - un) + rho_w * adj[i, j, k]


@numba.njit(parallel=True, fastmath=False, cache=True)
def spectra_step(fa, fr, wa, wr, cd):  # pragma: no cover - jit
    """Single-step x-step in k-space, in place: X = wa fa + wr fr -> fa; cd X -> fr."""
    n0, n1, n2 = fa.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                sp = wa[i, j, k] * fa[i, j, k] + wr[i, j, k] * fr[i, j, k]
                fa[i, j, k] = sp
                fr[i, j, k] = cd[i, j, k] * sp


@numba.njit(parallel=True, fastmath=False, cache=True)
def weighted_solve(spectrum, data, well, mu, g0, g1, g2, rho):  # pragma: no cover - jit
    """RTS x-step in k-space, in place: spectrum = (data + rho spectrum) / (mu well + rho
    |G|^2), with ``|G|^2 = g0[i] + g1[j] + g2[k]`` (separable: no grid-sized array to read)
    and ``well`` boolean; a zero denominator (k = 0 outside the well) is read as 1."""
    n0, n1, n2 = spectrum.shape
    for i in numba.prange(n0):
        for j in range(n1):
            gij = g0[i] + g1[j]
            for k in range(n2):
                den = rho * (gij + g2[k]) + (mu if well[i, j, k] else np.float32(0.0))
                if den == 0:
                    den = np.float32(1.0)
                # times the reciprocal: a complex division measured 4x slower (9.4 -> 2.4 ms)
                inv = np.float32(1.0) / den
                v = data[i, j, k] + rho * spectrum[i, j, k]
                spectrum[i, j, k] = complex(v.real * inv, v.imag * inv)


@numba.njit(parallel=True, fastmath=False, cache=True)
def split_adjoint_update(x, u0, u1, u2, v0, v1, v2, t, ih0, ih1, ih2, out):  # pragma: no cover
    """The TV split step and its adjoint in one pass, without storing ``w``:
    p = grad x + u, z = shrink(p, t), v = p - z (the new u, into the spare arrays v), and
    out = grad^T (z - v). ``z - v = 2 z - p`` at the voxel and at its lower neighbour along
    each axis is recomputed from x and the old u, so u must not be updated in place."""
    n0, n1, n2 = x.shape
    for i in numba.prange(n0):
        ip, im = _wrap(i, n0)
        for j in range(n1):
            jp, jm = _wrap(j, n1)
            for k in range(n2):
                kp, km = _wrap(k, n2)
                xc = x[i, j, k]
                p0 = (x[ip, j, k] - xc) * ih0 + u0[i, j, k]
                p1 = (x[i, jp, k] - xc) * ih1 + u1[i, j, k]
                p2 = (x[i, j, kp] - xc) * ih2 + u2[i, j, k]
                s0 = _shrink(p0, t)
                s1 = _shrink(p1, t)
                s2 = _shrink(p2, t)
                v0[i, j, k] = p0 - s0
                v1[i, j, k] = p1 - s1
                v2[i, j, k] = p2 - s2
                q0 = (xc - x[im, j, k]) * ih0 + u0[im, j, k]
                q1 = (xc - x[i, jm, k]) * ih1 + u1[i, jm, k]
                q2 = (xc - x[i, j, km]) * ih2 + u2[i, j, km]
                out[i, j, k] = (
                    (2 * _shrink(q0, t) - q0 - 2 * s0 + p0) * ih0
                    + (2 * _shrink(q1, t) - q1 - 2 * s1 + p1) * ih1
                    + (2 * _shrink(q2, t) - q2 - 2 * s2 + p2) * ih2
                )


@numba.njit(parallel=True, fastmath=False, cache=True)
def scale_add(spectrum, weight, offset=None):  # pragma: no cover - jit
    """spectrum = spectrum * weight (+ offset), in place (complex spectrum, real weight; the
    ``None`` test is resolved at compile time). numpy's in-place complex-by-real product
    casts the weight element by element: 6 ms against 2.5 ms here at 192x240x121."""
    n0, n1, n2 = spectrum.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                value = spectrum[i, j, k] * weight[i, j, k]
                if offset is not None:
                    value += offset[i, j, k]
                spectrum[i, j, k] = value


#: Constants of :func:`_sincos`: 1.5 * 2^23 rounds a float32 to an integer when added and
#: subtracted; pi/2 in three parts (Cody-Waite), the first with 8 significant bits so that
#: ``q * _PIO2_1`` is exact for ``|q| < 2^16``.
_ROUND = np.float32(12582912.0)
_TWO_OVER_PI = np.float32(2.0 / np.pi)
_PIO2_1 = np.float32(1.5703125)
_PIO2_2 = np.float32(4.837512969970703125e-4)
_PIO2_3 = np.float32(7.54978995489188216e-8)
#: Taylor coefficients of sin (t^3 ... t^9) and cos (t^2 ... t^10).
_S3, _S5, _S7, _S9 = (np.float32((-1) ** n / math.factorial(2 * n + 1)) for n in range(1, 5))
_C2, _C4, _C6, _C8, _C10 = (np.float32((-1) ** n / math.factorial(2 * n)) for n in range(1, 6))


@numba.njit(inline="always")
def _sincos(x):
    """``(sin x, cos x)`` in float32 from arithmetic alone, so that a loop calling it
    vectorises (numba's ``np.sin`` is a scalar libm call per voxel). ``x = q pi/2 + t`` with
    ``q`` the nearest integer and ``t`` in ``[-pi/4, pi/4]`` (exact to float32 for
    ``|x| < 1e5``); Taylor polynomials to ``t^9`` and ``t^10`` (truncation < 2e-9); the
    quadrant ``q mod 4`` swaps and negates them. Error < 1e-7 (libm's float32: 7e-8)."""
    q = (x * _TWO_OVER_PI + _ROUND) - _ROUND
    t = ((x - q * _PIO2_1) - q * _PIO2_2) - q * _PIO2_3
    t2 = t * t
    sn = t + t * t2 * (_S3 + t2 * (_S5 + t2 * (_S7 + t2 * _S9)))
    cs = np.float32(1.0) + t2 * (_C2 + t2 * (_C4 + t2 * (_C6 + t2 * (_C8 + t2 * _C10))))
    # bit tests, not a chain of branches on n: the chain kept the loop scalar (10x slower)
    n = np.int32(q) & np.int32(3)
    a = cs if (n & 1) != 0 else sn
    b = sn if (n & 1) != 0 else cs
    return (-a if (n & 2) != 0 else a), (-b if ((n + 1) & 2) != 0 else b)


@numba.njit(parallel=True, fastmath=False, cache=True)
def nltv_data_step(z, dx, u, f, w2, mu, s, steps):  # pragma: no cover - jit
    """Nonlinear-TV data split, in place, one pass: v = dx + u; ``steps`` Newton steps on
    ``w2 (1 - cos s(z - f)) / s^2 + mu/2 (z - v)^2`` from z; then u += dx - z. Where
    ``w2 = 0`` (outside the mask) the objective is quadratic and its minimum is ``z = v``,
    which is taken exactly. Each row of voxels runs the Newton steps as an inner loop over
    the row, with :func:`_sincos`, so that loop vectorises: 57 -> 25 ms a call at
    192x240x240 in NLTV (the sines and cosines were scalar libm calls)."""
    n0, n1, n2 = z.shape
    safe = np.float32(0.1) * mu
    for i in numba.prange(n0):
        zr = np.empty(n2, dtype=np.float32)
        vr = np.empty(n2, dtype=np.float32)
        for j in range(n1):
            for k in range(n2):
                vr[k] = dx[i, j, k] + u[i, j, k]
                zr[k] = z[i, j, k]
            for _ in range(steps):
                for k in range(n2):
                    zz, ww = zr[k], w2[i, j, k]
                    sn, cs = _sincos(s * (zz - f[i, j, k]))
                    grad = ww * sn / s + mu * (zz - vr[k])
                    hess = ww * cs + mu
                    hess = hess if hess > safe else ww + mu  # non-convex region: a safe step
                    zr[k] = zz - grad / hess
            for k in range(n2):
                zz = zr[k] if w2[i, j, k] != 0 else vr[k]
                z[i, j, k] = zz
                u[i, j, k] = vr[k] - zz


@numba.njit(parallel=True, fastmath=False, cache=True)
def grad_t_weighted_grad(v, c0, c1, c2, ih0, ih1, ih2, out):  # pragma: no cover - jit
    """``out = grad^T (c * grad v)`` in one pass, with ``grad`` the periodic forward
    difference ``(v[i+1] - v[i]) / h`` of :func:`._common.grad` and ``c`` per axis."""
    n0, n1, n2 = v.shape
    for i in numba.prange(n0):
        ip, im = _wrap(i, n0)
        for j in range(n1):
            jp, jm = _wrap(j, n1)
            for k in range(n2):
                kp, km = _wrap(k, n2)
                x = v[i, j, k]
                a0 = (x - v[im, j, k]) * c0[im, j, k] - (v[ip, j, k] - x) * c0[i, j, k]
                a1 = (x - v[i, jm, k]) * c1[i, jm, k] - (v[i, jp, k] - x) * c1[i, j, k]
                a2 = (x - v[i, j, km]) * c2[i, j, km] - (v[i, j, kp] - x) * c2[i, j, k]
                out[i, j, k] = a0 * ih0 * ih0 + a1 * ih1 * ih1 + a2 * ih2 * ih2


@numba.njit(inline="always")
def _butterfly(a, b):
    return a + b, a - b


@numba.njit(parallel=True, fastmath=False, cache=True)
def haar_analysis(src, coef, approx, t):  # pragma: no cover - jit
    """One level of the orthonormal 3-D Haar analysis of ``src`` (shape 2h per axis): for
    each 2x2x2 block, the sums-then-differences along axes 0, 1, 2 divided by sqrt 8. The
    average goes to ``approx[i, j, k]``, the 7 details, soft-thresholded at ``t`` (``t = 0``
    keeps them), to ``coef[i + a h0, j + b h1, k + c h2]`` (Mallat layout; ``coef[:h]`` is
    not written)."""
    h0, h1, h2 = approx.shape
    s = np.float32(0.35355339059327373)  # 1 / sqrt 8
    for i in numba.prange(h0):
        for j in range(h1):
            for k in range(h2):
                i2, j2, k2 = 2 * i, 2 * j, 2 * k
                # axis 0
                l00, h00 = _butterfly(src[i2, j2, k2], src[i2 + 1, j2, k2])
                l01, h01 = _butterfly(src[i2, j2, k2 + 1], src[i2 + 1, j2, k2 + 1])
                l10, h10 = _butterfly(src[i2, j2 + 1, k2], src[i2 + 1, j2 + 1, k2])
                l11, h11 = _butterfly(src[i2, j2 + 1, k2 + 1], src[i2 + 1, j2 + 1, k2 + 1])
                # axis 1
                ll0, lh0 = _butterfly(l00, l10)
                ll1, lh1 = _butterfly(l01, l11)
                hl0, hh0 = _butterfly(h00, h10)
                hl1, hh1 = _butterfly(h01, h11)
                # axis 2
                c000, c001 = _butterfly(ll0, ll1)
                c010, c011 = _butterfly(lh0, lh1)
                c100, c101 = _butterfly(hl0, hl1)
                c110, c111 = _butterfly(hh0, hh1)
                approx[i, j, k] = c000 * s
                coef[i, j, k + h2] = _shrink(c001 * s, t)
                coef[i, j + h1, k] = _shrink(c010 * s, t)
                coef[i, j + h1, k + h2] = _shrink(c011 * s, t)
                coef[i + h0, j, k] = _shrink(c100 * s, t)
                coef[i + h0, j, k + h2] = _shrink(c101 * s, t)
                coef[i + h0, j + h1, k] = _shrink(c110 * s, t)
                coef[i + h0, j + h1, k + h2] = _shrink(c111 * s, t)


@numba.njit(parallel=True, fastmath=False, cache=True)
def haar_synthesis(approx, coef, dst):  # pragma: no cover - jit
    """Inverse of :func:`haar_analysis` (with ``t = 0``): ``approx`` and the details of
    ``coef`` back to ``dst`` (shape 2h per axis). The Haar butterfly is its own inverse."""
    h0, h1, h2 = approx.shape
    s = np.float32(0.35355339059327373)
    for i in numba.prange(h0):
        for j in range(h1):
            for k in range(h2):
                i2, j2, k2 = 2 * i, 2 * j, 2 * k
                # axis 2
                ll0, ll1 = _butterfly(approx[i, j, k], coef[i, j, k + h2])
                lh0, lh1 = _butterfly(coef[i, j + h1, k], coef[i, j + h1, k + h2])
                hl0, hl1 = _butterfly(coef[i + h0, j, k], coef[i + h0, j, k + h2])
                hh0, hh1 = _butterfly(coef[i + h0, j + h1, k], coef[i + h0, j + h1, k + h2])
                # axis 1
                l00, l10 = _butterfly(ll0, lh0)
                l01, l11 = _butterfly(ll1, lh1)
                h00, h10 = _butterfly(hl0, hh0)
                h01, h11 = _butterfly(hl1, hh1)
                # axis 0
                a, b = _butterfly(l00, h00)
                dst[i2, j2, k2], dst[i2 + 1, j2, k2] = a * s, b * s
                a, b = _butterfly(l01, h01)
                dst[i2, j2, k2 + 1], dst[i2 + 1, j2, k2 + 1] = a * s, b * s
                a, b = _butterfly(l10, h10)
                dst[i2, j2 + 1, k2], dst[i2 + 1, j2 + 1, k2] = a * s, b * s
                a, b = _butterfly(l11, h11)
                dst[i2, j2 + 1, k2 + 1], dst[i2 + 1, j2 + 1, k2 + 1] = a * s, b * s


@numba.njit(parallel=True, fastmath=False, cache=True)
def fista_gradient_step(y, g, m, rhs):  # pragma: no cover - jit
    """``g = y - (m g - rhs)`` in place: the FISTA gradient step from ``g = F^-1(...)``."""
    n0, n1, n2 = y.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                g[i, j, k] = y[i, j, k] - (m[i, j, k] * g[i, j, k] - rhs[i, j, k])


@numba.njit(parallel=True, fastmath=False, cache=True)
def fista_momentum(x_new, x, c, m, y):  # pragma: no cover - jit
    """``y = x_new + c (x_new - x)``; returns ``||m (x_new - x)|| / ||m x_new||`` (rows
    summed by :func:`_row_sum`)."""
    n0, n1, n2 = x_new.shape
    diff = np.zeros(n0)
    norm = np.zeros(n0)
    for i in numba.prange(n0):
        bd = np.empty(n2, dtype=np.float32)
        bs = np.empty(n2, dtype=np.float32)
        dsum = 0.0
        nsum = 0.0
        for j in range(n1):
            for k in range(n2):
                a = x_new[i, j, k]
                d = a - x[i, j, k]
                y[i, j, k] = a + c * d
                w = m[i, j, k]
                bd[k] = (w * d) ** 2
                bs[k] = (w * a) ** 2
            dsum += _row_sum(bd, n2)
            nsum += _row_sum(bs, n2)
        diff[i] = dsum
        norm[i] = nsum
    return np.sqrt(diff.sum()) / max(np.sqrt(norm.sum()), 1e-30)


@numba.njit(parallel=True, fastmath=False, cache=True)
def l1_split(x, u, z, m, t, w):  # pragma: no cover - jit
    """STAR's L1 split, in place, one pass: ``z+ = m shrink(x + u, t)``, ``u += x - z+``,
    ``w = z+ - u`` (the next x-step's input), ``z = z+``. Returns
    ``||z+ - z|| / ||z+||`` (rows summed by :func:`_row_sum`)."""
    n0, n1, n2 = x.shape
    diff = np.zeros(n0)
    norm = np.zeros(n0)
    for i in numba.prange(n0):
        bd = np.empty(n2, dtype=np.float32)
        bs = np.empty(n2, dtype=np.float32)
        dsum = 0.0
        nsum = 0.0
        for j in range(n1):
            for k in range(n2):
                q = x[i, j, k] + u[i, j, k]
                zn = _shrink(q, t) if m[i, j, k] else np.float32(0.0)
                un = q - zn
                d = zn - z[i, j, k]
                bd[k] = d * d
                bs[k] = zn * zn
                z[i, j, k] = zn
                u[i, j, k] = un
                w[i, j, k] = zn - un
            dsum += _row_sum(bd, n2)
            nsum += _row_sum(bs, n2)
        diff[i] = dsum
        norm[i] = nsum
    return np.sqrt(diff.sum()) / max(np.sqrt(norm.sum()), 1e-30)


#: Block length of the 1-D Krylov kernels: each block sums in float32 (so the loop
#: vectorises), the blocks' sums add in float64.
_BLOCK = 16384


@numba.njit(parallel=True, fastmath=False, cache=True)
def axpy_sq(y, a, c):  # pragma: no cover - jit
    """``y = a + c y`` in place (1-D float32); returns ``sum y^2``."""
    n = y.size
    parts = np.zeros((n + _BLOCK - 1) // _BLOCK)
    for b in numba.prange(parts.size):
        acc = np.float32(0.0)
        for i in range(b * _BLOCK, min((b + 1) * _BLOCK, n)):
            v = a[i] + c * y[i]
            y[i] = v
            acc += v * v
        parts[b] = acc
    return parts.sum()


@numba.njit(parallel=True, fastmath=False, cache=True)
def lsqr_update(x, w, v, t1, t2, sv):  # pragma: no cover - jit
    """LSQR's ``x += t1 w; w = sv v + t2 w`` in place (1-D float32); returns the old
    ``sum w^2``."""
    n = x.size
    parts = np.zeros((n + _BLOCK - 1) // _BLOCK)
    for b in numba.prange(parts.size):
        acc = np.float32(0.0)
        for i in range(b * _BLOCK, min((b + 1) * _BLOCK, n)):
            wi = w[i]
            x[i] += t1 * wi
            w[i] = sv * v[i] + t2 * wi
            acc += wi * wi
        parts[b] = acc
    return parts.sum()


@numba.njit(parallel=True, fastmath=False, cache=True)
def lsmr_update(x, h, hbar, v, c_hbar, c_x, c_h, sv):  # pragma: no cover - jit
    """LSMR's ``hbar = h + c_hbar hbar; x += c_x hbar; h = sv v + c_h h`` in place (1-D
    float32); returns the new ``sum x^2``."""
    n = x.size
    parts = np.zeros((n + _BLOCK - 1) // _BLOCK)
    for b in numba.prange(parts.size):
        acc = np.float32(0.0)
        for i in range(b * _BLOCK, min((b + 1) * _BLOCK, n)):
            hb = h[i] + c_hbar * hbar[i]
            hbar[i] = hb
            xi = x[i] + c_x * hb
            x[i] = xi
            h[i] = sv * v[i] + c_h * h[i]
            acc += xi * xi
        parts[b] = acc
    return parts.sum()


@numba.njit(parallel=True, fastmath=False, cache=True)
def grad_rows(vf, idx, nb, wr, ih, out):  # pragma: no cover - jit
    """``out[t] = wr[t] (vf[nb[t]] - vf[idx[t]]) ih``: a weighted forward difference at
    listed voxels of the flat image ``vf`` (``nb``: each one's next voxel along the axis)."""
    for t in numba.prange(idx.size):
        out[t] = wr[t] * (vf[nb[t]] - vf[idx[t]]) * ih


@numba.njit(parallel=True, fastmath=False, cache=True)
def gather_rows(out, vf, idx, wr, c):  # pragma: no cover - jit
    """``out[t] = c wr[t] vf[idx[t]]`` (the adjoint of :func:`scatter_rows`)."""
    for t in numba.prange(idx.size):
        out[t] = c * wr[t] * vf[idx[t]]


@numba.njit(parallel=True, fastmath=False, cache=True)
def scatter_rows(buf, idx, wr, r, c):  # pragma: no cover - jit
    """``buf[idx[t]] = c wr[t] r[t]`` (1-D ``buf``; the other entries are left as they are)."""
    for t in numba.prange(idx.size):
        buf[idx[t]] = c * wr[t] * r[t]


@numba.njit(parallel=True, fastmath=False, cache=True)
def scatter_pairs(spec, at, z, w, c):  # pragma: no cover - jit
    """Complex entries as float32 pairs: ``spec[at[t]] = c w[t] z[t]`` (``spec``: the float32
    view of a complex array, flat; ``z``: 2 floats per entry)."""
    for t in numba.prange(at.size):
        q = 2 * at[t]
        s = c * w[t]
        spec[q] = s * z[2 * t]
        spec[q + 1] = s * z[2 * t + 1]


@numba.njit(parallel=True, fastmath=False, cache=True)
def gather_pairs(out, spec, at, w, c):  # pragma: no cover - jit
    """The adjoint of :func:`scatter_pairs`: ``out[t] = c w[t] spec[at[t]]``."""
    for t in numba.prange(at.size):
        q = 2 * at[t]
        s = c * w[t]
        out[2 * t] = s * spec[q]
        out[2 * t + 1] = s * spec[q + 1]


@numba.njit(inline="always")
def _grid_position(di, lo, scale, top):
    """Position of ``di`` on a uniform grid (float32) and its bin, clipped to ``[0, top]``."""
    t = (di - lo) * scale
    k = int(t)
    return t, min(max(k, 0), top)


@numba.njit(cache=True)
def weighted_histogram(d, spectrum, lo, scale, weight, d_sum):  # pragma: no cover - jit
    """``weight[k] += |spectrum_i|^2`` and ``d_sum[k] += |spectrum_i|^2 d_i`` over the bins
    ``k`` of ``d_i`` (float64 sums; serial: the bins are shared)."""
    top = weight.size - 2
    for i in range(d.size):
        _, k = _grid_position(d[i], lo, scale, top)
        s = spectrum[i]
        w = np.float64(s.real) ** 2 + np.float64(s.imag) ** 2
        weight[k] += w
        d_sum[k] += w * d[i]


@numba.njit(parallel=True, fastmath=False, cache=True)
def apply_grid_gain(spectrum, d, lo, scale, r_grid):  # pragma: no cover - jit
    """``spectrum_i *= r(d_i)``, ``r`` linearly interpolated from its values on the grid."""
    top = r_grid.size - 2
    for i in numba.prange(d.size):
        t, k = _grid_position(d[i], lo, scale, top)
        frac = t - np.float32(k)
        spectrum[i] *= r_grid[k] + frac * (r_grid[k + 1] - r_grid[k])


@numba.njit(parallel=True, fastmath=False, cache=True)
def dot(a, b):  # pragma: no cover - jit
    """``sum a b`` of two 1-D float32 arrays (float32 within blocks, float64 across)."""
    n = a.size
    parts = np.zeros((n + _BLOCK - 1) // _BLOCK)
    for blk in numba.prange(parts.size):
        acc = np.float32(0.0)
        for i in range(blk * _BLOCK, min((blk + 1) * _BLOCK, n)):
            acc += a[i] * b[i]
        parts[blk] = acc
    return parts.sum()


@numba.njit(parallel=True, fastmath=False, cache=True)
def cg_update(x, r, p, ap, alpha):  # pragma: no cover - jit
    """CG's ``x += alpha p; r -= alpha ap`` in place (1-D float32); returns the new
    ``sum r^2``."""
    n = x.size
    parts = np.zeros((n + _BLOCK - 1) // _BLOCK)
    for blk in numba.prange(parts.size):
        acc = np.float32(0.0)
        for i in range(blk * _BLOCK, min((blk + 1) * _BLOCK, n)):
            x[i] += alpha * p[i]
            ri = r[i] - alpha * ap[i]
            r[i] = ri
            acc += ri * ri
        parts[blk] = acc
    return parts.sum()


@numba.njit(parallel=True, fastmath=False, cache=True)
def ndi_update(xk, spectrum, d, tau, lam, out):  # pragma: no cover - jit
    """NDI's step in k-space, in place: ``dx = tau (d F + lam x)``, ``x -= dx`` and
    ``out = d x`` (the next ``D chi``). Returns ``(||dx||, ||x||)`` over the entries (rows
    summed by :func:`_row_sum`)."""
    n0, n1, n2 = xk.shape
    dsum = np.zeros(n0)
    xsum = np.zeros(n0)
    for i in numba.prange(n0):
        ba = np.empty(n2, dtype=np.float32)
        bb = np.empty(n2, dtype=np.float32)
        a = 0.0
        b = 0.0
        for j in range(n1):
            for k in range(n2):
                dk = d[i, j, k]
                dx = tau * (dk * spectrum[i, j, k] + lam * xk[i, j, k])
                x = xk[i, j, k] - dx
                xk[i, j, k] = x
                out[i, j, k] = dk * x
                ba[k] = dx.real * dx.real + dx.imag * dx.imag
                bb[k] = x.real * x.real + x.imag * x.imag
            a += _row_sum(ba, n2)
            b += _row_sum(bb, n2)
        dsum[i] = a
        xsum[i] = b
    return np.sqrt(dsum.sum()), np.sqrt(xsum.sum())


@numba.njit(parallel=True, fastmath=False, cache=True)
def truncated_inverse(d, t, out):  # pragma: no cover - jit
    """``out = sign(D) / max(|D|, t)`` (``sign(0) = +1``: the sign bit, as ``copysign``), one
    pass instead of four."""
    one = np.float32(1.0)
    for i in numba.prange(d.shape[0]):
        for j in range(d.shape[1]):
            for k in range(d.shape[2]):
                v = d[i, j, k]
                out[i, j, k] = np.float32(math.copysign(one / max(abs(v), t), v))


@numba.njit(parallel=True, fastmath=False, cache=True)
def band_inverse(d, delta, band, inv):  # pragma: no cover - jit
    """``band = [|D| > delta]`` (1 or 0, float32) and ``inv = band / D``, one pass."""
    one, zero = np.float32(1.0), np.float32(0.0)
    for i in numba.prange(d.shape[0]):
        for j in range(d.shape[1]):
            for k in range(d.shape[2]):
                v = d[i, j, k]
                if abs(v) > delta:
                    band[i, j, k] = one
                    inv[i, j, k] = one / v
                else:
                    band[i, j, k] = zero
                    inv[i, j, k] = zero


@numba.njit(parallel=True, fastmath=False, error_model="numpy", cache=True)
def tikhonov_weight(d, lam, g0, g1, g2, out):  # pragma: no cover - jit
    """``out = D / (D^2 + lam (g0 + g1 + g2))`` (``|G|^2`` from its separable terms), one
    pass; ``out[0, 0, 0]`` (0 / 0) is left to the caller."""
    for i in numba.prange(d.shape[0]):
        for j in range(d.shape[1]):
            gij = g0[i] + g1[j]
            for k in range(d.shape[2]):
                v = d[i, j, k]
                out[i, j, k] = v / (v * v + lam * (gij + g2[k]))
