"""Ground-truth tests of the template-based head phantom and of the smooth random warps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from qsmprep.algorithms.simulate import CHI_AIR_PPM, TISSUES
from qsmprep.algorithms.simulate_anatomy import (
    EXTRA_CLASSES,
    SINUS_WALL_MM,
    jacobian_determinant,
    make_anatomical_phantom,
    padded_affine,
    smooth_random_warp,
    warp_image,
)

SHAPE = (48, 48, 48)
VOX = (2.0, 2.0, 2.0)
PAD_MM = 20.0
CAUDATE, PALLIDUM, UNMAPPED = 3, 8, 5  # atlas labels; UNMAPPED is not in label_tissues
LABEL_TISSUES = {CAUDATE: "caudate", PALLIDUM: "globus_pallidus"}
T1_VALUES = {"csf": 30.0, "grey_matter": 60.0, "white_matter": 100.0}


def _ellipsoid(centre_mm, semi_mm):
    grid = [(np.arange(n) - (n - 1) / 2.0) * d for n, d in zip(SHAPE, VOX, strict=True)]
    x, y, z = np.meshgrid(*grid, indexing="ij")
    axes = zip((x, y, z), centre_mm, semi_mm, strict=True)
    return sum(((g - c) / s) ** 2 for g, c, s in axes) <= 1.0


@pytest.fixture(scope="module")
def template():
    """A 48^3 2 mm "T1": GM shell, WM core, two CSF ventricles, two mapped label blobs in the
    deep grey matter, one unmapped label blob in WM and a stray mapped label outside the brain.
    Returns (t1, brain, atlas, truth class name per voxel)."""
    brain = _ellipsoid((0, 0, 0), (38, 42, 36))
    wm = _ellipsoid((0, 0, 0), (30, 34, 28))
    vents = _ellipsoid((-6, 4, 8), (3, 12, 4)) | _ellipsoid((6, 4, 8), (3, 12, 4))
    truth = np.full(SHAPE, "", dtype=object)
    truth[brain] = "grey_matter"
    truth[wm] = "white_matter"
    truth[vents] = "csf"
    atlas = np.zeros(SHAPE, np.int16)
    atlas[_ellipsoid((-12, 6, -4), (5, 5, 5))] = CAUDATE
    atlas[_ellipsoid((12, 6, -4), (5, 5, 5))] = PALLIDUM
    atlas[_ellipsoid((0, -20, 0), (6, 6, 6))] = UNMAPPED
    atlas[0, 0, 0] = CAUDATE  # outside the brain: ignored
    rng = np.random.default_rng(1)
    t1 = np.zeros(SHAPE)
    for name, value in T1_VALUES.items():
        t1[truth == name] = value
    t1[brain] += rng.normal(0.0, 2.0, int(brain.sum()))
    return t1, brain, atlas, truth


@pytest.fixture(scope="module")
def phantom(template):
    t1, brain, atlas, _ = template
    return make_anatomical_phantom(
        t1, brain, atlas, LABEL_TISSUES, voxel_size_mm=VOX, pad_mm=PAD_MM, vein_count=2
    )


def _enclosed_air(head_mask):
    """Air not connected to the border of the grid."""
    comps, _ = ndimage.label(~head_mask)
    faces = [comps[0], comps[-1], comps[:, 0], comps[:, -1], comps[:, :, 0], comps[:, :, -1]]
    border = np.unique(np.concatenate([f.ravel() for f in faces]))
    return (comps > 0) & ~np.isin(comps, border)


def _pad(a, pad_vox):
    return np.pad(a, [(p, p) for p in pad_vox])


def test_padding_and_masks(template, phantom):
    _, brain, atlas, _ = template
    ph, pad_vox = phantom
    assert pad_vox == (10, 10, 10)
    assert ph.chi_ppm.shape == tuple(n + 20 for n in SHAPE)
    np.testing.assert_array_equal(ph.brain_mask, _pad(brain, pad_vox))
    assert not (ph.head_mask & ~ph.brain_mask & (ph.labels == 0)).any()
    assert (ph.head_mask == (ph.labels != 0)).all()
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = (-47.0, -47.0, -47.0)
    # padded voxel (10, 10, 10) is original voxel (0, 0, 0)
    np.testing.assert_allclose(padded_affine(aff, pad_vox) @ [10, 10, 10, 1], [-47, -47, -47, 1])


def test_brain_chi_exact_per_label(phantom):
    """Inside the brain every label is one constant TISSUES value (chi, M0, R2*)."""
    ph, _ = phantom
    inside = np.unique(ph.labels[ph.brain_mask])
    assert set(inside) == {CAUDATE, PALLIDUM} | {
        int(ph.labels.max()) - 6 + k for k in range(4)
    }  # four brain classes: csf, grey_matter, white_matter, vein
    for lab in inside:
        sel = ph.brain_mask & (ph.labels == lab)
        tissue = ph.label_names[int(lab)]
        chi, m0, r2s = (np.float32(v) for v in TISSUES[tissue])
        assert (ph.chi_ppm[sel] == chi).all(), tissue
        assert (ph.m0[sel] == m0).all() and (ph.r2star_3t[sel] == r2s).all(), tissue
    assert ph.label_names[CAUDATE] == "caudate"
    assert ph.label_names[PALLIDUM] == "globus_pallidus"
    assert UNMAPPED not in ph.label_names and CAUDATE not in ph.labels[~ph.brain_mask]


def test_extra_label_ids_follow_atlas_max(phantom):
    ph, _ = phantom
    base = UNMAPPED + 3  # max atlas label is PALLIDUM = 8
    for k, name in enumerate(EXTRA_CLASSES):
        assert ph.label_names[base + 1 + k] == name


def test_t1_classification_matches_truth(template, phantom):
    """k-means on T1 recovers CSF / GM / WM exactly (classes 7.5 noise SDs apart); atlas
    structures and veins take precedence; the unmapped label is classified like its T1."""
    _, _, atlas, truth = template
    ph, pad_vox = phantom
    name = np.vectorize(lambda v: ph.label_names.get(int(v), ""), otypes=[object])(ph.labels)
    truth = _pad(truth, pad_vox)
    atlas = _pad(atlas, pad_vox)
    check = ph.brain_mask & ~np.isin(atlas, list(LABEL_TISSUES)) & (name != "vein")
    assert check.sum() > 0.9 * ph.brain_mask.sum()
    assert (name[check] == truth[check]).all()
    assert (name[atlas == UNMAPPED] == "white_matter").all()
    veins = name == "vein"
    assert veins.any() and not (veins & np.isin(atlas, list(LABEL_TISSUES))).any()


def test_layers_at_expected_distances(phantom):
    """Along the +x axis from the brain's edge (2 mm voxels): CSF at 2 mm, skull at 4-6 mm,
    scalp at 8-12 mm, air from 14 mm; and everywhere, the layer of a voxel matches its
    distance to the brain (away from the sinus)."""
    ph, _ = phantom
    names = {v: k for k, v in ph.label_names.items()}
    c = ph.labels.shape[1] // 2
    line = ph.brain_mask[:, c, c]
    edge = int(np.nonzero(line)[0].max())
    expected = ["extracerebral_csf"] + ["skull"] * 2 + ["scalp"] * 3
    got = [ph.label_names.get(int(v), "air") for v in ph.labels[edge + 1 : edge + 8, c, c]]
    assert got == expected + ["air"]
    dist = ndimage.distance_transform_edt(~ph.brain_mask, sampling=VOX)
    sinus = _enclosed_air(ph.head_mask)
    near_sinus = ndimage.distance_transform_edt(~sinus, sampling=VOX) <= SINUS_WALL_MM
    for lo, hi, name in [(0, 2, "extracerebral_csf"), (2, 7, "skull"), (7, 12, "scalp")]:
        sel = (dist > lo) & (dist <= hi) & ~near_sinus
        assert (ph.labels[sel] == names[name]).all(), name
    assert (ph.labels[(dist > 12.0) & ~near_sinus] == 0).all()


def test_air_and_smoothing_outside_brain(phantom):
    ph, _ = phantom
    for corner in [(0, 0, 0), (-1, -1, -1), (0, -1, 0), (-1, 0, -1)]:
        assert ph.chi_ppm[corner] == pytest.approx(CHI_AIR_PPM, abs=1e-5)
        assert ph.m0[corner] == 0 and ph.r2star_3t[corner] == 0
    assert (ph.m0[ph.labels == 0] == 0).all()
    skull = ph.labels == {v: k for k, v in ph.label_names.items()}["skull"]
    assert ph.chi_ppm[skull].min() < -1.0 and ph.r2star_3t[skull].min() == 300.0
    # smoothed outside: many intermediate values, vs a handful of exact values inside
    outside = np.unique(ph.chi_ppm[~ph.brain_mask])
    assert outside.size > 100 and np.unique(ph.chi_ppm[ph.brain_mask]).size == 6
    assert ((outside > -1.9) & (outside < -0.1)).any() and ((outside > 1) & (outside < 9)).any()


def test_enclosed_air_sinus_under_frontal_lobe(phantom):
    ph, _ = phantom
    sinus = _enclosed_air(ph.head_mask)
    assert ndimage.label(sinus)[1] == 1 and sinus.sum() > 30
    centre = np.array(ndimage.center_of_mass(sinus))
    brain_centre = np.array(ndimage.center_of_mass(ph.brain_mask))
    assert centre[1] > brain_centre[1] + 5 and centre[2] < brain_centre[2] - 10
    assert abs(centre[0] - brain_centre[0]) < 1
    dist = ndimage.distance_transform_edt(~ph.brain_mask, sampling=VOX)
    assert dist[sinus].min() >= 4.0
    assert ph.chi_ppm[sinus].max() > 5.0 and (ph.m0[sinus] == 0).all()


def test_phantom_rejects_bad_input(template):
    t1, brain, atlas, _ = template
    with pytest.raises(ValueError, match="unknown tissue"):
        make_anatomical_phantom(t1, brain, atlas, {3: "bone"}, voxel_size_mm=VOX)
    with pytest.raises(ValueError, match="one shape"):
        make_anatomical_phantom(t1[1:], brain, atlas, LABEL_TISSUES, voxel_size_mm=VOX)


# ------------------------------------------------------------------------------------ warps

WSHAPE = (40, 36, 32)
WVOX = (2.0, 2.5, 3.0)


def test_warp_zero_settings_is_identity():
    coords = smooth_random_warp(WSHAPE, voxel_size_mm=WVOX, max_displacement_mm=0.0)
    assert coords.shape == (3,) + WSHAPE
    np.testing.assert_allclose(coords, np.indices(WSHAPE), atol=1e-6, rtol=0)


def test_warp_translation_in_mm():
    coords = smooth_random_warp(
        WSHAPE, voxel_size_mm=WVOX, max_displacement_mm=0.0, translation_mm=(2.0, 5.0, -3.0)
    )
    shift = np.broadcast_to(np.reshape([1.0, 2.0, -1.0], (3, 1, 1, 1)), coords.shape)
    np.testing.assert_allclose(coords - np.indices(WSHAPE), shift, atol=1e-9)


def test_warp_max_displacement_bound_and_invertible():
    kw = dict(voxel_size_mm=WVOX, rotation_deg=(5.0, -3.0, 10.0), translation_mm=(1, 2, 3))
    rigid = smooth_random_warp(WSHAPE, max_displacement_mm=0.0, **kw)
    coords = smooth_random_warp(WSHAPE, max_displacement_mm=4.0, rng=3, **kw)
    disp_mm = (coords - rigid) * np.reshape(WVOX, (3, 1, 1, 1))
    norm = np.sqrt((disp_mm**2).sum(axis=0))
    assert norm.max() == pytest.approx(4.0, abs=1e-9)
    assert np.median(norm) > 0.5  # a real deformation, not a single spike
    det = jacobian_determinant(coords)
    assert det.min() > 0.2 and abs(det.mean() - 1.0) < 0.05
    np.testing.assert_array_equal(
        coords, smooth_random_warp(WSHAPE, max_displacement_mm=4.0, rng=3, **kw)
    )
    assert not np.allclose(coords, smooth_random_warp(WSHAPE, max_displacement_mm=4.0, **kw))


def test_jacobian_detects_folding():
    coords = smooth_random_warp(
        WSHAPE, voxel_size_mm=WVOX, max_displacement_mm=20.0, smoothness_mm=3.0
    )
    assert jacobian_determinant(coords).min() < 0


def test_rotation_90_about_axis2_maps_known_voxel():
    shape = (9, 9, 9)
    src = np.zeros(shape, np.float32)
    src[4, 5, 4] = 1.0  # one voxel anterior of the centre (4, 4, 4)
    coords = smooth_random_warp(
        shape, voxel_size_mm=(1.0, 1.0, 1.0), max_displacement_mm=0.0, rotation_deg=(0, 0, 90)
    )
    np.testing.assert_allclose(coords[:, 5, 4, 4], [4, 5, 4], atol=1e-12)
    out = warp_image(src, coords, order=1)
    assert out[5, 4, 4] == pytest.approx(1.0) and out.sum() == pytest.approx(1.0)


def test_warp_image_labels_keep_values(template):
    _, _, atlas, _ = template
    coords = smooth_random_warp(
        atlas.shape, voxel_size_mm=VOX, rotation_deg=(0, 10, 20), translation_mm=(3, -2, 1)
    )
    out = warp_image(atlas, coords, order=0)
    assert out.dtype == atlas.dtype and out.shape == atlas.shape
    assert set(np.unique(out)) <= set(np.unique(atlas)) | {0}
    assert {CAUDATE, PALLIDUM, UNMAPPED} <= set(np.unique(out))
    assert (warp_image(atlas.astype(bool), coords, order=0) == (out > 0)).all()
    smooth = warp_image(np.ones(atlas.shape), coords, order=1)
    assert smooth[20:28, 20:28, 20:28].min() == pytest.approx(1.0)
