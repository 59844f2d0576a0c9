"""Ground-truth tests of regional statistics, region referencing and nearest-neighbour labels."""

import math

import numpy as np
import pytest

from qsmprep.algorithms import simulate
from qsmprep.algorithms.regions import (
    WHOLE_BRAIN,
    reference_to_region,
    region_statistics,
    split_hemisphere,
    warp_labels_nearest,
)

SHAPE = (24, 24, 24)
SIGMA_PPM = 0.01
CHI_A, CHI_B = 0.10, -0.05


@pytest.fixture(scope="module")
def boxes():
    """Two labelled 10^3 boxes of known chi plus Gaussian noise, in a brain mask that cuts
    nothing from the boxes; background chi 0 + noise."""
    rng = np.random.default_rng(42)
    chi = rng.normal(0.0, SIGMA_PPM, SHAPE)
    labels = np.zeros(SHAPE, np.int16)
    labels[2:12, 2:12, 2:12] = 1
    labels[12:22, 12:22, 12:22] = 2
    chi[labels == 1] += CHI_A
    chi[labels == 2] += CHI_B
    mask = np.zeros(SHAPE, bool)
    mask[1:23, 1:23, 1:23] = True
    names = {1: "Putamen_L", 2: "Left-Caudate", 3: "Thalamus_right"}
    return chi, labels, mask, names


def by_label(rows):
    return {r["label"]: r for r in rows}


def test_box_statistics_match_truth(boxes):
    chi, labels, mask, names = boxes
    rows = by_label(region_statistics(chi, labels, label_names=names, mask=mask))
    for key, true_chi in [(1, CHI_A), (2, CHI_B)]:
        r = rows[key]
        assert r["n_voxels"] == 1000
        # sampling error of the mean is sigma / sqrt(1000) ~ 3e-4
        assert r["mean_ppm"] == pytest.approx(true_chi, abs=1e-3)
        assert r["median_ppm"] == pytest.approx(true_chi, abs=1.5e-3)
        assert r["std_ppm"] == pytest.approx(SIGMA_PPM, rel=0.1)
        # Gaussian IQR = 2 * 0.6745 sigma
        assert r["iqr_ppm"] == pytest.approx(1.349 * SIGMA_PPM, rel=0.1)
        vals = chi[labels == key]
        assert r["mean_ppm"] == pytest.approx(vals.mean(), abs=1e-12)
        assert r["std_ppm"] == pytest.approx(vals.std(ddof=1), abs=1e-12)
    assert rows[1]["mean_ppm"] - rows[2]["mean_ppm"] == pytest.approx(CHI_A - CHI_B, abs=1e-3)


def test_exact_statistics_on_known_values():
    """Values 1..N in shuffled order: mean = median = (N+1)/2, IQR = (N-1)/2 (linear
    percentiles), sample std = sqrt(N(N+1)/12)."""
    n = 4 * 5 * 6
    chi = np.random.default_rng(0).permutation(np.arange(1.0, n + 1)).reshape(4, 5, 6)
    labels = np.ones(chi.shape, np.int32)
    (r,) = [x for x in region_statistics(chi, labels, label_names={1: "a"}) if x["label"] == 1]
    assert r["n_voxels"] == n
    assert r["mean_ppm"] == pytest.approx((n + 1) / 2, abs=1e-12)
    assert r["median_ppm"] == pytest.approx((n + 1) / 2, abs=1e-12)
    assert r["iqr_ppm"] == pytest.approx((n - 1) / 2, abs=1e-12)
    assert r["std_ppm"] == pytest.approx(math.sqrt(n * (n + 1) / 12), abs=1e-12)


def test_rows_hemispheres_and_absent_label(boxes):
    chi, labels, mask, names = boxes
    rows = region_statistics(chi, labels, label_names=names, mask=mask)
    assert [(r["region"], r["hemisphere"], r["label"]) for r in rows] == [
        (WHOLE_BRAIN, "", 0),
        ("Putamen", "L", 1),
        ("Caudate", "L", 2),
        ("Thalamus", "R", 3),
    ]
    expected = {"region", "hemisphere", "label", "n_voxels", "mean_ppm", "median_ppm",
                "std_ppm", "iqr_ppm"}  # fmt: skip
    assert all(set(r) == expected for r in rows)
    absent = rows[3]
    assert absent["n_voxels"] == 0
    assert all(math.isnan(absent[k]) for k in ("mean_ppm", "median_ppm", "std_ppm", "iqr_ppm"))


def test_whole_brain_row_uses_the_mask(boxes):
    chi, labels, mask, names = boxes
    whole = region_statistics(chi, labels, label_names=names, mask=mask)[0]
    assert whole["region"] == WHOLE_BRAIN
    assert whole["n_voxels"] == 22**3
    expected = (1000 * (CHI_A + CHI_B)) / 22**3
    assert whole["mean_ppm"] == pytest.approx(expected, abs=1e-3)
    assert whole["median_ppm"] == pytest.approx(np.median(chi[mask]), abs=1e-12)


def test_mask_excludes_voxels_and_label_zero_is_skipped(boxes):
    chi, labels, _, names = boxes
    mask = np.zeros(SHAPE, bool)
    mask[:7] = True  # keeps x = 2..6 of box 1 (500 voxels), none of box 2
    rows = by_label(region_statistics(chi, labels, label_names={0: "bg", **names}, mask=mask))
    assert 0 in rows and rows[0]["region"] == WHOLE_BRAIN
    assert rows[1]["n_voxels"] == 500
    assert rows[2]["n_voxels"] == 0
    # without a mask every voxel counts
    rows = by_label(region_statistics(chi, labels, label_names=names))
    assert rows[0]["n_voxels"] == chi.size


def test_weighted_mean_with_partial_volume():
    """Half a label at 0.2 ppm with weight 1, half at -0.2 ppm with weight 0.25:
    weighted mean = (0.2 - 0.25 * 0.2) / 1.25 = 0.12, plain mean 0."""
    chi = np.zeros((8, 8, 8))
    labels = np.zeros(chi.shape, np.int16)
    labels[2:6, 2:6, 2:6] = 5
    weights = np.zeros(chi.shape)
    chi[2:4, 2:6, 2:6], weights[2:4, 2:6, 2:6] = 0.2, 1.0
    chi[4:6, 2:6, 2:6], weights[4:6, 2:6, 2:6] = -0.2, 0.25
    rows = by_label(region_statistics(chi, labels, label_names={5: "gp", 6: "sn"}, weights=weights))
    assert rows[5]["mean_ppm"] == pytest.approx(0.0, abs=1e-12)
    assert rows[5]["weighted_mean_ppm"] == pytest.approx(0.12, abs=1e-12)
    assert math.isnan(rows[6]["weighted_mean_ppm"])
    assert rows[0]["weighted_mean_ppm"] == rows[0]["mean_ppm"]
    assert "weighted_mean_ppm" not in region_statistics(chi, labels, label_names={5: "gp"})[1]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Putamen_L", ("Putamen", "L")),
        ("Putamen_R", ("Putamen", "R")),
        ("putamen_l", ("putamen", "L")),
        ("caudate_left", ("caudate", "L")),
        ("Caudate_RIGHT", ("Caudate", "R")),
        ("Left-Thalamus", ("Thalamus", "L")),
        ("right-Hippocampus", ("Hippocampus", "R")),
        ("Frontal_Sup_2_L", ("Frontal_Sup_2", "L")),
        ("Vermis_1_2", ("Vermis_1_2", "")),
        ("globus_pallidus", ("globus_pallidus", "")),
        ("Lateral-Ventricle", ("Lateral-Ventricle", "")),
        ("_L", ("_L", "")),
        ("Left-", ("Left-", "")),
        ("pallidum_lr", ("pallidum_lr", "")),
    ],
)
def test_split_hemisphere(name, expected):
    assert split_hemisphere(name) == expected


def test_region_statistics_validates_early(boxes):
    chi, labels, mask, names = boxes
    with pytest.raises(ValueError, match="labels shape"):
        region_statistics(chi, labels[:-1], label_names=names)
    with pytest.raises(ValueError, match="mask shape"):
        region_statistics(chi, labels, label_names=names, mask=mask[:-1])
    with pytest.raises(ValueError, match="integers"):
        region_statistics(chi, labels + 0.5, label_names=names)
    with pytest.raises(ValueError, match="int -> str"):
        region_statistics(chi, labels, label_names={"1": "a"})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        region_statistics(chi, labels, label_names=names, weights=np.full(SHAPE, 1.5))
    with pytest.raises(ValueError, match="weights shape"):
        region_statistics(chi, labels, label_names=names, weights=np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        region_statistics(chi, labels, label_names=names, mask=np.zeros(SHAPE, bool))
    bad = chi.copy()
    bad[5, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        region_statistics(bad, labels, label_names=names, mask=mask)
    with pytest.raises(TypeError):
        region_statistics(chi, labels, names)  # keyword-only


def test_reference_to_region_shifts_region_mean_to_zero(boxes):
    chi, labels, mask, _ = boxes
    region = labels == 1
    out = reference_to_region(chi, mask=mask, region_mask=region)
    assert out.dtype == np.float32
    assert abs(out[region & mask].mean()) < 1e-6
    assert np.all(out[~mask] == 0)
    # box 2 is now at (CHI_B - CHI_A) relative to box 1
    assert out[labels == 2].mean() == pytest.approx(CHI_B - CHI_A, abs=1e-3)
    with pytest.raises(ValueError, match="empty"):
        reference_to_region(chi, mask=mask, region_mask=~mask)
    with pytest.raises(ValueError, match="shape"):
        reference_to_region(chi, mask=mask, region_mask=region[:-1])


def test_warp_labels_nearest_identity_and_shift(boxes):
    _, labels, _, _ = boxes
    identity = np.indices(SHAPE, dtype=np.float64)
    out = warp_labels_nearest(labels, identity)
    assert out.dtype == labels.dtype
    np.testing.assert_array_equal(out, labels)
    # sub-half-voxel jitter still picks the same voxel, including at the edges of the grid
    jitter = np.random.default_rng(1).uniform(-0.49, 0.49, identity.shape)
    np.testing.assert_array_equal(warp_labels_nearest(labels, identity + jitter), labels)
    shifted = identity.copy()
    shifted[1] += 1.0  # out[x, y, z] = labels[x, y + 1, z]
    out = warp_labels_nearest(labels, shifted)
    np.testing.assert_array_equal(out[:, :-1], labels[:, 1:])
    assert np.all(out[:, -1] == 0)
    assert (out == 1).sum() == (labels == 1).sum()


def test_warp_labels_nearest_outside_and_validation():
    labels = np.arange(1, 9, dtype=np.int32).reshape(2, 2, 2) * 1000
    coords = np.array([[0.4, -0.6, 1.6, np.nan], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    coords = coords.reshape(3, 4, 1, 1)
    assert warp_labels_nearest(labels, coords).ravel().tolist() == [3000, 0, 0, 0]
    with pytest.raises(ValueError, match="integer"):
        warp_labels_nearest(labels.astype(float), coords)
    with pytest.raises(ValueError, match="coords_vox"):
        warp_labels_nearest(labels, coords[:2])


@pytest.fixture(scope="module")
def phantom():
    return simulate.make_head_phantom((48, 48, 48), voxel_size_mm=(3, 3, 3))


def test_phantom_region_means_match_tissue_truth(phantom):
    ph = phantom
    chi = ph.true_chi()  # referenced to the whole-brain mean
    rows = region_statistics(chi, ph.labels, label_names=ph.label_names, mask=ph.brain_mask)
    assert rows[0]["region"] == WHOLE_BRAIN
    assert abs(rows[0]["mean_ppm"]) < 1e-6
    means = {r["region"]: r["mean_ppm"] for r in rows[1:] if r["n_voxels"] > 0}
    assert {"globus_pallidus", "white_matter", "substantia_nigra", "csf"} <= set(means)
    assert means["globus_pallidus"] - means["white_matter"] == pytest.approx(0.18, abs=1e-6)
    wm_true = simulate.TISSUES["white_matter"][0]
    for region, mean in means.items():
        assert mean - means["white_matter"] == pytest.approx(
            simulate.TISSUES[region][0] - wm_true, abs=1e-6
        ), region
    # labels outside the brain (scalp, skull) have no voxel in the mask
    outside = {r["region"]: r for r in rows if r["region"] in ("scalp", "skull")}
    assert all(r["n_voxels"] == 0 and math.isnan(r["mean_ppm"]) for r in outside.values())


def test_phantom_reference_to_white_matter(phantom):
    ph = phantom
    names = {v: k for k, v in ph.label_names.items()}
    wm = ph.labels == names["white_matter"]
    chi = reference_to_region(ph.true_chi(), mask=ph.brain_mask, region_mask=wm)
    gp = ph.labels == names["globus_pallidus"]
    assert abs(chi[wm].mean()) < 1e-6
    assert chi[gp].mean() == pytest.approx(0.18, abs=1e-6)


def test_core_labels_drop_each_regions_boundary():
    from qsmprep.algorithms.regions import core_labels

    lab = np.zeros((9, 9, 9), np.int16)
    lab[1:8, 1:8, 1:8] = 1  # a 7^3 cube: its core is the inner 5^3
    lab[3:6, 3:6, 3:6] = 2  # a 3^3 nucleus inside it: core is its centre voxel
    core = core_labels(lab)
    assert core[4, 4, 4] == 2 and (core == 2).sum() == 1
    # region 1 loses its outer shell and the 6 x 9 voxels facing region 2: 125 - 27 - 54
    assert (core == 1).sum() == 44
    assert core[2, 2, 2] == 1 and core[1, 4, 4] == 0 and core[2, 4, 4] == 0  # shell, facing 2
    assert core.dtype == lab.dtype and set(np.unique(core)) <= {0, 1, 2}
    with pytest.raises(ValueError):
        core_labels(lab.astype(float))
