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


# -- real and imaginary parts -------------------------------------------------------------------
def complex_to_polar(real: np.ndarray, imag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude and phase (rad, ``[-pi, pi]``) of an image stored as real and imaginary parts.

    ``magnitude = sqrt(re^2 + im^2)``, ``phase = atan2(im, re)`` (BIDS ``part-real`` /
    ``part-imag``, as GE scanners commonly export). Both are independent of any common scaling
    of the two parts, so the parts' integer range needs no detection. Computed in float32
    (the phase to about 1e-7 rad; a 1 mm 4-echo head stays under 1 GB). Non-finite values
    become 0. Returns float32 arrays.
    """
    re = np.asarray(real, dtype=np.float32)
    im = np.asarray(imag, dtype=np.float32)
    if re.shape != im.shape:
        raise ValueError(f"real part {re.shape} and imaginary part {im.shape} differ in shape")
    bad = ~(np.isfinite(re) & np.isfinite(im))
    magnitude, phase = np.hypot(re, im), np.arctan2(im, re)
    magnitude[bad] = 0.0
    phase[bad] = 0.0
    return magnitude, phase


#: Below this mean correlation between neighbouring slices the complex image alternates sign
#: slice by slice (a smooth image gives about +1 there; chopped, about -1).
CHOPPING_CORRELATION = -0.5


def slice_chopping_axes(signal: np.ndarray) -> list[int]:
    """Voxel axes along which a complex image flips sign from one slice to the next.

    Some 3-D reconstructions (notably GE's, in the slice direction) leave a factor
    ``(-1)^k`` on slice ``k``: the phase jumps by pi between neighbouring slices, which no
    unwrapping can explain. Such an axis is recognised by the normalised correlation of
    neighbouring slices, ``Re(sum s[k+1] conj(s[k])) / sum |s[k+1]| |s[k]|``, below
    :data:`CHOPPING_CORRELATION` (-0.5): about +1 for a smooth image, -1 when chopped.
    ``signal`` is complex (3-D, or 4-D with echoes last: all echoes are pooled).
    """
    s = np.asarray(signal)
    axes = []
    for axis in range(3):
        a = np.moveaxis(s, axis, 0)
        prod = a[1:] * np.conj(a[:-1])
        norm = float(np.sum(np.abs(a[1:]) * np.abs(a[:-1])))
        if norm > 0 and float(np.sum(prod.real)) / norm < CHOPPING_CORRELATION:
            axes.append(axis)
    return axes


def undo_slice_chopping(signal: np.ndarray, axes) -> np.ndarray:
    """``signal`` with every odd slice along each of ``axes`` multiplied by -1."""
    out = np.array(signal, copy=True)
    for axis in axes:
        index = [slice(None)] * out.ndim
        index[axis] = slice(1, None, 2)
        out[tuple(index)] *= -1
    return out
