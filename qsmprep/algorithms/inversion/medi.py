"""Morphology-enabled dipole inversion (MEDI-L1) with the nonlinear data term.

The data term and its units are those of :mod:`qsmprep.algorithms.inversion.nonlinear`
(``s`` = ``phase_scale_rad_per_ppm``, data term divided by ``s^2`` so that ``lambda`` keeps the
ppm*mm meaning of :func:`~qsmprep.algorithms.inversion.tv`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from qsmprep.algorithms.inversion import _common, krylov
from qsmprep.algorithms.inversion.nonlinear import (
    DEFAULT_PHASE_SCALE,
    _as_box,
    check_phase_scale,
    data_weights,
    rss_magnitude,
)


def edge_mask(
    p: _common.InversionProblem, magnitude: npt.ArrayLike | None, edge_percentage: float
) -> list[np.ndarray]:
    """Per-axis gradient weights ``M_G`` (1 = regularised, 0 = edge) on the padded grid.

    A gradient component is an edge when ``|d magnitude / dx_i|`` (1/mm) exceeds the
    ``edge_percentage`` quantile of those components over the mask; all ones without a
    magnitude (MEDI then reduces to nonlinear TV).
    """
    if magnitude is None:
        return [np.ones(p.shape, np.float32) for _ in range(3)]
    mag = np.where(p.mask, _as_box(p, rss_magnitude(magnitude, p.full_shape)), 0)
    mag = mag / max(float(mag.max()), 1e-30)
    g = [np.abs(gi) for gi in _common.grad(mag.astype(np.float32), p.voxel_size_mm)]
    threshold = np.quantile(np.concatenate([gi[p.mask] for gi in g]), edge_percentage)
    return [(gi <= threshold).astype(np.float32) for gi in g]


def grad_t_weighted_grad(v: np.ndarray, c: Sequence[np.ndarray], voxel_size_mm) -> np.ndarray:
    """``grad^T (c * grad v)`` (``c``: one weight array per axis), the lagged-diffusivity
    operator of the L1 prior; one fused numba pass when numba is installed."""
    if _common._nb is not None:
        ih = [np.float32(1.0 / h) for h in voxel_size_mm]
        out = np.empty_like(v)
        _common._nb.grad_t_weighted_grad(v, *c, *ih, out)
        return out
    grads = _common.grad(v, voxel_size_mm)
    return _common.grad_adjoint([ci * gi for ci, gi in zip(c, grads, strict=True)], voxel_size_mm)


def _gauss_newton(p, w, mg, *, lam, s, beta, tol, max_iterations, cg_tol, cg_max_iterations):
    """Gauss-Newton on ``E_data + lam sum sqrt((M_G grad x)^2 + beta)`` (lagged diffusivity)."""
    h, d, f = p.voxel_size_mm, p.kernel, p.field_ppm
    w2 = (w * w).astype(np.float32)

    def dconv(v):
        spectrum = p.fft(v)
        _common.scale_add(spectrum, d)
        return p.ifft(spectrum)

    x = np.zeros_like(f)
    for _ in range(max_iterations):
        gx = _common.grad(x, h)
        pw = [
            np.float32(lam) * m / np.sqrt(m * gi * gi + np.float32(beta))
            for m, gi in zip(mg, gx, strict=True)
        ]

        def hess(v, pw=pw):
            t = dconv(v)
            t *= w2
            out = dconv(t)
            out += grad_t_weighted_grad(v, pw, h)
            return out

        data = dconv(w2 * np.sin(np.float32(s) * (dconv(x) - f)) / np.float32(s))
        b = -(grad_t_weighted_grad(x, pw, h) + data)
        dx = krylov.cg(hess, b, tol=cg_tol, max_iter=cg_max_iterations)[0]
        x += dx
        if np.linalg.norm(dx) < tol * max(float(np.linalg.norm(x)), 1e-30):
            break
    return x


def medi(
    local_field_ppm: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    voxel_size_mm: Sequence[float],
    b0_direction: npt.ArrayLike = (0.0, 0.0, 1.0),
    magnitude: npt.ArrayLike | None = None,
    noise_std: npt.ArrayLike | None = None,
    regularization: float = 4e-4,
    edge_percentage: float = 0.9,
    phase_scale_rad_per_ppm: float = DEFAULT_PHASE_SCALE,
    smoothing: float = 1e-6,
    tol: float = 0.1,
    max_iterations: int = 10,
    cg_tol: float = 0.01,
    cg_max_iterations: int = 30,
    pad_factor: float = _common.PAD_FACTOR,
    workers: int | None = -1,
) -> np.ndarray:
    """MEDI-L1: nonlinear data term and an L1 gradient prior that spares magnitude edges.

    Solves ``min_chi 1/(2 s^2) ||W (exp(i s D chi) - exp(i s f))||^2
    + lambda ||M_G grad chi||_1`` by Gauss-Newton; the L1 norm is smoothed,
    ``sum sqrt((M_G grad chi)^2 + beta)``, and linearised by lagged diffusivity, so each
    outer step solves by conjugate gradient::

        (lambda grad^T P grad + D^T W^2 D) dchi = -(lambda grad^T P grad chi
                                                   + D^T W^2 sin(s (D chi - f)) / s)
        P = M_G / sqrt((M_G grad chi)^2 + beta)

    ``M_G`` is 0 on the ``1 - edge_percentage`` largest magnitude-gradient components in the
    mask (edges are not penalised) and 1 elsewhere. ``W`` is ``1 / noise_std`` if given, else
    the magnitude, else the mask, normalised to mean 1 in the mask (the MEDI toolbox's
    data weighting).

    Parameters
    ----------
    local_field_ppm, mask, voxel_size_mm, b0_direction, pad_factor, workers :
        as :func:`qsmprep.algorithms.inversion.tkd`.
    magnitude : magnitude (3-D, or 4-D with echoes last: RSS) for the edge mask and,
        without ``noise_std``, for ``W``. Without it ``M_G = 1`` (plain TV).
    noise_std : field noise (ppm; scalar or map, positive in the mask) for ``W``.
    regularization : ``lambda`` (ppm*mm), as in :func:`~qsmprep.algorithms.inversion.tv`.
    edge_percentage : fraction of gradient components, in the mask, that are regularised
        (0.9, MEDI's default).
    phase_scale_rad_per_ppm : ``s = 2 pi gamma_bar B0 TE 1e-6`` (rad/ppm); default 3 T,
        TE 20 ms (16.05). Pass the real value when known.
    smoothing : ``beta`` of the smoothed L1 norm, (ppm/mm)^2 (1e-6).
    tol : stop when ``||dchi|| < tol ||chi||`` (0.1, MEDI's default).
    max_iterations : at most this many Gauss-Newton steps (10).
    cg_tol, cg_max_iterations : relative residual and iteration cap of each CG solve.

    Returns
    -------
    chi_ppm : float32 susceptibility (ppm), 0 outside the mask, not referenced.

    Notes
    -----
    FFTs: 4 per Gauss-Newton step plus 4 per CG iteration (``<= 10 (4 + 4 * 30) = 1240``).

    References
    ----------
    Liu T, Liu J, de Rochefort L, et al. Morphology enabled dipole inversion (MEDI) from a
    single-angle acquisition: comparison with COSMOS in human brain imaging. Magn Reson Med
    2011;66:777-783. doi:10.1002/mrm.22816
    Liu J, Liu T, de Rochefort L, et al. Morphology enabled dipole inversion for quantitative
    susceptibility mapping using structural consistency between the magnitude image and the
    susceptibility map. NeuroImage 2012;59:2560-2568. doi:10.1016/j.neuroimage.2011.08.082
    Liu T, Wisnieff C, Lou M, et al. Nonlinear formulation of the magnetic field to source
    relationship for robust quantitative susceptibility mapping. Magn Reson Med
    2013;69:467-476. doi:10.1002/mrm.24272
    de Rochefort L, Liu T, Kressler B, et al. Quantitative susceptibility map reconstruction
    from MR phase data using Bayesian regularization. Magn Reson Med 2010;63:194-206.
    doi:10.1002/mrm.22187
    """
    lam = _common.check_number("regularization", regularization)
    pct = _common.check_number("edge_percentage", edge_percentage, high=1.0)
    s = check_phase_scale(phase_scale_rad_per_ppm)
    beta = _common.check_number("smoothing", smoothing)
    tol = _common.check_number("tol", tol)
    max_iterations = _common.check_count("max_iterations", max_iterations)
    cg_tol = _common.check_number("cg_tol", cg_tol, high=1.0)
    cg_max_iterations = _common.check_count("cg_max_iterations", cg_max_iterations)
    p = _common.setup(
        local_field_ppm, mask, voxel_size_mm=voxel_size_mm, b0_direction=b0_direction,
        pad_factor=pad_factor, workers=workers,
    )  # fmt: skip
    w = data_weights(p, magnitude, noise_std)
    mg = edge_mask(p, magnitude, pct)
    x = _gauss_newton(
        p, w, mg, lam=lam, s=s, beta=beta, tol=tol, max_iterations=max_iterations,
        cg_tol=cg_tol, cg_max_iterations=cg_max_iterations,
    )  # fmt: skip
    return p.to_image(x)
