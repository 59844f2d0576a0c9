"""Ground-truth tests of the magnitude and phase-quality masks on the head phantom."""

import numpy as np
import pytest
from scipy import ndimage

from qsmprep.algorithms import simulate
from qsmprep.algorithms.masking import (
    mask_from_magnitude,
    mask_from_phase_quality,
    otsu_threshold,
    phase_quality_map,
)

VOX = (3.0, 3.0, 3.0)
SHAPE = (64, 64, 64)
TES = (0.004, 0.008, 0.012, 0.016)


def dice(a, b):
    return 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b))


@pytest.fixture(scope="module")
def phantom():
    return simulate.make_head_phantom(SHAPE, voxel_size_mm=VOX)


@pytest.fixture(scope="module", params=[100, 5], ids=["snr100", "snr5"])
def signal(request, phantom):
    return simulate.simulate_gre(
        phantom.chi_ppm, voxel_size_mm=VOX, echo_times_s=TES, m0=phantom.m0,
        r2star_hz=phantom.r2star_3t, phase_offset_rad=simulate.phase_offset_map(SHAPE, rng=1),
        snr=request.param, rng=2,
    )  # fmt: skip


def test_magnitude_mask_is_the_head(phantom, signal):
    """Scalp (M0 0.8) and brain (0.7-1.0) have the same intensity, so a threshold finds the
    head (the sinus, an enclosed air hole, is filled). The brain is ~51 % of the head's
    volume, so a head mask has Dice 2 * 0.51 / 1.51 ~ 0.68 with the brain: checked to make
    the behaviour explicit (and to catch a mask that shrank or grew)."""
    mask = mask_from_magnitude(signal.magnitude)
    assert mask.dtype == bool and mask.shape == SHAPE
    assert dice(mask, phantom.head_mask) >= 0.99
    assert 0.62 < dice(mask, phantom.brain_mask) < 0.74
    assert mask[phantom.brain_mask].all()


def test_erosions_reach_the_brain(phantom, signal):
    """The scalp is ~17 mm (~6 voxels) thick: 6 erosions leave roughly the brain."""
    mask = mask_from_magnitude(signal.magnitude, erosions=6)
    assert dice(mask, phantom.brain_mask) >= 0.93
    assert not (mask & ~ndimage.binary_fill_holes(phantom.head_mask)).any()  # sinus filled


def test_single_echo_magnitude(phantom, signal):
    mask = mask_from_magnitude(signal.magnitude[..., 0])
    assert dice(mask, phantom.head_mask) >= 0.99


def test_small_head_in_a_field_of_view_of_noise():
    """Head in 5 % of the field of view, complex noise everywhere, SNR 5: Otsu on the clipped
    histogram still separates air noise from tissue (Dice >= 0.99 with the head)."""
    small = simulate.make_head_phantom((32, 32, 32), voxel_size_mm=VOX)
    sig = simulate.simulate_gre(
        small.chi_ppm, voxel_size_mm=VOX, echo_times_s=TES, m0=small.m0,
        r2star_hz=small.r2star_3t, snr=None,
    )  # fmt: skip
    rng = np.random.default_rng(3)
    big = np.zeros(SHAPE + (4,), np.complex64)
    big[16:48, 16:48, 16:48] = sig.magnitude * np.exp(1j * sig.phase_rad)
    big += rng.normal(0, 0.2, big.shape) + 1j * rng.normal(0, 0.2, big.shape)
    head = np.zeros(SHAPE, bool)
    head[16:48, 16:48, 16:48] = small.head_mask
    assert head.mean() < 0.06
    assert dice(mask_from_magnitude(np.abs(big)), head) >= 0.99


def test_image_without_background_is_kept_whole():
    """A crop inside tissue (two tissue classes, no air): there is nothing to remove."""
    rng = np.random.default_rng(0)
    tissue = np.where(rng.random((20, 20, 20)) < 0.5, 0.7, 0.85) + rng.normal(0, 0.02, (20,) * 3)
    assert mask_from_magnitude(tissue).all()


def test_largest_component_and_holes():
    mag = np.zeros((40, 40, 40), np.float32)
    mag[5:30, 5:30, 5:30] = 1.0
    mag[12:22, 12:22, 12:22] = 0.0  # enclosed hole: filled
    mag[8:27, 15:18, 26:30] = 0.0  # a groove open to the top face: closed slice-wise
    mag[34:38, 34:38, 34:38] = 1.0  # a separate blob: dropped
    mask = mask_from_magnitude(mag)
    expected = np.zeros_like(mask)
    expected[5:30, 5:30, 5:30] = True
    assert np.array_equal(mask, expected)


def test_fixed_threshold_and_validation(phantom):
    rng = np.random.default_rng(0)
    mag = np.abs(phantom.m0 + rng.normal(0, 0.02, SHAPE) + 1j * rng.normal(0, 0.02, SHAPE))
    mask = mask_from_magnitude(mag, threshold=0.3)  # 0.3 of the robust maximum (~1)
    assert dice(mask, phantom.head_mask) >= 0.99
    with pytest.raises(ValueError, match="fraction"):
        mask_from_magnitude(mag, threshold=30.0)
    with pytest.raises(ValueError, match="erosions"):
        mask_from_magnitude(mag, erosions=-1)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        mask_from_magnitude(np.ones((4, 4)))
    with pytest.raises(ValueError, match="zero"):
        mask_from_magnitude(np.zeros((4, 4, 4)))


def test_otsu_threshold_splits_two_classes():
    values = np.concatenate([np.full(900, 1.0), np.full(100, 5.0)])
    assert 1.0 <= otsu_threshold(values) < 5.0


def test_phase_quality_of_noise_and_of_steep_smooth_phase():
    """Random phase: E[q] = sqrt(pi / 72) ~ 0.21. A linear ramp of 2.5 rad/voxel (wrapping
    every 2-3 voxels) is perfectly coherent in its gradient: q = 1."""
    rng = np.random.default_rng(0)
    noise = rng.uniform(-np.pi, np.pi, (32, 32, 32))
    q = phase_quality_map(noise, echo_times_s=(0.01,))
    assert 0.18 < q.mean() < 0.24
    assert q.dtype == np.float32 and q.min() >= 0 and q.max() <= 1
    x = np.arange(32)[:, None, None] * np.ones((1, 32, 32))
    ramp = np.angle(np.exp(1j * (2.5 * x + 0.7 * x.transpose(1, 0, 2))))
    assert phase_quality_map(ramp, echo_times_s=(0.01,)).min() > 0.999
    # two echoes: the temporal difference removes any offset; a ramp that grows with TE
    two = np.stack([ramp, np.angle(np.exp(1j * (2 * ramp + noise)))], -1)
    assert phase_quality_map(two, echo_times_s=(0.01, 0.02)).mean() < 0.3


@pytest.mark.parametrize("echoes", [4, 1], ids=["multi-echo", "single-echo"])
@pytest.mark.parametrize("use_magnitude", [False, True], ids=["phase", "phase+mag"])
def test_phase_quality_mask_covers_the_brain_without_air(phantom, signal, echoes, use_magnitude):
    """Phase coherence finds tissue but drops scalp next to air where the 3 mm voxels do not
    resolve the field (~5 % of the head): Dice >= 0.92 with the head, the whole brain kept,
    and (almost) no voxel more than one voxel outside the head."""
    mag = signal.magnitude[..., :echoes] if use_magnitude else None
    mask = mask_from_phase_quality(signal.phase_rad[..., :echoes], mag, echo_times_s=TES[:echoes])
    assert dice(mask, phantom.head_mask) >= 0.92
    assert mask[phantom.brain_mask].mean() >= 0.999
    outside = mask & ~ndimage.binary_dilation(phantom.head_mask)
    assert outside.sum() <= 0.005 * mask.sum()


def test_phase_quality_validation():
    phase = np.zeros((8, 8, 8, 2))
    with pytest.raises(ValueError, match="expected 2 echo times"):
        phase_quality_map(phase, echo_times_s=(0.01,))
    with pytest.raises(ValueError, match="threshold"):
        mask_from_phase_quality(phase, echo_times_s=(0.01, 0.02), threshold=2.0)
    with pytest.raises(ValueError, match="seconds"):
        phase_quality_map(phase, echo_times_s=(10.0, 20.0))
