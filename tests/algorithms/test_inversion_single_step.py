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


@pytest.mark.parametrize(("chi_lesion", "r2star"), [(1.5, 150.0), (-0.6, 100.0)])
def test_a_haemorrhage_or_calcification_stays_local(chi_lesion, r2star):
    """A strong focal source with a dark magnitude (a 5 mm haemorrhage at +1.5 ppm, or a
    calcification at -0.6 ppm) through the default front end (magnitude mask, echo fit,
    Laplacian unwrapping) and single-step TV: no residual wrap, the lesion's susceptibility
    moment has its sign and strength, and the Chimap 15 mm away is what it is without the
    lesion. Measured here: moment 0.71 / 0.91, far NRMSE 50.1 / 49.4 % against 49.5 % without
    the lesion (benchmarks/lesion_robustness.py has the 1 mm figures). A sign error gives a
    negative moment."""
    from scipy import ndimage

    from qsmprep.algorithms import combine, simulate
    from qsmprep.algorithms.constants import hz_to_ppm
    from qsmprep.algorithms.masking import mask_from_magnitude
    from qsmprep.algorithms.unwrap import unwrap_field_hz

    ph = make_head_phantom((56, 64, 48), voxel_size_mm=VOX, rng=1)
    idx = np.argwhere(ph.brain_mask)
    centre = idx.min(0) + (idx.max(0) - idx.min(0)) * np.array([0.22, 0.55, 0.55])
    grid = np.indices(ph.chi_ppm.shape)
    dist = np.sqrt(sum(((g - c) * 3.0) ** 2 for g, c in zip(grid, centre, strict=True)))
    lesion = dist <= 5.0
    tes = (0.004, 0.008, 0.012, 0.016)

    def chimap(with_lesion: bool):
        chi, m0, r2s = ph.chi_ppm.copy(), ph.m0.copy(), ph.r2star_3t.copy()
        if with_lesion:
            chi[lesion], m0[lesion], r2s[lesion] = chi_lesion, 0.5, r2star
        sig = simulate.simulate_gre(chi, voxel_size_mm=VOX, echo_times_s=tes, b0_tesla=3.0,
                                    b0_direction=B0, m0=m0 * ph.head_mask, r2star_hz=r2s,
                                    snr=100.0, rng=1)  # fmt: skip
        mask = mask_from_magnitude(sig.magnitude, voxel_size_mm=VOX)
        fit = combine.fit_field_linear(sig.phase_rad, sig.magnitude, echo_times_s=tes, mask=mask)
        total = unwrap_field_hz(fit.field_hz, wrap_period_hz=fit.wrap_period_hz,
                                voxel_size_mm=VOX, mask=mask)  # fmt: skip
        true_total = forward_field(chi, voxel_size_mm=VOX, b0_direction=B0)
        est, core = single_step_tv(hz_to_ppm(total, b0_tesla=3.0) * mask, mask,
                                   voxel_size_mm=VOX, b0_direction=B0)  # fmt: skip
        scored = core & ph.brain_mask
        err = hz_to_ppm(total, b0_tesla=3.0) - true_total
        err -= np.median(err[scored])
        assert np.abs(err[scored]).max() < hz_to_ppm(fit.wrap_period_hz / 2, b0_tesla=3.0)
        truth = np.where(ph.brain_mask, chi, 0)
        return reference_chi(est, scored), truth - truth[scored].mean(), scored

    est, truth, scored = chimap(True)
    base, base_truth, base_scored = chimap(False)
    assert scored[lesion].all()
    near = ndimage.distance_transform_edt(~lesion, sampling=VOX) <= 6.0
    moment = est[near].sum() / truth[near].sum()
    assert 0.5 < moment < 1.3
    far = scored & base_scored & ~(ndimage.distance_transform_edt(~lesion, sampling=VOX) <= 15.0)
    assert nrmse(est, truth, far) < nrmse(base, base_truth, far) + 2.0
