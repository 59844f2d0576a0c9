"""Complex-signal multi-echo combination: nonlinear field fit, phase offsets, bipolar readouts.

Signal model (``docs/conventions.md``): ``S_n = m_n exp(i (phi0 + 2 pi f TE_n))`` with ``f``
the field (Hz) and ``phi0`` the echo-independent phase offset (rad); a positive field makes
the phase grow with echo time. These functions complement the phase-only linear fit of
:mod:`qsmprep.algorithms.combine`:

* :func:`fit_field_nonlinear` fits the complex signal itself (MEDI's ``Fit_ppm_complex``),
  which weights each echo by its magnitude without a temporal unwrapping step and yields a
  noise map of the field;
* :func:`mcpc3ds_offset` / :func:`remove_phase_offset` estimate and remove ``phi0`` from the
  first two echoes (MCPC-3D-S), e.g. before a single-echo pipeline or an SWI;
* :func:`estimate_bipolar_offset` / :func:`correct_bipolar` remove the odd/even-echo phase
  difference of bipolar (alternating-polarity) readouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage, stats

from qsmprep.algorithms.combine import (
    FieldFit,
    _check_inputs,
    field_noise_std_hz,
    fit_field_linear,
)
from qsmprep.algorithms.constants import wrap_to_pi
from qsmprep.algorithms.unwrap import _check_voxel_size, unwrap_laplacian

_TWO_PI = 2.0 * np.pi


@dataclass
class ComplexFieldFit(FieldFit):
    """Result of :func:`fit_field_nonlinear` (maps 3-D float32, 0 outside the mask).

    ``residual`` is here the relative complex residual
    ``sqrt(sum_n |S_n - m_n exp(i theta_n)|**2 / sum_n |S_n|**2)`` (dimensionless; ~0 in
    tissue, ~1 in pure noise).
    """

    #: Standard deviation (Hz) of the fitted field from the noise, by error propagation:
    #: ``sigma * sqrt([(J^T J)^-1]_ff)``; high where the echoes are dark or few.
    noise_std_hz: np.ndarray | None = None
    #: The signal noise ``sigma`` (magnitude units, per real channel) used for ``noise_std_hz``.
    noise_sigma: float = 0.0


def fit_field_nonlinear(
    phase_rad: npt.ArrayLike,
    magnitude: npt.ArrayLike,
    *,
    echo_times_s: Sequence[float],
    mask: npt.ArrayLike | None = None,
    max_iterations: int = 30,
    tol: float = 1e-4,
    noise_sigma: float | None = None,
    guide_field_hz: npt.ArrayLike | None = None,
) -> ComplexFieldFit:
    """Fit ``S_n = m_n exp(i (phi0 + 2 pi f TE_n))`` to complex multi-echo data (Gauss-Newton).

    ``guide_field_hz`` (unevenly spaced echoes; see
    :func:`qsmprep.algorithms.combine.temporal_unwrap_guide`) guides the linear fit that
    starts the iterations.

    Parameters
    ----------
    phase_rad, magnitude : (X, Y, Z, E) arrays
        Wrapped phase (rad) and magnitude of each echo, echoes last; at least 2 echoes.
    echo_times_s : sequence of E floats
        Strictly increasing echo times (s).
    mask : (X, Y, Z) bool array, optional
        Voxels to fit (default all); maps are 0 elsewhere.
    max_iterations : int
        Gauss-Newton iterations at most (MEDI: 30).
    tol : float
        A voxel stops iterating when its step changes the modelled phase by less than
        ``tol`` rad at every echo (``|dphi0| + |dw| max|t_n| <= tol``).
    noise_sigma : float, optional
        Noise standard deviation of the complex signal per real channel (magnitude units).
        Estimated from the fit residuals if omitted (see Notes).

    Returns
    -------
    ComplexFieldFit
        ``field_hz`` (Hz, aliased modulo ``wrap_period_hz`` like :func:`fit_field_linear`,
        which initialises it), ``phase_offset_rad`` (rad, wrapped), ``residual`` (relative
        complex residual, dimensionless), ``noise_std_hz`` (Hz) and ``noise_sigma``.

    Notes
    -----
    With ``theta_n = phi0 + w t_n``, ``w = 2 pi f`` (rad/s), ``t_n = TE_n - mean(TE)``
    (centred for conditioning) and the model magnitude fixed to the measured ``m_n = |S_n|``,
    each step solves the linearised least squares problem
    ``min || S - W - i W (dphi0 + dw t) ||^2``, ``W_n = m_n exp(i theta_n)``:
    ``[dphi0, dw] = A^-1 Re(sum_n conj(i W_n) (S_n - W_n) [1, t_n])`` with
    ``A = sum_n m_n**2 [[1, t_n], [t_n, t_n**2]]`` (so echoes are weighted by ``m_n**2``,
    their inverse phase-noise variance). The residual lies along the phase direction, one
    real degree of freedom per echo, so ``sum_n |r_n|**2 ~ sigma**2 chi2(E - 2)``; unless
    given, ``sigma**2`` is the median over the mask of ``sum_n |r_n|**2`` divided by the
    median of ``chi2(E - 2)`` (with 2 echoes the fit is exact and sigma cannot be estimated:
    give ``noise_sigma``, or ``noise_std_hz`` is the factor for ``sigma = 1``). The
    field noise is
    ``noise_std_hz = sigma sqrt([A^-1]_ww) / (2 pi)`` (the Cramer-Rao bound; MEDI's
    ``N_std`` for ``sigma = 1`` and ``TE`` in echo indices), computed by
    :func:`qsmprep.algorithms.combine.field_noise_std_hz` (the largest float32 where the
    echoes leave the field undetermined).

    References
    ----------
    Liu T, Wisnieff C, Lou M, et al. Nonlinear formulation of the magnetic field to source
    relationship for robust quantitative susceptibility mapping. Magn Reson Med
    2013;69:467-476. doi:10.1002/mrm.24272
    """
    phase, mag, tes, m = _check_inputs(phase_rad, magnitude, echo_times_s, mask)
    if mag is None:
        raise ValueError("magnitude is required for the complex fit")
    if tes.size < 2:
        raise ValueError(f"the nonlinear fit needs >= 2 echoes, got {tes.size}")
    if int(max_iterations) < 0 or not tol > 0:
        raise ValueError(f"need max_iterations >= 0 and tol > 0, got {max_iterations}, {tol}")
    if noise_sigma is not None and not (np.isfinite(noise_sigma) and noise_sigma > 0):
        raise ValueError(f"noise_sigma must be a positive number, got {noise_sigma!r}")
    lin = fit_field_linear(phase, mag, echo_times_s=tes, mask=m,
                           guide_field_hz=guide_field_hz)  # fmt: skip
    sig = (mag[m] * np.exp(1j * phase[m])).astype(np.complex128)  # (V, E)
    amp = np.abs(sig)
    t = tes - tes.mean()
    w = _TWO_PI * lin.field_hz[m].astype(np.float64)
    p0 = lin.phase_offset_rad[m] + w * tes.mean()  # phase at the mean echo time
    a11, a12, a22 = (np.sum(amp**2 * t**k, axis=1) for k in (0, 1, 2))
    det = a11 * a22 - a12**2
    ok = det > 1e-12 * np.maximum(a11 * a22, np.finfo(float).tiny)
    det = np.where(ok, det, 1.0)
    active = np.flatnonzero(ok)
    reach = float(np.max(np.abs(t)))  # phase change at the extreme echoes per rad/s of dw
    for _ in range(int(max_iterations)):
        if active.size == 0:
            break
        a, tt = amp[active], t
        model = a * np.exp(1j * (p0[active, None] + w[active, None] * tt))
        proj = np.conj(1j * model) * (sig[active] - model)
        b0, b1 = np.real(proj.sum(axis=1)), np.real((proj * tt).sum(axis=1))
        dt = det[active]
        d0 = (a22[active] * b0 - a12[active] * b1) / dt
        dw = (a11[active] * b1 - a12[active] * b0) / dt
        p0[active] += d0
        w[active] += dw
        active = active[np.abs(dw) * reach + np.abs(d0) > tol]
    res = sig - amp * np.exp(1j * (p0[:, None] + w[:, None] * t))
    sq = np.sum(np.abs(res) ** 2, axis=1)
    energy = np.sum(amp**2, axis=1)
    if noise_sigma is None:
        dof = tes.size - 2
        noise_sigma = float(np.sqrt(np.median(sq) / stats.chi2.median(dof))) if dof > 0 else 1.0
    shape = phase.shape[:3]
    maps = [np.zeros(shape, np.float32) for _ in range(3)]
    maps[0][m] = w / _TWO_PI
    maps[1][m] = wrap_to_pi(p0 - w * tes.mean())
    maps[2][m] = np.sqrt(np.divide(sq, energy, out=np.zeros_like(sq), where=energy > 0))
    # noise-free data estimate sigma = 0: keep the relative map (sigma = 1) as a weight
    noise = field_noise_std_hz(mag, echo_times_s=tes, mask=m,
                               noise_level=noise_sigma if noise_sigma > 0 else 1.0)  # fmt: skip
    return ComplexFieldFit(
        field_hz=maps[0], phase_offset_rad=maps[1], residual=maps[2],
        wrap_period_hz=lin.wrap_period_hz, noise_std_hz=noise, noise_sigma=float(noise_sigma),
    )  # fmt: skip


def _complex_smooth(phase: np.ndarray, weight: np.ndarray, sigma_vox) -> np.ndarray:
    """Phase of the Gaussian-smoothed ``weight * exp(i phase)`` (rad)."""
    z = weight * np.exp(1j * phase)
    re = ndimage.gaussian_filter(z.real, sigma_vox, mode="nearest", truncate=3.0)
    im = ndimage.gaussian_filter(z.imag, sigma_vox, mode="nearest", truncate=3.0)
    return np.arctan2(im, re)


def mcpc3ds_offset(
    phase_rad: npt.ArrayLike,
    magnitude: npt.ArrayLike | None = None,
    *,
    echo_times_s: Sequence[float],
    voxel_size_mm: Sequence[float],
    sigma_mm: float | Sequence[float] = 10.0,
    mask: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Estimate the phase offset ``phi0`` (rad) from echoes 1 and 2 (MCPC-3D-S).

    Parameters
    ----------
    phase_rad : (X, Y, Z, E) array
        Wrapped phase (rad), echoes last, ``E >= 2`` (only the first two are used).
    magnitude : (X, Y, Z, E) array, optional
        Magnitudes: weight the Hermitian product and the smoothing (uniform if omitted).
    echo_times_s : sequence of E floats
        Strictly increasing echo times (s).
    voxel_size_mm : three floats
        Voxel spacing (mm), for the unwrapping and the smoothing kernel.
    sigma_mm : float or three floats
        Standard deviation (mm) of the Gaussian that smooths ``exp(i phi0)``; ``0`` skips it.
    mask : (X, Y, Z) bool array, optional
        Region in which the phase difference is unwrapped and whose voxels weight the
        smoothing (default all). Outside it the offset is the smoothed extrapolation.

    Returns
    -------
    (X, Y, Z) float32 array
        Smooth phase offset (rad) in ``[-pi, pi]`` over the whole grid.

    Notes
    -----
    ``dphi = angle(S_2 conj(S_1)) = 2 pi f (TE_2 - TE_1)`` (wrapped) is the Hermitian inner
    product of the two echoes; unwrapped in space (:func:`~qsmprep.algorithms.unwrap.
    unwrap_laplacian`) it gives ``phi0 = W(phi_1 - TE_1 dphi / (TE_2 - TE_1))``, then
    ``phi0 <- angle(G_sigma * (m_1 exp(i phi0)))``. When ``TE_1 / (TE_2 - TE_1)`` is an integer
    (e.g. ``TE_2 = 2 TE_1``) no unwrapping is needed and none is done. Otherwise the unwrapped
    difference is fixed up to a global ``2 pi``, chosen (by ``unwrap_laplacian``) to put the
    median difference in ``[-pi, pi)``: this assumes the median field over the mask is within
    ``+-1 / (2 (TE_2 - TE_1))`` Hz of 0 (a shimmed magnet); a turn off shifts ``phi0`` by
    ``2 pi TE_1 / (TE_2 - TE_1)`` everywhere.

    References
    ----------
    Eckstein K, Dymerska B, Bachrata B, et al. Computationally efficient combination of
    multi-channel phase data from multi-echo acquisitions (ASPIRE). Magn Reson Med
    2018;79:2996-3006. doi:10.1002/mrm.26963
    """
    phase, mag, tes, m = _check_inputs(phase_rad, magnitude, echo_times_s, mask)
    vox = _check_voxel_size(voxel_size_mm)
    if tes.size < 2:
        raise ValueError(f"MCPC-3D-S needs >= 2 echoes, got {tes.size}")
    sig_mm = np.broadcast_to(np.asarray(sigma_mm, dtype=float), (3,))
    if not np.all(np.isfinite(sig_mm)) or np.any(sig_mm < 0):
        raise ValueError(f"sigma_mm must be >= 0 mm (one or three values), got {sigma_mm!r}")
    if not m.any():
        raise ValueError("mask is empty")
    phi1 = phase[..., 0].astype(np.float64)
    w1 = np.ones(phi1.shape) if mag is None else mag[..., 0].astype(np.float64)
    w2 = np.ones(phi1.shape) if mag is None else mag[..., 1].astype(np.float64)
    hip = w1 * w2 * np.exp(1j * (phase[..., 1] - phi1))
    dphi = np.angle(hip)
    ratio = tes[0] / (tes[1] - tes[0])
    if abs(ratio - round(ratio)) > 1e-6:
        unwrapped = unwrap_laplacian(dphi, voxel_size_mm=vox, mask=m).astype(np.float64)
        dphi = np.where(m, unwrapped, dphi)
    phi0 = wrap_to_pi(phi1 - ratio * dphi)
    if np.any(sig_mm > 0):
        phi0 = _complex_smooth(phi0, w1 * m, sig_mm / np.asarray(vox))
    return phi0.astype(np.float32)


def remove_phase_offset(phase_rad: npt.ArrayLike, phase_offset_rad: npt.ArrayLike) -> np.ndarray:
    """Subtract a phase offset (rad) from every echo: ``W(phi_n - phi0)`` in ``[-pi, pi)``.

    ``phase_rad`` is (X, Y, Z) or (X, Y, Z, E); ``phase_offset_rad`` is (X, Y, Z).
    """
    phase = np.asarray(phase_rad)
    offset = np.asarray(phase_offset_rad)
    if phase.ndim not in (3, 4) or offset.shape != phase.shape[:3]:
        raise ValueError(
            f"need phase (X, Y, Z[, E]) and offset (X, Y, Z), got {phase.shape} and {offset.shape}"
        )
    if phase.ndim == 4:
        offset = offset[..., np.newaxis]
    return wrap_to_pi(phase - offset).astype(np.float32)


def estimate_bipolar_offset(
    phase_rad: npt.ArrayLike,
    magnitude: npt.ArrayLike | None = None,
    *,
    echo_times_s: Sequence[float],
    mask: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Estimate the even-echo phase error ``beta(x) = c + g . x`` (rad) of a bipolar readout.

    See :func:`correct_bipolar` for the model. Returns ``beta`` (X, Y, Z), float32 (rad).
    """
    phase, mag, tes, m = _check_inputs(phase_rad, magnitude, echo_times_s, mask)
    if tes.size < 3:
        raise ValueError(f"bipolar correction needs >= 3 echoes, got {tes.size}")
    if not np.isclose(tes[2] - tes[1], tes[1] - tes[0], rtol=1e-3):
        raise ValueError(f"bipolar correction needs TE_3 - TE_2 = TE_2 - TE_1, got {tes[:3]}")
    if not m.any():
        raise ValueError("mask is empty")
    w = m.astype(np.float64)
    if mag is not None:
        w = w * mag[..., 0] * mag[..., 1] ** 2 * mag[..., 2]
    # second difference phi_1 - 2 phi_2 + phi_3 = -2 beta: field and phi0 cancel
    q = w * np.exp(1j * (phase[..., 0] - 2.0 * phase[..., 1] + phase[..., 2]))
    grad = np.zeros(3)
    for axis in range(3):
        lo = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        grad[axis] = -0.5 * np.angle(np.sum(q[hi] * np.conj(q[lo])))  # rad / voxel
    coords = np.indices(phase.shape[:3], dtype=np.float64)
    coords -= ((np.asarray(phase.shape[:3], dtype=np.float64) - 1.0) / 2.0)[:, None, None, None]
    ramp = np.tensordot(grad, coords, axes=1)
    const = -0.5 * np.angle(np.sum(q * np.exp(2j * ramp)))  # principal value, |c| <= pi/2
    return (const + ramp).astype(np.float32)


def correct_bipolar(
    phase_rad: npt.ArrayLike,
    magnitude: npt.ArrayLike | None = None,
    *,
    echo_times_s: Sequence[float],
    mask: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Remove the odd/even-echo phase difference of a bipolar multi-echo readout.

    Parameters
    ----------
    phase_rad : (X, Y, Z, E) array
        Wrapped phase (rad), echoes last, ``E >= 3`` with ``TE_1, TE_2, TE_3`` equally spaced.
    magnitude : (X, Y, Z, E) array, optional
        Magnitudes: weight the estimate (uniform if omitted).
    echo_times_s : sequence of E floats
        Strictly increasing echo times (s).
    mask : (X, Y, Z) bool array, optional
        Voxels that inform the estimate (default all); the correction is applied everywhere.

    Returns
    -------
    (X, Y, Z, E) float32 array
        Phase (rad, wrapped) with ``beta`` removed from the even echoes (2nd, 4th, ...).

    Notes
    -----
    Model: ``phi_n(x) = phi0(x) + 2 pi f(x) TE_n + [n even] beta(x)`` with
    ``beta(x) = c + g . x`` (``x`` in voxels from the grid centre): readouts of
    alternating polarity shift the echo centre in k-space, a linear phase along the
    readout (and a constant from gradient delays) that alternates between odd and even
    echoes. With equal spacing of the first three echoes the second difference
    ``phi_1 - 2 phi_2 + phi_3 = -2 beta`` cancels
    the field and ``phi0`` exactly. From ``q = w exp(i (phi_1 - 2 phi_2 + phi_3))``,
    ``w = m_1 m_2**2 m_3``: ``g_a = -angle(sum q(x + e_a) conj(q(x))) / 2`` per axis (needs
    ``|g_a| < pi / 2`` rad/voxel) and ``c = -angle(sum q exp(2 i g . x)) / 2``. ``c`` is only
    known modulo ``pi`` (a ``pi`` alternation is the same as a field shift of
    ``1 / (2 dTE)`` Hz); the principal value ``|c| <= pi / 2`` is taken.

    References
    ----------
    Eckstein K, Dymerska B, Bachrata B, et al. Computationally efficient combination of
    multi-channel phase data from multi-echo acquisitions (ASPIRE). Magn Reson Med
    2018;79:2996-3006. doi:10.1002/mrm.26963
    """
    beta = estimate_bipolar_offset(phase_rad, magnitude, echo_times_s=echo_times_s, mask=mask)
    out = np.array(phase_rad, dtype=np.float32, copy=True)
    out[..., 1::2] = wrap_to_pi(out[..., 1::2] - beta[..., np.newaxis])
    return out
