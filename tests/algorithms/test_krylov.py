"""float32 LSQR/LSMR (``qsmprep.algorithms.inversion.krylov``) against scipy's solvers.

Same recurrences and stopping tests, so on the same problem they must return the same
solution after the same number of iterations, up to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.linalg import lsmr, lsqr

from qsmprep.algorithms.inversion import krylov


def _problem(m: int, n: int, seed: int, cond: float = 100.0):
    """A float32 matrix with singular values from 1 down to ``1 / cond`` and a right-hand
    side with a residual."""
    rng = np.random.default_rng(seed)
    q1, _ = np.linalg.qr(rng.standard_normal((m, n)))
    q2, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q1 * np.logspace(0, -np.log10(cond), n)) @ q2.T
    return a.astype(np.float32), rng.standard_normal(m).astype(np.float32)


def _operators(a: np.ndarray, calls: list):
    def apply_a(v, c):
        calls.append("a")
        return np.float32(c) * (a @ v)

    def apply_at(u, c):
        calls.append("at")
        return np.float32(c) * (a.T @ u)

    return apply_a, apply_at


# Early-stopped on an ill-conditioned matrix (as in iLSQR, cond 100) for up to 15
# iterations, or run to a tolerance (cond 10). Beyond that float32 rounding, in the
# operator alone, moves any LSQR's iterates: scipy's own solver with the float32 matrix
# differs from its float64 run by 6e-4 after 20 iterations at cond 100, 7e-2 after 26.
@pytest.mark.parametrize(("tol", "limit", "cond"), [(0.0, 1, 100), (0.0, 8, 100),
                                                    (0.0, 15, 100), (1e-2, 200, 10),
                                                    (1e-3, 200, 10)])  # fmt: skip
@pytest.mark.parametrize("shape", [(300, 120), (120, 120)])
def test_lsqr_and_lsmr_equal_scipy(engine, tol, limit, cond, shape):
    a, b = _problem(*shape, seed=shape[0] + limit, cond=cond)
    for ours, theirs, key in ((krylov.lsqr, lsqr, "iter_lim"), (krylov.lsmr, lsmr, "maxiter")):
        calls: list = []
        x, itn = ours(*_operators(a, calls), b, atol=tol, btol=tol, **{key: limit})
        ref = theirs(a.astype(np.float64), b.astype(np.float64), atol=tol, btol=tol,
                     conlim=0.0, **{key: limit})  # fmt: skip
        assert x.dtype == np.float32
        assert itn == ref[2], ours.__name__  # the same stopping iteration
        assert calls.count("a") == calls.count("at") - 1 == itn  # 2 products per iteration
        err = np.abs(x - ref[0]).max() / np.abs(ref[0]).max()
        assert err < 2e-4, (ours.__name__, err)
        if tol > 0:
            assert itn < limit  # a tolerance stopped it, not the limit


def test_lsqr_and_lsmr_zero_rhs_and_consistent_system(engine):
    a, b = _problem(60, 20, seed=1)
    for solver in (krylov.lsqr, krylov.lsmr):
        key = "iter_lim" if solver is krylov.lsqr else "maxiter"
        x, itn = solver(*_operators(a, []), np.zeros(60, np.float32), atol=1e-6, btol=1e-6,
                        **{key: 10})  # fmt: skip
        assert itn == 0 and not x.any()
        # a consistent, well-conditioned system is solved to the tolerance
        well = np.linalg.qr(np.random.default_rng(2).standard_normal((60, 20)))[0]
        well = well.astype(np.float32)
        truth = np.linspace(-1, 1, 20).astype(np.float32)
        x, itn = solver(*_operators(well, []), well @ truth, atol=1e-6, btol=1e-6,
                        **{key: 50})  # fmt: skip
        assert np.abs(x - truth).max() < 1e-5 and itn < 50


def _cg64(a, b, tol, limit, x0):
    """Textbook CG in float64, the reference for :func:`krylov.cg`."""
    x = x0.astype(np.float64).copy()
    r = b - a @ x
    p, rr, it = r.copy(), r @ r, 0
    while it < limit and np.sqrt(rr) > tol * np.linalg.norm(b):
        ap = a @ p
        alpha = rr / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        rr, rr_old = r @ r, rr
        p = r + (rr / rr_old) * p
        it += 1
    return x, it


@pytest.mark.parametrize(("tol", "limit"), [(0.0, 1), (0.0, 10), (1e-3, 500), (1e-4, 500)])
@pytest.mark.parametrize("start", [False, True])
def test_cg_equals_the_textbook_recurrence(engine, tol, limit, start):
    rng = np.random.default_rng(limit)
    q, _ = np.linalg.qr(rng.standard_normal((80, 80)))
    a = ((q * np.logspace(0, -1.5, 80)) @ q.T).astype(np.float32)  # SPD, cond 30
    b = rng.standard_normal((8, 10)).astype(np.float32)  # any shape: A acts on the flat vector
    x0 = rng.standard_normal(80).astype(np.float32) if start else np.zeros(80, np.float32)
    calls = []

    def apply_a(v):
        calls.append(v.shape)
        return (a @ v.reshape(-1)).reshape(v.shape)

    x, itn, res = krylov.cg(apply_a, b, tol=tol, max_iter=limit,
                            x0=x0.reshape(8, 10) if start else None)  # fmt: skip
    ref, ref_itn = _cg64(a.astype(np.float64), b.reshape(-1).astype(np.float64), tol, limit, x0)
    assert x.shape == b.shape and x.dtype == np.float32
    assert itn == ref_itn and all(c == b.shape for c in calls)
    assert np.abs(x.reshape(-1) - ref).max() < 1e-4 * np.abs(ref).max()
    true_res = np.linalg.norm(b.reshape(-1) - a @ x.reshape(-1)) / np.linalg.norm(b)
    assert res == pytest.approx(true_res, rel=1e-2, abs=1e-6)
    if tol > 0:
        assert res <= tol and itn < limit


def test_cg_stops_on_a_null_direction(engine):
    """``p^T A p = 0`` (here A = 0): no division by zero, x stays at the start."""
    x, itn, res = krylov.cg(lambda v: np.zeros_like(v), np.ones(5, np.float32), tol=1e-6,
                            max_iter=10)  # fmt: skip
    assert itn == 0 and not x.any() and res == pytest.approx(1.0)
