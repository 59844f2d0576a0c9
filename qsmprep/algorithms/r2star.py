"""R2* (1/s) and T2* (s) mapping from multi-echo GRE magnitude.

Signal model: ``S(TE) = M0 exp(-R2* TE)`` per voxel, magnitudes ``(X, Y, Z, E)`` with the
echoes on the last axis and echo times in seconds, so R2* comes out in 1/s (Hz).
Two estimators: ARLO (closed form, equally spaced echoes, >= 3 echoes) and a magnitude-weighted
log-linear least-squares fit (any spacing, >= 2 echoes); :func:`r2star_map` chooses and
returns a clean map (clipped, NaN-free, 0 outside the mask).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from qsmprep.algorithms.combine import check_echo_times

#: Upper clip of :func:`r2star_map` (1/s): T2* = 0.5 ms, far beyond tissue (skull ~300 1/s).
R2STAR_MAX_HZ = 2000.0
#: Relative tolerance on the echo spacing for "equally spaced" (ARLO's Simpson rule).
SPACING_RTOL = 1e-2
R2STAR_METHODS = ("auto", "arlo", "loglinear")


def _check_inputs(magnitude, echo_times_s, mask, min_echoes):
    mag = np.asarray(magnitude)
    if mag.ndim != 4:
        raise ValueError(f"magnitude must be (X, Y, Z, E) with echoes last, got shape {mag.shape}")
    tes = check_echo_times(echo_times_s, mag.shape[-1])
    if tes.size < min_echoes:
        raise ValueError(f"need at least {min_echoes} echoes, got {tes.size}")
    m = np.ones(mag.shape[:3], bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != mag.shape[:3]:
        raise ValueError(f"mask must have shape {mag.shape[:3]}, got {m.shape}")
    values = mag[m].astype(np.float64)  # (V, E)
    if not np.all(np.isfinite(values)):
        raise ValueError("magnitude must be finite inside the mask")
    if np.any(values < 0):
        raise ValueError("magnitude must be non-negative (pass |S|, not a signed image)")
    return values, tes, m


def _is_equally_spaced(tes: np.ndarray) -> bool:
    steps = np.diff(tes)
    return steps.size > 0 and bool(np.allclose(steps, steps[0], rtol=SPACING_RTOL, atol=0.0))


def _scatter(values: np.ndarray, m: np.ndarray) -> np.ndarray:
    out = np.zeros(m.shape, np.float32)
    out[m] = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def r2star_arlo(
    magnitude: npt.ArrayLike,
    *,
    echo_times_s: Sequence[float],
    mask: npt.ArrayLike | None = None,
) -> np.ndarray:
    """R2* (1/s) by auto-regression on linear operations (ARLO), for equally spaced echoes.

    Parameters
    ----------
    magnitude : (X, Y, Z, E) array
        Non-negative GRE magnitudes, echoes last, ``E >= 3``.
    echo_times_s : sequence of E floats
        Strictly increasing, equally spaced echo times in seconds.
    mask : (X, Y, Z) bool array, optional
        Voxels to fit (default all); 0 elsewhere.

    Returns
    -------
    (X, Y, Z) float32 array
        R2* in 1/s, not clipped (noise can make it negative); 0 where the signal is zero
        and outside the mask. :func:`r2star_map` clips it.

    Raises
    ------
    ValueError
        Fewer than 3 echoes, unequal spacing (use :func:`r2star_loglinear`), echo times not
        in seconds, bad shapes or non-finite/negative magnitudes.

    Notes
    -----
    Integrating ``dS/dt = -S / T2*`` from ``TE_i`` to ``TE_{i+2}`` gives ``s_i = T2* d_i`` with
    the Simpson integral ``s_i = dTE / 3 (S_i + 4 S_{i+1} + S_{i+2})`` and
    ``d_i = S_i - S_{i+2}``, ``i = 1 .. E-2``. The least-squares solution over all windows,
    with the Simpson terms' errors modelled, is

    ``T2* = (sum s_i**2 + dTE/3 sum s_i d_i) / (dTE/3 sum d_i**2 + sum s_i d_i)``

    (T2* in s, dTE in s, S in any unit), evaluated here as its reciprocal
    ``R2* = 1 / T2*`` so that a flat signal (``d_i = 0``) gives R2* = 0 without division by 0.

    References
    ----------
    Pei M, Nguyen TD, Thimmappa ND, et al. Algorithm for fast monoexponential fitting based
    on Auto-Regression on Linear Operations (ARLO) of data. Magn Reson Med 2015;73:843-850.
    doi:10.1002/mrm.25137

    Examples
    --------
    >>> tes = [0.004, 0.008, 0.012]
    >>> mag = np.exp(-50.0 * np.array(tes)).reshape(1, 1, 1, 3)
    >>> round(float(r2star_arlo(mag, echo_times_s=tes)[0, 0, 0]), 1)
    50.0
    """
    values, tes, m = _check_inputs(magnitude, echo_times_s, mask, min_echoes=3)
    if not _is_equally_spaced(tes):
        raise ValueError(
            f"ARLO needs equally spaced echo times, got {tes.tolist()} s (spacings "
            f"{np.diff(tes).tolist()}); use the log-linear fit (r2star_loglinear, or "
            "r2star_map(method='auto'))"
        )
    dte3 = float(np.mean(np.diff(tes))) / 3.0
    s = dte3 * (values[:, :-2] + 4.0 * values[:, 1:-1] + values[:, 2:])
    d = values[:, :-2] - values[:, 2:]
    s_ss = np.sum(s * s, axis=1)
    s_sd = np.sum(s * d, axis=1)
    s_dd = np.sum(d * d, axis=1)
    num = dte3 * s_dd + s_sd  # R2* = 1 / T2*
    den = s_ss + dte3 * s_sd
    with np.errstate(divide="ignore", invalid="ignore"):
        r2s = np.where(den > 0, num / den, 0.0)
    return _scatter(r2s, m)


def r2star_loglinear(
    magnitude: npt.ArrayLike,
    *,
    echo_times_s: Sequence[float],
    mask: npt.ArrayLike | None = None,
) -> np.ndarray:
    """R2* (1/s) by weighted least squares of ``log S`` over echo time (any spacing).

    Parameters
    ----------
    magnitude : (X, Y, Z, E) array
        Non-negative GRE magnitudes, echoes last, ``E >= 2``.
    echo_times_s : sequence of E floats
        Strictly increasing echo times in seconds (any spacing).
    mask : (X, Y, Z) bool array, optional
        Voxels to fit (default all); 0 elsewhere.

    Returns
    -------
    (X, Y, Z) float32 array
        R2* in 1/s, not clipped; 0 where fewer than 2 echoes have signal, and outside the mask.

    Notes
    -----
    Fits ``log S_n = log M0 - R2* TE_n`` with weights ``w_n = S_n**2`` (the inverse
    variance of ``log S_n``, ``var(log S) ~ sigma**2 / S**2``), in closed form per voxel:

    ``R2* = -(S_w S_ty - S_t S_y) / (S_w S_tt - S_t**2)``

    with ``S_w = sum w_n``, ``S_t = sum w_n TE_n``, ``S_tt = sum w_n TE_n**2``,
    ``S_y = sum w_n log S_n``, ``S_ty = sum w_n TE_n log S_n`` (TE in s, R2* in 1/s).
    Echoes with ``S_n = 0`` get zero weight. The weighting limits the bias of the
    noise floor at late echoes (Rician noise), which an unweighted fit suffers most.

    References
    ----------
    Bevington PR, Robinson DK. Data Reduction and Error Analysis for the Physical Sciences.
    3rd ed. McGraw-Hill; 2003 (weighted linear least squares, ch. 6).
    Pei M, Nguyen TD, Thimmappa ND, et al. Magn Reson Med 2015;73:843-850.
    doi:10.1002/mrm.25137 (log-linear fitting as the reference for ARLO)
    """
    values, tes, m = _check_inputs(magnitude, echo_times_s, mask, min_echoes=2)
    t = tes - tes.mean()  # centred: better-conditioned normal equations
    w = values * values
    with np.errstate(divide="ignore"):
        y = np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), 0.0)
    s_w = w.sum(axis=1)
    s_t = w @ t
    s_tt = w @ (t * t)
    s_y = np.sum(w * y, axis=1)
    s_ty = (w * y) @ t
    det = s_w * s_tt - s_t**2
    ok = det > 1e-12 * np.maximum(s_w * s_tt, np.finfo(float).tiny)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2s = np.where(ok, -(s_w * s_ty - s_t * s_y) / det, 0.0)
    return _scatter(r2s, m)


def r2star_map(
    magnitude: npt.ArrayLike,
    *,
    echo_times_s: Sequence[float],
    mask: npt.ArrayLike | None = None,
    method: str = "auto",
) -> np.ndarray:
    """R2* map (1/s), clipped to ``[0, R2STAR_MAX_HZ]``, NaN-free, 0 outside the mask.

    Parameters
    ----------
    magnitude : (X, Y, Z, E) array
        Non-negative GRE magnitudes, echoes last.
    echo_times_s : sequence of E floats
        Strictly increasing echo times in seconds.
    mask : (X, Y, Z) bool array, optional
        Voxels to fit (default all).
    method : {'auto', 'arlo', 'loglinear'}
        ``'auto'``: :func:`r2star_arlo` for >= 3 equally spaced echoes (relative tolerance
        ``SPACING_RTOL``), else :func:`r2star_loglinear`.

    Returns
    -------
    (X, Y, Z) float32 array
        R2* (1/s) in ``[0, 2000]``.

    Examples
    --------
    >>> tes = [0.004, 0.010]
    >>> mag = np.exp(-30.0 * np.array(tes)).reshape(1, 1, 1, 2)
    >>> round(float(r2star_map(mag, echo_times_s=tes)[0, 0, 0]), 1)
    30.0
    """
    if method not in R2STAR_METHODS:
        raise ValueError(f"method must be one of {R2STAR_METHODS}, got {method!r}")
    if method == "auto":
        tes = check_echo_times(echo_times_s)
        method = "arlo" if tes.size >= 3 and _is_equally_spaced(tes) else "loglinear"
    fit = r2star_arlo if method == "arlo" else r2star_loglinear
    r2s = fit(magnitude, echo_times_s=echo_times_s, mask=mask)
    return np.clip(r2s, 0.0, R2STAR_MAX_HZ).astype(np.float32)


def t2star_from_r2star(r2star_hz: npt.ArrayLike) -> np.ndarray:
    """T2* (s) from R2* (1/s): ``T2* = 1 / R2*`` where ``R2* > 0``, else 0 (float32).

    Examples
    --------
    >>> t2star_from_r2star(np.array([50.0, 0.0, -3.0])).tolist()
    [0.019999999552965164, 0.0, 0.0]
    """
    r2s = np.asarray(r2star_hz, dtype=np.float64)
    out = np.zeros(r2s.shape, np.float64)
    pos = np.isfinite(r2s) & (r2s > 0)
    out[pos] = 1.0 / r2s[pos]
    return out.astype(np.float32)
