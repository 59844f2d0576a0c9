"""Geometry and k-space kernels: B0 direction, dipole, spherical mean value, Laplacian.

Frame conventions (``docs/conventions.md``): B0 points along +z of the NIfTI world
(scanner RAS) frame. Images are never resampled; instead the dipole kernel is built in the
voxel frame with the B0 direction expressed in voxel axes, so oblique slabs are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from qsmprep.algorithms.fft import crop_to, fast_shape, irfftn, kspace_grid, pad_to, rfftn

try:  # one fused pass builds the dipole kernel (about 20x faster than numpy's passes)
    from qsmprep.algorithms import _kernels_numba as _nb
except ImportError:  # pragma: no cover - numba missing
    _nb = None


def voxel_size_from_affine(affine: npt.ArrayLike) -> np.ndarray:
    """Voxel size (mm) along each voxel axis: the column norms of ``affine[:3, :3]``."""
    a = np.asarray(affine, dtype=float)
    if a.shape not in ((4, 4), (3, 3)):
        raise ValueError(f"affine must be 4x4 or 3x3, got shape {a.shape}")
    return np.linalg.norm(a[:3, :3], axis=0)


def b0_direction_from_affine(affine: npt.ArrayLike) -> np.ndarray:
    """Unit B0 direction in voxel axes for a NIfTI affine.

    ``b_vox = normalize(inv(R) @ [0, 0, 1])`` with ``R = affine[:3, :3] / column_norms``
    (scaling removed, reflections and rotations kept). For an axial acquisition with an
    identity-like affine this is ``[0, 0, 1]``; for an oblique slab it is not.

    Examples
    --------
    >>> b0_direction_from_affine(np.diag([2.0, 2.0, 3.0, 1.0])).round(6).tolist()
    [0.0, 0.0, 1.0]
    """
    a = np.asarray(affine, dtype=float)
    rot = a[:3, :3] / voxel_size_from_affine(a)
    if abs(np.linalg.det(rot)) < 1e-6:
        raise ValueError("affine is singular: cannot derive the B0 direction")
    b = np.linalg.solve(rot, np.array([0.0, 0.0, 1.0]))
    return b / np.linalg.norm(b)


#: Voxel axes further than this (degrees) from perpendicular are reported as sheared; float32
#: scanner affines are within ~1e-5 degrees.
MAX_AXIS_SKEW_DEG = 0.5


def sheared_affine_note(skew_deg: float) -> str | None:
    """One sentence on a sheared affine (``skew_deg`` from :func:`axis_skew_degrees`), or None
    when the axes are perpendicular within :data:`MAX_AXIS_SKEW_DEG`."""
    if skew_deg <= MAX_AXIS_SKEW_DEG:
        return None
    return (f"the affine is sheared: voxel axes {skew_deg:.1f} degrees from perpendicular, "
            "which scanners do not write; the B0 direction read from it and the dipole model "
            "(orthogonal axes) are approximate, so check how the file was made")  # fmt: skip


def axis_skew_degrees(affine: npt.ArrayLike) -> float:
    """Largest departure (degrees) of an affine's voxel axes from perpendicular.

    ``max_{i<j} |90 - angle(a_i, a_j)|`` over the columns ``a_i`` of ``affine[:3, :3]``. Scanner
    affines are a rotation times the voxel sizes, so this is 0 up to float32 rounding
    (~1e-5 degrees). A sheared affine has no rotation to take B0 from:
    :func:`b0_direction_from_affine` then returns the direction for the normalised columns
    taken as axes, and an FFT dipole kernel on orthogonal axes is only approximate.

    Examples
    --------
    >>> axis_skew_degrees(np.diag([1.0, 1.0, 2.0, 1.0]))
    0.0
    >>> round(axis_skew_degrees([[1, 0, 0.5], [0, 1, 0], [0, 0, 1]]), 2)
    26.57
    """
    a = np.asarray(affine, dtype=float)[:3, :3]
    unit = a / voxel_size_from_affine(a)
    cosines = np.abs(unit.T @ unit)[np.triu_indices(3, k=1)]
    return float(np.degrees(np.arcsin(np.clip(cosines.max(), 0.0, 1.0))))


def _check_b0_dir(b0_direction: npt.ArrayLike) -> np.ndarray:
    b = np.asarray(b0_direction, dtype=float).reshape(-1)
    if b.size != 3 or not np.all(np.isfinite(b)) or np.linalg.norm(b) == 0:
        raise ValueError(f"b0_direction must be a non-zero 3-vector, got {b0_direction!r}")
    return b / np.linalg.norm(b)


def dipole_kernel(
    shape: Sequence[int],
    *,
    voxel_size_mm: Sequence[float],
    b0_direction: npt.ArrayLike = (0.0, 0.0, 1.0),
    real: bool = True,
    dtype: npt.DTypeLike = np.float32,
) -> np.ndarray:
    """Unit dipole kernel in k-space for an arbitrary B0 direction and anisotropic voxels.

    ``D(k) = 1/3 - (k . b)^2 / |k|^2`` with ``D(0) = 0``, where ``k`` (cycles/mm) is built
    from the physical voxel spacing and ``b`` is the unit B0 direction in voxel axes.
    The field (ppm) of a susceptibility map ``chi`` (ppm) is ``IFFT(D * FFT(chi))``.

    Parameters
    ----------
    shape : the (padded) image grid.
    voxel_size_mm : voxel spacing along each axis, mm.
    b0_direction : B0 unit vector in voxel axes (see :func:`b0_direction_from_affine`).
    real : if True the kernel matches :func:`qsmprep.algorithms.fft.rfftn` output (last
        axis halved), else a full complex FFT grid.

    References
    ----------
    Salomir R, de Senneville BD, Moonen CT. Concepts Magn Reson B 2003;19B:26-34.
    Marques JP, Bowtell R. Concepts Magn Reson B 2005;25B:65-78. doi:10.1002/cmr.b.20034
    """
    b = _check_b0_dir(b0_direction)
    k = kspace_grid(shape, voxel_size_mm, real=real)
    # On an even grid the Nyquist bin stands for both +k_N and -k_N. For an oblique B0 the
    # cross terms k_i k_j b_i b_j differ in sign between the two, which would break the
    # Hermitian symmetry of D (a real image would get a non-physical Nyquist-frequency field).
    # Averaging over both signs drops the cross terms of the Nyquist components.
    nyq = [np.isclose(np.abs(ki), 0.5 / float(h)) & (int(n) % 2 == 0)
           for ki, h, n in zip(k, voxel_size_mm, shape, strict=True)]  # fmt: skip
    # The 1-D and 2-D partial sums are float64; the full grid is touched by a few passes in
    # the output precision (float32 by default: 1e-7 relative, the precision it is stored in).
    work = np.result_type(dtype, np.float32)
    if _nb is not None and work == np.float32:  # the same operations, fused: equal bit for bit
        axes = [ki.ravel() for ki in k]
        ny = [n.ravel() for n in nyq]
        a = [np.where(n, 0.0, ki) * bi for ki, bi, n in zip(axes, b, ny, strict=True)]
        sq = [np.where(n, (ki * bi) ** 2, 0.0).astype(np.float32)
              for ki, bi, n in zip(axes, b, ny, strict=True)]  # fmt: skip
        q = [ki**2 for ki in axes]
        d = np.empty(tuple(ki.size for ki in axes), np.float32)
        _nb.dipole(a[0], a[1], a[2].astype(np.float32), *sq, q[0], q[1],
                   q[2].astype(np.float32), d)  # fmt: skip
        d[0, 0, 0] = 0.0
        return d
    k2 = np.add(k[0] ** 2 + k[1] ** 2, k[2] ** 2, dtype=work)
    kb = [np.where(ny, 0.0, ki) * bi for ki, bi, ny in zip(k, b, nyq, strict=True)]
    d = np.add(kb[0] + kb[1], kb[2], dtype=work)  # k . b
    d *= d
    for ax, (ki, bi, ny) in enumerate(zip(k, b, nyq, strict=True)):  # Nyquist planes only
        for j in np.flatnonzero(ny.ravel()):
            plane = [slice(None)] * 3
            plane[ax] = slice(int(j), int(j) + 1)
            d[tuple(plane)] += float(ki.ravel()[j] * bi) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(d, k2, out=d)
    np.subtract(1.0 / 3.0, d, out=d)
    d[0, 0, 0] = 0.0
    return d.astype(dtype, copy=False)


def forward_field(
    chi: np.ndarray,
    *,
    voxel_size_mm: Sequence[float],
    b0_direction: npt.ArrayLike = (0.0, 0.0, 1.0),
    pad_factor: float = 1.5,
) -> np.ndarray:
    """Field perturbation (same unit as ``chi``, ppm of B0) of a susceptibility map.

    ``field = IFFT(D * FFT(chi_padded))`` cropped back to the input grid. Zero padding by
    ``pad_factor`` (5-smooth) suppresses wrap-around from periodic convolution.
    """
    chi = np.asarray(chi)
    if chi.ndim != 3:
        raise ValueError(f"chi must be 3-D, got shape {chi.shape}")
    big = fast_shape(chi.shape, pad_factor=pad_factor)
    d = dipole_kernel(big, voxel_size_mm=voxel_size_mm, b0_direction=b0_direction)
    field = irfftn(rfftn(pad_to(chi.astype(np.float32), big)) * d, big)
    return crop_to(field, chi.shape).astype(np.float32)


def sphere_mask(
    shape: Sequence[int], *, voxel_size_mm: Sequence[float], radius_mm: float
) -> np.ndarray:
    """Boolean ball of ``radius_mm`` centred on voxel (0, 0, 0) of a periodic grid."""
    coords = []
    for i, (n, d) in enumerate(zip(shape, voxel_size_mm, strict=True)):
        c = np.fft.fftfreq(int(n), d=1.0 / int(n)) * float(d)  # signed index * spacing
        view = [1, 1, 1]
        view[i] = int(n)
        coords.append(c.reshape(view))
    r2 = coords[0] ** 2 + coords[1] ** 2 + coords[2] ** 2
    return r2 <= float(radius_mm) ** 2 * (1.0 + 1e-4)  # tolerant to float32 voxel sizes


def smv_kernel(
    shape: Sequence[int], *, voxel_size_mm: Sequence[float], radius_mm: float
) -> np.ndarray:
    """k-space (rfft) of the normalised spherical-mean-value kernel of radius ``radius_mm``.

    ``S(k) = FFT(ball / |ball|)``; ``1 - S`` is the SHARP high-pass that annihilates
    harmonic (background) fields inside the eroded mask (Schweser et al., NeuroImage 2011,
    doi:10.1016/j.neuroimage.2010.10.070).

    The ball (:func:`sphere_mask`) is even in each axis separately, so its DFT is real and
    is the product of the three axes' cosine transforms, ``S(k) = sum_x ball(x) prod_i
    cos(2 pi k_i x_i / N_i) / |ball|``. They are applied in turn to the ball's small
    support (float64): a few matrix products instead of a full-grid float64 FFT, the same
    kernel to rounding.
    """
    signed, coords = [], []
    for i, (n, d) in enumerate(zip(shape, voxel_size_mm, strict=True)):
        j = np.fft.fftfreq(int(n), d=1.0 / int(n))  # signed indices, as in sphere_mask
        j = j[np.abs(j * float(d)) <= float(radius_mm) * np.sqrt(1.0 + 1e-4)]
        signed.append(j)
        view = [1, 1, 1]
        view[i] = j.size
        coords.append((j * float(d)).reshape(view))
    # sphere_mask's test, on the ball's support only
    r2 = coords[0] ** 2 + coords[1] ** 2 + coords[2] ** 2
    ball = (r2 <= float(radius_mm) ** 2 * (1.0 + 1e-4)).astype(np.float64)
    ball /= ball.sum()
    cos = []
    for i, (n, j) in enumerate(zip(shape, signed, strict=True)):
        k = np.arange(int(n) // 2 + 1 if i == 2 else int(n))
        cos.append(np.cos(2.0 * np.pi * np.outer(k, j) / int(n)))  # (k, support)
    t = ball @ cos[2].T  # (s0, s1, K2)
    t = np.einsum("bj,ijc->ibc", cos[1], t)  # (s0, N1, K2)
    out = cos[0] @ t.reshape(t.shape[0], -1)  # (N0, N1 * K2)
    return out.reshape(int(shape[0]), int(shape[1]), -1).astype(np.float32)


def laplacian_kernel(shape: Sequence[int], *, voxel_size_mm: Sequence[float]) -> np.ndarray:
    """k-space (rfft) of the 7-point discrete Laplacian (1/mm^2).

    ``L(k) = sum_i 2 (cos(2 pi k_i h_i) - 1) / h_i^2``; ``L(0) = 0``.
    """
    k = kspace_grid(shape, voxel_size_mm, real=True)
    terms = [2.0 * (np.cos(2 * np.pi * ki * float(h)) - 1.0) / float(h) ** 2
             for ki, h in zip(k, voxel_size_mm, strict=True)]  # fmt: skip
    return np.add(terms[0] + terms[1], terms[2], dtype=np.float32)  # one full-grid pass
