"""Physical constants and unit conversions used throughout qsmprep.

Conventions (see ``docs/conventions.md``):

* susceptibility ``chi`` and fields ``field_ppm`` are in parts per million (ppm) of B0;
* frequencies ``field_hz`` are in Hz;
* ``df_hz = GAMMA_BAR_HZ_PER_T * b0_tesla * field_ppm * 1e-6``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Proton gyromagnetic ratio over 2 pi, in Hz/T (CODATA 2018).
GAMMA_BAR_HZ_PER_T: float = 42.57747892e6


def _check_b0(b0_tesla: float) -> float:
    b0 = float(b0_tesla)
    if not np.isfinite(b0) or b0 <= 0:
        raise ValueError(f"b0_tesla must be a positive number of tesla, got {b0_tesla!r}")
    return b0


def ppm_to_hz(field_ppm: npt.ArrayLike, *, b0_tesla: float) -> np.ndarray:
    """Convert a field in ppm of B0 to a frequency offset in Hz.

    ``df_hz = gamma_bar * B0 * field_ppm * 1e-6`` with ``gamma_bar = 42.577 MHz/T``.

    Examples
    --------
    >>> round(float(ppm_to_hz(1.0, b0_tesla=3.0)), 3)
    127.732
    """
    return np.asarray(field_ppm) * (GAMMA_BAR_HZ_PER_T * _check_b0(b0_tesla) * 1e-6)


def hz_to_ppm(field_hz: npt.ArrayLike, *, b0_tesla: float) -> np.ndarray:
    """Convert a frequency offset in Hz to a field in ppm of B0 (inverse of :func:`ppm_to_hz`)."""
    return np.asarray(field_hz) / (GAMMA_BAR_HZ_PER_T * _check_b0(b0_tesla) * 1e-6)


def phase_rad_per_ppm(*, b0_tesla: float, echo_time_s: float) -> float:
    """Phase (rad) accrued per ppm of field at ``echo_time_s``: ``2 pi gamma_bar B0 TE 1e-6``.

    Examples
    --------
    >>> round(phase_rad_per_ppm(b0_tesla=3.0, echo_time_s=0.02), 2)
    16.05
    """
    if not float(echo_time_s) > 0:
        raise ValueError(f"echo_time_s must be positive seconds, got {echo_time_s!r}")
    return float(2 * np.pi * GAMMA_BAR_HZ_PER_T * _check_b0(b0_tesla) * 1e-6 * float(echo_time_s))


def wrap_to_pi(phase_rad: npt.ArrayLike) -> np.ndarray:
    """Wrap angles (rad) into ``[-pi, pi)``."""
    phase = np.asarray(phase_rad)
    return (phase + np.pi) % (2 * np.pi) - np.pi
