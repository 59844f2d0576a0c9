"""float32 Krylov solvers for the FFT-based operators of background removal and inversion.

:func:`cg` solves ``A x = b`` for a symmetric positive semi-definite ``A`` (RESHARP, PDF,
LBV, MEDI's Gauss-Newton steps) by the textbook recurrence (Hestenes & Stiefel 1952).
:func:`lsqr` and :func:`lsmr` solve ``min_x ||A x - b||_2`` (no damping) by Golub-Kahan
bidiagonalisation, with the recurrences, norm estimates and stopping tests of the published
algorithms (those of ``scipy.sparse.linalg.lsqr``/``lsmr`` with ``damp = 0, conlim = 0``).
They differ from scipy's in how the vectors are kept, not in the iterates:

* every vector is float32 (scipy's are float64: twice the memory traffic on the
  k-space-sized unknowns of the inversions);
* ``u`` and ``v`` are stored unnormalised, and the normalising ``1 / beta``, ``1 / alpha``
  is passed to the operator as a scale, which the caller folds into a product it makes
  anyway (a k-space factor or a weight);
* each update of ``x`` and the search directions is one fused pass that also returns the
  norm the tests need (numba kernels; numpy otherwise). CG's updates are fused likewise.

The operators of LSQR and LSMR are ``apply_a(v, c) = c A v`` and
``apply_at(u, c) = c A^T u``, taking and returning 1-D float32 arrays (a complex unknown
is passed as its float32 view). Their results may be new arrays or scratch the caller
reuses; they are consumed before the next call.

References
----------
Hestenes MR, Stiefel E. Methods of conjugate gradients for solving linear systems. J Res
Natl Bur Stand 1952;49:409-436. doi:10.6028/jres.049.044
Paige CC, Saunders MA. LSQR: an algorithm for sparse linear equations and sparse least
squares. ACM Trans Math Softw 1982;8:43-71. doi:10.1145/355984.355989
Fong DC-L, Saunders MA. LSMR: an iterative algorithm for sparse least-squares problems.
SIAM J Sci Comput 2011;33:2950-2971. doi:10.1137/10079687X
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from qsmprep.algorithms.inversion import _common

_EPS = float(np.finfo(np.float64).eps)
Operator = Callable[[np.ndarray, float], np.ndarray]


def _f32(c: float) -> np.float32:
    return np.float32(c)


def axpy_sq(y: np.ndarray, a: np.ndarray, c: float) -> float:
    """``y = a + c y`` in place; returns ``sum y^2`` (float64)."""
    if _common._nb is not None:
        return float(_common._nb.axpy_sq(y, a, _f32(c)))
    y *= _f32(c)
    y += a
    return _sq(y)


def _lsqr_update(x, w, v, t1, t2, sv) -> float:
    if _common._nb is not None:
        return float(_common._nb.lsqr_update(x, w, v, _f32(t1), _f32(t2), _f32(sv)))
    old = _sq(w)
    x += _f32(t1) * w
    w *= _f32(t2)
    w += _f32(sv) * v
    return old


def _lsmr_update(x, h, hbar, v, c_hbar, c_x, c_h, sv) -> float:
    if _common._nb is not None:
        return float(
            _common._nb.lsmr_update(x, h, hbar, v, _f32(c_hbar), _f32(c_x), _f32(c_h), _f32(sv))
        )
    hbar *= _f32(c_hbar)
    hbar += h
    x += _f32(c_x) * hbar
    h *= _f32(c_h)
    h += _f32(sv) * v
    return _sq(x)


def _sq(v: np.ndarray) -> float:
    """``sum v^2`` (float64 across blocks)."""
    if _common._nb is not None:
        return float(_common._nb.dot(v, v))
    return sum(float(np.dot(c, c)) for c in np.array_split(v, max(1, v.size // 65536)))


def _rotation(a: float, b: float) -> tuple[float, float, float]:
    """Plane rotation ``(c, s, r)`` with ``c a + s b = r = hypot(a, b)``; ``(1, 0, 0)`` for
    ``a = b = 0``."""
    r = math.hypot(a, b)
    if r == 0.0:
        return 1.0, 0.0, 0.0
    return a / r, b / r, r


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """``sum a b`` (float64 across blocks)."""
    if _common._nb is not None:
        return float(_common._nb.dot(a, b))
    parts = max(1, a.size // 65536)
    return sum(
        float(np.dot(x, y))
        for x, y in zip(np.array_split(a, parts), np.array_split(b, parts), strict=True)
    )


def _cg_update(x, r, p, ap, alpha) -> float:
    if _common._nb is not None:
        return float(_common._nb.cg_update(x, r, p, ap, _f32(alpha)))
    x += _f32(alpha) * p
    r -= _f32(alpha) * ap
    return _sq(r)


def cg(
    apply_a: Callable[[np.ndarray], np.ndarray], b: np.ndarray, *, tol: float, max_iter: int,
    x0: np.ndarray | None = None,
) -> tuple[np.ndarray, int, float]:  # fmt: skip
    """Conjugate gradient for ``A x = b``, ``A`` symmetric positive semi-definite, float32.

    ``apply_a`` takes and returns float32 arrays shaped like ``b``. Stops when
    ``||b - A x|| <= tol ||b||``, after ``max_iter`` iterations, or when ``p^T A p <= 0``
    (``p`` in the null space). Each iteration is one product, one dot product and two fused
    passes (``x``, ``r`` and ``||r||^2``; then ``p``). Returns ``(x, iterations,
    ||b - A x|| / ||b||)``.
    """
    b = np.ascontiguousarray(b, dtype=np.float32)
    shape = b.shape
    r = b.reshape(-1).copy()
    b_norm = math.sqrt(_sq(r)) or 1.0
    if x0 is None:
        x = np.zeros_like(r)
    else:
        x = np.array(x0, dtype=np.float32).reshape(-1)
        r -= np.asarray(apply_a(x.reshape(shape)), np.float32).reshape(-1)
    rr = _sq(r)
    p = r.copy()
    it = 0
    while it < max_iter and math.sqrt(rr) > tol * b_norm:
        ap = np.ascontiguousarray(apply_a(p.reshape(shape)), dtype=np.float32).reshape(-1)
        pap = _dot(p, ap)
        if pap <= 0:
            break
        rr_new = _cg_update(x, r, p, ap, rr / pap)
        axpy_sq(p, r, rr_new / rr)  # p = r + beta p
        rr = rr_new
        it += 1
    return x.reshape(shape), it, math.sqrt(rr) / b_norm


def _converged(test1, test2, test3, x_scale, atol, btol, beta) -> bool:
    """The stopping rules of LSQR and LSMR with ``conlim = 0``: ``test1 = ||r|| / ||b||``,
    ``test2 = ||A^T r|| / (||A|| ||r||)``, ``test3 = 1 / cond(A)``, ``x_scale = ||A|| ||x|| /
    ||b||``. A compatible system is solved when ``test1 <= btol + atol x_scale``, a least-
    squares one when ``test2 <= atol``; the ``1 + t <= 1`` tests stop at machine precision;
    ``beta = 0`` means the bidiagonalisation has ended (``b`` is in a Krylov space of ``A``)."""
    return (
        test1 <= btol + atol * x_scale
        or test2 <= atol
        or 1.0 + test1 / (1.0 + x_scale) <= 1.0
        or 1.0 + test2 <= 1.0
        or 1.0 + test3 <= 1.0
        or beta == 0.0
    )


def _first_vectors(apply_at: Operator, b: np.ndarray):
    """``u = b`` (a float32 copy), ``beta = ||b||``, ``v = A^T u / beta`` unnormalised,
    ``alpha = ||v||``."""
    u = np.array(b, dtype=np.float32).reshape(-1)
    beta = math.sqrt(_sq(u))
    v = np.array(apply_at(u, 1.0 / beta if beta > 0 else 0.0), dtype=np.float32, copy=True)
    alpha = math.sqrt(_sq(v)) if beta > 0 else 0.0
    return u, beta, v, alpha


def _bidiagonalise(apply_a, apply_at, u, beta, v, alpha) -> tuple[float, float]:
    """One Golub-Kahan step on the unnormalised ``u = beta u_n``, ``v = alpha v_n``:
    ``beta' u' = A v_n - alpha u_n``, ``alpha' v' = A^T u'_n - beta' v_n``."""
    beta_new = math.sqrt(axpy_sq(u, apply_a(v, 1.0 / alpha), -alpha / beta))
    if beta_new == 0.0:
        return 0.0, alpha
    alpha_new = math.sqrt(axpy_sq(v, apply_at(u, 1.0 / beta_new), -beta_new / alpha))
    return beta_new, alpha_new


def lsqr(
    apply_a: Operator, apply_at: Operator, b: np.ndarray, *, atol: float, btol: float,
    iter_lim: int,
) -> tuple[np.ndarray, int]:  # fmt: skip
    """LSQR (Paige & Saunders 1982) for ``min ||A x - b||``, float32 vectors.

    Stops when ``||r|| <= btol ||b|| + atol ||A|| ||x||`` (compatible systems), when
    ``||A^T r|| <= atol ||A|| ||r||`` (least squares), at machine precision, or after
    ``iter_lim`` iterations; ``||A||`` and ``||x||`` are the usual running estimates.
    Returns ``(x, iterations)``.
    """
    u, beta, v, alpha = _first_vectors(apply_at, b)
    x = np.zeros_like(v)
    if beta == 0.0 or alpha == 0.0:
        return x, 0
    w = v / np.float32(alpha)
    bnorm, rhobar, phibar = beta, alpha, beta
    anorm = ddnorm = xxnorm = z = sn2 = 0.0
    cs2 = -1.0
    itn = 0
    while itn < iter_lim:
        itn += 1
        beta, alpha_new = _bidiagonalise(apply_a, apply_at, u, beta, v, alpha)
        if beta > 0:  # ||A|| grows by the old alpha and the new beta
            anorm = math.sqrt(anorm**2 + alpha**2 + beta**2)
        alpha = alpha_new
        cs, sn, rho = _rotation(rhobar, beta)
        theta = sn * alpha
        rhobar = -cs * alpha
        phi = cs * phibar
        phibar = sn * phibar
        tau = sn * phi
        sv = 1.0 / alpha if alpha > 0 else 0.0
        ddnorm += _lsqr_update(x, w, v, phi / rho, -theta / rho, sv) / rho**2
        # ||x|| from the rotation that makes the bidiagonal upper triangular
        delta = sn2 * rho
        gambar = -cs2 * rho
        rhs = phi - delta * z
        xnorm = math.sqrt(xxnorm + (rhs / gambar) ** 2)
        gamma = math.hypot(gambar, theta)
        cs2, sn2 = gambar / gamma, theta / gamma
        z = rhs / gamma
        xxnorm += z**2
        acond = anorm * math.sqrt(ddnorm)
        rnorm = phibar
        arnorm = alpha * abs(tau)
        test2 = arnorm / (anorm * rnorm + _EPS)
        if _converged(rnorm / bnorm, test2, 1.0 / (acond + _EPS), anorm * xnorm / bnorm,
                      atol, btol, beta):  # fmt: skip
            break
    return x, itn


def lsmr(
    apply_a: Operator, apply_at: Operator, b: np.ndarray, *, atol: float, btol: float,
    maxiter: int,
) -> tuple[np.ndarray, int]:  # fmt: skip
    """LSMR (Fong & Saunders 2011) for ``min ||A x - b||``, float32 vectors.

    Stopping tests as :func:`lsqr`, with LSMR's estimates of ``||r||``, ``||A^T r||`` and
    ``||A||``. Returns ``(x, iterations)``.
    """
    u, beta, v, alpha = _first_vectors(apply_at, b)
    x = np.zeros_like(v)
    if beta == 0.0 or alpha == 0.0:
        return x, 0
    h = v / np.float32(alpha)
    hbar = np.zeros_like(v)
    normb = beta
    zetabar, alphabar = alpha * beta, alpha
    rho = rhobar = cbar = 1.0
    sbar = zeta = 0.0
    betadd, betad, rhodold, tautildeold, thetatilde = beta, 0.0, 1.0, 0.0, 0.0
    normA2 = alpha**2
    maxrbar, minrbar = 0.0, 1e100
    itn = 0
    while itn < maxiter:
        itn += 1
        beta, alpha = _bidiagonalise(apply_a, apply_at, u, beta, v, alpha)
        # damp = 0: the rotation that eliminates it is the identity, alphahat = alphabar
        rhoold = rho
        c, s, rho = _rotation(alphabar, beta)
        thetanew = s * alpha
        alphabar = c * alpha
        rhobarold, zetaold = rhobar, zeta
        thetabar = sbar * rho
        rhotemp = cbar * rho
        cbar, sbar, rhobar = _rotation(cbar * rho, thetanew)
        zeta = cbar * zetabar
        zetabar = -sbar * zetabar
        sv = 1.0 / alpha if alpha > 0 else 0.0
        xx = _lsmr_update(
            x, h, hbar, v, -thetabar * rho / (rhoold * rhobarold), zeta / (rho * rhobar),
            -thetanew / rho, sv,
        )  # fmt: skip
        # ||r|| estimate
        betahat = c * betadd
        betadd = -s * betadd
        thetatildeold = thetatilde
        ctildeold, stildeold, rhotildeold = _rotation(rhodold, thetabar)
        thetatilde = stildeold * rhobar
        rhodold = ctildeold * rhobar
        betad = -stildeold * betad + ctildeold * betahat
        tautildeold = (zetaold - thetatildeold * tautildeold) / rhotildeold
        taud = (zeta - thetatilde * tautildeold) / rhodold
        normr = math.sqrt((betad - taud) ** 2 + betadd**2)
        normA2 += beta**2
        normA = math.sqrt(normA2)
        normA2 += alpha**2
        maxrbar = max(maxrbar, rhobarold)
        if itn > 1:
            minrbar = min(minrbar, rhobarold)
        condA = max(maxrbar, rhotemp) / min(minrbar, rhotemp)
        normar = abs(zetabar)
        normx = math.sqrt(xx)
        test2 = normar / (normA * normr) if normA * normr != 0 else math.inf
        if _converged(normr / normb, test2, 1.0 / condA, normA * normx / normb, atol, btol,
                      beta):  # fmt: skip
            break
    return x, itn
