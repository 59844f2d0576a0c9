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
