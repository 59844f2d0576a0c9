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
