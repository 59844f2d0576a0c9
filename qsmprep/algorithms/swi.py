"""Susceptibility-weighted imaging (SWI) and minimum-intensity projections.

SWI multiplies a GRE magnitude by a mask made from the high-pass filtered phase, which
darkens structures whose phase has the chosen sign. Sign convention (``docs/conventions.md``):
``S(TE) = M0 exp(-R2* TE) exp(i (phi0 + 2 pi df TE))``, so paramagnetic tissue (venous blood,
iron) shifts the local phase *positive* for a vessel parallel to B0 -- the opposite of the
left-handed convention of Haacke et al., where veins have negative phase and the standard
mask is the "negative phase mask". Here the standard choice is named by its role:
``suppress='paramagnetic'`` (the default) darkens positive phases, and is Haacke's negative
mask applied to data of his sign.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qsmprep.algorithms.constants import _check_b0

#: What the phase mask can suppress (see :func:`swi_phase_mask`).
SWI_SUPPRESS: tuple[str, ...] = ("paramagnetic", "diamagnetic")
#: Input kinds understood by :func:`swi`.
SWI_KINDS: tuple[str, ...] = ("phase", "field")


def _check_voxel_size(voxel_size_mm: Sequence[float]) -> np.ndarray:
    vox = np.asarray(voxel_size_mm, dtype=float).reshape(-1)
    if vox.size != 3 or not np.all(np.isfinite(vox)) or np.any(vox <= 0):
        raise ValueError(f"voxel_size_mm must be three positive numbers, got {voxel_size_mm!r}")
    return vox


def _check_3d(name: str, image, shape=None) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be 3-D (X, Y, Z), got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def default_swi_echo_time_s(b0_tesla: float) -> float:
    """Echo time (s) for SWI at a field strength: ``TE = 60 ms T / B0``, at most 60 ms.

    The phase of a given susceptibility difference is ``2 pi gamma_bar B0 dchi TE``, so a
    constant ``B0 TE`` keeps the vein phase (and the SWI contrast) the same across field
    strengths: 40 ms at 1.5 T and 20 ms at 3 T, the values recommended by Haacke et al.
    (AJNR 2009), 8.6 ms at 7 T. The 60 ms cap (reached below 1 T) keeps the echo within
    reach of low-field T2* and TR limits. The filter width of :func:`swi` is set in mm and
    ``power=4`` is the standard at 0.5-7 T; only the echo time needs the field strength.

    Examples
    --------
    >>> default_swi_echo_time_s(3.0)
    0.02
    """
    return float(min(0.06 / _check_b0(b0_tesla), 0.06))


def homodyne_highpass(
    magnitude: npt.ArrayLike,
    phase_rad: npt.ArrayLike,
    *,
    voxel_size_mm: Sequence[float],
    sigma_mm: float,
    mask: npt.ArrayLike | None = None,
) -> np.ndarray:
    """High-pass filter a wrapped phase by homodyne (complex) division.

    ``phi_hp = angle(S conj(G_sigma * (M S)))`` with ``S = m exp(i phi)``, ``G_sigma`` a
    Gaussian of standard deviation ``sigma_mm`` (mm) and ``M`` the mask: the phase of ``S``
    divided by its low-pass version. It removes the background field and the phase offset
    (scales above ~``sigma_mm``) without unwrapping. Returns float32 rad in ``[-pi, pi]``,
    0 outside the mask.

    References
    ----------
    Haacke EM, Xu Y, Cheng YC, Reichenbach JR. Susceptibility weighted imaging (SWI).
    Magn Reson Med 2004;52:612-618. doi:10.1002/mrm.20198
    """
    mag = _check_3d("magnitude", magnitude)
    phase = _check_3d("phase_rad", phase_rad, mag.shape)
    vox = _check_voxel_size(voxel_size_mm)
    if not (np.isfinite(sigma_mm) and sigma_mm > 0):
        raise ValueError(f"sigma_mm must be a positive number of mm, got {sigma_mm!r}")
    m = np.ones(mag.shape, bool) if mask is None else _check_3d("mask", mask, mag.shape) > 0
    sig = np.where(m, mag * np.exp(1j * phase), 0).astype(np.complex64)
    sigma_vox = float(sigma_mm) / vox
    low = ndimage.gaussian_filter(sig.real, sigma_vox, mode="constant") + 1j * (
        ndimage.gaussian_filter(sig.imag, sigma_vox, mode="constant")
    )
    return np.where(m, np.angle(sig * np.conj(low)), 0).astype(np.float32)


def swi_phase_mask(phase_rad: npt.ArrayLike, *, suppress: str = "paramagnetic") -> np.ndarray:
    """SWI phase mask in ``[0, 1]`` from a (high-passed) phase (rad).

    ``suppress='paramagnetic'``: ``1 - phi / pi`` for ``0 <= phi <= pi``, 0 above ``pi``,
    1 for ``phi < 0``; ``'diamagnetic'``: ``1 + phi / pi`` for ``-pi <= phi <= 0``, 0 below,
    1 for ``phi > 0`` (Haacke's "negative" mask, which in this package's sign convention
    darkens diamagnetic structures such as calcifications).
    """
    if suppress not in SWI_SUPPRESS:
        raise ValueError(f"suppress must be one of {SWI_SUPPRESS}, got {suppress!r}")
    phase = np.asarray(phase_rad, dtype=np.float32)
    signed = phase if suppress == "paramagnetic" else -phase
    return np.clip(1.0 - signed / np.float32(np.pi), 0.0, 1.0).astype(np.float32)


def swi(
    magnitude: npt.ArrayLike,
    phase_or_field: npt.ArrayLike,
    *,
    kind: str = "phase",
    voxel_size_mm: Sequence[float],
    mask: npt.ArrayLike | None = None,
    highpass_sigma_mm: float = 6.0,
    power: float = 4.0,
    suppress: str = "paramagnetic",
    phase_scale_rad: float = np.pi,
) -> np.ndarray:
    """Susceptibility-weighted image: magnitude times a power of the phase mask.

    Parameters
    ----------
    magnitude : (X, Y, Z) array
        GRE magnitude (any unit; the output has the same).
    phase_or_field : (X, Y, Z) array
        ``kind='phase'``: the wrapped phase (rad) of the same echo, high-passed here by
        :func:`homodyne_highpass`. ``kind='field'``: a local (background-removed) field,
        used as is after scaling to radians by ``phase_scale_rad``.
    kind : {'phase', 'field'}
    voxel_size_mm : three floats
        Voxel spacing (mm).
    mask : (X, Y, Z) bool array, optional
        Region where the phase is filtered and the mask applied (default all); outside it
        the output is the magnitude.
    highpass_sigma_mm : float
        Standard deviation (mm) of the homodyne low-pass Gaussian (``kind='phase'``):
        larger keeps bigger structures and more background field. The default 6 mm is about
        the 64-wide Hann filter of Haacke et al. on a 256 x 1 mm matrix.
    power : float
        Number of multiplications by the mask (4 is standard at 0.5-7 T).
    suppress : {'paramagnetic', 'diamagnetic'}
        Which phase sign to darken (see :func:`swi_phase_mask`); ``'paramagnetic'``
        darkens veins in this package's phase convention.
    phase_scale_rad : float
        Radians per unit of the field for ``kind='field'`` (default pi: a field of 1 unit
        is fully suppressed). For a field in Hz, ``2 pi TE`` gives the phase at echo ``TE``.

    Returns
    -------
    (X, Y, Z) float32 array
        ``SWI = magnitude * mask**power``.

    Notes
    -----
    Store phase with this package's sign (``--phase-sign``) first, or a vein would be
    brightened instead. Vessels at an angle beyond the magic angle (54.7 deg) to B0 have the
    opposite phase inside, with paramagnetic-signed lobes outside (Haacke et al. 2004).

    References
    ----------
    Haacke EM, Xu Y, Cheng YC, Reichenbach JR. Susceptibility weighted imaging (SWI).
    Magn Reson Med 2004;52:612-618. doi:10.1002/mrm.20198
    """
    mag = _check_3d("magnitude", magnitude)
    values = _check_3d("phase_or_field", phase_or_field, mag.shape)
    if kind not in SWI_KINDS:
        raise ValueError(f"kind must be one of {SWI_KINDS}, got {kind!r}")
    if not (np.isfinite(power) and power > 0):
        raise ValueError(f"power must be a positive number, got {power!r}")
    if not (np.isfinite(phase_scale_rad) and phase_scale_rad > 0):
        raise ValueError(f"phase_scale_rad must be positive, got {phase_scale_rad!r}")
    if suppress not in SWI_SUPPRESS:
        raise ValueError(f"suppress must be one of {SWI_SUPPRESS}, got {suppress!r}")
    _check_voxel_size(voxel_size_mm)
    m = np.ones(mag.shape, bool) if mask is None else _check_3d("mask", mask, mag.shape) > 0
    if kind == "phase":
        phase = homodyne_highpass(
            mag, values, voxel_size_mm=voxel_size_mm, sigma_mm=highpass_sigma_mm, mask=m
        )
    else:
        phase = np.asarray(values, dtype=np.float64) * float(phase_scale_rad)
    weight = np.where(m, swi_phase_mask(phase, suppress=suppress), 1.0)
    return (mag * weight ** float(power)).astype(np.float32)


def minimum_intensity_projection(
    image: npt.ArrayLike,
    *,
    slab_mm: float,
    voxel_size_mm: Sequence[float],
    axis: int = 2,
) -> np.ndarray:
    """Sliding-window minimum-intensity projection (minIP) over a slab, on the input grid.

    Each output voxel is the minimum over ``n`` voxels along ``axis`` centred on it, with
    ``n`` the odd number of voxels closest to ``slab_mm / voxel_size_mm[axis]`` (at least
    1); edges repeat the last slice. The grid (shape, hence the affine) is unchanged and
    the output is ``<= image`` everywhere.
    """
    img = _check_3d("image", image)
    vox = _check_voxel_size(voxel_size_mm)
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    if not (np.isfinite(slab_mm) and slab_mm > 0):
        raise ValueError(f"slab_mm must be a positive number of mm, got {slab_mm!r}")
    n = slab_mm / vox[axis]
    size = max(1, 2 * int(np.floor((n - 1.0) / 2.0 + 0.5)) + 1)
    return ndimage.minimum_filter1d(img, size=size, axis=axis, mode="nearest")
