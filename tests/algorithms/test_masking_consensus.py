"""The consensus mask: brain extraction AND phase quality."""

import pytest

from qsmprep.algorithms import masking, simulate


@pytest.fixture(scope="module")
def data():
    ph = simulate.make_head_phantom((48, 48, 48), voxel_size_mm=(3, 3, 3), rng=0)
    sig = simulate.simulate_gre(
        ph.chi_ppm, voxel_size_mm=(3, 3, 3), echo_times_s=(0.004, 0.008, 0.012),
        m0=ph.m0 * ph.head_mask, r2star_hz=ph.r2star_3t, snr=50, rng=0,
    )  # fmt: skip
    return ph, sig


def test_consensus_removes_incoherent_voxels_from_a_too_large_brain_mask(data):
    ph, sig = data
    # a brain-extraction mask that wrongly includes a slab of air (noise phase) at the top
    too_large = ph.brain_mask.copy()
    too_large[:, :, 40:] = True
    mask = masking.consensus_mask(too_large, sig.phase_rad, sig.magnitude,
                                  echo_times_s=(0.004, 0.008, 0.012))  # fmt: skip
    air = ~ph.head_mask & too_large
    assert air.sum() > 500
    assert (mask & air).sum() < 0.01 * air.sum()  # noise phase is dropped
    kept = (mask & ph.brain_mask).sum() / ph.brain_mask.sum()
    assert kept > 0.97  # the coherent brain is kept
    assert not (mask & ~too_large).any()  # never grows beyond the brain mask


def test_consensus_validates(data):
    ph, sig = data
    with pytest.raises(ValueError, match="shape"):
        masking.consensus_mask(ph.brain_mask[1:], sig.phase_rad, echo_times_s=(0.004, 0.008, 0.012))
    with pytest.raises(ValueError, match="threshold"):
        masking.consensus_mask(ph.brain_mask, sig.phase_rad, echo_times_s=(0.004, 0.008, 0.012),
                               threshold=1.5)  # fmt: skip
