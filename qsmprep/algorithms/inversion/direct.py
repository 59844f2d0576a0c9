"""Closed-form (direct) dipole inversions: TKD, TSVD and gradient-regularised Tikhonov.

Each costs two real FFTs. They are linear in the field: ``2 f -> 2 chi``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from qsmprep.algorithms.inversion import _common
from qsmprep.algorithms.inversion.incomplete_spectrum import band_inverse


def _truncated_inverse(d: np.ndarray, threshold: float) -> np.ndarray:
    """``1 / D_t`` with ``D_t = sign(D) max(|D|, t)`` (``sign(0) = +1``), 0 at ``k = 0``."""
    if _common._nb is not None and d.ndim == 3 and d.dtype == np.float32:
        inv = np.empty_like(d)
        _common._nb.truncated_inverse(d, np.float32(threshold), inv)  # one fused pass
    else:
        inv = np.abs(d)
        np.maximum(inv, np.float32(threshold), out=inv)
        np.divide(np.float32(1.0), inv, out=inv)
        np.copysign(inv, d, out=inv)  # D = +0 gives +1 / t, as sign(0) = +1
    inv[0, 0, 0] = 0.0
    return inv


def tkd(
    local_field_ppm: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    voxel_size_mm: Sequence[float],
    b0_direction: npt.ArrayLike = (0.0, 0.0, 1.0),
    threshold: float = 0.19,
    correct_scaling: bool = False,
    pad_factor: float = _common.PAD_FACTOR,
    workers: int | None = -1,
) -> np.ndarray:
    """Truncated k-space division.

    ``chi = M IFFT( FFT(M f) / D_t )`` with ``D_t(k) = sign(D) max(|D|, t)``: the dipole
    kernel ``D`` is clipped in magnitude to ``t`` near the magic-angle cone so the division
    stays bounded. ``chi(k=0)`` is set to 0 (the mean is undetermined; reference it later).

    Parameters
    ----------
    local_field_ppm : (X, Y, Z) local (tissue) field, ppm of B0, background removed.
    mask : (X, Y, Z) brain mask; the field is used and chi returned only inside it.
    voxel_size_mm : voxel spacing (mm) along the three array axes.
    b0_direction : unit B0 vector in voxel axes (see ``kernels.b0_direction_from_affine``).
    threshold : ``t`` in ``(0, 1/3]``; 0.19 after Shmueli et al. Smaller is sharper and
        noisier, larger underestimates chi more.
    correct_scaling : divide by the k-space mean of ``D / D_t`` (the broadband attenuation
        caused by clipping), after Schweser et al. 2013. Off by default.
    pad_factor : zero padding of the mask's bounding box (>= 1, then 5-smooth).
    workers : FFT threads (scipy convention, -1 = all cores).

    Returns
    -------
    chi_ppm : (X, Y, Z) float32 susceptibility, ppm; 0 outside the mask. Not referenced.

    Notes
    -----
    2 FFTs. ``D(k) = 1/3 - (k.b)^2/|k|^2`` is built from the physical voxel spacing.

    References
    ----------
    Shmueli K, de Zwart JA, van Gelderen P, et al. Magnetic susceptibility mapping of brain
    tissue in vivo using MRI phase data. Magn Reson Med 2009;62:1510-1522.
    doi:10.1002/mrm.22135
    Schweser F, Deistung A, Sommer K, Reichenbach JR. Toward online reconstruction of
    quantitative susceptibility maps: superfast dipole inversion. Magn Reson Med
    2013;69:1582-1594. doi:10.1002/mrm.24405

    Examples
    --------
    >>> from qsmprep.algorithms import simulate, kernels
    >>> ph = simulate.make_head_phantom((32, 32, 32), voxel_size_mm=(6, 6, 6))
    >>> f = kernels.forward_field(ph.true_chi(), voxel_size_mm=(6, 6, 6))
    >>> tkd(f, ph.brain_mask, voxel_size_mm=(6, 6, 6)).dtype
    dtype('float32')
    """
    t = _common.check_number("threshold", threshold, high=1.0 / 3.0)
    p = _common.setup(
        local_field_ppm,
        mask,
        voxel_size_mm=voxel_size_mm,
        b0_direction=b0_direction,
        pad_factor=pad_factor,
        workers=workers,
    )
    inv = _truncated_inverse(p.kernel, t)
    if correct_scaling:
        inv /= np.float32(np.mean((p.kernel * inv)[inv != 0]))
    spectrum = p.fft(p.field_ppm)
    _common.scale_add(spectrum, inv)
    return p.to_image(p.ifft(spectrum))


def tsvd(
    local_field_ppm: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    voxel_size_mm: Sequence[float],
    b0_direction: npt.ArrayLike = (0.0, 0.0, 1.0),
    threshold: float = 0.1,
    pad_factor: float = _common.PAD_FACTOR,
    workers: int | None = -1,
) -> np.ndarray:
    """Truncated singular-value (k-space) inversion.

    ``chi = M IFFT( FFT(M f) / D )`` where ``|D| > t`` and 0 elsewhere: the ill-conditioned
    cone is dropped rather than clipped (less streaking than TKD, more underestimation).
    Parameters and return as :func:`tkd`; ``threshold`` default 0.1. 2 FFTs.

    References
    ----------
    Wharton S, Schaefer A, Bowtell R. Susceptibility mapping in the human brain using
    threshold-based k-space division. Magn Reson Med 2010;63:1292-1304.
    doi:10.1002/mrm.22334
    """
    t = _common.check_number("threshold", threshold, high=1.0 / 3.0)
    p = _common.setup(
        local_field_ppm,
        mask,
        voxel_size_mm=voxel_size_mm,
        b0_direction=b0_direction,
        pad_factor=pad_factor,
        workers=workers,
    )
    _, inv = band_inverse(p.kernel, t)  # 1 / D where |D| > t, else 0
    spectrum = p.fft(p.field_ppm)
    _common.scale_add(spectrum, inv)
    return p.to_image(p.ifft(spectrum))


def tikhonov(
    local_field_ppm: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    voxel_size_mm: Sequence[float],
    b0_direction: npt.ArrayLike = (0.0, 0.0, 1.0),
    regularization: float = 5e-3,
    pad_factor: float = _common.PAD_FACTOR,
    workers: int | None = -1,
) -> np.ndarray:
    """Closed-form L2 inversion with a gradient (smoothness) penalty.

    ``chi = argmin ||D F(x) - F(M f)||^2 + lambda ||grad x||^2``, i.e.
    ``chi = M IFFT( D F / (D^2 + lambda |G|^2) )`` with ``|G(k)|^2 = sum_i (2 - 2 cos(2 pi
    k_i h_i)) / h_i^2`` (1/mm^2) the forward-difference gradient; ``lambda`` is in mm^2.
    Parameters and return as :func:`tkd`; ``regularization`` is ``lambda``. 2 FFTs.

    References
    ----------
    Bilgic B, Chatnuntawech I, Fan AP, et al. Fast image reconstruction with L2-regularization.
    J Magn Reson Imaging 2014;40:181-191. doi:10.1002/jmri.24365
    """
    lam = _common.check_number("regularization", regularization)
    p = _common.setup(
        local_field_ppm,
        mask,
        voxel_size_mm=voxel_size_mm,
        b0_direction=b0_direction,
        pad_factor=pad_factor,
        workers=workers,
    )
    d = p.kernel
    if _common._nb is not None and d.ndim == 3 and d.dtype == np.float32:
        den = np.empty_like(d)
        _common._nb.tikhonov_weight(d, np.float32(lam), *p.grad_sq_axes(), den)  # one pass
        den[0, 0, 0] = 0.0  # D(0) = G(0) = 0: leave the undetermined mean at 0
    else:
        den = d * d + np.float32(lam) * p.grad_sq()
        den[0, 0, 0] = 1.0  # D(0) = G(0) = 0: leave the undetermined mean at 0
        np.divide(d, den, out=den)
    spectrum = p.fft(p.field_ppm)
    _common.scale_add(spectrum, den)
    return p.to_image(p.ifft(spectrum))
