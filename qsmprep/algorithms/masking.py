"""Masks from magnitude intensity or from phase quality (for phase-only data).

Both masks keep the largest 6-connected component and fill holes (in 3-D and slice by slice
along each axis). A magnitude threshold separates tissue from air, so on a head it gives the
*head* (scalp included) unless tissue contrast separates brain from scalp; a brain mask proper
needs brain extraction (BET-class) or erosion, possibly combined with these masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qsmprep.algorithms.combine import check_echo_times

_SIX_CONNECTED = ndimage.generate_binary_structure(3, 1)
#: Dark/bright Otsu class mean ratio above which a magnitude image has no air background.
_NO_BACKGROUND_RATIO = 0.7


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=_SIX_CONNECTED)
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes in 3-D, then in every 2-D slice along each axis."""
    out = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        structure = np.expand_dims(ndimage.generate_binary_structure(2, 1), axis)
        out = ndimage.binary_fill_holes(out, structure=structure)
    return out


def _clean(mask: np.ndarray, erosions: int, *, fill: bool = True) -> np.ndarray:
    """Largest component, holes filled (unless ``fill`` is False: already done), optional
    6-connected erosions (largest part kept)."""
    if not mask.any():
        raise ValueError("no voxel passed the threshold: the mask would be empty")
    out = _largest_component(mask)
    if fill:
        out = _fill_holes(out)
    if erosions > 0:
        out = _largest_component(erode_voxels(out, erosions))
    return out


def binarize_mask(values: npt.ArrayLike) -> tuple[np.ndarray, str | None]:
    """A mask image from other software as booleans, and a note when the rule was not
    "nonzero".

    * Values 0 and anything else (0/1, 0/255, -1/0, a skull-stripped image):
      ``mask = value != 0``, no note.
    * Values in ``[0, 1]`` with fractional ones, fewer than half of the nonzero voxels in
      ``(0.1, 0.9)`` (a probability map, or a binary mask resampled with linear
      interpolation: mostly near 0 or 1): ``mask = value >= 0.5``, with a note, since
      "nonzero" would take in the interpolated margin or, for a map with small values
      everywhere, the whole image.
    * Values in ``[0, 1]`` spread between (an image scaled to 0..1, e.g. a skull-stripped
      magnitude): "nonzero", with a note.

    Non-finite values are outside. Raises ``ValueError`` when nothing is inside.
    """
    data = np.asarray(values)
    finite = np.isfinite(data)
    inside = finite & (data != 0)
    note = None
    if np.issubdtype(data.dtype, np.floating) and inside.any():
        kept = data[inside]
        fractional = (kept > 0) & (kept < 1)
        if fractional.any() and float(kept.min()) >= 0.0 and float(kept.max()) <= 1.0:
            spread = float(np.mean((kept > 0.1) & (kept < 0.9)))
            if spread < 0.5:
                inside = finite & (data >= 0.5)
                note = (f"the mask has fractional values ({int(fractional.sum())} voxels in "
                        f"(0, 1)); read as a probability map: inside where >= 0.5")  # fmt: skip
            else:
                note = (f"the mask's values spread over 0..1 ({100 * spread:.0f} % of the "
                        "nonzero voxels in (0.1, 0.9)), like an image: inside where nonzero")
    if not inside.any():
        raise ValueError("mask is empty (no voxel inside)")
    return inside, note


def erode_voxels(mask: npt.ArrayLike, erosions: int) -> np.ndarray:
    """``erosions`` 6-connected binary erosions of ``mask`` (``--mask-erosions``), nothing
    else: a user's mask keeps its components and holes. Not the SMV erosion by a sphere in
    mm, :func:`qsmprep.algorithms.background.erode_mask`. Raises ``ValueError`` if nothing
    is left."""
    out = np.asarray(mask, dtype=bool)
    erosions = _check_erosions(erosions)
    if erosions > 0:
        out = ndimage.binary_erosion(out, structure=_SIX_CONNECTED, iterations=erosions)
        if not out.any():
            raise ValueError(f"{erosions} erosions left an empty mask")
    return out


#: :func:`field_of_view_cut` fraction from which a brain mask is taken for partial coverage.
PARTIAL_COVERAGE_FRACTION = 0.25


def field_of_view_cut(mask: npt.ArrayLike) -> tuple[int, float]:
    """How much the field of view cuts a brain mask: ``(axis, fraction)`` for the voxel axis
    where it cuts most, ``fraction`` being the mask's area in the first or last slice of the
    array along that axis over its largest slice area along it (0: the mask stays clear of
    the edges; about 1: a slab through the brain).

    A whole-brain acquisition that just grazes the vertex or the cerebellum scores a few %,
    a 40 mm slab through the basal ganglia about 0.9. Used to warn that template
    registration and atlas regions, which assume a whole brain, are unreliable
    (``docs/benchmarks.md``, "Partial coverage and regions").
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"mask must be 3-D, got shape {m.shape}")
    best = (0, 0.0)
    for axis in range(3):
        areas = m.sum(axis=tuple(a for a in range(3) if a != axis))
        largest = int(areas.max()) if areas.size else 0
        if largest == 0:
            continue
        fraction = max(int(areas[0]), int(areas[-1])) / largest
        if fraction > best[1]:
            best = (axis, float(fraction))
    return best


def _check_erosions(erosions: int) -> int:
    if isinstance(erosions, bool) or int(erosions) != erosions or erosions < 0:
        raise ValueError(f"erosions must be a non-negative integer, got {erosions!r}")
    return int(erosions)


def otsu_threshold(values: npt.ArrayLike, *, bins: int = 256) -> float:
    """Otsu's threshold: maximises the between-class variance of a 1-D histogram.

    ``t* = argmax_t w0(t) w1(t) (mu0(t) - mu1(t))**2`` (Otsu N, IEEE Trans Syst Man Cybern
    1979;9:62-66, doi:10.1109/TSMC.1979.4310076). Returns the upper edge of the last bin of
    the lower class.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0 or v.min() == v.max():
        raise ValueError("Otsu threshold needs at least two distinct finite values")
    hist, edges = np.histogram(v, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)[:-1].astype(np.float64)
    w1 = v.size - w0
    m0 = np.cumsum(hist * centres)[:-1]
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (np.sum(hist * centres) - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def combined_magnitude(magnitude: npt.ArrayLike) -> np.ndarray:
    """3-D magnitude: the input, or the root-sum-of-squares over echoes of a 4-D one."""
    mag = np.asarray(magnitude, dtype=np.float32)
    if mag.ndim == 4:
        mag = np.sqrt(np.sum(np.square(mag), axis=-1))
    if mag.ndim != 3:
        raise ValueError(f"magnitude must be 3-D or 4-D (echoes last), got shape {mag.shape}")
    return np.where(np.isfinite(mag), np.abs(mag), 0.0).astype(np.float32)


#: Enclosed dark regions larger than this (mm^3) are not filled into a magnitude mask.
MAX_DARK_HOLE_MM3 = 1000.0


def _drop_large_dark_holes(filled, tissue, mag, cut, voxel_size_mm, max_hole_mm3):
    """Remove from ``filled`` the filled-in components (``filled & ~tissue``) bigger than
    ``max_hole_mm3`` whose median magnitude ``mag`` is below ``cut``: bone or air enclosed by
    brain (the skull base between the temporal lobes and the brainstem), whose noise-only
    phase would spread errors through unwrapping, background removal and inversion.
    ``mag``/``cut`` are the first echo's (see :func:`mask_from_magnitude`)."""
    holes, count = ndimage.label(filled & ~tissue, structure=_SIX_CONNECTED)
    if count == 0:
        return filled
    voxel_mm3 = float(np.prod(voxel_size_mm)) if voxel_size_mm is not None else 1.0
    sizes = np.bincount(holes.ravel())
    out = filled.copy()
    for k in np.flatnonzero(sizes * voxel_mm3 > max_hole_mm3):
        if k == 0:
            continue
        region = holes == k
        if np.median(mag[region]) < cut:
            out &= ~region
    return _largest_component(out)


def mask_from_magnitude(
    magnitude: npt.ArrayLike,
    *,
    erosions: int = 0,
    threshold: float | None = None,
    voxel_size_mm: Sequence[float] | None = None,
    max_hole_mm3: float = MAX_DARK_HOLE_MM3,
) -> np.ndarray:
    """Tissue mask from a magnitude image by a robust Otsu threshold.

    Parameters
    ----------
    magnitude : (X, Y, Z) or (X, Y, Z, E) array
        Magnitude; echoes (last axis) are combined by root-sum-of-squares.
    erosions : int
        Number of 6-connected binary erosions applied at the end.
    threshold : float, optional
        Fixed threshold as a fraction (0..1) of the robust maximum (the 99.5th percentile of
        the non-zero voxels) instead of Otsu's.
    voxel_size_mm : sequence of 3 floats, optional
        Voxel size, to express ``max_hole_mm3`` in mm^3 (default: 1 mm^3 voxels).
    max_hole_mm3 : float
        Enclosed regions darker than the threshold and larger than this are left out of the
        mask instead of being filled (default 1000 mm^3 = 1 ml): on real heads these are the
        skull base or sinus air surrounded by brain, whose phase is noise. Smaller dark holes
        (veins, microbleeds, calcifications) are filled. With several echoes "darker" is
        judged on the first echo against its own Otsu threshold, so large veins or a
        haemorrhage, dark only at the later echoes, stay in the mask; signal voids (dark at
        the first echo too) are left out.

    Returns
    -------
    (X, Y, Z) bool array

    Notes
    -----
    Intensities are clipped to ``[0, p99.5]`` so that bright vessels and fat do not stretch
    the histogram, and Otsu's threshold is computed on the clipped values. Air noise is a
    narrow class, so the threshold stays between noise and tissue even when air fills most
    of the field of view (tested with a head in 5 % of it, SNR 5 to 100). If the darker
    class is not much darker than the brighter (mean ratio above 0.7, whereas air noise vs
    tissue gives < 0.45 down to SNR 5) the image has no background (a crop inside the
    head) and every non-zero voxel is kept. Then: largest 6-connected component, holes
    filled in 3-D and slice-wise except large dark ones (``max_hole_mm3``), erosions.
    """
    erosions = _check_erosions(erosions)
    if threshold is not None and not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be a fraction in (0, 1), got {threshold!r}")
    mag = combined_magnitude(magnitude)
    cut, clipped = _magnitude_cut(mag, threshold)
    if threshold is None:
        if clipped[mag <= cut].mean() > _NO_BACKGROUND_RATIO * clipped[mag > cut].mean():
            cut = 0.0  # the two classes are both tissue: no air background to remove
    tissue = mag > cut
    if not tissue.any():
        raise ValueError("no voxel passed the threshold: the mask would be empty")
    filled = _fill_holes(_largest_component(tissue))
    first, first_cut = _first_echo_and_cut(magnitude, mag, cut, threshold)
    filled = _drop_large_dark_holes(filled, tissue, first, first_cut, voxel_size_mm,
                                    max_hole_mm3)  # fmt: skip
    return _clean(filled, erosions, fill=False)


def _magnitude_cut(image: np.ndarray, threshold: float | None) -> tuple[float, np.ndarray]:
    """``(cut, clipped)``: ``image`` clipped at the 99.5th percentile of its non-zero values
    (the robust maximum) and the cut between background and tissue, Otsu's on the clipped
    values or ``threshold`` times the robust maximum. Raises ``ValueError`` for an image
    that is zero everywhere or has a single value."""
    nonzero = image[image > 0]
    if nonzero.size == 0:
        raise ValueError("magnitude is zero everywhere")
    robust_max = float(np.percentile(nonzero, 99.5))
    clipped = np.minimum(image, robust_max)
    if threshold is not None:
        return float(threshold) * robust_max, clipped
    return otsu_threshold(clipped), clipped


def _first_echo_and_cut(magnitude, combined, cut, threshold):
    """The image and threshold that decide whether an enclosed dark region has signal: the
    first echo (the most signal) and its own cut (:func:`_magnitude_cut`) for a 4-D input,
    else the combined image and ``cut``. A vein or haemorrhage is dark at late echoes but
    not at the first; bone and air are dark at every echo."""
    mag = np.asarray(magnitude)
    if mag.ndim != 4 or mag.shape[3] < 2 or cut == 0.0:
        return combined, cut
    first = combined_magnitude(mag[..., 0])
    try:
        return first, _magnitude_cut(first, threshold)[0]
    except ValueError:
        return combined, cut


def _gradient_coherence(phase: np.ndarray) -> np.ndarray:
    """Mean over axes of ``|local mean of exp(i (p(x + e_a) - p(x)))|`` (18 pairs per axis)."""
    z = np.exp(1j * phase.astype(np.float32)).astype(np.complex64)
    quality = np.zeros(phase.shape, dtype=np.float32)
    for axis in range(3):
        lo = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        pairs = np.zeros(phase.shape, dtype=np.complex64)
        pairs[lo] = z[hi] * np.conj(z[lo])
        present = np.zeros(phase.shape, dtype=np.float32)
        present[lo] = 1.0
        # window: the 2 pairs along `axis` that touch the voxel x 3 x 3 across it; mean over
        # the pairs inside the field of view (normalised convolution)
        size = [2 if a == axis else 3 for a in range(3)]
        re = ndimage.uniform_filter(pairs.real, size=size, mode="constant")
        im = ndimage.uniform_filter(pairs.imag, size=size, mode="constant")
        count = ndimage.uniform_filter(present, size=size, mode="constant")
        quality += np.hypot(re, im) / np.maximum(count, 1e-6)
    return np.clip(quality / 3.0, 0.0, 1.0)


def phase_quality_map(
    phase_rad: npt.ArrayLike,
    magnitude: npt.ArrayLike | None = None,
    *,
    echo_times_s: Sequence[float],
) -> np.ndarray:
    """Local phase-coherence quality in ``[0, 1]``: about 1 in tissue, about 0.2 in noise.

    Parameters
    ----------
    phase_rad : (X, Y, Z) or (X, Y, Z, E) array
        Wrapped phase (rad), echoes last.
    magnitude : array like ``phase_rad``, optional
        If given, the quality is multiplied by ``min(1, m / m_ref)``, ``m`` the (root-sum-of-
        squares) magnitude and ``m_ref`` half its median over voxels of phase quality > 0.5,
        which darkens low-signal voxels (air, the rim of the head).
    echo_times_s : sequence of float
        Echo times (s), one per echo, strictly increasing (validated; the map uses echoes
        1 and 2 only).

    Returns
    -------
    (X, Y, Z) float32 array

    Notes
    -----
    With two or more echoes the map is computed from the temporal phase difference
    ``p = W(phi_2 - phi_1)``, which removes the echo-independent phase offset; with one echo
    from ``p = phi_1``. For each axis ``a`` the neighbour differences
    ``g_a(x) = exp(i (p(x + e_a) - p(x)))`` are averaged over the 2 x 3 x 3 pairs touching
    a voxel and ``q = (1/3) sum_a |mean g_a|``. A linear phase gives ``q = 1``; random phase
    gives ``E[q] ~ sqrt(pi / 72) ~ 0.21``. Using spatial differences (the phase-gradient
    coherence of ROMEO, Dymerska et al., MRM 2021, doi:10.1002/mrm.28563) rather than the
    phase itself makes ``q`` insensitive to steep but smooth phase ramps.
    """
    phase = np.asarray(phase_rad)
    phase = phase[..., np.newaxis] if phase.ndim == 3 else phase
    if phase.ndim != 4:
        raise ValueError(f"phase_rad must be 3-D or 4-D (echoes last), got shape {phase.shape}")
    check_echo_times(echo_times_s, phase.shape[-1])
    if not np.all(np.isfinite(phase)):
        raise ValueError("phase_rad has non-finite values")
    if phase.shape[-1] >= 2:
        source = np.angle(np.exp(1j * (phase[..., 1] - phase[..., 0])))
    else:
        source = phase[..., 0]
    quality = _gradient_coherence(source)
    if magnitude is not None:
        mag = combined_magnitude(magnitude)
        if mag.shape != quality.shape:
            raise ValueError(f"magnitude shape {np.shape(magnitude)} does not match the phase")
        tissue = mag[quality > 0.5]
        ref = 0.5 * float(np.median(tissue)) if tissue.size else 0.0
        if ref > 0:
            quality *= np.minimum(1.0, mag / ref)
    return quality.astype(np.float32)


def mask_from_phase_quality(
    phase_rad: npt.ArrayLike,
    magnitude: npt.ArrayLike | None = None,
    *,
    echo_times_s: Sequence[float],
    threshold: float = 0.5,
    erosions: int = 0,
) -> np.ndarray:
    """Mask of coherent phase for phase-only (or any) data.

    ``phase_quality_map(...) > threshold``, then the largest 6-connected component, holes
    filled in 3-D and slice-wise, and ``erosions`` 6-connected erosions. The default 0.5
    lies between the quality of noise (``~0.21 +- 0.06``) and that of a tissue voxel on a
    flat edge of the object (``~0.6``; 1 inside), so the edge is placed within a voxel.
    See :func:`phase_quality_map` for the parameters.
    """
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    erosions = _check_erosions(erosions)
    quality = phase_quality_map(phase_rad, magnitude, echo_times_s=echo_times_s)
    return _clean(quality > float(threshold), erosions)


def consensus_mask(
    brain_mask: npt.ArrayLike,
    phase_rad: npt.ArrayLike,
    magnitude: npt.ArrayLike | None = None,
    *,
    echo_times_s: Sequence[float],
    threshold: float = 0.5,
    erosions: int = 0,
) -> np.ndarray:
    """Brain-extraction mask combined with a phase-quality mask (2024 QSM consensus).

    ``M = clean(M_brain AND q > threshold)`` where ``q`` is :func:`phase_quality_map` and
    ``clean`` keeps the largest component and fills holes. Voxels inside the extracted brain
    whose phase is not coherent (noise, signal voids at the edge) are removed, as the 2024
    consensus recommends (QSM Consensus Organization Committee, MRM 2024,
    doi:10.1002/mrm.30006).
    """
    brain = np.asarray(brain_mask).astype(bool)
    if brain.shape != np.shape(phase_rad)[:3]:
        raise ValueError(f"brain mask shape {brain.shape} does not match the phase")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    quality = phase_quality_map(phase_rad, magnitude, echo_times_s=echo_times_s)
    return _clean(brain & (quality > float(threshold)), _check_erosions(erosions))
