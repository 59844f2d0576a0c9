"""Multi-echo combination: fit a B0 field (Hz) and a phase offset to the echoes' phases.

Signal model (``docs/conventions.md``): ``phi_n = phi0 + 2 pi f TE_n`` (mod 2 pi), with ``f``
the field in Hz and ``phi0`` the echo-independent (receive/transmit) phase offset. A positive
field therefore makes the phase grow with echo time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qsmprep.algorithms.constants import wrap_to_pi

_TWO_PI = 2.0 * np.pi


@dataclass
class FieldFit:
    """Result of :func:`fit_field_linear` (all maps 3-D float32, 0 outside the mask)."""

    #: Field (Hz); exact modulo ``wrap_period_hz`` (aliased where ``|f| > wrap_period_hz / 2``)
    #: until spatially unwrapped, e.g. by :func:`qsmprep.algorithms.unwrap.unwrap_field_hz`.
    field_hz: np.ndarray
    #: Phase at TE = 0 (rad), wrapped to ``[-pi, pi)``.
    phase_offset_rad: np.ndarray
    #: Weighted RMS residual of the linear fit (rad): a fit-quality map, high in noise.
    residual: np.ndarray
    #: Period (Hz) of the field's ambiguity: ``1 / min(TE_{n+1} - TE_n)``, or ``1 / TE_1``.
    wrap_period_hz: float


def check_echo_times(echo_times_s: Sequence[float], n_echoes: int | None = None) -> np.ndarray:
    """Validate echo times: finite, positive, strictly increasing, in seconds (<= 1 s).

    Returns them as a float64 array; raises ``ValueError`` saying what was expected.
    """
    tes = np.asarray(echo_times_s, dtype=np.float64).reshape(-1)
    if tes.size == 0 or not np.all(np.isfinite(tes)) or np.any(tes <= 0):
        raise ValueError(f"echo_times_s must be positive finite seconds, got {echo_times_s!r}")
    if np.any(tes > 1.0):
        raise ValueError(
            f"echo_times_s must be in seconds (e.g. 0.004), got {echo_times_s!r}: "
            "these look like milliseconds"
        )
    if np.any(np.diff(tes) <= 0):
        raise ValueError(f"echo_times_s must be strictly increasing, got {echo_times_s!r}")
    if n_echoes is not None and tes.size != n_echoes:
        raise ValueError(f"expected {n_echoes} echo times (one per echo), got {tes.size}")
    return tes


def _check_inputs(phase_rad, magnitude, echo_times_s, mask):
    phase = np.asarray(phase_rad)
    if phase.ndim == 3:
        phase = phase[..., np.newaxis]
    if phase.ndim != 4:
        raise ValueError(f"phase_rad must be (X, Y, Z, E) or (X, Y, Z), got shape {phase.shape}")
    tes = check_echo_times(echo_times_s, phase.shape[-1])
    mag = None
    if magnitude is not None:
        mag = np.asarray(magnitude)
        mag = mag[..., np.newaxis] if mag.ndim == 3 else mag
        if mag.shape != phase.shape:
            raise ValueError(f"magnitude shape {mag.shape} differs from phase shape {phase.shape}")
    m = np.ones(phase.shape[:3], bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != phase.shape[:3]:
        raise ValueError(f"mask must have shape {phase.shape[:3]}, got {m.shape}")
    if not np.all(np.isfinite(phase[m])) or (mag is not None and not np.all(np.isfinite(mag[m]))):
        raise ValueError("phase_rad and magnitude must be finite inside the mask")
    return phase, mag, tes, m


def fit_field_linear(
    phase_rad: npt.ArrayLike,
    magnitude: npt.ArrayLike | None = None,
    *,
    echo_times_s: Sequence[float],
    mask: npt.ArrayLike | None = None,
    guide_field_hz: npt.ArrayLike | None = None,
) -> FieldFit:
    """Fit ``phi_n = phi0 + 2 pi f TE_n`` to multi-echo phase, voxel by voxel.

    Parameters
    ----------
    phase_rad : (X, Y, Z, E) array
        Wrapped phase (rad) of each echo, echoes last (a 3-D array is one echo).
    magnitude : (X, Y, Z, E) array, optional
        Magnitudes: weights ``w_n = mag_n**2`` (the inverse phase-noise variance). Uniform
        weights if omitted.
    echo_times_s : sequence of E floats
        Strictly increasing echo times in seconds.
    mask : (X, Y, Z) bool array, optional
        Voxels to fit (default all); the maps are 0 elsewhere.
    guide_field_hz : (X, Y, Z) array, optional
        An unaliased (spatially unwrapped) estimate of the field, e.g. from
        :func:`temporal_unwrap_guide`, that guides the temporal unwrapping (below). Needed for
        unevenly spaced echoes, whose consecutive differences otherwise wrap inconsistently
        wherever ``|f|`` exceeds ``1 / (2 max dTE)``.

    Returns
    -------
    FieldFit

    Notes
    -----
    Temporal unwrapping from the consecutive echo differences, ``W`` being the wrap to
    ``[-pi, pi)``: with uniform spacing one common step
    ``d = angle(sum_n mag_n mag_{n+1} exp(i (phi_{n+1} - phi_n)))`` and
    ``psi_n = p_n + W(phi_n - p_n)``, ``p_n = phi_1 + (n - 1) d`` (noise cannot then wrap some
    differences and not others when ``|2 pi f dTE|`` is close to pi); with a reference field
    ``f_r``, ``p_n = phi_1 + 2 pi f_r (TE_n - TE_1)`` instead (any spacing: exact where
    ``|f - f_r| < 1 / (2 (TE_E - TE_1))``); otherwise the cumulative
    sum ``psi_1 = phi_1``, ``psi_{n+1} = psi_n + W(phi_{n+1} - phi_n)``. Then weighted least
    squares of ``psi_n = phi0 + 2 pi f TE_n``, in closed form per voxel:
    ``f = (S_w S_tp - S_t S_p) / (2 pi (S_w S_tt - S_t**2))``, ``phi0 = (S_p - 2 pi f S_t) / S_w``
    with ``S_w = sum w_n``, ``S_t = sum w_n TE_n``, ``S_tt = sum w_n TE_n**2``,
    ``S_p = sum w_n psi_n``, ``S_tp = sum w_n TE_n psi_n``. The residual is
    ``sqrt(sum w_n (psi_n - phi0 - 2 pi f TE_n)**2 / S_w)``.
    Where ``|2 pi f dTE| >= pi`` the consecutive differences wrap; with uniform echo spacing
    the fitted field is then still exact modulo ``wrap_period_hz = 1 / dTE``, and ``phi0`` is
    off by ``2 pi k TE_1 / dTE`` (nothing when ``TE_1 = dTE``): recompute it with
    :func:`phase_offset_from_field` after spatial unwrapping. Single echo:
    ``f = phi_1 / (2 pi TE_1)``, ``phi0 = 0``, residual 0, ``wrap_period_hz = 1 / TE_1``.

    References
    ----------
    Liu T, Wisnieff C, Lou M, et al. Nonlinear formulation of the magnetic field to source
    relationship for robust quantitative susceptibility mapping. Magn Reson Med
    2013;69:467-476. doi:10.1002/mrm.24272 (SNR weighting of the echoes)
    Robinson SD, Bredies K, Khabipova D, et al. An illustrated comparison of processing
    methods for MR phase imaging and QSM: combining array coil signals and phase unwrapping.
    NMR Biomed 2017;30:e3601. doi:10.1002/nbm.3601
    """
    phase, mag, tes, m = _check_inputs(phase_rad, magnitude, echo_times_s, mask)
    shape = phase.shape[:3]
    field = np.zeros(shape, np.float32)
    offset = np.zeros(shape, np.float32)
    residual = np.zeros(shape, np.float32)
    if tes.size == 1:
        field[m] = phase[..., 0][m] / (_TWO_PI * tes[0])
        return FieldFit(field, offset, residual, wrap_period_hz=float(1.0 / tes[0]))
    wrap_period = float(1.0 / np.min(np.diff(tes)))
    phi = phase[m]  # (V, E)
    ref = None
    if guide_field_hz is not None:
        ref = np.asarray(guide_field_hz, dtype=np.float32)
        if ref.shape != shape:
            raise ValueError(f"guide_field_hz must have shape {shape}, got {ref.shape}")
        ref = ref[m]
    psi = _temporal_unwrap(phi, None if mag is None else mag[m], tes, ref)
    w = np.ones(phi.shape, np.float32) if mag is None else np.square(mag[m], dtype=np.float32)
    w[np.count_nonzero(w > 0, axis=1) < 2] = 1.0  # < 2 weighted echoes: uniform weights
    slope, intercept, res = _weighted_line_fit(psi, w, tes - tes.mean())
    field[m] = slope / _TWO_PI
    offset[m] = wrap_to_pi(intercept - slope * tes.mean())
    residual[m] = res
    return FieldFit(field, offset, residual, wrap_period_hz=wrap_period)


def _temporal_unwrap(phi: np.ndarray, mag: np.ndarray | None, tes: np.ndarray,
                     ref: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Unwrap ``(V, E)`` phases along echoes (see :func:`fit_field_linear`, Notes)."""
    if ref is not None:
        lag = (tes - tes[0]).astype(np.float32)
        predicted = phi[:, :1] + np.float32(_TWO_PI) * ref[:, None] * lag
        return predicted + wrap_to_pi(phi - predicted)
    steps = np.diff(phi, axis=1)
    if uniform_spacing(tes):
        # uniform spacing: one step for all echoes, from the weighted complex mean of the
        # consecutive differences, so noise cannot wrap some differences and not others
        pair_w = 1.0 if mag is None else mag[:, 1:] * mag[:, :-1]
        z = np.sum(pair_w * np.exp(1j * steps), axis=1)
        step = np.angle(z).astype(np.float32)[:, None]
        predicted = phi[:, :1] + step * np.arange(tes.size, dtype=np.float32)
        return predicted + wrap_to_pi(phi - predicted)
    psi = np.empty(phi.shape, np.float32)
    psi[:, 0] = phi[:, 0]
    psi[:, 1:] = phi[:, :1] + np.cumsum(wrap_to_pi(steps), axis=1)
    return psi


def uniform_spacing(echo_times_s: Sequence[float], *, rtol: float = 1e-3) -> bool:
    """Whether consecutive echoes are equally spaced, every gap within ``rtol`` of the first
    (0.1 %: the fit's choice; the consensus advice allows 1 %); True for 1 or 2 echoes."""
    steps = np.diff(np.asarray(echo_times_s, dtype=np.float64))
    return steps.size == 0 or bool(np.allclose(steps, steps[0], rtol=rtol, atol=1e-6))


def temporal_unwrap_guide(
    phase_rad: npt.ArrayLike,
    magnitude: npt.ArrayLike | None = None,
    *,
    echo_times_s: Sequence[float],
    mask: npt.ArrayLike,
    voxel_size_mm: Sequence[float],
    unwrapping: str = "laplacian",
) -> np.ndarray | None:
    """An unaliased field (Hz) to guide the temporal unwrapping of unevenly spaced echoes, or
    None when the echoes are equally spaced (the fit is then exact modulo ``1 / dTE``).

    The field of the two consecutive echoes closest in time,
    ``f_r = W(phi_{k+1} - phi_k) / (2 pi dTE_min)``, is known modulo ``1 / dTE_min``; it is
    spatially unwrapped with ``unwrapping``
    (:func:`qsmprep.algorithms.unwrap.unwrap_field_hz`) and given to
    :func:`fit_field_linear` as ``guide_field_hz``. This is the template idea of
    multi-echo ROMEO (Dymerska et al., MRM 2021;85:2321-2333, doi:10.1002/mrm.28563): unwrap
    once in space, then every echo in time against the template. Its noise
    (``sqrt(2) sigma_phi / (2 pi dTE_min)``) only has to stay below
    ``1 / (2 (TE_E - TE_1))``.
    """
    from qsmprep.algorithms.unwrap import unwrap_field_hz

    phase, mag, tes, m = _check_inputs(phase_rad, magnitude, echo_times_s, mask)
    if uniform_spacing(tes):
        return None
    k = int(np.argmin(np.diff(tes)))
    pair = fit_field_linear(phase[..., k:k + 2], None if mag is None else mag[..., k:k + 2],
                            echo_times_s=tes[k:k + 2], mask=m)  # fmt: skip
    return unwrap_field_hz(pair.field_hz, wrap_period_hz=pair.wrap_period_hz,
                           voxel_size_mm=voxel_size_mm, mask=m, method=unwrapping,
                           magnitude=mag)  # fmt: skip


def _weighted_line_fit(y: np.ndarray, w: np.ndarray, t: np.ndarray):
    """Row-wise weighted least squares ``y ~ a + b t``; returns ``(b, a, weighted RMS)``.

    ``t`` should be centred (better conditioned normal equations); float64 accumulators.
    """
    s_w = s_t = s_tt = s_y = s_ty = 0.0
    for n, tn in enumerate(t):
        wn = w[:, n].astype(np.float64)
        yn = y[:, n].astype(np.float64)
        s_w, s_t, s_tt = s_w + wn, s_t + wn * tn, s_tt + wn * tn**2
        s_y, s_ty = s_y + wn * yn, s_ty + wn * tn * yn
    slope = (s_w * s_ty - s_t * s_y) / (s_w * s_tt - s_t**2)
    intercept = (s_y - slope * s_t) / s_w
    sq = 0.0
    for n, tn in enumerate(t):
        sq = sq + w[:, n] * (y[:, n] - intercept - slope * tn) ** 2
    return slope, intercept, np.sqrt(sq / s_w)


def phase_offset_from_field(
    phase_rad: npt.ArrayLike,
    field_hz: npt.ArrayLike,
    magnitude: npt.ArrayLike | None = None,
    *,
    echo_times_s: Sequence[float],
) -> np.ndarray:
    """Phase offset (rad) consistent with an (unwrapped) field: a weighted circular mean.

    ``phi0 = angle(sum_n w_n exp(i (phi_n - 2 pi f TE_n)))`` with ``w_n = mag_n`` (or 1).
    Use it after spatial unwrapping of :attr:`FieldFit.field_hz`, whose aliasing shifts the
    offset fitted by :func:`fit_field_linear` when ``TE_1`` differs from the echo spacing.
    """
    phase, mag, tes, _ = _check_inputs(phase_rad, magnitude, echo_times_s, None)
    field = np.asarray(field_hz, dtype=np.float64)
    if field.shape != phase.shape[:3]:
        raise ValueError(f"field_hz must have shape {phase.shape[:3]}, got {field.shape}")
    acc = np.zeros(field.shape, np.complex128)
    for n, te in enumerate(tes):
        weight = 1.0 if mag is None else mag[..., n]
        acc += weight * np.exp(1j * (phase[..., n] - _TWO_PI * field * te))
    return np.angle(acc).astype(np.float32)


def field_noise_std_hz(
    magnitude: npt.ArrayLike,
    *,
    echo_times_s: Sequence[float],
    mask: npt.ArrayLike | None = None,
    noise_level: float = 1.0,
) -> np.ndarray:
    """Standard deviation (Hz) of the multi-echo field estimate, propagated from the noise.

    With complex Gaussian noise of standard deviation ``sigma`` (``noise_level``, in the
    magnitude's units) on every echo, the phase of echo ``n`` has standard deviation
    ``sigma / M_n`` (high SNR). The inverse-variance weighted fit of
    ``phi_n = phi0 + 2 pi f TE_n`` (weights ``M_n^2``, as :func:`fit_field_linear`; at high
    SNR also the Cramer-Rao bound of the complex fit) then gives the field with::

        sd(f) = sigma / (2 pi sqrt(sum_n M_n^2 (TE_n - TE_w)^2)),
        TE_w = sum_n M_n^2 TE_n / sum_n M_n^2

    and, for one echo (no offset fitted), ``sd(f) = sigma / (2 pi M_1 TE_1)``. This is the
    field-noise map whose inverse MEDI uses as its data weight (Liu et al. 2013).

    Parameters
    ----------
    magnitude : (X, Y, Z, E) magnitudes (a 3-D array is one echo).
    echo_times_s : E echo times (s), strictly increasing.
    mask : voxels to compute (default all); 0 elsewhere.
    noise_level : ``sigma``. With the default of 1 the map is relative (in Hz per unit of
        magnitude noise), which is all a normalised data weight needs.

    Returns
    -------
    float32 map (Hz), 0 outside the mask. In mask voxels whose magnitudes leave the field
    undetermined (signal in fewer than 2 echoes, or none for one echo) it is the largest
    float32: a data weight ``1 / sd`` of 0, and still a finite value a NIfTI file can hold.

    References
    ----------
    Liu T, Wisnieff C, Lou M, et al. Nonlinear formulation of the magnetic field to source
    relationship for robust quantitative susceptibility mapping. Magn Reson Med
    2013;69:467-476. doi:10.1002/mrm.24272
    """
    mag = np.asarray(magnitude, dtype=np.float64)
    mag = mag[..., np.newaxis] if mag.ndim == 3 else mag
    if mag.ndim != 4:
        raise ValueError(f"magnitude must be (X, Y, Z, E) or (X, Y, Z), got shape {mag.shape}")
    tes = check_echo_times(echo_times_s, mag.shape[-1])
    m = np.ones(mag.shape[:3], bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != mag.shape[:3]:
        raise ValueError(f"mask must have shape {mag.shape[:3]}, got {m.shape}")
    if not np.all(np.isfinite(mag[m])) or np.any(mag[m] < 0):
        raise ValueError("magnitude must be finite and non-negative inside the mask")
    sigma = float(noise_level)
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"noise_level must be a positive number, got {noise_level!r}")
    w = np.square(mag[m])  # (V, E)
    if tes.size == 1:
        info = w[:, 0] * tes[0] ** 2
    else:
        tc = tes - tes.mean()  # centred: no cancellation in s_tt - s_t^2 / s_w
        s_w = w.sum(axis=1)
        s_t = w @ tc
        s_tt = w @ tc**2
        with np.errstate(invalid="ignore", divide="ignore"):
            info = np.where(s_w > 0, s_tt - s_t**2 / s_w, 0.0)  # sum w (TE - TE_w)^2
        info[np.count_nonzero(w > 0, axis=1) < 2] = 0.0  # one echo with signal: no slope
    out = np.zeros(m.shape, np.float32)
    with np.errstate(divide="ignore"):
        sd = sigma / (_TWO_PI * np.sqrt(np.maximum(info, 0.0)))
    out[m] = np.minimum(sd, np.finfo(np.float32).max)
    return out
