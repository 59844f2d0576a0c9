"""Ground-truth tests of the dipole model: analytic fields of spheres and cylinders."""

import numpy as np
import pytest

from qsmprep.algorithms.kernels import (
    b0_direction_from_affine,
    dipole_kernel,
    forward_field,
    voxel_size_from_affine,
)

CHI = 0.5  # ppm


def _grid(shape, vox):
    axes = [(np.arange(n) - n // 2) * v for n, v in zip(shape, vox, strict=True)]
    return np.meshgrid(*axes, indexing="ij")


def test_uniform_sphere_field_matches_analytic_dipole():
    """Inside a uniform sphere the (Lorentz-corrected) field is 0; outside it is a dipole:
    chi a^3 / 3 * (3 cos^2 theta - 1) / r^3."""
    shape, vox, a = (96, 96, 96), (1.0, 1.0, 1.0), 8.0
    x, y, z = _grid(shape, vox)
    r = np.sqrt(x**2 + y**2 + z**2)
    chi = (r <= a).astype(np.float32) * CHI
    f = forward_field(chi, voxel_size_mm=vox, pad_factor=2.0)
    inside = r < a - 2
    assert np.abs(f[inside]).mean() < 0.02 * CHI
    shell = (r > 2 * a) & (r < 3 * a)
    cos2 = np.where(shell, z**2 / np.maximum(r, 1e-9) ** 2, 0)
    analytic = CHI * a**3 / 3 * (3 * cos2 - 1) / np.maximum(r, 1e-9) ** 3
    err = np.linalg.norm(f[shell] - analytic[shell]) / np.linalg.norm(analytic[shell])
    assert err < 0.05
    # sign: field along B0 (poles) positive for paramagnetic, equator negative
    assert f[48, 48, 48 + 20] > 0 > f[48 + 20, 48, 48]


def test_cylinder_parallel_to_b0_has_chi_over_3_inside():
    shape, vox = (64, 64, 64), (1.0, 1.0, 1.0)
    x, y, _ = _grid(shape, vox)
    chi = ((x**2 + y**2) <= 6**2).astype(np.float32) * CHI
    # an infinite cylinder along z: no padding along z so it is infinite (periodic)
    f = forward_field(chi, voxel_size_mm=vox, pad_factor=1.0)
    inside = (x**2 + y**2) <= 3**2
    assert np.allclose(f[inside], CHI / 3, atol=0.02 * CHI)
    # perpendicular cylinder: -chi/6 inside
    f_perp = forward_field(np.swapaxes(chi, 1, 2), voxel_size_mm=vox, pad_factor=1.0)
    inside_p = np.swapaxes(inside, 1, 2)
    assert np.allclose(f_perp[inside_p], -CHI / 6, atol=0.02 * CHI)


def test_anisotropic_voxels_give_same_physical_field():
    """The same physical cylinder on 1x1x2 mm voxels has chi/3 inside only if k uses mm."""
    vox = (1.0, 1.0, 2.0)
    shape = (64, 64, 32)
    x, y, z = _grid(shape, vox)
    # cylinder along x (perpendicular to B0), infinite in x: -chi/6 inside
    chi = ((y**2 + z**2) <= 8**2).astype(np.float32) * CHI
    f = forward_field(chi, voxel_size_mm=vox, pad_factor=1.0)
    inside = (y**2 + z**2) <= 4**2
    assert np.allclose(f[inside], -CHI / 6, atol=0.03 * CHI)
    # a cylinder tilted in the y-z plane at 45 deg has (3cos^2 - 1)/6 = 1/12 * chi
    chi_t = ((((y - z) / np.sqrt(2)) ** 2 + x**2) <= 8**2).astype(np.float32) * CHI
    f_t = forward_field(chi_t, voxel_size_mm=vox, pad_factor=1.0)
    inside_t = ((((y - z) / np.sqrt(2)) ** 2 + x**2) <= 3**2) & (np.abs(y + z) < 10)
    assert abs(np.median(f_t[inside_t]) - CHI / 12) < 0.15 * CHI / 12


def test_oblique_kernel_equals_axial_kernel_of_rotated_object():
    """Field of an object in an oblique voxel frame = field of the same object in world space."""
    shape, vox = (64, 64, 64), (1.0, 1.0, 1.0)
    rng = np.random.default_rng(3)
    chi = np.zeros(shape, np.float32)
    chi[20:44, 28:36, 24:40] = 0.3
    chi[30:34, 10:54, 30:34] += 0.2
    chi += 0.01 * rng.normal(size=shape).astype(np.float32)
    # voxel axes permuted (a 90 degree rotation): voxel axis 1 is world z.
    affine = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], float)
    b = b0_direction_from_affine(affine)
    assert np.allclose(np.abs(b), [0, 1, 0])
    f_oblique = forward_field(chi, voxel_size_mm=vox, b0_direction=b)
    # the same data resliced so world z is the last axis
    f_axial = forward_field(np.swapaxes(chi, 1, 2), voxel_size_mm=vox)
    assert np.allclose(np.swapaxes(f_axial, 1, 2), f_oblique, atol=1e-4)


def test_b0_direction_of_a_tilted_slab():
    theta = np.deg2rad(20)
    rot = np.array(
        [[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.5, 0.5, 2.0])
    b = b0_direction_from_affine(affine)
    assert np.allclose(b, [0, np.sin(theta), np.cos(theta)], atol=1e-12)
    assert np.allclose(voxel_size_from_affine(affine), [0.5, 0.5, 2.0])
    # a reflection (LAS storage) flips the sign of the x component only
    affine[:, 0] *= -1
    assert np.allclose(b0_direction_from_affine(affine), [0, np.sin(theta), np.cos(theta)])


def test_dipole_kernel_values():
    d = dipole_kernel((8, 8, 8), voxel_size_mm=(1, 1, 1), real=False)
    assert d[0, 0, 0] == 0
    assert np.isclose(d[0, 0, 1], 1 / 3 - 1)  # k parallel to B0
    assert np.isclose(d[1, 0, 0], 1 / 3)  # k perpendicular to B0
    with pytest.raises(ValueError):
        dipole_kernel((8, 8, 8), voxel_size_mm=(1, 1, 1), b0_direction=(0, 0, 0))


@pytest.mark.parametrize(
    ("shape", "vox", "b0", "real"),
    [
        ((16, 18, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), True),
        ((15, 17, 19), (1.5, 2.0, 2.5), (0.3, -0.2, 1.0), True),  # odd sizes, oblique
        ((12, 10, 14), (0.5, 0.7, 1.3), (1.0, 2.0, 3.0), True),  # Nyquist planes on every axis
        ((12, 10, 14), (1.0, 1.0, 1.0), (0.5, -0.5, 0.7), False),  # full complex grid
    ],
)
def test_dipole_kernel_numba_equals_numpy(monkeypatch, shape, vox, b0, real):
    """The fused numba build and the numpy passes give the same float32 kernel bit for bit
    (the same order of float64 and float32 operations), Nyquist planes included."""
    from qsmprep.algorithms import kernels

    if kernels._nb is None:
        pytest.skip("numba not installed")
    fused = dipole_kernel(shape, voxel_size_mm=vox, b0_direction=b0, real=real)
    monkeypatch.setattr(kernels, "_nb", None)
    plain = dipole_kernel(shape, voxel_size_mm=vox, b0_direction=b0, real=real)
    assert fused.dtype == plain.dtype == np.float32
    assert np.array_equal(fused, plain)
    assert fused[0, 0, 0] == 0.0 and np.all(np.isfinite(fused))


def test_truncated_inverse_numba_equals_numpy(monkeypatch):
    """TKD's ``sign(D) / max(|D|, t)``: the fused pass equals numpy's, signed zeros too."""
    from qsmprep.algorithms.inversion import _common
    from qsmprep.algorithms.inversion.direct import _truncated_inverse

    if _common._nb is None:
        pytest.skip("numba not installed")
    d = dipole_kernel((12, 10, 14), voxel_size_mm=(1.0, 1.0, 1.0), b0_direction=(0.3, 0, 1))
    d[1, 2, 3], d[2, 2, 2] = 0.0, -0.0
    fused = _truncated_inverse(d, 0.19)
    monkeypatch.setattr(_common, "_nb", None)
    plain = _truncated_inverse(d, 0.19)
    assert np.array_equal(fused, plain)
    assert fused[1, 2, 3] == pytest.approx(1 / 0.19) and fused[2, 2, 2] == pytest.approx(-1 / 0.19)
    assert np.abs(fused).max() <= np.float32(1 / 0.19)


def test_band_inverse_numba_equals_numpy(monkeypatch):
    """iSQSM's band ``[|D| > delta]`` and ``K / D``: the fused pass equals numpy's."""
    from qsmprep.algorithms.inversion import _common
    from qsmprep.algorithms.inversion.incomplete_spectrum import band_inverse

    if _common._nb is None:
        pytest.skip("numba not installed")
    d = dipole_kernel((12, 10, 14), voxel_size_mm=(1.0, 1.0, 1.5), b0_direction=(0.3, 0, 1))
    band, inv = band_inverse(d, 0.25)
    monkeypatch.setattr(_common, "_nb", None)
    band_np, inv_np = band_inverse(d, 0.25)
    assert np.array_equal(band, band_np) and np.array_equal(inv, inv_np)
    assert np.array_equal(band, (np.abs(d) > 0.25).astype(np.float32))
    assert 0 < band.mean() < 1 and np.all(inv[band == 0] == 0)
    assert np.allclose(inv[band > 0] * d[band > 0], 1.0)


@pytest.mark.parametrize(
    ("shape", "vox", "radius"),
    [
        ((16, 18, 20), (1.0, 1.0, 1.0), 3.0),
        ((15, 17, 19), (1.5, 2.0, 2.5), 4.0),  # odd sizes, anisotropic
        ((10, 11, 12), (2.0, 1.0, 0.5), 1.0),  # support of one voxel on axis 0
        ((8, 9, 10), (1.0, 1.0, 1.0), 20.0),  # the ball wraps round the whole grid
    ],
)
def test_smv_kernel_equals_the_fft_of_the_ball(shape, vox, radius):
    """The separable cosine transform is the DFT of the normalised ball, and it is the
    SMV operator: applied by FFT it averages over the ball."""
    from qsmprep.algorithms.kernels import smv_kernel, sphere_mask

    ball = sphere_mask(shape, voxel_size_mm=vox, radius_mm=radius).astype(np.float64)
    ball /= ball.sum()
    got = smv_kernel(shape, voxel_size_mm=vox, radius_mm=radius)
    assert got.dtype == np.float32 and got.shape == (shape[0], shape[1], shape[2] // 2 + 1)
    np.testing.assert_allclose(got, np.fft.rfftn(ball).real, atol=1e-7)
    image = np.random.default_rng(0).standard_normal(shape)
    mean = np.fft.irfftn(np.fft.rfftn(image) * got, shape)
    direct = np.real(np.fft.ifftn(np.fft.fftn(image) * np.conj(np.fft.fftn(ball))))
    np.testing.assert_allclose(mean, direct, atol=1e-6)
