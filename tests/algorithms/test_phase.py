import numpy as np
import pytest

from qsmprep.algorithms.constants import hz_to_ppm, ppm_to_hz, wrap_to_pi
from qsmprep.algorithms.phase import detect_phase_period, scale_phase

TRUE = np.linspace(-np.pi, np.pi, 1001, endpoint=False)


def _close_mod_2pi(a, b, tol=1e-3):
    return np.all(np.abs(wrap_to_pi(a - b)) < tol)


def test_radians_pass_through():
    assert detect_phase_period(TRUE) == pytest.approx(2 * np.pi)
    assert _close_mod_2pi(scale_phase(TRUE), TRUE)
    # [0, 2 pi) radians are the same angles
    assert _close_mod_2pi(scale_phase(TRUE % (2 * np.pi)), TRUE)


def test_siemens_integer_range():
    stored = np.round(TRUE / (2 * np.pi) * 8192).astype(np.int16)
    assert stored.min() == -4096
    assert detect_phase_period(stored) == 8192
    assert _close_mod_2pi(scale_phase(stored), TRUE, tol=2 * np.pi / 8192)


def test_range_is_not_stretched_to_the_volume_min_max():
    # a volume whose values happen to use only part of -4096..4095 keeps the Siemens scale
    stored = np.round(TRUE[200:900] / (2 * np.pi) * 8192)
    stored = np.append(stored, [-4090, 4090])
    out = scale_phase(stored)
    assert _close_mod_2pi(out[:-2], TRUE[200:900], tol=2 * np.pi / 8192)


def test_scl_slope_inter_stored_data():
    # 0..4095 codes with scl_slope=2, scl_inter=-4096 give -4096..4094 after nibabel applies them
    codes = np.round((TRUE + np.pi) / (2 * np.pi) * 4096)
    applied = codes * 2.0 - 4096.0
    assert _close_mod_2pi(scale_phase(applied), TRUE, tol=4 * np.pi / 8192)
    # unsigned 0..4095 without scaling
    assert detect_phase_period(codes) == 4096
    assert _close_mod_2pi(scale_phase(codes), TRUE + np.pi, tol=2 * np.pi / 4096)


def test_sign_flip_and_declared_units():
    assert _close_mod_2pi(scale_phase(TRUE, sign=-1), -TRUE)
    with pytest.raises(ValueError, match="radians"):
        scale_phase(np.array([-4096.0, 4095.0]), units="rad")
    with pytest.raises(ValueError):
        scale_phase(np.array([np.nan]))


def test_phase_per_ppm_uses_gamma_b0_and_te():
    from qsmprep.algorithms.constants import phase_rad_per_ppm

    # 1 ppm at 3 T is 127.73 Hz; over 20 ms that is 2.5546 turns
    assert phase_rad_per_ppm(b0_tesla=3.0, echo_time_s=0.02) == pytest.approx(
        2 * np.pi * 127.7324 * 0.02, rel=1e-5
    )
    with pytest.raises(ValueError):
        phase_rad_per_ppm(b0_tesla=3.0, echo_time_s=0.0)


def test_hz_ppm_roundtrip_uses_gamma():
    assert float(ppm_to_hz(1.0, b0_tesla=3.0)) == pytest.approx(127.7324, rel=1e-5)
    assert float(hz_to_ppm(ppm_to_hz(0.37, b0_tesla=7.0), b0_tesla=7.0)) == pytest.approx(0.37)
    with pytest.raises(ValueError):
        ppm_to_hz(1.0, b0_tesla=0)


def test_spurious_header_scaling_is_undone_or_refused():
    from qsmprep.algorithms.phase import pick_phase_values

    raw = TRUE.reshape(-1)
    shrunk = raw * 0.00117  # a converter's bogus scl_slope: +-pi -> +-0.0037
    values, note = pick_phase_values(shrunk, raw)
    assert values is raw and "scl_slope" in note
    same, none = pick_phase_values(raw, raw * 2)
    assert same is raw and none is None  # plausible data are left alone
    with pytest.raises(ValueError, match="spans only"):
        pick_phase_values(shrunk, shrunk)


# -- real and imaginary parts -------------------------------------------------------------------
def test_complex_to_polar_is_exact_and_scale_free():
    from qsmprep.algorithms.phase import complex_to_polar

    mag = np.linspace(0.5, 3.0, TRUE.size)
    signal = mag * np.exp(1j * TRUE)
    for scale in (1.0, 4096.0):  # integer-coded parts carry any common scale
        m, p = complex_to_polar(scale * signal.real, scale * signal.imag)
        np.testing.assert_allclose(m, scale * mag, rtol=1e-6)
        assert _close_mod_2pi(p, TRUE, tol=1e-5)
    m, p = complex_to_polar(np.array([np.nan, 0.0, -1.0]), np.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(m, [0, 1, 1])
    np.testing.assert_allclose(p, [0, np.pi / 2, np.pi], atol=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        complex_to_polar(np.zeros(3), np.zeros(4))


def _smooth_signal(shape=(24, 20, 16), echoes=2):
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mag = np.exp(-(x**2 + y**2 + z**2))
    field = 3.0 * x * y + 2.0 * z**2  # rad per echo: several wraps
    return np.stack([mag * np.exp(1j * (e + 1) * field) for e in range(echoes)], axis=-1)


def test_slice_chopping_is_found_on_its_axes_only_and_undone():
    from qsmprep.algorithms.phase import slice_chopping_axes, undo_slice_chopping

    signal = _smooth_signal()
    assert slice_chopping_axes(signal) == []
    noise = np.random.default_rng(0).normal(size=(16, 16, 16, 2)) * (1 + 0j)
    assert slice_chopping_axes(noise) == []  # uncorrelated: not taken for chopping
    for axes in ([2], [0, 1]):  # the slice direction; an in-plane checkerboard
        chopped = undo_slice_chopping(signal, axes)  # its own inverse
        assert not np.allclose(chopped, signal)
        assert slice_chopping_axes(chopped) == axes
        np.testing.assert_allclose(undo_slice_chopping(chopped, axes), signal)
