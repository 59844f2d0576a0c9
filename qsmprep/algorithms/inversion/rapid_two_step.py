"""Rapid two-step (RTS) dipole inversion with a sparsity prior (Kames et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.sparse.linalg import LinearOperator, lsmr

from qsmprep.algorithms.inversion import _common

#: Bins of ``D``'s range on which step 1's LSMR scalars are computed (see below).
_LSMR_BINS = 1 << 16


def _grid(d: np.ndarray) -> tuple[np.float32, np.float32]:
    """``(lo, scale)``: ``(d - lo) scale`` is the position of ``d`` on ``_LSMR_BINS`` uniform
    points spanning its range (float32, as the kernels compute it)."""
    lo, hi = float(d.min()), float(d.max())
    if hi <= lo:  # a constant kernel (degenerate grid): one bin
        hi = lo + 1.0
    return np.float32(lo), np.float32((_LSMR_BINS - 1) / (hi - lo))


def _bins(d: np.ndarray, lo, scale) -> tuple[np.ndarray, np.ndarray]:
    """Position (float32) and bin index of every ``d`` (bin ``nb - 1`` holds only the
    maximum: merged into ``nb - 2``)."""
    t = (d - lo) * scale
    index = t.astype(np.intp)
    np.clip(index, 0, _LSMR_BINS - 2, out=index)
    return t, index


def _lsmr_polynomial(d: np.ndarray, spectrum: np.ndarray, iterations: int) -> np.ndarray:
    """``r`` on the grid of :func:`_grid` such that ``iterations`` LSMR steps on
    ``diag(d) x = b`` give ``x = r(d) b``, for ``|b| = |spectrum|`` (flat arrays).

    Every LSMR vector is a polynomial in ``diag(d)`` times ``b``, and every scalar of the
    recurrence is a sum over the entries of such polynomials squared, weighted by ``b_i^2``:
    LSMR depends on ``(d, b)`` only through the measure ``sum_i b_i^2 delta(d - d_i)``. That
    measure is gathered into ``_LSMR_BINS`` bins of ``d``'s range (weight ``sum b_i^2`` at the
    weighted mean ``d`` of each bin: the moments LSMR's degree-``2 iterations`` polynomials see
    are exact to the bins' variance, 1e-10 of the range squared), LSMR runs on those
    (at most 65536) entries, and ``r`` is read on the uniform grid of ``d`` carried along with
    a weight of 1e-100 (too small to change any scalar). One pass over the spectrum (numba)
    instead of ``2 iterations`` passes of float64 vectors.
    """
    lo, scale = _grid(d)
    nb = _LSMR_BINS
    if _common._nb is not None:
        weight, d_sum = np.zeros(nb), np.zeros(nb)
        _common._nb.weighted_histogram(d, spectrum, lo, scale, weight, d_sum)
    else:
        _, index = _bins(d, lo, scale)
        w = np.abs(spectrum).astype(np.float64) ** 2
        weight = np.bincount(index, weights=w, minlength=nb)
        d_sum = np.bincount(index, weights=w * d, minlength=nb)
    used = weight > 0
    d_bins = d_sum[used] / weight[used]
    grid = float(lo) + np.arange(nb) / float(scale)
    tiny = 1e-100 * np.sqrt(weight.sum())
    diag = np.concatenate([d_bins, grid])
    rhs = np.concatenate([np.sqrt(weight[used]), np.full(nb, tiny)])
    op = LinearOperator(
        (diag.size, diag.size), matvec=lambda v: diag * v, rmatvec=lambda v: diag * v,
        dtype=np.float64,
    )  # fmt: skip
    with np.errstate(over="ignore"):  # lsmr's condition estimate may overflow; unused
        x = lsmr(op, rhs, atol=0.0, btol=0.0, conlim=0.0, maxiter=iterations)[0]
    return (x[d_bins.size :] / tiny).astype(np.float32)


def _apply_polynomial(spectrum: np.ndarray, d: np.ndarray, r_grid: np.ndarray) -> None:
    """``spectrum *= r(d)`` in place (flat arrays), ``r`` linearly interpolated from the grid
    of :func:`_grid` (np.interp would search: 4x slower)."""
    lo, scale = _grid(d)
    if _common._nb is not None:
        _common._nb.apply_grid_gain(spectrum, d, lo, scale, r_grid)
        return
    t, index = _bins(d, lo, scale)
    t -= index
    step = r_grid[1:] - r_grid[:-1]
    spectrum *= r_grid[index] + t * step[index]


def _well_conditioned_step(p: _common.InversionProblem, iterations: int) -> np.ndarray:
    """Step 1: a few LSMR iterations on ``D X = F`` (early stopping regularises small D).

    ``D`` is real and diagonal, so LSMR's result is ``X = r(D) F`` with a real polynomial
    ``r`` that depends on ``F`` only through ``|F|^2`` (:func:`_lsmr_polynomial` computes it
    from the histogram of ``D`` weighted by ``|F|^2``; the same result as LSMR on the whole
    spectrum to 1e-5 of its maximum, a test checks).
    """
    rhs = p.fft(p.field_ppm)
    d = p.kernel.reshape(-1)
    _apply_polynomial(rhs.reshape(-1), d, _lsmr_polynomial(d, rhs.reshape(-1), iterations))
    return p.ifft(rhs) * p.mask


def _weighted_solve(spectrum, data, well, mu, g2_axes, rho) -> None:
    """``spectrum = (data + rho spectrum) / (mu well + rho |G|^2)`` in place (one numba
    pass); ``well`` is boolean and ``|G|^2`` the sum of its three 1-D ``g2_axes``. The
    denominator is 0 only at ``k = 0``, where there is no data and no penalty: read as 1, so
    the mean stays 0."""
    if _common._nb is not None:
        _common._nb.weighted_solve(spectrum, data, well, mu, *g2_axes, rho)
        return
    g0, g1, g2 = g2_axes
    den = rho * (g0[:, None, None] + g1[None, :, None] + g2[None, None, :])
    den += np.where(well, mu, np.float32(0))
    den[den == 0] = 1.0
    spectrum *= rho
    spectrum += data
    spectrum /= den


def _tv_cone_fill(
    p: _common.InversionProblem,
    x1: np.ndarray,
    *,
    delta: float,
    mu: float,
    rho: float,
    tol: float,
    max_iterations: int,
    tau: float = 0.7,
    gamma: float = 5.0,
    rho_max: float = 1e6,
) -> tuple[np.ndarray, int]:
    """Step 2: ``min_x mu/2 ||K F(x - x1)||^2 + ||grad x||_1`` by ADMM, adaptive rho.

    Returns the solution and the number of x-updates. The y-step runs first: starting from
    ``y = grad x1`` the x-step would only return ``x1`` again.
    """
    h = p.voxel_size_mm
    well = np.abs(p.kernel) > delta
    g2_axes = p.grad_sq_axes()
    mu = np.float32(mu)
    data = p.fft(x1)
    data *= np.where(well, mu, np.float32(0))  # mu K X1
    x = x1
    u = [np.zeros_like(x) for _ in range(3)]
    w = [np.empty_like(x) for _ in range(3)]  # y - u
    residual = np.inf
    u_scale = 1.0  # the dual is u_scale * u (a rescaling not yet applied to u)
    it = 0
    while it < max_iterations:
        it += 1
        prev = residual
        residual = _common.split_update(x, u, w, 1.0 / rho, h, residual=True, u_scale=u_scale)
        u_scale = 1.0
        if residual > tau * prev and rho * gamma <= rho_max:  # stalls: stiffen the splitting
            rho *= gamma
            u_scale = 1.0 / gamma  # scaled dual u / gamma, and w = y - u follows it
            adjoint = _common.split_adjoint(w, h, plus=(u, 1.0 - u_scale))
        else:
            adjoint = _common.split_adjoint(w, h)
        spectrum = p.fft(adjoint)
        _weighted_solve(spectrum, data, well, mu, g2_axes, np.float32(rho))
        x_new = p.ifft(spectrum)
        change = _common.relative_change(x_new, x)
        x = x_new
        if change < tol:
            break
    return x, it


def rts(
    local_field_ppm: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    voxel_size_mm: Sequence[float],
    b0_direction: npt.ArrayLike = (0.0, 0.0, 1.0),
    delta: float = 0.15,
    mu: float = 1e5,
    rho: float = 10.0,
    lsmr_iterations: int = 12,
    tol: float = 1e-2,
    max_iterations: int = 20,
    pad_factor: float = _common.PAD_FACTOR,
    workers: int | None = -1,
) -> np.ndarray:
    """Rapid two-step inversion: LSMR on the well-conditioned spectrum, TV fill of the cone.

    Step 1 solves ``D X = F(M f)`` by ``lsmr_iterations`` LSMR iterations (k-space, where
    ``D`` is diagonal; early stopping damps the small-``|D|`` frequencies), giving ``x1``
    masked by ``M``. Step 2 keeps ``x1``'s spectrum where ``|D| > delta`` and fills the
    ill-conditioned cone with a sparse-gradient prior::

        chi = argmin_x  mu/2 ||K F(x - x1)||^2 + ||grad x||_1,   K = [|D| > delta]

    by ADMM with the split ``y = grad x``: the x-step is closed form in k-space,
    ``X = (mu K X1 + rho F(grad^T (y - u))) / (mu K + rho |G|^2)``, the y-step soft
    thresholds at ``1/rho``; ``rho`` is multiplied by 5 whenever the primal residual
    shrinks by less than 30 % (Kames et al., and QSM.jl's defaults).

    Parameters
    ----------
    local_field_ppm, mask, voxel_size_mm, b0_direction, pad_factor, workers :
        as :func:`qsmprep.algorithms.inversion.tkd`.
    delta : ``|D|`` threshold of the ill-conditioned region (0.15).
    mu : data weight of step 2 against TV (1e5; gradients in 1/mm, chi in ppm). It only
        has to be large: step 2 then is "minimum TV subject to keeping x1 outside the cone",
        which makes RTS nearly scale invariant.
    rho : initial ADMM penalty (10), adapted upwards.
    lsmr_iterations : LSMR iterations of step 1 (12; QSM.jl uses 4, which measured 10-20
        NRMSE points worse on every simulated case of ``benchmarks/inversion_accuracy.py``).
    tol : stop when ``||x_k - x_{k-1}|| < tol ||x_k||`` (1e-2).
    max_iterations : ADMM iterations at most (20).

    Returns
    -------
    chi_ppm : float32 susceptibility (ppm), 0 outside the mask, not referenced.

    Notes
    -----
    FFTs: 3 + 2 per ADMM iteration (at most 43 with the defaults).

    References
    ----------
    Kames C, Wiggermann V, Rauscher A. Rapid two-step dipole inversion for susceptibility
    mapping with sparsity priors. NeuroImage 2018;167:276-283.
    doi:10.1016/j.neuroimage.2017.11.018
    """
    delta = _common.check_number("delta", delta, high=1.0 / 3.0)
    mu = _common.check_number("mu", mu)
    rho = _common.check_number("rho", rho)
    tol = _common.check_number("tol", tol)
    lsmr_iterations = _common.check_count("lsmr_iterations", lsmr_iterations)
    max_iterations = _common.check_count("max_iterations", max_iterations)
    p = _common.setup(
        local_field_ppm,
        mask,
        voxel_size_mm=voxel_size_mm,
        b0_direction=b0_direction,
        pad_factor=pad_factor,
        workers=workers,
    )
    x1 = _well_conditioned_step(p, lsmr_iterations)
    x, _ = _tv_cone_fill(p, x1, delta=delta, mu=mu, rho=rho, tol=tol, max_iterations=max_iterations)
    return p.to_image(x)
