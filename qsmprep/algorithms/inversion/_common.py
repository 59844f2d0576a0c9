"""Shared plumbing for dipole inversion: validation, crop/pad, FFTs, gradient operators.

Every inversion works on the bounding box of the mask (plus a margin), zero-padded to a
5-smooth size, with real-to-complex FFTs in float32. :func:`setup` does that once and returns
an :class:`InversionProblem` that also puts the solution back on the input grid.

All FFTs of the inversion package go through :func:`fft` and :func:`ifft` (looked up at
call time), so a benchmark can count them by wrapping these two module attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qsmprep.algorithms import fft as _fft
from qsmprep.algorithms.kernels import _check_b0_dir, dipole_kernel, laplacian_kernel

try:  # numba fuses the TV split steps (about 5x faster than numpy); optional
    from qsmprep.algorithms.inversion import _tv_numba as _nb
except ImportError:  # pragma: no cover - numba missing
    _nb = None

#: Default zero padding of the cropped box (each axis times this, then 5-smooth).
PAD_FACTOR = 1.5
#: Default margin (voxels) kept around the mask's bounding box before padding.
MARGIN_VOX = 4
#: Default TV weight per jump between neighbouring voxels (ppm) of ``tv``, ``nltv`` and
#: ``single_step_tv``: ``lambda = VOXEL_REGULARIZATION * h`` (:func:`per_jump_regularization`).
VOXEL_REGULARIZATION = 2e-4


def fft(image: np.ndarray, *, workers: int | None = -1) -> np.ndarray:
    """Forward real FFT (counted: see the module docstring)."""
    return _fft.rfftn(image, workers=workers)


def ifft(spectrum: np.ndarray, shape: Sequence[int], *, workers: int | None = -1) -> np.ndarray:
    """Inverse real FFT to float32 (counted: see the module docstring)."""
    return _fft.irfftn(spectrum, shape, workers=workers).astype(np.float32, copy=False)


def per_jump_regularization(
    voxel_size_mm: Sequence[float], weight: float = VOXEL_REGULARIZATION
) -> float:
    """TV weight ``lambda = weight * h`` (ppm*mm), ``h`` the geometric-mean voxel size (mm).

    The TV term ``lambda ||grad x||_1`` divides each jump between neighbouring voxels by
    ``h``, so a fixed ``lambda`` in ppm*mm weighs a jump 3x more at 1 mm than at 3 mm, for
    the same noise per voxel. With ``lambda`` proportional to ``h``, each jump carries the same
    weight (``weight``, in ppm) at any resolution. Measured for ``tv`` and ``single_step_tv``
    in ``docs/benchmarks.md``: the best fixed ppm*mm value was 1-2e-4 at 1 mm and 4-8e-4 at
    2-3 mm.

    >>> [round(per_jump_regularization(v), 8) for v in ((1.0, 1.0, 1.0), (3.0, 3.0, 3.0))]
    [0.0002, 0.0006]
    """
    h = float(np.prod(np.asarray(voxel_size_mm, float))) ** (1 / 3)
    return float(weight) * h


def default_admm_penalty(lam: float) -> float:
    """ADMM penalty of a TV (or L1) split when none is given: ``100 lambda`` (FANSI's choice,
    Milovic et al., MRM 2018, doi:10.1002/mrm.27073)."""
    return 100.0 * float(lam)


def check_number(
    name: str, value: float, *, low: float = 0.0, high: float = np.inf, low_open: bool = True
) -> float:
    """Return ``float(value)`` or raise ``ValueError`` if it is outside ``(low, high]``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = np.isfinite(v) and (v > low if low_open else v >= low) and v <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")
    return v


def check_count(name: str, value: int, *, low: int = 1) -> int:
    """Return ``int(value)`` or raise ``ValueError`` if it is not an integer ``>= low``."""
    if int(value) != value or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class InversionProblem:
    """A local field cropped to the mask's box and zero-padded for periodic FFTs.

    Attributes
    ----------
    field_ppm : padded field (float32), zero outside the mask.
    mask : padded boolean mask.
    kernel : rfft-layout dipole kernel ``D`` on the padded grid (float32).
    voxel_size_mm, b0_direction : the geometry (B0 as a unit vector in voxel axes).
    """

    field_ppm: np.ndarray
    mask: np.ndarray
    kernel: np.ndarray
    voxel_size_mm: tuple[float, float, float]
    b0_direction: np.ndarray
    full_shape: tuple[int, ...]
    box: tuple[slice, ...]
    workers: int | None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mask.shape

    def fft(self, image: np.ndarray) -> np.ndarray:
        return fft(image, workers=self.workers)

    def ifft(self, spectrum: np.ndarray) -> np.ndarray:
        return ifft(spectrum, self.shape, workers=self.workers)

    def grad_sq(self) -> np.ndarray:
        """``|G(k)|^2`` (1/mm^2) of the forward-difference gradient, i.e. ``-L(k)``."""
        return -laplacian_kernel(self.shape, voxel_size_mm=self.voxel_size_mm)

    def grad_sq_axes(self) -> list[np.ndarray]:
        """:meth:`grad_sq`'s three separable terms as 1-D float32 arrays (rfft layout):
        ``|G(k)|^2 = g0[i] + g1[j] + g2[k]``, ``g_a = 2 (1 - cos(2 pi k_a h_a)) / h_a^2``."""
        k = _fft.kspace_grid(self.shape, self.voxel_size_mm, real=True)
        return [(2.0 * (1.0 - np.cos(2 * np.pi * ka.ravel() * h)) / h**2).astype(np.float32)
                for ka, h in zip(k, self.voxel_size_mm, strict=True)]  # fmt: skip

    def to_image(self, chi_padded: np.ndarray) -> np.ndarray:
        """Crop the padded solution, put it back on the input grid, zero outside the mask."""
        box_shape = tuple(s.stop - s.start for s in self.box)
        out = np.zeros(self.full_shape, dtype=np.float32)
        np.multiply(_fft.crop_to(chi_padded, box_shape), _fft.crop_to(self.mask, box_shape),
                    out=out[self.box])  # fmt: skip
        return out


def setup(
    local_field_ppm: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    voxel_size_mm: Sequence[float],
    b0_direction: npt.ArrayLike,
    pad_factor: float = PAD_FACTOR,
    margin_vox: int = MARGIN_VOX,
    workers: int | None = -1,
) -> InversionProblem:
    """Validate inputs, crop to the mask's bounding box (+margin), pad, build ``D``.

    Raises ``ValueError`` (expected vs got) for a non-3-D field, a shape mismatch, an
    empty mask, bad voxel sizes or B0 direction, or non-finite field values in the mask.
    """
    f = np.asarray(local_field_ppm)
    m = np.asarray(mask)
    if f.ndim != 3:
        raise ValueError(f"local_field_ppm must be 3-D, got shape {f.shape}")
    if m.shape != f.shape:
        raise ValueError(f"mask shape {m.shape} must equal local_field_ppm shape {f.shape}")
    m = m.astype(bool, copy=False)
    if not m.any():
        raise ValueError("mask is empty: no voxel to invert")
    vox = np.asarray(voxel_size_mm, dtype=float).reshape(-1)
    if vox.size != 3 or not np.all(np.isfinite(vox)) or np.any(vox <= 0):
        raise ValueError(
            f"voxel_size_mm must be three positive numbers (mm), got {voxel_size_mm!r}"
        )
    b = _check_b0_dir(b0_direction)
    check_number("pad_factor", pad_factor, low=1.0, low_open=False)
    margin = check_count("margin_vox", margin_vox, low=0)

    # bounding box from the per-axis projections (cheaper than listing every voxel)
    first, last = [], []
    for ax in range(3):
        hit = np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != ax)))
        first.append(hit[0])
        last.append(hit[-1])
    lo = np.maximum(np.array(first) - margin, 0)
    hi = np.minimum(np.array(last) + 1 + margin, f.shape)
    box = tuple(slice(int(a), int(c)) for a, c in zip(lo, hi, strict=True))
    box_shape = tuple(int(c - a) for a, c in zip(lo, hi, strict=True))
    big = _fft.fast_shape(box_shape, pad_factor=pad_factor)
    m_box = m[box]
    # the masked field straight into the padded grid, in float32 (one pass)
    field = np.zeros(big, np.float32)
    np.copyto(field[tuple(slice(0, n) for n in box_shape)], f[box], where=m_box,
              casting="unsafe")  # fmt: skip
    with np.errstate(over="ignore"):  # the sum is one fast pass; an overflow is re-checked
        finite = np.isfinite(field.sum()) or np.all(np.isfinite(field))
    if not finite:
        raise ValueError("local_field_ppm has non-finite values inside the mask")
    d = dipole_kernel(big, voxel_size_mm=tuple(vox), b0_direction=b)
    return InversionProblem(
        field_ppm=field,
        mask=_fft.pad_to(m_box, big),
        kernel=d,
        voxel_size_mm=tuple(float(v) for v in vox),
        b0_direction=b,
        full_shape=f.shape,
        box=box,
        workers=workers,
    )


def split_update(
    x, u, w, threshold, voxel_size_mm, *, residual: bool = False, u_scale: float = 1.0
) -> float:
    """ADMM split step for anisotropic TV, in place: ``z = shrink(grad x + u, t)``,
    ``u <- grad x + u - z``, and ``w <- z - u``, all the x-step needs of ``z``
    (:func:`split_adjoint`); ``z`` itself is never stored.

    ``u`` and ``w`` are lists of three float32 arrays shaped like ``x``. The dual actually
    used is ``u_scale * u`` (a rescaling after a penalty change, applied here instead of in
    a pass of its own; the stored ``u`` is the true dual again afterwards). Returns the primal
    residual ``sum_voxels |grad x - z|_2`` when ``residual``, else 0. Uses a fused numba kernel
    when numba is installed, numpy otherwise (same result).
    """
    if _nb is not None:
        ih = [np.float32(1.0 / h) for h in voxel_size_mm]
        t, cu = np.float32(threshold), np.float32(u_scale)
        total = float(_nb.split_update(x, *u, *w, t, cu, *ih))
        return total if residual else 0.0
    res = np.zeros(x.shape, np.float32) if residual else None
    for gi, ui, wi in zip(grad(x, voxel_size_mm), u, w, strict=True):
        p = gi + ui if u_scale == 1.0 else gi + np.float32(u_scale) * ui
        zi = shrink(p, threshold)
        ui[...] = p - zi
        wi[...] = zi - ui
        if residual:
            res += (gi - zi) ** 2
    return float(np.sqrt(res).sum(dtype=np.float64)) if residual else 0.0


def split_adjoint(w, voxel_size_mm, *, plus=None) -> np.ndarray:
    """``grad^T w`` (``w = z - u`` from :func:`split_update`): the image-space part of the
    ADMM x-step right-hand side. ``plus=(u, c)`` gives ``grad^T (w + c u)`` in the same pass.

    With scaled duals, a penalty change ``rho <- gamma rho`` makes the dual ``u / gamma`` and
    ``w = z - u / gamma = w + (1 - 1 / gamma) u``: ``plus=(u, 1 - 1 / gamma)`` here and
    ``u_scale = 1 / gamma`` in the next :func:`split_update` apply it without rewriting
    ``u`` and ``w``."""
    ih = [np.float32(1.0 / h) for h in voxel_size_mm]
    if plus is None:
        if _nb is not None:
            return _nb.grad_adjoint(*w, *ih)
        return grad_adjoint(w, voxel_size_mm)
    u, c = plus
    if _nb is not None:
        return _nb.grad_adjoint(*w, *ih, *u, np.float32(c))
    return grad_adjoint([wi + np.float32(c) * ui for wi, ui in zip(w, u, strict=True)],
                        voxel_size_mm)  # fmt: skip


def split_adjoint_update(x, u, spare, threshold, voxel_size_mm) -> np.ndarray:
    """:func:`split_update` then :func:`split_adjoint` in one pass: writes the new ``u`` into
    ``spare`` (three arrays; the caller swaps ``u`` and ``spare``), leaves ``u`` unchanged,
    and returns ``grad^T (z - u_new)``. With numba, ``w`` is never stored: each voxel
    recomputes ``z - u_new`` at its lower neighbours, so the pass reads 4 arrays and writes 4
    instead of the 14 array passes of the two steps."""
    if _nb is not None:
        ih = [np.float32(1.0 / h) for h in voxel_size_mm]
        out = np.empty_like(x)
        _nb.split_adjoint_update(x, *u, *spare, np.float32(threshold), *ih, out)
        return out
    for s, ui in zip(spare, u, strict=True):
        s[...] = ui
    w = [np.empty_like(x) for _ in range(3)]
    split_update(x, spare, w, threshold, voxel_size_mm)
    return grad_adjoint(w, voxel_size_mm)


def scale_add(spectrum: np.ndarray, weight: np.ndarray, offset: np.ndarray | None = None) -> None:
    """``spectrum = spectrum * weight (+ offset)`` in place (one pass with numba, for a 3-D
    spectrum and a real weight of its shape; numpy otherwise)."""
    if (_nb is not None and spectrum.ndim == 3 and weight.shape == spectrum.shape
            and weight.dtype == np.float32 and spectrum.dtype == np.complex64):  # fmt: skip
        _nb.scale_add(spectrum, weight, offset)
        return
    spectrum *= weight
    if offset is not None:
        spectrum += offset


def spectra_step(fa: np.ndarray, fr: np.ndarray, wa, wr, cd) -> None:
    """x-step in k-space, in place: ``X = wa fa + wr fr`` into ``fa``, ``cd X`` into ``fr``
    (one pass with numba)."""
    if _nb is not None:
        _nb.spectra_step(fa, fr, wa, wr, cd)
        return
    fa *= wa
    fa += wr * fr
    np.multiply(cd, fa, out=fr)


def relative_change(new: np.ndarray, old: np.ndarray) -> float:
    """``||new - old|| / ||new||`` (one fused pass with numba)."""
    if _nb is not None:
        return float(_nb.relative_change(new, old))
    return float(np.linalg.norm(new - old) / max(float(np.linalg.norm(new)), 1e-30))


def grad(x: np.ndarray, voxel_size_mm: Sequence[float]) -> list[np.ndarray]:
    """Forward differences with periodic boundary (1/mm): ``(x[i+1] - x[i]) / h``."""
    return [(np.roll(x, -1, axis=i) - x) / np.float32(h) for i, h in enumerate(voxel_size_mm)]


def grad_adjoint(g: Sequence[np.ndarray], voxel_size_mm: Sequence[float]) -> np.ndarray:
    """Adjoint of :func:`grad` (minus the backward-difference divergence)."""
    out = np.zeros_like(g[0])
    for i, (gi, h) in enumerate(zip(g, voxel_size_mm, strict=True)):
        out += (np.roll(gi, 1, axis=i) - gi) / np.float32(h)
    return out


def shrink(x: np.ndarray, threshold: float) -> np.ndarray:
    """Soft thresholding ``sign(x) max(|x| - t, 0)`` (the proximal map of ``t |x|``)."""
    return np.sign(x) * np.maximum(np.abs(x) - np.float32(threshold), 0)
