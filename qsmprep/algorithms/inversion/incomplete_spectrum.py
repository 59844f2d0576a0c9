"""Incomplete-spectrum QSM (Fuchs & Shmueli 2023): fit only the well-conditioned band."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from qsmprep.algorithms.inversion import _common, krylov


def band_inverse(d: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The band ``K = [|D| > delta]`` (float32 1/0) and ``K / D`` (0 in the cone)."""
    band, inv = np.empty_like(d), np.empty_like(d)
    if _common._nb is not None and d.ndim == 3 and d.dtype == np.float32:
        _common._nb.band_inverse(d, np.float32(delta), band, inv)  # one fused pass
        return band, inv
    np.greater(np.abs(d), np.float32(delta), out=band, casting="unsafe")
    inv.fill(0.0)
    np.divide(np.float32(1.0), d, out=inv, where=band > 0)
    return band, inv


def _cg_band_fit(
    p: _common.InversionProblem,
    band: np.ndarray,
    rhs: np.ndarray,
    *,
    tol: float,
    max_iterations: int,
) -> tuple[np.ndarray, int]:
    """CG (:func:`.krylov.cg`) on ``M IFFT(K FFT(M x)) = rhs`` for x on the mask; returns
    (x, iterations)."""
    m = p.mask.astype(np.float32)

    def normal(x):
        spectrum = p.fft(m * x)
        _common.scale_add(spectrum, band)
        y = p.ifft(spectrum)
        y *= m
        return y

    x, it, _ = krylov.cg(normal, rhs, tol=tol, max_iter=max_iterations)
    return x, it


def isqsm(
    local_field_ppm: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    voxel_size_mm: Sequence[float],
    b0_direction: npt.ArrayLike = (0.0, 0.0, 1.0),
    delta: float = 0.25,
    tol: float = 0.1,
    max_iterations: int = 30,
    pad_factor: float = _common.PAD_FACTOR,
    workers: int | None = -1,
) -> np.ndarray:
    """Incomplete-spectrum QSM: match chi's spectrum only where the dipole is well conditioned.

    With the band ``K = [|D| > delta]`` and ``b = K F(M f) / D`` (0 in the cone), solve::

        chi = argmin_{x supported on M}  || K F(M x) - b ||^2

    by conjugate gradients on the normal equations ``M F^-1 K F M x = M F^-1 b`` from
    ``x = 0``, stopping at relative residual ``tol`` or ``max_iterations``. The support
    constraint (chi = 0 outside the brain) is what recovers the cone: no smoothness prior.

    Parameters
    ----------
    local_field_ppm, mask, voxel_size_mm, b0_direction, pad_factor, workers :
        as :func:`qsmprep.algorithms.inversion.tkd`.
    delta : band threshold on ``|D|`` (0.25).
    tol : relative residual ``||r|| / ||M F^-1 b||`` to stop at (0.1).
    max_iterations : CG iterations at most (30).

    Returns
    -------
    chi_ppm : float32 susceptibility (ppm), 0 outside the mask, not referenced.

    Notes
    -----
    FFTs: 2 for the right-hand side + 2 per CG iteration (at most 62). Linear in the field
    (CG iterates are homogeneous and the stopping rule is relative).

    References
    ----------
    Fuchs P, Shmueli K. Incomplete spectrum QSM using support information. Front Neurosci
    2023;17:1130524. doi:10.3389/fnins.2023.1130524
    """
    delta = _common.check_number("delta", delta, high=1.0 / 3.0)
    tol = _common.check_number("tol", tol, high=1.0)
    max_iterations = _common.check_count("max_iterations", max_iterations)
    p = _common.setup(
        local_field_ppm,
        mask,
        voxel_size_mm=voxel_size_mm,
        b0_direction=b0_direction,
        pad_factor=pad_factor,
        workers=workers,
    )
    band, inv = band_inverse(p.kernel, delta)
    spectrum = p.fft(p.field_ppm)
    _common.scale_add(spectrum, inv)  # K / D
    rhs = p.ifft(spectrum)
    rhs *= p.mask
    x, _ = _cg_band_fit(p, band, rhs, tol=tol, max_iterations=max_iterations)
    return p.to_image(x)
