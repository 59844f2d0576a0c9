"""Phase scaling: bring vendor phase encodings to radians.

Scanners store phase as radians (``[-pi, pi)`` or ``[0, 2 pi)``) or as integers spanning a
fixed range (Siemens ``-4096..4095`` or ``0..4095``, 12/16-bit unsigned, GE milliradians).
The range is decided from the dtype-independent span of the *whole* acquisition and snapped
to one of the standard ranges below; it is never stretched to a volume's own min/max (that
made QSMxT 8 produce dot and rim artefacts, its issue #160).
"""

from __future__ import annotations

import numpy as np

from qsmprep.algorithms.constants import wrap_to_pi

#: Standard integer phase periods (the number of codes that correspond to 2 pi).
_POWER_OF_TWO_PERIODS = tuple(2**n for n in range(8, 17))  # 256 .. 65536
_MILLIRADIAN_PERIOD = 2000.0 * np.pi


def detect_phase_period(phase: np.ndarray, *, units: str | None = None) -> float:
    """Return the number of stored units that make one full turn (2 pi).

    Rules, in order:

    * finite values spanning at most ``2 pi`` (plus 1 % tolerance) are radians: period
      ``2 pi`` -- unless ``units`` declares ``'arbitrary'`` and the data are integers;
    * a span close to ``2000 pi`` (GE milliradians) gives ``2000 pi``;
    * otherwise the smallest power of two ``>= span + 1`` (e.g. ``-4096..4095`` -> 8192,
      ``0..4095`` -> 4096, ``-4090..4093`` -> 8192).

    Raises ``ValueError`` for empty/non-finite data or a declared ``'rad'`` that does not fit.
    """
    finite = np.asarray(phase)[np.isfinite(phase)]
    if finite.size == 0:
        raise ValueError("phase image has no finite values")
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo
    integer_valued = bool(np.all(np.equal(np.mod(finite[:: max(1, finite.size // 100000)], 1), 0)))
    declared = (units or "").strip().lower()
    looks_radian = span <= 2 * np.pi * 1.01 and max(abs(lo), abs(hi)) <= 2 * np.pi * 1.01
    if looks_radian and not (declared == "arbitrary" and integer_valued and span > 7):
        return 2 * np.pi
    if declared in ("rad", "radian", "radians"):
        raise ValueError(
            f"phase declared in radians but spans {lo:g}..{hi:g}; fix the sidecar 'Units'"
        )
    if abs(span - _MILLIRADIAN_PERIOD) <= 0.002 * _MILLIRADIAN_PERIOD:
        return _MILLIRADIAN_PERIOD
    for period in _POWER_OF_TWO_PERIODS:
        if span + 1 <= period * 1.0001:
            return float(period)
    raise ValueError(f"phase range {lo:g}..{hi:g} matches no known phase encoding")


def scale_phase(
    phase: np.ndarray, *, units: str | None = None, period: float | None = None, sign: int = 1
) -> np.ndarray:
    """Scale stored phase to radians in ``[-pi, pi)``.

    ``phase_rad = wrap(sign * 2 pi * phase / period)``, with ``period`` detected by
    :func:`detect_phase_period` unless given. ``sign = -1`` flips the phase convention
    (e.g. GE data; see ``docs/conventions.md``). Non-finite values become 0.

    Examples
    --------
    >>> scale_phase(np.array([-4096.0, 0.0, 2048.0])).round(4).tolist()
    [-3.1416, 0.0, 1.5708]
    """
    if sign not in (1, -1):
        raise ValueError(f"sign must be 1 or -1, got {sign!r}")
    data = np.asarray(phase, dtype=np.float64)
    if period is None:
        period = detect_phase_period(data, units=units)
    out = wrap_to_pi(sign * data * (2 * np.pi / float(period)))
    out[~np.isfinite(out)] = 0.0
    return out.astype(np.float32)


#: A phase image spanning less than this (rad) cannot be a wrapped phase of a head: tissue
#: wraps and background noise cover most of the circle.
MIN_PLAUSIBLE_SPAN_RAD = 0.05 * 2 * np.pi


def pick_phase_values(
    scaled: np.ndarray, unscaled: np.ndarray | None = None
) -> tuple[np.ndarray, str | None]:
    """Choose between header-scaled and stored phase values when the scaling is spurious.

    Some converters write an ``scl_slope`` into phase images whose stored values are already
    radians, e.g. a slope of ~1/855 turns +-pi into +-0.0037. A phase image spanning less than
    :data:`MIN_PLAUSIBLE_SPAN_RAD` cannot be a head's wrapped phase, so if the stored
    (unscaled) values do span a plausible range they are used instead, with a note saying so.

    Returns ``(values, note)``; raises ``ValueError`` when neither is plausible.
    """
    span = float(np.nanmax(scaled) - np.nanmin(scaled))
    if span >= MIN_PLAUSIBLE_SPAN_RAD:
        return scaled, None
    if unscaled is not None:
        raw_span = float(np.nanmax(unscaled) - np.nanmin(unscaled))
        if raw_span >= MIN_PLAUSIBLE_SPAN_RAD:
            return unscaled, (
                f"the header scaling (scl_slope/scl_inter) shrinks the phase to a span of "
                f"{span:.3g}; using the stored values (span {raw_span:.3g}) instead"
            )
    raise ValueError(
        f"phase spans only {span:.3g} after the header scaling, too little for a wrapped "
        "phase image; check the file's scl_slope/scl_inter or the sidecar 'Units'"
    )
