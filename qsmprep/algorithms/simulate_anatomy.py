"""Anatomically realistic susceptibility phantom from a template, and smooth random warps.

``make_anatomical_phantom`` turns a skull-stripped T1-weighted template (e.g. MNI152 at 1 mm)
and an atlas label map on the same grid into a labelled head phantom with exactly known,
piecewise-constant brain susceptibility: atlas structures and T1-derived CSF / grey / white
matter get the 3 T values of :data:`qsmprep.algorithms.simulate.TISSUES` (Deistung et al.,
NeuroImage 2013), and a CSF layer, skull, scalp, an air sinus and air are built around the
brain so that the background field is realistic. The idea of a realistic head phantom with
known regional susceptibility follows the QSM reconstruction challenge 2.0 (Marques et al.,
MRM 2021, doi:10.1002/mrm.28754).

``smooth_random_warp`` and ``warp_image`` deform such a phantom (or an atlas) by a rigid
motion plus a smooth random displacement, to emulate subject anatomy differing from the
template.

Pure numpy/scipy: no file I/O here, arrays in and arrays out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from scipy import fft as sp_fft
from scipy import ndimage

from qsmprep.algorithms.simulate import CHI_AIR_PPM, TISSUES, HeadPhantom

#: Classes added to the atlas labels by :func:`make_anatomical_phantom`; class ``k`` (0-based
#: position here) gets label id ``max(atlas labels) + 1 + k``. The first four are inside the
#: brain mask, the last three outside. Air (sinus included) is label 0.
EXTRA_CLASSES: tuple[str, ...] = (
    "csf",
    "grey_matter",
    "white_matter",
    "vein",
    "extracerebral_csf",
    "skull",
    "scalp",
)

# Tissue (key of TISSUES) of each extra class.
_CLASS_TISSUE = {"extracerebral_csf": "csf"}

#: Thickness (mm) of the bony wall around the air sinus.
SINUS_WALL_MM = 2.0


def make_anatomical_phantom(
    t1: npt.ArrayLike,
    brain_mask: npt.ArrayLike,
    labels: npt.ArrayLike,
    label_tissues: Mapping[int, str],
    *,
    voxel_size_mm: Sequence[float],
    pad_mm: float = 20.0,
    csf_mm: float = 2.0,
    skull_mm: float = 5.0,
    scalp_mm: float = 5.0,
    sinus: bool = True,
    vein_count: int = 0,
    label_names: Mapping[int, str] | None = None,
    rng: np.random.Generator | int | None = 0,
) -> tuple[HeadPhantom, tuple[int, int, int]]:
    """Build a realistic head susceptibility phantom from a T1 template and an atlas.

    Inside ``brain_mask`` the susceptibility is piecewise constant (hard classes, no partial
    volume), so every regional ground-truth mean is exactly a value of ``TISSUES``:

    * voxels whose atlas label is a key of ``label_tissues`` get that tissue's
      ``(chi, M0, R2*)``;
    * all other brain voxels are classified from the T1 intensity into CSF (darkest), grey
      matter and white matter (brightest) by 1-D 3-class k-means on the T1 values of those
      voxels (multi-level Otsu start, Lloyd refinement), i.e. thresholds
      ``t_k = (c_k + c_{k+1}) / 2`` between the converged class means ``c_0 < c_1 < c_2``;
    * optionally ``vein_count`` straight veins (cylinders of radius ``max(1, 0.8 max(dx))`` mm
      through random brain voxels, random directions) replace T1-classified voxels (never
      atlas structures).

    Outside the brain, with ``d`` the Euclidean distance (mm, ``sampling=voxel_size_mm``) to
    the nearest brain voxel: CSF for ``0 < d <= csf_mm``, skull for
    ``csf_mm < d <= csf_mm + skull_mm``, scalp up to ``csf_mm + skull_mm + scalp_mm`` and air
    (chi ``CHI_AIR_PPM``, M0 = R2* = 0) beyond. With ``sinus``, an air-filled ellipsoid
    below the anterior (frontal) brain, kept ``>= csf_mm + SINUS_WALL_MM`` from the brain and
    enclosed by a ``SINUS_WALL_MM`` bony (skull) wall, adds the strong frontal background field
    of the paranasal sinuses. As in :func:`~qsmprep.algorithms.simulate.make_head_phantom`,
    chi outside the brain is then smoothed by a Gaussian of sigma = 1 voxel (the partial
    volume of the sources; a sampled 9.4 ppm step makes the discrete dipole field ring),
    while the brain keeps its sharp, exact values.

    Parameters
    ----------
    t1 : (X, Y, Z) T1-weighted intensities (only the values inside ``brain_mask`` are used).
    brain_mask : (X, Y, Z) brain mask (nonzero = brain).
    labels : (X, Y, Z) non-negative integer atlas labels on the same grid (0 = none). Labels
        outside ``brain_mask`` are ignored.
    label_tissues : ``{atlas label: tissue name}`` with names from ``TISSUES`` (e.g.
        ``{11: "caudate", 50: "caudate", 12: "putamen"}``).
    voxel_size_mm : voxel size (mm) along the three axes.
    pad_mm : zero padding (mm) added on every side of the volume, rounded up to whole voxels
        per axis; should exceed ``csf_mm + skull_mm + scalp_mm`` (plus the brain's distance to
        the grid edge missing) for the head to be surrounded by air.
    csf_mm, skull_mm, scalp_mm : thickness (mm) of the layers around the brain.
    sinus : add the air sinus below the frontal lobe. The volume axes must be RAS or LAS
        ordered (axis 1 increases towards anterior, axis 2 towards superior), as MNI templates.
    vein_count : number of random veins (chi of ``TISSUES["vein"]``) in the brain.
    label_names : optional names of atlas labels for the returned ``label_names`` (default:
        the tissue name of ``label_tissues``).
    rng : seed or generator for the veins.

    Returns
    -------
    phantom : :class:`~qsmprep.algorithms.simulate.HeadPhantom` on the PADDED grid of shape
        ``(X + 2 p0, Y + 2 p1, Z + 2 p2)``: ``chi_ppm`` (ppm, air +9.4), ``brain_mask``,
        ``head_mask`` (tissue, i.e. not air), ``labels`` (the atlas label for ``label_tissues``
        voxels, ``max(labels) + 1 + k`` for class ``EXTRA_CLASSES[k]``, 0 for air; int16, or
        int32 if the ids do not fit), ``label_names`` (every label present), ``m0`` (proton
        density, a.u.) and ``r2star_3t`` (1/s).
    pad_vox : ``(p0, p1, p2)`` padding in voxels on each side; the padded affine is
        ``padded_affine(affine, pad_vox)`` and input arrays are padded by
        ``np.pad(a, [(p, p) for p in pad_vox])``.

    Raises
    ------
    ValueError : inconsistent shapes, negative or non-integer labels, unknown tissue names,
        an empty brain mask, or negative thicknesses.

    References
    ----------
    Deistung A et al. Toward in vivo histology: a comparison of quantitative susceptibility
    mapping (QSM) with magnitude-, phase-, and R2*-imaging at ultra-high magnetic field
    strength. NeuroImage 2013;65:299-314.
    Marques JP et al. QSM reconstruction challenge 2.0: A realistic in silico head phantom for
    MRI data simulation and evaluation of susceptibility mapping procedures. MRM
    2021;86:526-542.
    """
    t1 = np.asarray(t1, dtype=np.float64)
    brain_in = np.asarray(brain_mask).astype(bool)
    atlas = np.asarray(labels)
    if t1.ndim != 3 or t1.shape != brain_in.shape or t1.shape != atlas.shape:
        raise ValueError(
            f"t1, brain_mask and labels must be 3-D of one shape, got {t1.shape}, "
            f"{brain_in.shape}, {atlas.shape}"
        )
    if not np.issubdtype(atlas.dtype, np.integer) or (atlas.size and atlas.min() < 0):
        raise ValueError("labels must be a non-negative integer array")
    d = np.asarray(voxel_size_mm, dtype=float)
    if d.shape != (3,) or np.any(d <= 0):
        raise ValueError(f"voxel_size_mm must be 3 positive values, got {voxel_size_mm!r}")
    if min(pad_mm, csf_mm, skull_mm, scalp_mm) < 0 or vein_count < 0:
        raise ValueError("pad_mm, csf_mm, skull_mm, scalp_mm and vein_count must be >= 0")
    for lab, tissue in label_tissues.items():
        if int(lab) <= 0:
            raise ValueError(f"label_tissues keys must be positive labels, got {lab!r}")
        if tissue not in TISSUES:
            raise ValueError(f"unknown tissue {tissue!r} for label {lab}; use {list(TISSUES)}")
    if not brain_in.any():
        raise ValueError("brain_mask is empty")
    rng = np.random.default_rng(rng)

    pad_vox = tuple(int(np.ceil(pad_mm / di - 1e-9)) for di in d)
    pads = [(p, p) for p in pad_vox]
    brain = np.pad(brain_in, pads)
    t1p = np.pad(t1, pads)
    atlas = np.pad(atlas, pads)

    base = int(atlas.max()) if atlas.size else 0
    class_id = {name: base + 1 + k for k, name in enumerate(EXTRA_CLASSES)}
    out_dtype = np.int16 if class_id[EXTRA_CLASSES[-1]] <= np.iinfo(np.int16).max else np.int32
    out = np.zeros(brain.shape, dtype=out_dtype)
    # tissue of every output label (ids of atlas structures and extra classes)
    tissue_of: dict[int, str] = {int(k): v for k, v in label_tissues.items()}
    tissue_of.update({i: _CLASS_TISSUE.get(n, n) for n, i in class_id.items()})

    # --- brain: atlas structures, then T1 classes for the rest
    structure = brain & np.isin(atlas, np.fromiter(label_tissues, dtype=np.int64))
    out[structure] = atlas[structure]
    rest = brain & ~structure
    if rest.any():
        thresholds = _kmeans_thresholds(t1p[rest], k=3)
        cls = np.digitize(t1p[rest], thresholds)
        ids = np.array([class_id[n] for n in ("csf", "grey_matter", "white_matter")], out_dtype)
        out[rest] = ids[cls]
    for _ in range(vein_count):
        out[_random_vein(brain, d, rng) & rest] = class_id["vein"]

    # --- layers outside the brain
    dist = ndimage.distance_transform_edt(~brain, sampling=d)
    outside = ~brain
    out[outside & (dist <= csf_mm + skull_mm + scalp_mm)] = class_id["scalp"]
    out[outside & (dist <= csf_mm + skull_mm)] = class_id["skull"]
    out[outside & (dist <= csf_mm)] = class_id["extracerebral_csf"]
    head = brain | (dist <= csf_mm + skull_mm + scalp_mm)
    if sinus:
        air = _sinus(brain, dist, d, min_dist_mm=csf_mm + SINUS_WALL_MM)
        if air.any():
            wall = ~air & (dist > csf_mm)
            wall &= ndimage.distance_transform_edt(~air, sampling=d) <= SINUS_WALL_MM
            out[wall] = class_id["skull"]
            out[air] = 0
            head = (head | wall) & ~air

    # --- look-up of (chi, M0, R2*) per label
    present = [int(v) for v in np.unique(out) if v != 0]
    lut = np.zeros((int(out.max()) + 1, 3), dtype=np.float64)
    lut[0] = (CHI_AIR_PPM, 0.0, 0.0)
    for v in present:
        lut[v] = TISSUES[tissue_of[v]]
    chi = lut[out, 0]
    # Same partial-volume smoothing of the background sources as make_head_phantom: sigma of
    # one voxel outside the brain only, so the brain keeps its exact piecewise-constant values.
    smoothed = ndimage.gaussian_filter(np.where(brain, 0.0, chi), sigma=1.0)
    chi = np.where(brain, chi, smoothed)

    names_in = {} if label_names is None else {int(k): str(v) for k, v in label_names.items()}
    id_to_class = {i: n for n, i in class_id.items()}
    names = {v: id_to_class.get(v, names_in.get(v, tissue_of[v])) for v in present}
    phantom = HeadPhantom(
        chi_ppm=chi.astype(np.float32),
        brain_mask=brain,
        head_mask=head,
        labels=out,
        label_names=names,
        m0=lut[out, 1].astype(np.float32),
        r2star_3t=lut[out, 2].astype(np.float32),
    )
    return phantom, pad_vox


def padded_affine(affine: npt.ArrayLike, pad_vox: Sequence[int]) -> np.ndarray:
    """Voxel-to-world affine of a grid padded by ``pad_vox`` voxels on each side.

    Padded voxel ``i`` is original voxel ``i - p``, so
    ``A_pad = A @ [[1, 0, 0, -p0], [0, 1, 0, -p1], [0, 0, 1, -p2], [0, 0, 0, 1]]``.
    """
    shift = np.eye(4)
    shift[:3, 3] = -np.asarray(pad_vox, dtype=float)
    return np.asarray(affine, dtype=float) @ shift


def _kmeans_thresholds(values: np.ndarray, k: int = 3, iters: int = 200) -> np.ndarray:
    """Sorted decision thresholds of 1-D k-means (midpoints between converged class means).

    Initialised by multi-level Otsu: the exhaustive optimum, on a 256-bin histogram, of the
    between-class variance ``sum_k W_k mu_k^2`` (equivalently the global k-means optimum on the
    binned values), so small classes (a few ventricles) are not merged as from a percentile
    start; then refined by Lloyd iterations on the raw values. Deterministic.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    centres = _otsu_centres(values, k)
    for _ in range(iters):
        thresholds = 0.5 * (centres[1:] + centres[:-1])
        cls = np.digitize(values, thresholds)
        sums = np.bincount(cls, weights=values, minlength=k)
        counts = np.bincount(cls, minlength=k)
        new = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centres))
        done = np.allclose(new, centres, rtol=0.0, atol=1e-9 * (np.abs(centres).max() + 1.0))
        centres = new
        if done:
            break
    return 0.5 * (centres[1:] + centres[:-1])


def _otsu_centres(values: np.ndarray, k: int, bins: int = 256) -> np.ndarray:
    """Class means of the exhaustive 3-class (or percentile, otherwise) histogram split."""
    fallback = np.percentile(values, np.linspace(100.0 / (2 * k), 100.0 - 100.0 / (2 * k), k))
    if k != 3 or np.ptp(values) == 0:
        return fallback
    hist, edges = np.histogram(values, bins=bins)
    mids = 0.5 * (edges[1:] + edges[:-1])
    w = np.cumsum(hist).astype(np.float64)
    m = np.cumsum(hist * mids)
    i = np.arange(bins)[:, None]  # last bin of class 0
    j = np.arange(bins)[None, :]  # last bin of class 1
    w0, m0 = w[i], m[i]
    w1, m1 = w[j] - w[i], m[j] - m[i]
    w2, m2 = w[-1] - w[j], m[-1] - m[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = m0**2 / w0 + m1**2 / w1 + m2**2 / w2
    score[~((i < j) & (w0 > 0) & (w1 > 0) & (w2 > 0))] = -np.inf
    if not np.isfinite(score).any():
        return fallback
    bi, bj = np.unravel_index(int(np.argmax(score)), score.shape)
    return np.array([m0[bi, 0] / w0[bi, 0], m1[bi, bj] / w1[bi, bj], m2[0, bj] / w2[0, bj]])


def _sinus(brain: np.ndarray, dist: np.ndarray, d: np.ndarray, *, min_dist_mm: float) -> np.ndarray:
    """Air-filled ellipsoid below the anterior brain, ``>= min_dist_mm`` from the brain.

    With ``lo, hi`` the brain's bounding box (mm), centre ``c = (lo + hi) / 2`` and half
    extent ``s = (hi - lo) / 2``, ``z_f`` the lowest brain voxel in the anterior, medial part
    (``y >= c_y + s_y / 2``, ``|x - c_x| <= s_x / 4``; the frontal lobe's underside), the sinus
    has semi-axes ``r = (0.2 s_x, 0.15 s_y, 0.15 s_z)`` and centre
    ``(c_x, c_y + 0.55 s_y, z_f - min_dist_mm - r_z)`` (axis 1 anterior, axis 2 superior).
    """
    idx = np.nonzero(brain)
    pos = [i * di for i, di in zip(idx, d, strict=True)]
    lo = np.array([p.min() for p in pos])
    hi = np.array([p.max() for p in pos])
    c, s = 0.5 * (lo + hi), 0.5 * (hi - lo)
    front = (pos[1] >= c[1] + 0.5 * s[1]) & (np.abs(pos[0] - c[0]) <= 0.25 * s[0])
    if not front.any():
        return np.zeros(brain.shape, dtype=bool)
    r = np.maximum(np.array([0.2, 0.15, 0.15]) * s, d)
    centre = (c[0], c[1] + 0.55 * s[1], pos[2][front].min() - min_dist_mm - r[2])
    inside = np.zeros(brain.shape, dtype=np.float64)
    for ax, (n, di) in enumerate(zip(brain.shape, d, strict=True)):
        view = [1, 1, 1]
        view[ax] = n
        inside = inside + (((np.arange(n) * di - centre[ax]) / r[ax]) ** 2).reshape(view)
    return (inside <= 1.0) & (dist >= min_dist_mm)


def _random_vein(brain: np.ndarray, d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A straight cylinder (radius ``max(1, 0.8 max(d))`` mm) through a random brain voxel."""
    idx = np.flatnonzero(brain)
    point = np.array(np.unravel_index(rng.choice(idx), brain.shape), dtype=float) * d
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    radius = max(1.0, 0.8 * float(np.max(d)))
    rel = []
    for ax, (n, di) in enumerate(zip(brain.shape, d, strict=True)):
        view = [1, 1, 1]
        view[ax] = n
        rel.append((np.arange(n) * di - point[ax]).reshape(view))
    along = sum(r * u for r, u in zip(rel, direction, strict=True))
    dist2 = sum(r**2 for r in rel) - along**2
    return dist2 <= radius**2


def rotation_matrix(rotation_deg: Sequence[float]) -> np.ndarray:
    """Rotation ``R = R_2(c) R_1(b) R_0(a)`` for angles ``(a, b, c)`` (degrees) about axes 0, 1, 2.

    Right-handed: ``R_2(90) (1, 0, 0) = (0, 1, 0)``.
    """
    a, b, c = np.deg2rad(np.asarray(rotation_deg, dtype=float))
    r0 = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    r1 = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    r2 = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return r2 @ r1 @ r0


def smooth_random_warp(
    shape: Sequence[int],
    *,
    voxel_size_mm: Sequence[float],
    max_displacement_mm: float = 4.0,
    smoothness_mm: float = 20.0,
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    translation_mm: Sequence[float] = (0.0, 0.0, 0.0),
    rng: np.random.Generator | int | None = 0,
) -> np.ndarray:
    """Sampling coordinates of a rigid motion plus a smooth random deformation.

    For output voxel ``v`` at ``p = (v - o) * dx`` mm from the volume centre
    ``o = (shape - 1) / 2``, the source position is

    ``q(p) = R p + t + u(p)``,  returned as voxel coordinates ``q / dx + o``,

    with ``R = rotation_matrix(rotation_deg)``, ``t = translation_mm`` and ``u`` (mm) Gaussian
    filtered white noise per component (sigma ``smoothness_mm``, applied in Fourier space, so
    the field is periodic over the grid) scaled so that ``max_p |u(p)| = max_displacement_mm``.
    ``scipy.ndimage.map_coordinates(src, coords, order=1)`` (or :func:`warp_image`) then
    resamples ``src`` onto the warped grid; the image content moves by the inverse map.

    The Jacobian ``R + grad u`` has a positive determinant (the map is invertible) as long as
    ``|grad u| < 1``; ``|grad u|`` is of the order of ``max_displacement_mm / smoothness_mm``
    (0.2 for the defaults). Check with :func:`jacobian_determinant`.

    Parameters
    ----------
    shape : (X, Y, Z) output grid (also the source grid).
    voxel_size_mm : voxel size (mm).
    max_displacement_mm : largest magnitude (mm) of the random displacement; 0 for rigid only.
    smoothness_mm : Gaussian sigma (mm) of the random displacement field.
    rotation_deg : rotation angles (degrees) about axes 0, 1, 2 through the volume centre.
    translation_mm : translation (mm).
    rng : seed or generator for the random field.

    Returns
    -------
    (3, X, Y, Z) float64 source voxel coordinates.
    """
    shape = tuple(int(n) for n in shape)
    d = np.asarray(voxel_size_mm, dtype=float)
    if len(shape) != 3 or d.shape != (3,) or np.any(d <= 0):
        raise ValueError("shape and voxel_size_mm must have 3 entries, voxel sizes > 0")
    if max_displacement_mm < 0 or smoothness_mm <= 0:
        raise ValueError("max_displacement_mm must be >= 0 and smoothness_mm > 0")
    rng = np.random.default_rng(rng)
    rot = rotation_matrix(rotation_deg)
    t = np.asarray(translation_mm, dtype=float)
    origin = (np.asarray(shape) - 1) / 2.0
    p = []
    for ax, n in enumerate(shape):
        view = [1, 1, 1]
        view[ax] = n
        p.append(((np.arange(n) - origin[ax]) * d[ax]).reshape(view))
    coords = np.empty((3,) + shape, dtype=np.float64)
    for i in range(3):
        coords[i] = rot[i, 0] * p[0] + rot[i, 1] * p[1] + rot[i, 2] * p[2] + t[i]
    if max_displacement_mm > 0:
        u = np.empty_like(coords)
        sigma_vox = smoothness_mm / d
        for i in range(3):
            spec = sp_fft.rfftn(rng.standard_normal(shape))
            spec = ndimage.fourier_gaussian(spec, sigma=sigma_vox, n=shape[-1])
            u[i] = sp_fft.irfftn(spec, s=shape)
        peak = float(np.sqrt((u**2).sum(axis=0)).max())
        if peak > 0:
            coords += u * (max_displacement_mm / peak)
    for i in range(3):
        coords[i] = coords[i] / d[i] + origin[i]
    return coords


def jacobian_determinant(coords: np.ndarray) -> np.ndarray:
    """``det(d coords / d v)`` per voxel (finite differences; > 0 everywhere = invertible).

    Unitless and equal to the determinant in mm because source and output grids coincide.
    """
    g = [np.gradient(np.asarray(coords[i], dtype=np.float64)) for i in range(3)]
    return (
        g[0][0] * (g[1][1] * g[2][2] - g[1][2] * g[2][1])
        - g[0][1] * (g[1][0] * g[2][2] - g[1][2] * g[2][0])
        + g[0][2] * (g[1][0] * g[2][1] - g[1][1] * g[2][0])
    )


def warp_image(
    image: npt.ArrayLike, coords: np.ndarray, order: int = 1, *, cval: float = 0.0
) -> np.ndarray:
    """Resample ``image`` at voxel ``coords`` (e.g. from :func:`smooth_random_warp`).

    ``out[v] = image(coords[:, v])`` with ``scipy.ndimage.map_coordinates``, ``mode="constant"``
    (``cval`` outside the grid). ``order=0`` (nearest neighbour, for label maps) keeps the
    input dtype and only ever outputs values of ``image`` or ``cval``; ``order=1`` (trilinear,
    for intensities) returns floating point.
    """
    image = np.asarray(image)
    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape[0] != image.ndim:
        raise ValueError(f"coords must be ({image.ndim}, ...), got {coords.shape}")
    if order == 0:
        src = image.astype(np.uint8) if image.dtype == bool else image
        out = ndimage.map_coordinates(
            src, coords, order=0, mode="constant", cval=cval, output=src.dtype
        )
        return out.astype(bool) if image.dtype == bool else out
    dtype = np.result_type(image.dtype, np.float32)
    return ndimage.map_coordinates(
        image.astype(dtype, copy=False), coords, order=order, mode="constant", cval=cval,
        output=dtype,
    )  # fmt: skip
