"""Ground-truth tests of SWI (phase mask sign, vein contrast across field strengths) and minIP."""

import numpy as np
import pytest
from scipy import ndimage

from qsmprep.algorithms import simulate
from qsmprep.algorithms.constants import GAMMA_BAR_HZ_PER_T
from qsmprep.algorithms.kernels import forward_field
from qsmprep.algorithms.swi import (
    default_swi_echo_time_s,
    homodyne_highpass,
    minimum_intensity_projection,
    swi,
    swi_phase_mask,
)

VOX = (3.0, 3.0, 3.0)
SHAPE = (64, 64, 64)


def _cylinder(point_mm, direction, radius_mm):
    grid = [
        ((np.arange(n) - (n - 1) / 2.0) * h).reshape([-1 if a == i else 1 for a in range(3)])
        for i, (n, h) in enumerate(zip(SHAPE, VOX, strict=True))
    ]
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    rel = [g - p for g, p in zip(grid, point_mm, strict=True)]
    along = sum(r * di for r, di in zip(rel, d, strict=True))
    return sum(r**2 for r in rel) - along**2 <= radius_mm**2


@pytest.fixture(scope="module")
def phantom():
    """Head phantom whose three veins run within ~15 deg of B0 (z): the orientation where a
    vein's own phase has the sign of its susceptibility (beyond the magic angle it flips)."""
    ph = simulate.make_head_phantom(SHAPE, voxel_size_mm=VOX, vein_count=0)
    names = {v: k for k, v in ph.label_names.items()}
    veins = np.zeros(SHAPE, bool)
    for point, direction in [((-25, 10, 0), (0.1, 0, 1)), ((25, -15, 5), (0, 0.2, 1)),
                             ((0, 30, 10), (-0.2, 0.1, 1))]:  # fmt: skip
        veins |= _cylinder(point, direction, 3.0)
    veins &= ph.labels == names["white_matter"]
    chi, pd, r2s = simulate.TISSUES["vein"]
    ph.labels[veins] = names["vein"]
    ph.chi_ppm[veins], ph.m0[veins], ph.r2star_3t[veins] = chi, pd, r2s
    return ph


def regions(ph):
    names = {v: k for k, v in ph.label_names.items()}
    vein = ph.labels == names["vein"]
    wm = ph.labels == names["white_matter"]
    near = wm & ndimage.binary_dilation(vein, iterations=2)
    return vein, near, wm


def echo(ph, b0_tesla):
    te = default_swi_echo_time_s(b0_tesla)
    sig = simulate.simulate_gre(
        ph.chi_ppm, voxel_size_mm=VOX, echo_times_s=(te,), b0_tesla=b0_tesla, m0=ph.m0,
        r2star_hz=simulate.r2star_at(ph.r2star_3t, b0_tesla),
        phase_offset_rad=simulate.phase_offset_map(SHAPE, rng=1), snr=50, rng=3,
    )  # fmt: skip
    return sig.magnitude[..., 0], sig.phase_rad[..., 0], sig, te


def contrast(image, vein, near):
    return float(image[vein].mean() / image[near].mean())


@pytest.mark.parametrize("b0_tesla", [0.5, 3.0, 7.0])
def test_swi_darkens_veins_at_all_field_strengths(phantom, b0_tesla):
    """Vein / nearby white matter mean ratio (TE from default_swi_echo_time_s: 60, 20,
    8.6 ms): magnitude 0.65 / 0.49 / 0.49, SWI 0.21 / 0.06 / 0.06 (equal at 3 and 7 T since
    B0 TE and R2* TE are). The opposite mask ('diamagnetic', i.e. the wrong phase sign)
    leaves veins brighter than the magnitude does (0.72 / 0.64 / 0.64). White matter keeps
    > 95 % of its signal."""
    vein, near, wm = regions(phantom)
    mag, phase, _, _ = echo(phantom, b0_tesla)
    out = swi(mag, phase, voxel_size_mm=VOX, mask=phantom.head_mask)
    wrong = swi(mag, phase, voxel_size_mm=VOX, mask=phantom.head_mask, suppress="diamagnetic")
    assert out.shape == SHAPE and out.dtype == np.float32
    c_mag = contrast(mag, vein, near)
    assert contrast(out, vein, near) < 0.5 * c_mag
    assert contrast(wrong, vein, near) > c_mag
    assert out[wm].mean() > 0.95 * mag[wm].mean()
    assert np.all(out <= mag + 1e-6)
    assert np.array_equal(out[~phantom.head_mask], mag[~phantom.head_mask])


def test_highpassed_phase_of_parallel_veins_is_positive(phantom):
    """Sign convention: paramagnetic veins along B0 have positive (high-passed) phase
    (median 1.9 rad at 3 T, 20 ms); white matter near them ~0."""
    vein, near, _ = regions(phantom)
    mag, phase, _, _ = echo(phantom, 3.0)
    hp = homodyne_highpass(mag, phase, voxel_size_mm=VOX, sigma_mm=6.0, mask=phantom.head_mask)
    assert np.median(hp[vein]) > 1.0
    assert abs(np.median(hp[near & ~vein])) < 0.3
    assert np.all(hp[~phantom.head_mask] == 0)


def test_swi_from_local_field(phantom):
    """kind='field': the brain's own field (ppm) scaled to the phase at 20 ms, 3 T
    (2 pi gamma B0 TE rad/ppm) darkens veins as the phase route does."""
    vein, near, _ = regions(phantom)
    mag, _, _, te = echo(phantom, 3.0)
    brain = phantom.brain_mask
    local_ppm = forward_field(np.where(brain, phantom.chi_ppm, 0.0), voxel_size_mm=VOX)
    local_ppm = np.where(brain, local_ppm - np.median(local_ppm[brain]), 0.0)
    scale = 2 * np.pi * GAMMA_BAR_HZ_PER_T * 3.0 * 1e-6 * te
    out = swi(mag, local_ppm, kind="field", voxel_size_mm=VOX, mask=brain, phase_scale_rad=scale)
    assert contrast(out, vein, near) < 0.5 * contrast(mag, vein, near)


def test_phase_mask_values_and_range():
    phase = np.array([-4.0, -np.pi, -1.0, 0.0, np.pi / 2, np.pi, 4.0])
    para = swi_phase_mask(phase)
    assert np.allclose(para, [1, 1, 1, 1, 0.5, 0, 0])
    dia = swi_phase_mask(phase, suppress="diamagnetic")
    assert np.allclose(dia, [0, 0, 1 - 1 / np.pi, 1, 1, 1, 1])
    rand = np.random.default_rng(0).uniform(-10, 10, 1000)
    for kind in ("paramagnetic", "diamagnetic"):
        m = swi_phase_mask(rand, suppress=kind)
        assert m.min() >= 0 and m.max() <= 1


def test_power_one_is_magnitude_times_mask(phantom):
    mag, phase, _, _ = echo(phantom, 3.0)
    hp = homodyne_highpass(mag, phase, voxel_size_mm=VOX, sigma_mm=6.0)
    out = swi(mag, phase, voxel_size_mm=VOX, highpass_sigma_mm=6.0, power=1)
    assert np.allclose(out, mag * swi_phase_mask(hp), atol=1e-5)


def test_default_echo_time_keeps_b0_te_constant():
    assert default_swi_echo_time_s(3.0) == pytest.approx(0.020)
    assert default_swi_echo_time_s(1.5) == pytest.approx(0.040)
    assert default_swi_echo_time_s(7.0) == pytest.approx(0.06 / 7)
    assert default_swi_echo_time_s(0.5) == pytest.approx(0.060)  # capped
    with pytest.raises(ValueError, match="b0_tesla"):
        default_swi_echo_time_s(0)


def test_minimum_intensity_projection():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (12, 10, 20)).astype(np.float32)
    out = minimum_intensity_projection(image, slab_mm=15.0, voxel_size_mm=(1, 1, 3), axis=2)
    assert out.shape == image.shape and out.dtype == image.dtype  # same grid: same affine
    assert np.all(out <= image)
    assert out[4, 5, 10] == image[4, 5, 8:13].min()  # 15 mm / 3 mm = 5 slices, centred
    assert out[4, 5, 0] == image[4, 5, 0:3].min()  # edge: nearest repeats the first slice
    along0 = minimum_intensity_projection(image, slab_mm=3.0, voxel_size_mm=(1, 1, 3), axis=0)
    assert along0[6, 2, 3] == image[5:8, 2, 3].min()
    same = minimum_intensity_projection(image, slab_mm=1.0, voxel_size_mm=(1, 1, 3))
    assert np.array_equal(same, image)


def test_minip_of_swi_keeps_veins_dark(phantom):
    vein, near, _ = regions(phantom)
    mag, phase, _, _ = echo(phantom, 3.0)
    out = swi(mag, phase, voxel_size_mm=VOX, mask=phantom.head_mask)
    mip = minimum_intensity_projection(out, slab_mm=12.0, voxel_size_mm=VOX)
    assert mip.shape == out.shape and np.all(mip <= out)
    assert mip[vein].mean() <= out[vein].mean()


def test_validation():
    mag = np.ones((4, 4, 4))
    with pytest.raises(ValueError, match="kind"):
        swi(mag, mag, kind="chi", voxel_size_mm=VOX)
    with pytest.raises(ValueError, match="suppress"):
        swi(mag, mag, voxel_size_mm=VOX, suppress="negative")
    with pytest.raises(ValueError, match="shape"):
        swi(mag, np.ones((4, 4, 3)), voxel_size_mm=VOX)
    with pytest.raises(ValueError, match="3-D"):
        swi(np.ones((4, 4, 4, 2)), np.ones((4, 4, 4, 2)), voxel_size_mm=VOX)
    with pytest.raises(ValueError, match="power"):
        swi(mag, mag, voxel_size_mm=VOX, power=0)
    with pytest.raises(ValueError, match="sigma_mm"):
        swi(mag, mag, voxel_size_mm=VOX, highpass_sigma_mm=0)
    with pytest.raises(ValueError, match="voxel_size_mm"):
        swi(mag, mag, voxel_size_mm=(1, 1))
    with pytest.raises(ValueError, match="slab_mm"):
        minimum_intensity_projection(mag, slab_mm=-1, voxel_size_mm=VOX)
    with pytest.raises(ValueError, match="axis"):
        minimum_intensity_projection(mag, slab_mm=3, voxel_size_mm=VOX, axis=3)
