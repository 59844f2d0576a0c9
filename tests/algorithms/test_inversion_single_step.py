"""Single-step TV QSM from the *total* field, against the head phantom's ground truth.

The phantom's background (air around the head, a sinus, the skull) is ~24x the brain's own field
in standard deviation. A method that left it in, or had the wrong kernel or sign, would score
far above the thresholds here (returning zeros scores 100 %, a sign flip about 200 %).
"""

from __future__ import annotations

import numpy as np
import pytest

from qsmprep.algorithms.background import erode_mask, resharp
from qsmprep.algorithms.inversion import _common, invert
from qsmprep.algorithms.inversion.single_step import single_step_tv
from qsmprep.algorithms.kernels import forward_field
from qsmprep.algorithms.metrics import nrmse, region_means, regression_slope
from qsmprep.algorithms.referencing import reference_chi
from qsmprep.algorithms.simulate import make_head_phantom

VOX = (3.0, 3.0, 3.0)
B0 = (np.sin(np.pi / 12), 0.0, np.cos(np.pi / 12))  # 15 degrees oblique
DEEP = ("caudate", "putamen", "globus_pallidus", "thalamus", "substantia_nigra", "red_nucleus")


@pytest.fixture(scope="module")
def head():
    ph = make_head_phantom((64, 64, 64), voxel_size_mm=VOX)
    rng = np.random.default_rng(0)
    total = forward_field(ph.chi_ppm, voxel_size_mm=VOX, b0_direction=B0)
    total = (total + rng.normal(0, 1e-3, total.shape)).astype(np.float32)
    brain = ph.brain_mask
    chi, valid = single_step_tv(total, brain, voxel_size_mm=VOX, b0_direction=B0)
    core = erode_mask(brain, voxel_size_mm=VOX, radius_mm=6.0)
    assert np.array_equal(valid, core)  # the data region: RESHARP's valid mask
    return ph, total, brain, chi, core


def test_recovers_chi_from_the_total_field(head):
    ph, total, brain, chi, core = head
    assert chi.shape == brain.shape and chi.dtype == np.float32
    assert np.all(chi[~brain] == 0)
    truth = ph.true_chi()
    est = reference_chi(chi, core)
    # default lambda 2e-4 ppm per voxel jump = 6e-4 ppm mm at 3 mm: measured 41.2 % (RESHARP
    # then TV on the same voxels: 41.1 %; zeros 100 %, -chi 183 %)
    assert nrmse(est, truth, core) < 44.0
    ids = [k for k, v in ph.label_names.items() if v in DEEP]
    slope = regression_slope(region_means(est, ph.labels, ids), region_means(truth, ph.labels, ids))
    assert 0.8 < slope < 1.2  # measured 0.99: a sign, kernel or unit error fails here


def test_better_than_resharp_then_tv_at_the_same_regularization(head):
    """Same TV weight (4e-4 ppm mm) for both, against the k-space TV of the earlier two-step
    default: measured 38.1 % against 41.1 %. (TV's default data term, inside the mask only,
    ties with single-step TV here: 38.1 %; benchmarks.md compares them through the pipeline.)"""
    ph, total, brain, chi, core = head
    local, valid = resharp(total, brain, voxel_size_mm=VOX)
    two_step = reference_chi(invert("tv", local, valid, voxel_size_mm=VOX, b0_direction=B0,
                                    regularization=4e-4, masked=False), core)  # fmt: skip
    one_step, _ = single_step_tv(total, brain, voxel_size_mm=VOX, b0_direction=B0,
                                 regularization=4e-4)  # fmt: skip
    one_step = reference_chi(one_step, core)
    assert nrmse(one_step, ph.true_chi(), core) < nrmse(two_step, ph.true_chi(), core) - 2.0


def test_default_regularization_is_per_voxel_jump():
    """lambda = 2e-4 ppm x the geometric-mean voxel size (mm): same result as passing it."""
    vox = (2.0, 2.0, 3.0)
    ph = make_head_phantom((40, 40, 28), voxel_size_mm=vox)
    total = np.where(ph.brain_mask, forward_field(ph.chi_ppm, voxel_size_mm=vox), 0)
    auto, _ = single_step_tv(total, ph.brain_mask, voxel_size_mm=vox, max_iterations=10)
    lam = 2e-4 * (2.0 * 2.0 * 3.0) ** (1 / 3)
    given, _ = single_step_tv(total, ph.brain_mask, voxel_size_mm=vox, max_iterations=10,
                              regularization=lam)  # fmt: skip
    np.testing.assert_allclose(auto, given, atol=1e-6)
    other, _ = single_step_tv(total, ph.brain_mask, voxel_size_mm=vox, max_iterations=10,
                              regularization=4e-4)  # fmt: skip
    assert np.abs(other - auto).max() > 1e-4


def test_harmonic_background_is_ignored(head):
    """A field harmonic in the mask (a linear gradient plus an offset) changes nothing."""
    ph, total, brain, chi, core = head
    i, j, k = np.indices(total.shape, dtype=np.float32)
    shifted = total + 0.05 * i - 0.03 * k + 2.0
    again, _ = single_step_tv(shifted, brain, voxel_size_mm=VOX, b0_direction=B0)
    # measured 0.001 %
    assert nrmse(reference_chi(again, core), reference_chi(chi, core), core) < 1.0


def test_no_padding_needed_beyond_the_mask_box(head):
    """The fields of the periodic copies are harmonic in the box and removed by the SMV
    high-pass, so padding the box 2x changes the result only by the iterations' noise
    (measured 1.0 %; the accuracy goes 38.1 -> 37.9 %)."""
    ph, total, brain, chi, core = head
    padded, _ = single_step_tv(total, brain, voxel_size_mm=VOX, b0_direction=B0, pad_factor=2.0)
    assert nrmse(reference_chi(padded, core), reference_chi(chi, core), core) < 3.0


def test_numpy_fallback_matches_numba(head, monkeypatch):
    """Without numba the fused steps run in numpy, with the same result."""
    ph, total, brain, chi, core = head
    monkeypatch.setattr(_common, "_nb", None)
    plain, _ = single_step_tv(total, brain, voxel_size_mm=VOX, b0_direction=B0)
    np.testing.assert_allclose(plain, chi, atol=1e-5)


def test_invalid_inputs():
    m = np.zeros((16, 16, 16), bool)
    m[4:12, 4:12, 4:12] = True
    f = np.zeros(m.shape, np.float32)
    with pytest.raises(ValueError, match="radius_mm"):
        single_step_tv(f, m, voxel_size_mm=(1, 1, 1), radius_mm=0.5)
    with pytest.raises(ValueError, match=r"too thin.*smaller radius_mm \(a few voxels, e.g. 4 mm"):
        single_step_tv(f, m, voxel_size_mm=(1, 1, 1), radius_mm=6.0)
    with pytest.raises(ValueError, match="regularization"):
        single_step_tv(f, m, voxel_size_mm=(1, 1, 1), radius_mm=2.0, regularization=-1)


def test_anisotropic_voxels_are_used_in_mm():
    """2 x 2 x 3 mm voxels: the SMV sphere, the erosion and the dipole kernel are in mm.
    Measured 28.9 %; the same data with the voxel size taken as 2 mm or 3 mm isotropic:
    44 % and 50 %."""
    vox = (2.0, 2.0, 3.0)
    ph = make_head_phantom((80, 80, 52), voxel_size_mm=vox)
    total = forward_field(ph.chi_ppm, voxel_size_mm=vox)
    brain = ph.brain_mask
    chi, valid = single_step_tv(np.where(brain, total, 0), brain, voxel_size_mm=vox)
    assert np.array_equal(valid, erode_mask(brain, voxel_size_mm=vox, radius_mm=6.0))
    assert nrmse(reference_chi(chi, valid), ph.true_chi(), valid) < 35.0


def test_support_penalty_defaults_to_100_lambda_and_sets_the_fit_speed(head):
    """rho_3 = 100 lambda when not given (explicitly the same: the same output to the bit). A
    smaller rho_3 fits the low frequencies sooner within the iteration budget: on this clean
    phantom (true brain mask, nothing in its rim) measured 41.2 -> 24.6 % at 0.003. Through
    the pipeline it loses on the anatomical heads, hence not the default (benchmarks.md)."""
    ph, total, brain, chi, core = head
    lam = 2e-4 * 3.0  # the default per-jump weight at 3 mm
    same, _ = single_step_tv(total, brain, voxel_size_mm=VOX, b0_direction=B0,
                             support_penalty=100 * lam)  # fmt: skip
    np.testing.assert_array_equal(same, chi)
    fast, _ = single_step_tv(total, brain, voxel_size_mm=VOX, b0_direction=B0,
                             support_penalty=0.003)  # fmt: skip
    truth = ph.true_chi()
    default_err = nrmse(reference_chi(chi, core), truth, core)
    assert nrmse(reference_chi(fast, core), truth, core) < default_err - 10.0
    with pytest.raises(ValueError, match="support_penalty"):
        single_step_tv(total, brain, voxel_size_mm=VOX, support_penalty=-1.0)
