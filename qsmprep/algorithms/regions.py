"""Regional susceptibility: atlas label statistics, region referencing, label resampling.

Statistics are computed in native space on the reconstructed chi map with the atlas brought
in by nearest-neighbour resampling (or weighted by a partial-volume probability map), never on
resampled chi. Reporting follows the 2024 QSM consensus (doi:10.1002/mrm.30006): regional
means relative to a stated reference, always including the whole brain.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qsmprep.algorithms.referencing import reference_chi

#: Row ``region`` of the whole-brain statistics (``label`` 0).
WHOLE_BRAIN = "whole_brain"

_SUFFIX = re.compile(r"^(?P<region>.+?)[_](?P<hemi>l|r|left|right)$", re.IGNORECASE)
_PREFIX = re.compile(r"^(?P<hemi>left|right)-(?P<region>.+)$", re.IGNORECASE)


def split_hemisphere(name: str) -> tuple[str, str]:
    """Split an atlas label name into region and hemisphere.

    Names ending in ``_L``, ``_R``, ``_left`` or ``_right``, or starting with ``Left-`` or
    ``Right-`` (all case-insensitive; AAL and FreeSurfer conventions) give hemisphere ``'L'``
    or ``'R'``; any other name is returned unchanged with hemisphere ``''``.

    Parameters
    ----------
    name : label name from an atlas look-up table.

    Returns
    -------
    (region, hemisphere) : the name without its hemisphere part, and ``'L'``, ``'R'`` or ``''``.

    Examples
    --------
    >>> split_hemisphere("Putamen_L"), split_hemisphere("Left-Caudate")
    (('Putamen', 'L'), ('Caudate', 'L'))
    >>> split_hemisphere("caudate_right"), split_hemisphere("Vermis_1_2")
    (('caudate', 'R'), ('Vermis_1_2', ''))
    """
    if not isinstance(name, str):
        raise ValueError(f"label name must be a str, got {type(name).__name__}")
    match = _SUFFIX.match(name) or _PREFIX.match(name)
    if match is None:
        return name, ""
    return match["region"], match["hemi"][0].upper()


def _summary(values: np.ndarray) -> dict[str, float | int]:
    """n, mean, median, sample std and interquartile range of a 1-D float64 array."""
    n = int(values.size)
    if n == 0:
        nan = float("nan")
        return dict(n_voxels=0, mean_ppm=nan, median_ppm=nan, std_ppm=nan, iqr_ppm=nan)
    q25, q50, q75 = np.percentile(values, [25.0, 50.0, 75.0])
    return dict(
        n_voxels=n,
        mean_ppm=float(values.mean()),
        median_ppm=float(q50),
        std_ppm=float(values.std(ddof=1)) if n > 1 else float("nan"),
        iqr_ppm=float(q75 - q25),
    )


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(weights.sum())
    return float(np.dot(weights, values) / total) if total > 0 else float("nan")


def _validate_statistics_inputs(chi_ppm, labels, label_names, mask, weights):
    chi = np.asarray(chi_ppm, dtype=np.float64)
    lab = np.asarray(labels)
    if chi.ndim != 3:
        raise ValueError(f"chi_ppm must be 3-D (X, Y, Z), got shape {chi.shape}")
    if lab.shape != chi.shape:
        raise ValueError(f"labels shape {lab.shape} must equal chi_ppm shape {chi.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.issubdtype(lab.dtype, np.floating) or not np.all(lab == np.round(lab)):
            raise ValueError(f"labels must hold integers, got dtype {lab.dtype}")
        lab = lab.astype(np.int64)
    if not isinstance(label_names, Mapping):
        raise ValueError(f"label_names must be a dict {{int: str}}, got {type(label_names)}")
    for key, name in label_names.items():
        if (
            isinstance(key, bool)
            or not isinstance(key, (int, np.integer))
            or not isinstance(name, str)
        ):
            raise ValueError(f"label_names must map int -> str, got {key!r}: {name!r}")
    m = np.ones(chi.shape, bool) if mask is None else np.asarray(mask).astype(bool)
    if m.shape != chi.shape:
        raise ValueError(f"mask shape {m.shape} must equal chi_ppm shape {chi.shape}")
    if not np.all(np.isfinite(chi[m])):
        raise ValueError("chi_ppm holds NaN or infinite values inside the mask")
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != chi.shape:
            raise ValueError(f"weights shape {w.shape} must equal chi_ppm shape {chi.shape}")
        wm = w[m]
        if not np.all(np.isfinite(wm)) or wm.min(initial=0.0) < 0 or wm.max(initial=0.0) > 1:
            raise ValueError("weights must be a probability map with values in [0, 1]")
    return chi, lab, m, w


def region_statistics(
    chi_ppm: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    label_names: Mapping[int, str],
    mask: npt.ArrayLike | None = None,
    weights: npt.ArrayLike | None = None,
) -> list[dict]:
    """Susceptibility statistics of each atlas label, plus the whole brain.

    For label ``k`` with voxel set ``V_k = {labels == k} & mask`` (``n = |V_k|``), in ppm:
    ``mean = sum(chi[V_k]) / n``, ``median``, sample standard deviation
    ``std = sqrt(sum((chi - mean)^2) / (n - 1))`` and ``iqr = P75 - P25`` (linear-interpolated
    percentiles). With a partial-volume probability map ``w`` in [0, 1]:
    ``weighted_mean = sum(w chi) / sum(w)`` over ``V_k``.

    Parameters
    ----------
    chi_ppm : (X, Y, Z) susceptibility map (ppm), already referenced.
    labels : (X, Y, Z) integer label map in the same space; 0 is background.
    label_names : ``{label: name}``; one row per key other than 0, in ascending label order.
        Names are split into region and hemisphere by :func:`split_hemisphere`.
    mask : optional (X, Y, Z) brain mask; only voxels inside it count (default: all voxels).
    weights : optional (X, Y, Z) probability that each voxel belongs to its label; adds the
        column ``weighted_mean_ppm``.

    Returns
    -------
    list of dict, one per row, keys ``region``, ``hemisphere``, ``label``, ``n_voxels``,
    ``mean_ppm``, ``median_ppm``, ``std_ppm``, ``iqr_ppm`` (and ``weighted_mean_ppm``). The first
    row is ``region='whole_brain'`` (label 0, hemisphere ''), over every voxel in ``mask``; its
    weighted mean equals its mean (brain membership is the mask, not the label weights).
    A label with no voxel inside the mask has ``n_voxels`` 0 and NaN statistics; ``std_ppm`` is
    NaN for a single voxel.

    Raises
    ------
    ValueError : shapes differ, labels are not integers, a name is not a str, weights lie outside
        [0, 1], chi is not finite inside the mask, or the mask is empty.

    References
    ----------
    QSM Consensus Organization Committee, "Recommended implementation of quantitative
    susceptibility mapping for clinical research in the brain", MRM 2024, doi:10.1002/mrm.30006.

    Examples
    --------
    >>> import numpy as np
    >>> chi = np.array([[[0.1, 0.2, 0.3, -0.6]]])
    >>> rows = region_statistics(chi, np.array([[[1, 1, 1, 2]]]), label_names={1: "GP_L"})
    >>> [(r["region"], r["hemisphere"], r["n_voxels"], round(r["mean_ppm"], 3)) for r in rows]
    [('whole_brain', '', 4, 0.0), ('GP', 'L', 3, 0.2)]
    """
    chi, lab, m, w = _validate_statistics_inputs(chi_ppm, labels, label_names, mask, weights)
    if not m.any():
        raise ValueError("mask is empty: no voxel to compute statistics on")
    values, in_labels = chi[m], lab[m]
    w_in = None if w is None else w[m]
    rows = [dict(region=WHOLE_BRAIN, hemisphere="", label=0, **_summary(values))]
    if w_in is not None:
        rows[0]["weighted_mean_ppm"] = rows[0]["mean_ppm"]
    # sort once by label, then each label is a contiguous slice (fast for 100s of labels)
    order = np.argsort(in_labels, kind="stable")
    sorted_labels = in_labels[order]
    for key in sorted(int(k) for k in label_names):
        if key == 0:
            continue
        lo, hi = np.searchsorted(sorted_labels, [key, key + 1])
        idx = order[lo:hi]
        region, hemisphere = split_hemisphere(label_names[key])
        row = dict(region=region, hemisphere=hemisphere, label=key, **_summary(values[idx]))
        if w_in is not None:
            row["weighted_mean_ppm"] = _weighted_mean(values[idx], w_in[idx])
        rows.append(row)
    return rows


def core_labels(labels: npt.ArrayLike) -> np.ndarray:
    """Each label eroded by one voxel within itself: the region's core.

    A labelled voxel is kept when its six face neighbours carry the same label (voxels on the
    image border are dropped). Statistics over the core leave out the boundary voxels, where
    partial volume and small registration errors mix in the neighbouring tissue (for deep grey
    nuclei that border white matter, the boundary biases the mean towards it).

    Parameters
    ----------
    labels : (X, Y, Z) integer label map; 0 is background.

    Returns
    -------
    Label map of the same dtype, 0 outside the cores.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((5, 5, 5), np.int16)
    >>> lab[1:4, 1:4, 1:4] = 2
    >>> int(core_labels(lab).sum()), int(core_labels(lab)[2, 2, 2])
    (2, 2)
    """
    lab = np.asarray(labels)
    if lab.ndim != 3 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be a 3-D integer array, got {lab.dtype} {lab.shape}")
    keep = lab > 0
    keep[[0, -1], :, :] = False
    keep[:, [0, -1], :] = False
    keep[:, :, [0, -1]] = False
    inner = (slice(1, -1),) * 3
    centre = lab[inner]
    core = keep[inner]
    for axis in range(3):
        for step in (-1, 1):
            window = [slice(1, -1)] * 3
            window[axis] = slice(1 + step, lab.shape[axis] - 1 + step)
            core &= lab[tuple(window)] == centre
    out = np.zeros_like(lab)
    out[inner] = np.where(core, centre, 0)
    return out


def reference_to_region(
    chi_ppm: npt.ArrayLike,
    *,
    mask: npt.ArrayLike,
    region_mask: npt.ArrayLike,
) -> np.ndarray:
    """Reference susceptibility to the mean of one region (e.g. an atlas label or the CSF).

    ``chi_ref = M (chi - mean(chi[R & M]))`` in ppm, 0 outside the brain mask ``M``; the mean
    of ``chi_ref`` over the region is then 0.

    Parameters
    ----------
    chi_ppm : (X, Y, Z) susceptibility map (ppm).
    mask : (X, Y, Z) brain mask.
    region_mask : (X, Y, Z) reference region; only its voxels inside ``mask`` count.

    Returns
    -------
    float32 array, referenced chi (ppm), 0 outside ``mask``.

    Raises
    ------
    ValueError : shape mismatch, or no voxel of ``region_mask`` inside ``mask``.

    Examples
    --------
    >>> import numpy as np
    >>> chi = np.array([[[1.0, 2.0, 3.0, 5.0]]])
    >>> reference_to_region(chi, mask=chi < 5, region_mask=chi >= 2).tolist()
    [[[-1.5, -0.5, 0.5, 0.0]]]
    """
    if region_mask is None:
        raise ValueError("region_mask is required (use referencing.reference_chi for the brain)")
    return reference_chi(chi_ppm, mask, region_mask=region_mask)


def warp_labels_nearest(labels: npt.ArrayLike, coords_vox: npt.ArrayLike) -> np.ndarray:
    """Resample a label map by nearest neighbour at given voxel coordinates.

    ``out[p] = labels[round(coords_vox[:, p])]``, 0 where the rounded position falls outside
    ``labels`` (each voxel ``i`` covers ``[i - 0.5, i + 0.5)``) or the coordinate is not
    finite. Nearest neighbour keeps label values intact (no blending of neighbouring integers).

    Parameters
    ----------
    labels : (X, Y, Z) integer label map (e.g. an atlas in template space).
    coords_vox : (3, X', Y', Z') for every output voxel, its position in voxel indices of
        ``labels`` (e.g. from composing the output affine, the transform and the inverse
        ``labels`` affine).

    Returns
    -------
    (X', Y', Z') array with the dtype of ``labels``.

    Raises
    ------
    ValueError : ``labels`` is not a 3-D integer array, or ``coords_vox`` is not (3, ...).

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.arange(1, 5, dtype=np.int16).reshape(4, 1, 1)
    >>> shift = np.indices(lab.shape, dtype=float)
    >>> shift[0] += 1.0
    >>> warp_labels_nearest(lab, shift).ravel().tolist()
    [2, 3, 4, 0]
    """
    lab = np.asarray(labels)
    if lab.ndim != 3 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be a 3-D integer array, got {lab.dtype} {lab.shape}")
    coords = np.asarray(coords_vox, dtype=np.float64)
    if coords.ndim < 2 or coords.shape[0] != 3:
        raise ValueError(f"coords_vox must have shape (3, X', Y', Z'), got {coords.shape}")
    if lab.size and np.abs(lab).max() >= 2**53:
        raise ValueError("label values must be below 2**53 to survive resampling")
    # non-finite positions go far outside. 'grid-constant' treats each voxel as the cell
    # [i - 0.5, i + 0.5] up to the edges ('constant' would zero the outer half-voxels).
    coords = np.where(np.isfinite(coords), coords, -2.0)
    out = ndimage.map_coordinates(
        lab.astype(np.float64), coords, order=0, mode="grid-constant", cval=0.0
    )
    return np.rint(out).astype(lab.dtype)
