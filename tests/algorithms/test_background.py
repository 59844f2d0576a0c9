"""Ground-truth tests of background field removal on the simulated head phantom.

Truth: the total field is the dipole field of the whole phantom (air outside the head, a
sinus and a diamagnetic skull give a background ~24x stronger, in standard deviation over the
brain, than the brain's own field); the true local field is the field of the brain's
susceptibility alone. Thresholds were measured on this phantom (measured value in the
comment) and set with a modest margin. For scale: returning the total field scores
~1900-2400 % NRMSE, returning zeros 100 %, a sign error ~200 %.

Why the numbers are high (28-62 %) for every method: the phantom's local field is dominated by
the smooth dipole field of one large white-matter ellipsoid, which is nearly harmonic in the
grey-matter shell and so indistinguishable from background near the edge. (The simulator
smooths the susceptibility outside the brain by one voxel, so the 9.4 ppm air step no longer
rings.) The analytic harmonic test below isolates the background-removal property itself.
"""

import numpy as np
import pytest
from scipy import ndimage

from qsmprep.algorithms import background as bg
from qsmprep.algorithms.kernels import forward_field, sphere_mask
from qsmprep.algorithms.metrics import nrmse
from qsmprep.algorithms.simulate import make_head_phantom

VOX = (3.0, 3.0, 3.0)

# method: (max NRMSE % of the local field in eroded mask & brain, measured value),
#         min fraction of the brain kept (measured),
#         max residual of a background-only field, % of the true local-field RMS (measured)
EXPECTED = {
    "vsharp": (68.0, 0.85, 19.0),  # 61.9 %, 0.89, 15.0 %
    "sharp": (34.0, 0.75, 11.0),  # 28.0 %, 0.79, 8.5 %
    "resharp": (41.0, 0.75, 7.0),  # 34.9 %, 0.79, 5.6 %
    "ismv": (40.0, 0.75, 7.0),  # 34.2 %, 0.79, 5.7 %
    "pdf": (53.0, 1.0, 4.0),  # 48.2 %, 1.00, 2.3 % (11.2 % when CG stopped at tol 1e-3)
    "lbv": (64.0, 0.85, 32.0),  # 58.0 %, 0.89, 25.7 %
}


def _fields(shape, vox, b0=(0.0, 0.0, 1.0)):
    ph = make_head_phantom(shape, voxel_size_mm=vox)
    brain = ph.brain_mask
    total = forward_field(ph.chi_ppm, voxel_size_mm=vox, b0_direction=b0)
    local = forward_field(np.where(brain, ph.chi_ppm, 0), voxel_size_mm=vox, b0_direction=b0)
    return brain, total, local, ph


@pytest.fixture(scope="module")
def head():
    brain, total, local, ph = _fields((64, 64, 64), VOX)
    background = forward_field(np.where(brain, 0, ph.chi_ppm), voxel_size_mm=VOX)
    return brain, total, local, background


@pytest.fixture(scope="module")
def results(head):
    brain, total, _, _ = head
    return {name: fn(total, brain, voxel_size_mm=VOX) for name, fn in bg.BFR_METHODS.items()}


@pytest.mark.parametrize("method", sorted(bg.BFR_METHODS))
def test_local_field_matches_truth(head, results, method):
    brain, _, local_true, _ = head
    local, eroded = results[method]
    max_err, min_frac, _ = EXPECTED[method]
    assert local.shape == brain.shape and local.dtype == np.float32
    assert eroded.dtype == bool and not (eroded & ~brain).any()  # within the input mask
    assert eroded.sum() >= min_frac * brain.sum()
    assert np.all(local[~eroded] == 0)
    assert nrmse(local, local_true, eroded & brain) < max_err


@pytest.mark.parametrize("method", sorted(bg.BFR_METHODS))
def test_units_preserved(head, results, method):
    """Linear: a field in Hz (x127.7 at 3 T) gives the local field in Hz."""
    brain, total, _, _ = head
    local, eroded = results[method]
    local_hz, eroded_hz = bg.BFR_METHODS[method](127.7 * total, brain, voxel_size_mm=VOX)
    assert np.array_equal(eroded, eroded_hz)
    err = np.linalg.norm(local_hz - 127.7 * local) / np.linalg.norm(127.7 * local)
    assert err < 1e-3  # measured <= 2.3e-4 (float32 CG; PDF's 100 iterations the most)


@pytest.mark.parametrize("method", sorted(bg.BFR_METHODS))
def test_background_only_field_gives_near_zero(head, method):
    """Sources outside the brain only: the local field should vanish (limited because the
    sampled dipole field of the sources is not exactly harmonic on the grid within 2-3 voxels
    of the brain's edge; passing the input through would score ~1900-2400 %)."""
    brain, _, local_true, background = head
    local, eroded = bg.BFR_METHODS[method](background, brain, voxel_size_mm=VOX)
    residual = 100 * local[eroded].std() / local_true[eroded].std()
    assert residual < EXPECTED[method][2]


@pytest.mark.parametrize("method", sorted(bg.BFR_METHODS))
def test_analytic_harmonic_field_is_removed(head, method):
    """A smooth harmonic background (the exact field of a magnetised air sphere below the
    head plus a uniform gradient) is removed to a small fraction of its size."""
    brain = head[0]
    axes = [(np.arange(n) - (n - 1) / 2) * v for n, v in zip(brain.shape, VOX, strict=True)]
    grid = np.meshgrid(*axes, indexing="ij")  # mm from the centre; the head is centred
    dx, dy, dz = grid[0], grid[1], grid[2] + 110.0  # sphere centre 110 mm below
    r2 = dx**2 + dy**2 + dz**2
    sphere = 9.4 * 25.0**3 / 3 * (3 * dz**2 / r2 - 1) / r2**1.5
    field = (sphere + 0.01 * grid[2] + 0.02 * grid[0]).astype(np.float32)
    local, eroded = bg.BFR_METHODS[method](field, brain, voxel_size_mm=VOX)
    residual = local[eroded].std() / field[eroded].std()
    # measured: SMV family <= 3.2e-5, LBV 1.5e-4, PDF 1.2e-3 (5.8e-3 when its CG stopped
    # at tol 1e-3)
    assert residual < (3e-3 if method == "pdf" else 1e-3)


def test_pdf_oblique_b0(head):
    """B0 ~20 degrees from z. The local-field NRMSE hardly tells the B0 direction (a smooth
    harmonic background is matched by outside sources of either orientation, and the error
    is dominated by the white-matter field, see the module docstring). A background-only
    field does: the residual with the right B0 is less than half of that with B0 along z."""
    brain = head[0]
    b0 = np.array([0.3, -0.2, 1.0]) / np.linalg.norm([0.3, -0.2, 1.0])  # ~20 deg from z
    _, total, local_true, ph = _fields((64, 64, 64), VOX, b0=b0)
    local, eroded = bg.pdf(total, brain, voxel_size_mm=VOX, b0_direction=b0)
    assert nrmse(local, local_true, eroded) < 59.0  # measured 53.6 %
    background = forward_field(np.where(brain, 0, ph.chi_ppm), voxel_size_mm=VOX, b0_direction=b0)
    scale = local_true[eroded].std()
    right, _ = bg.pdf(background, brain, voxel_size_mm=VOX, b0_direction=b0)
    wrong, _ = bg.pdf(background, brain, voxel_size_mm=VOX)  # B0 along z
    assert 100 * right[eroded].std() / scale < 3.5  # measured 2.7 % of the local field
    assert 100 * wrong[eroded].std() / scale > 4.5  # measured 6.3 % (B0 along x 11.8, y 14.8)
    via, _ = bg.remove_background("pdf", total, brain, voxel_size_mm=VOX, b0_direction=b0)
    np.testing.assert_array_equal(via, local)


def test_vsharp_anisotropic_voxels():
    vox = (2.0, 2.0, 3.0)
    brain, total, local_true, _ = _fields((64, 64, 42), vox)
    local, eroded = bg.vsharp(total, brain, voxel_size_mm=vox)
    assert not (eroded & ~brain).any() and eroded.sum() >= 0.8 * brain.sum()  # measured 0.85
    assert nrmse(local, local_true, eroded) < 60.0  # measured 53.3 %
    # radii in mm: 12 mm down to the largest voxel (3 mm) in steps of the smallest (2 mm)
    assert bg._vsharp_radii(vox, 12.0, None) == [12.0, 10.0, 8.0, 6.0, 4.0, 3.0]


def test_erosion_is_by_a_ball_in_mm():
    """The eroded mask equals binary erosion by the discrete ball of radius_mm, anisotropic
    voxels included (6 mm on 2x2x3 mm: 3 voxels in-plane, 2 through-plane)."""
    vox = (2.0, 2.0, 3.0)
    brain = make_head_phantom((40, 40, 28), voxel_size_mm=vox).brain_mask
    field = np.zeros(brain.shape, np.float32)
    ball = np.fft.fftshift(sphere_mask((9, 9, 9), voxel_size_mm=vox, radius_mm=6.0))
    expected = ndimage.binary_erosion(brain, ball, border_value=0)
    for fn in (bg.sharp, bg.resharp, bg.ismv):
        _, eroded = fn(field, brain, voxel_size_mm=vox, radius_mm=6.0)
        np.testing.assert_array_equal(eroded, expected)
    _, eroded = bg.vsharp(field, brain, voxel_size_mm=vox, radii_mm=[6.0])
    np.testing.assert_array_equal(eroded, expected)


@pytest.mark.parametrize("vox, radius", [((1.0, 1.3, 0.9), 3.0), ((0.7, 0.7, 0.7), 6.0)])
def test_erode_mask_is_binary_erosion_by_the_ball(vox, radius):
    """erode_mask (an FFT convolution with the ball, thresholded) equals binary erosion by
    the ball, beyond-the-array counting as outside: a mask with pin-holes, touching the
    array's edges along one axis, anisotropic voxels, and a ball of ~2,600 voxels."""
    rng = np.random.default_rng(5)
    mask = np.zeros((40, 46, 38), bool)
    mask[:, 4:42, 3:35] = True  # touches both ends of axis 0
    mask &= rng.random(mask.shape) > 0.0005
    reach = [int(radius / v) for v in vox]
    ball = np.fft.fftshift(sphere_mask([2 * q + 1 for q in reach], voxel_size_mm=vox,
                                       radius_mm=radius))  # fmt: skip
    expected = ndimage.binary_erosion(mask, ball, border_value=0)
    got = bg.erode_mask(mask, voxel_size_mm=vox, radius_mm=radius)
    assert expected.sum() > 1000
    np.testing.assert_array_equal(got, expected)


def test_values_outside_mask_are_ignored(head, results):
    brain, total, _, _ = head
    noisy = np.where(brain, total, np.nan)
    for method in ("vsharp", "pdf", "lbv"):
        local, _ = bg.BFR_METHODS[method](noisy, brain, voxel_size_mm=VOX)
        np.testing.assert_array_equal(local, results[method][0])


def test_lbv_peel_removes_layers(head, results):
    brain, total, _, _ = head
    _, interior = results["lbv"]
    local, peeled = bg.lbv(total, brain, voxel_size_mm=VOX, peel=2)
    expected = ndimage.binary_erosion(interior, iterations=2, border_value=0)
    np.testing.assert_array_equal(peeled, expected)
    assert np.all(local[~peeled] == 0)


def test_pdf_weights_are_used(head):
    brain, total, local_true, _ = head
    uniform, _ = bg.pdf(total, brain, voxel_size_mm=VOX, weights=np.full(brain.shape, 5.0))
    plain, _ = bg.pdf(total, brain, voxel_size_mm=VOX)
    np.testing.assert_allclose(uniform, plain, atol=1e-6)  # normalised: scale-free
    w = np.where(np.arange(64)[:, None, None] < 32, 1.0, 0.2) * np.ones(brain.shape)
    weighted, _ = bg.pdf(total, brain, voxel_size_mm=VOX, weights=w)
    assert not np.allclose(weighted, plain)


def test_remove_background_dispatch(head, results):
    brain, total, _, _ = head
    local, eroded = bg.remove_background("lbv", total, brain, voxel_size_mm=VOX)
    np.testing.assert_array_equal(local, results["lbv"][0])
    with pytest.raises(ValueError, match="expected one of .*'lbv'.*'vsharp'"):
        bg.remove_background("magic", total, brain, voxel_size_mm=VOX)
    with pytest.raises(ValueError, match="does not take \\['radius_mm'\\]"):
        bg.remove_background("pdf", total, brain, voxel_size_mm=VOX, radius_mm=3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"field": np.zeros((8, 8))}, "3-D"),
        ({"mask": np.zeros((8, 8, 9), bool)}, "does not match"),
        ({"mask": np.zeros((8, 8, 8), bool)}, "empty"),
        ({"voxel_size_mm": (1.0, -1.0, 1.0)}, "positive"),
        ({"field": np.zeros((8, 8, 8), np.complex64)}, "real-valued"),
        ({"radius_mm": 2.0, "voxel_size_mm": (1.0, 1.0, 3.0)}, "largest voxel size"),
        ({"threshold": 1.5}, "threshold"),
        ({"radius_mm": 6.0}, "too thin.*smaller radi"),
    ],
)
def test_invalid_inputs_fail_early(kwargs, message):
    mask = np.zeros((8, 8, 8), bool)
    mask[2:6, 2:6, 2:6] = True
    args = {"field": np.zeros((8, 8, 8), np.float32), "mask": mask, "voxel_size_mm": (1, 1, 1)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        bg.sharp(args.pop("field"), args.pop("mask"), **args)
