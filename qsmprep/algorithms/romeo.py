"""Exact (quality-guided and path-following) phase unwrapping.

Region growing in the manner of ROMEO (Dymerska et al. 2021): every edge between two
6-neighbours gets a reliability weight in ``[0, 1]`` from the phase and magnitude, the
weights are quantised into bins, and the unwrapped region grows from a reliable seed,
always across the most reliable edge on its border (a bucket queue: one stack per bin).
Each new voxel is unwrapped relative to the voxel it was reached from,
``phi_j <- phi_i + W(phi_j - phi_i)``, so the result is the wrapped input plus whole turns
and is exact wherever the path of most reliable edges avoids steps above pi. Multi-echo
data are unwrapped in ROMEO's "template" mode: one echo in space, the others along time.
:func:`unwrap_path` wraps the reliability-sorted path following of scikit-image
(Herraez et al. 2002, in 3-D Abdul-Rahman et al. 2007) for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qsmprep.algorithms.combine import check_echo_times
from qsmprep.algorithms.unwrap import _check_mask, _check_voxel_size, _wrap

try:  # the growing loop visits voxels one by one: numba makes it ~100x faster
    from numba import njit

    from qsmprep.algorithms._numba_cache import ensure_writable_cache

    ensure_writable_cache(__file__)  # before the cached kernel is defined
except ImportError:  # pragma: no cover - numba missing: same code, pure Python (slow)

    def njit(*args, **kwargs):
        return args[0] if args and callable(args[0]) else (lambda f: f)


#: Number of weight bins of the priority queue (0 marks an edge that is never crossed).
N_BINS = 256
_TWO_PI = 2.0 * np.pi


def _check_like(name: str, array: npt.ArrayLike | None, shape: tuple[int, ...]):
    if array is None:
        return None
    a = np.asarray(array, dtype=np.float32)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return a


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel of ``mask``."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def _axis_slices(axis: int):
    lo = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
    hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
    return lo, hi


def edge_weights(
    phase_rad: np.ndarray,
    *,
    magnitude: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    phase2_rad: np.ndarray | None = None,
    te_ratio: float | None = None,
) -> np.ndarray:
    """ROMEO reliability of the edges ``x -> x + e_a``, shape ``(3, X, Y, Z)``, float32.

    ``w = prod_k (0.1 + 0.9 c_k)`` over the available coherences ``c_k`` (see
    :func:`unwrap_romeo`, Notes); 0 for edges leaving the mask or the grid.
    """
    shape = phase_rad.shape
    m = np.ones(shape, bool) if mask is None else mask
    weights = np.zeros((3, *shape), np.float32)
    max_mag = None
    if magnitude is not None:
        inside = magnitude[m]
        max_mag = float(np.percentile(inside, 95)) if inside.size else 0.0
    for axis in range(3):
        lo, hi = _axis_slices(axis)
        d1 = _wrap(phase_rad[hi] - phase_rad[lo])
        w = np.float32(0.1) + np.float32(0.9 / np.pi) * (np.float32(np.pi) - np.abs(d1))
        if phase2_rad is not None:
            d2 = _wrap(phase2_rad[hi] - phase2_rad[lo])
            c = np.maximum(0.0, 1.0 - np.abs(d1 - d2 / np.float32(te_ratio)))
            w *= np.float32(0.1) + np.float32(0.9) * c
        del d1
        if magnitude is not None:
            small = np.minimum(magnitude[lo], magnitude[hi])
            big = np.maximum(magnitude[lo], magnitude[hi])
            ratio = np.divide(small, big, out=np.zeros_like(small), where=big > 0)
            w *= np.float32(0.1) + np.float32(0.9) * ratio**2
            if max_mag and max_mag > 0:
                mw = 0.5 + 0.5 * np.minimum(1.0, small / np.float32(0.5 * max_mag))
                w *= np.float32(0.1) + np.float32(0.9) * mw
        w[~(m[lo] & m[hi])] = 0.0
        weights[axis][lo] = w
    return weights


def _quantise(weights: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bins ``1 + round((1 - w) (n_bins - 2))`` (1 = most reliable), 0 for ``w = 0``."""
    bins = (1.0 + np.rint((1.0 - weights) * np.float32(n_bins - 2))).astype(np.uint8)
    bins[weights <= 0] = 0
    return bins


@njit(cache=True)
def _grow(phase, bins, strides, seeds, n_bins):  # pragma: no cover - jit (tested via py_func)
    """Unwrap ``phase`` (flat, in place) by region growing; returns region labels (1, 2, ...).

    ``bins`` (flat ``3 N``) holds the bin of edge ``v -> v + strides[a]`` at ``a N + v``
    (0: never crossed; edges off the grid must be 0). ``seeds`` lists voxels in order of
    preference; each seed not yet reached starts a new region.
    """
    n = phase.size
    capacity = np.zeros(n_bins + 1, np.int64)
    for k in range(bins.size):
        if bins[k] > 0:
            capacity[np.int64(bins[k]) + 1] += 1  # int64: uint8 255 + 1 wraps in Python
    start = np.cumsum(capacity)  # stack of bin b occupies start[b]:start[b + 1]
    top = start[:n_bins].copy()
    store = np.empty(max(start[n_bins], 1), np.int64)  # each edge is pushed at most once
    labels = np.zeros(n, np.int32)
    two_pi = 2.0 * np.pi
    region = 0
    for seed in seeds:
        if labels[seed] != 0:
            continue
        region += 1
        labels[seed] = region
        current = n_bins
        v = seed
        while True:
            for d in range(6):  # push the edges from v to its unreached neighbours
                if d < 3:
                    b = np.int64(bins[d * n + v])
                    u = v + strides[d]
                else:
                    u = v - strides[d - 3]
                    if u < 0:
                        continue
                    b = np.int64(bins[(d - 3) * n + u])
                if b == 0 or labels[u] != 0:
                    continue
                store[top[b]] = v * 6 + d
                top[b] += 1
                if b < current:
                    current = b
            v = -1
            while current < n_bins:  # pop the most reliable edge to an unreached voxel
                if top[current] == start[current]:
                    current += 1
                    continue
                top[current] -= 1
                code = store[top[current]]
                src, d = code // 6, code % 6
                dst = src + strides[d] if d < 3 else src - strides[d - 3]
                if labels[dst] == 0:
                    phase[dst] -= two_pi * np.rint((phase[dst] - phase[src]) / two_pi)
                    labels[dst] = region
                    v = dst
                    break
            if v < 0:
                break
    return labels


def _seed_order(bins: np.ndarray, mask: np.ndarray, n_bins: int) -> np.ndarray:
    """Mask voxels sorted by the summed bins of their 6 edges (missing edge = worst)."""
    cost = np.zeros(mask.shape, np.int32)
    for axis in range(3):
        b = np.where(bins[axis] > 0, bins[axis].astype(np.int32), n_bins)
        lo, hi = _axis_slices(axis)
        cost += b  # edge to x + e_a (the last slice has none: n_bins)
        cost[hi] += b[lo]
        cost[tuple(slice(0, 1) if a == axis else slice(None) for a in range(3))] += n_bins
    flat = np.flatnonzero(mask)
    return flat[np.argsort(cost.reshape(-1)[flat], kind="stable")].astype(np.int64)


def _grow_regions(phase: np.ndarray, bins: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Run :func:`_grow` and shift each region by the whole turns nearest its mean."""
    out = np.ascontiguousarray(phase, dtype=np.float64).reshape(-1).copy()
    strides = np.array([phase.shape[1] * phase.shape[2], phase.shape[2], 1], np.int64)
    seeds = _seed_order(bins, mask, N_BINS)
    labels = _grow(out, np.ascontiguousarray(bins).reshape(-1), strides, seeds, N_BINS)
    sums = np.bincount(labels, weights=out)
    counts = np.bincount(labels)
    turns = np.rint(sums / np.maximum(counts, 1) / _TWO_PI)
    turns[0] = 0.0
    out -= _TWO_PI * turns[labels]
    out[labels == 0] = 0.0
    return out.reshape(phase.shape).astype(np.float32)


def unwrap_romeo(
    phase_rad: npt.ArrayLike,
    *,
    magnitude: npt.ArrayLike | None = None,
    mask: npt.ArrayLike | None = None,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    phase2_rad: npt.ArrayLike | None = None,
    te_ratio: float | None = None,
) -> np.ndarray:
    """Unwrap a 3-D phase image by quality-guided region growing (ROMEO).

    Parameters
    ----------
    phase_rad : (X, Y, Z) array
        Wrapped phase (rad).
    magnitude : (X, Y, Z) array, optional
        Magnitude of the same echo; adds the magnitude coherence and weight.
    mask : (X, Y, Z) bool array, optional
        Voxels to unwrap (default: all). Each 6-connected component is grown from its own
        seed; its whole-turn offset is chosen so that its mean lies in ``[-pi, pi]``.
    voxel_size_mm : three floats
        Voxel spacing (mm); validated only (the weights are per edge, not per mm).
    phase2_rad : (X, Y, Z) array, optional
        Wrapped phase of a second echo at ``te_ratio`` times the echo time of ``phase_rad``;
        adds the phase-gradient coherence. Requires ``te_ratio``.
    te_ratio : float, optional
        ``TE(phase2) / TE(phase)``, > 0.

    Returns
    -------
    (X, Y, Z) float32 array
        Unwrapped phase (rad): the wrapped input plus whole turns, 0 outside the mask.

    Notes
    -----
    For an edge between neighbours ``i, j`` with ``W`` the wrap to ``[-pi, pi)``,
    ``d = W(phi_j - phi_i)``, magnitudes ``s = min(m_i, m_j)``, ``b = max(m_i, m_j)`` and
    ``m_95`` the 95th percentile of the magnitude in the mask, ROMEO's coherences are:
    phase coherence ``1 - |d| / pi``; phase-gradient coherence
    ``max(0, 1 - |d - W(phi2_j - phi2_i) / r|)`` (``r = te_ratio``: the gradients of two
    echoes scale with echo time); magnitude coherence ``(s / b)^2``; magnitude weight
    ``0.5 + 0.5 min(1, s / (0.5 m_95))``. The weight is ``w = prod (0.1 + 0.9 c)`` over the
    available ones, quantised as ``1 + round((1 - w) 254)`` into 255 bins. Growing starts
    at the voxel whose six edges have the smallest summed bins and always crosses the
    most reliable edge to an unreached voxel ``j`` from a reached ``i``:
    ``phi_j <- phi_j - 2 pi round((phi_j - phi_i) / 2 pi)``. About 1 s for a brain mask in
    200 x 230 x 180 on 2 cores. Weights as in ROMEO.jl (``:romeo`` set, without the
    second magnitude weight and phase linearity terms).

    References
    ----------
    Dymerska B, Eckstein K, Bachrata B, et al. Phase unwrapping with a rapid opensource
    minimum spanning tree algorithm (ROMEO). Magn Reson Med 2021;85:2294-2308.
    doi:10.1002/mrm.28563
    """
    _check_voxel_size(voxel_size_mm)
    phase = np.asarray(phase_rad, dtype=np.float32)
    if phase.ndim != 3:
        raise ValueError(f"phase_rad must be 3-D (X, Y, Z), got shape {phase.shape}")
    m = _check_mask(mask, phase.shape)
    mag = _check_like("magnitude", magnitude, phase.shape)
    phase2 = _check_like("phase2_rad", phase2_rad, phase.shape)
    if phase2 is not None and (te_ratio is None or not float(te_ratio) > 0):
        raise ValueError(f"phase2_rad needs te_ratio = TE2 / TE1 > 0, got {te_ratio!r}")
    for name, a in (("phase_rad", phase), ("magnitude", mag), ("phase2_rad", phase2)):
        if a is not None and not np.all(np.isfinite(a[m])):
            raise ValueError(f"{name} has non-finite values inside the mask")
    box = _bounding_box(m)
    m_box = m[box]
    wrapped = np.where(m_box, _wrap(phase[box]), np.float32(0))
    weights = edge_weights(
        wrapped,
        magnitude=None if mag is None else mag[box],
        mask=m_box,
        phase2_rad=None if phase2 is None else _wrap(phase2[box]),
        te_ratio=None if te_ratio is None else float(te_ratio),
    )
    bins = _quantise(weights)
    del weights
    out = np.zeros(phase.shape, np.float32)
    out[box] = _grow_regions(wrapped, bins, m_box)
    return out


def _phase_offset(phase, mag, tes, mask, voxel_size_mm, sigma_mm):
    """Smooth MCPC-3D-S phase offset ``phi0`` (rad, spatially unwrapped) from echoes 1, 2.

    ``phi0 = phi_1 - TE_1 / (TE_2 - TE_1) U(W(phi_2 - phi_1))``: when ``TE_1`` is a whole
    multiple ``k`` of the spacing, ``U`` (spatial unwrapping) is not needed since
    ``k 2 pi`` turns vanish in the wrap; otherwise the difference is unwrapped with ROMEO.
    """
    ratio = tes[0] / (tes[1] - tes[0])
    hip = _wrap(phase[..., 1] - phase[..., 0])
    if abs(ratio - round(ratio)) > 1e-3:
        hip = unwrap_romeo(hip, magnitude=None if mag is None else mag[..., 0], mask=mask)
    phi0 = phase[..., 0] - np.float32(ratio) * hip
    weight = np.ones(mask.shape, np.float32) if mag is None else mag[..., 0] * mag[..., 1]
    weight = weight * mask
    sigma = [sigma_mm / h for h in voxel_size_mm]
    re = ndimage.gaussian_filter(weight * np.cos(phi0), sigma, truncate=3.0)
    im = ndimage.gaussian_filter(weight * np.sin(phi0), sigma, truncate=3.0)
    z = re + 1j * im
    smooth = np.angle(z).astype(np.float32)
    return unwrap_romeo(smooth, mask=mask)


def unwrap_romeo_multiecho(
    phase_rad_4d: npt.ArrayLike,
    *,
    echo_times_s: Sequence[float],
    magnitude: npt.ArrayLike | None = None,
    mask: npt.ArrayLike | None = None,
    voxel_size_mm: Sequence[float],
    template_echo: int = 0,
    remove_offset: bool = True,
    offset_sigma_mm: float = 7.0,
) -> np.ndarray:
    """Unwrap multi-echo phase: one echo in space (ROMEO), the others along echo time.

    Parameters
    ----------
    phase_rad_4d : (X, Y, Z, E) array
        Wrapped phase (rad), echoes last, ``E >= 1``.
    echo_times_s : sequence of E floats
        Echo times (s), strictly increasing.
    magnitude : (X, Y, Z, E) array, optional
        Magnitudes (weights of the template's unwrapping and of the offset estimate).
    mask : (X, Y, Z) bool array, optional
        Voxels to unwrap (default: all).
    voxel_size_mm : three floats
        Voxel spacing (mm), for the smoothing of the phase offset.
    template_echo : int
        0-based index of the echo unwrapped in space (default the first, the least wrapped).
    remove_offset : bool
        Remove the echo-independent phase offset before the temporal step (needs >= 2
        echoes); without it, the temporal step assumes ``phi0 ~ 0``.
    offset_sigma_mm : float
        Gaussian smoothing (mm) of the offset estimate.

    Returns
    -------
    (X, Y, Z, E) float32 array
        Unwrapped phases (rad), each the wrapped input plus whole turns, 0 outside the mask.

    Notes
    -----
    ROMEO's template mode (Dymerska et al. 2021, doi:10.1002/mrm.28563). The offset is the
    MCPC-3D-S estimate ``phi0 = phi_1 - TE_1 / (TE_2 - TE_1) (phi_2 - phi_1)``
    (Eckstein et al. MRM 2018, doi:10.1002/mrm.26644), smoothed as a weighted complex mean
    and spatially unwrapped. With ``psi_n = W(phi_n - phi0)`` the template ``t`` is unwrapped
    in space (phase-gradient coherence with the neighbouring echo) to ``U_t`` and every
    echo follows it in time:
    ``U_n = psi_n + 2 pi round((U_t TE_n / TE_t - psi_n) / 2 pi) + phi0``.
    This is exact where the template is and ``|omega TE_n + noise - U_t TE_n / TE_t| < pi``,
    so where the later echoes wrap too steeply for any spatial unwrapper the template
    still carries them. A global whole turn ``k`` of the template scales to
    ``k TE_n / TE_t`` turns: harmless when ``TE_n / TE_t`` are integers (``TE_n = n TE_1``).
    """
    phase = np.asarray(phase_rad_4d, dtype=np.float32)
    if phase.ndim != 4:
        raise ValueError(f"phase_rad_4d must be 4-D (X, Y, Z, E), got shape {phase.shape}")
    tes = check_echo_times(echo_times_s, phase.shape[-1])
    vox = _check_voxel_size(voxel_size_mm)
    m = _check_mask(mask, phase.shape[:3])
    mag = _check_like("magnitude", magnitude, phase.shape)
    n_echoes = phase.shape[-1]
    if not 0 <= int(template_echo) < n_echoes:
        raise ValueError(f"template_echo must be in [0, {n_echoes}), got {template_echo!r}")
    if not np.all(np.isfinite(phase[m])):
        raise ValueError("phase_rad_4d has non-finite values inside the mask")
    t = int(template_echo)
    box = _bounding_box(m)
    full_shape, m = phase.shape, m[box]
    phase = phase[box]
    mag = None if mag is None else mag[box]
    if remove_offset and n_echoes >= 2:
        phi0 = _phase_offset(phase, mag, tes, m, vox, float(offset_sigma_mm))
    else:
        phi0 = np.zeros(m.shape, np.float32)
    psi = _wrap(phase - phi0[..., None])
    partner = t + 1 if t + 1 < n_echoes else t - 1
    template = unwrap_romeo(
        psi[..., t],
        magnitude=None if mag is None else mag[..., t],
        mask=m,
        phase2_rad=psi[..., partner] if n_echoes > 1 else None,
        te_ratio=tes[partner] / tes[t] if n_echoes > 1 else None,
    )
    out = np.zeros(full_shape, np.float32)
    for n in range(n_echoes):
        ref = template * np.float32(tes[n] / tes[t])
        un = psi[..., n] + np.float32(_TWO_PI) * np.rint((ref - psi[..., n]) / _TWO_PI)
        out[box + (n,)] = np.where(m, un + phi0, 0.0)
    return out


def unwrap_path(phase_rad: npt.ArrayLike, *, mask: npt.ArrayLike | None = None) -> np.ndarray:
    """Unwrap a 2-D or 3-D phase by reliability-sorted path following (scikit-image).

    Parameters
    ----------
    phase_rad : (X, Y[, Z]) array
        Wrapped phase (rad).
    mask : bool array like ``phase_rad``, optional
        Voxels to unwrap (default: all); the others are excluded from the paths.

    Returns
    -------
    float32 array
        Unwrapped phase (rad), 0 outside the mask; each connected region shifted by the
        whole turns that put its mean in ``[-pi, pi]``.

    Notes
    -----
    Reliability ``R = 1 / D`` with ``D`` the root sum of squared second differences of the
    wrapped phase over the neighbourhood (Herraez et al. 2002); edges are sorted by the sum
    of the reliabilities of their voxels and the most reliable are joined first, each join
    shifting the smaller group by whole turns. Needs scikit-image (``restoration.unwrap_phase``).

    References
    ----------
    Abdul-Rahman HS, Gdeisat MA, Burton DR, et al. Fast and robust three-dimensional best
    path phase unwrapping algorithm. Appl Opt 2007;46:6623-6635. doi:10.1364/AO.46.006623
    Herraez MA, Burton DR, Lalor MJ, Gdeisat MA. Fast two-dimensional phase-unwrapping
    algorithm based on sorting by reliability following a noncontinuous path. Appl Opt
    2002;41:7437-7444. doi:10.1364/AO.41.007437
    """
    phase = np.asarray(phase_rad, dtype=np.float64)
    if phase.ndim not in (2, 3):
        raise ValueError(f"phase_rad must be 2-D or 3-D, got shape {phase.shape}")
    m = _check_mask(mask, phase.shape)
    if not np.all(np.isfinite(phase[m])):
        raise ValueError("phase_rad has non-finite values inside the mask")
    try:
        from skimage.restoration import unwrap_phase
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError("unwrap_path needs scikit-image (pip install scikit-image)") from exc
    wrapped = np.where(m, _wrap(phase), 0.0)
    if m.all():
        out = np.asarray(unwrap_phase(wrapped))
    else:
        out = np.ma.getdata(unwrap_phase(np.ma.masked_array(wrapped, mask=~m)))
    labels, count = ndimage.label(m)
    sums = np.bincount(labels.reshape(-1), weights=out.reshape(-1), minlength=count + 1)
    sizes = np.bincount(labels.reshape(-1), minlength=count + 1)
    turns = np.rint(sums / np.maximum(sizes, 1) / _TWO_PI)
    turns[0] = 0.0
    out = out - _TWO_PI * turns[labels]
    return np.where(m, out, 0.0).astype(np.float32)
