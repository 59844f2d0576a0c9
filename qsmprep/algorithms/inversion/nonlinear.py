"""Dipole inversion with the nonlinear (complex exponential) data term: NDI and nonlinear TV.

Both fit the *phase* rather than the field, ``||W (exp(i s D chi) - exp(i s f))||^2``, which
stays bounded where the field is noisy or inconsistent (wraps, vessels, edges) instead of
growing quadratically. Here ``s`` (``phase_scale_rad_per_ppm``) turns ppm into radians at the
echo used: ``s = 2 pi gamma_bar B0 TE 1e-6``. The interface should pass it when B0 and TE are
known; the default, :data:`DEFAULT_PHASE_SCALE`, is 3 T at TE = 20 ms (about 16 rad/ppm).

Units. The data term is divided by ``s^2``::

    E_data(chi) = 1 / (2 s^2) ||W (exp(i s D chi) - exp(i s f))||^2
                = sum W^2 (1 - cos(s (D chi - f))) / s^2
               -> 1/2 ||W (D chi - f)||^2            (s -> 0)

so the regularisation weights keep the meaning (ppm*mm for TV) they have in the linear
methods of this package, whatever B0 and TE. Its gradient is ``D^T (W^2 sin(s r)) / s`` with
``r = D chi - f`` (all real, so real FFTs suffice), and the Gauss-Newton Hessian is
``D^T W^2 D``.

Weights ``W`` come from the magnitude (root-sum-of-squares over echoes if 4-D, echoes last)
and are normalised to mean 1 in the mask (0 outside); without a magnitude ``W`` is the mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from qsmprep.algorithms import fft as _fft
from qsmprep.algorithms.constants import GAMMA_BAR_HZ_PER_T
from qsmprep.algorithms.inversion import _common

#: ppm -> rad at 3 T and TE = 20 ms: ``2 pi gamma_bar B0 TE 1e-6`` (about 16.05 rad/ppm).
DEFAULT_PHASE_SCALE = float(2 * np.pi * GAMMA_BAR_HZ_PER_T * 3.0 * 0.020 * 1e-6)


def _as_box(p: _common.InversionProblem, image: np.ndarray) -> np.ndarray:
    """Crop a full-grid map to the problem's box and pad it like the field (float32)."""
    return _fft.pad_to(np.asarray(image, dtype=np.float32)[p.box], p.shape)


def rss_magnitude(magnitude: npt.ArrayLike, shape: Sequence[int]) -> np.ndarray:
    """Validate a 3-D magnitude or a 4-D one (echoes last, combined by RSS) of ``shape``."""
    mag = np.asarray(magnitude, dtype=np.float64)
    if mag.ndim == 4 and mag.shape[:3] == tuple(shape):
        mag = np.sqrt(np.sum(mag * mag, axis=-1))
    if mag.shape != tuple(shape):
        raise ValueError(
            f"magnitude must have shape {tuple(shape)} or {tuple(shape)} + (echoes,), "
            f"got {np.shape(magnitude)}"
        )
    if not np.all(np.isfinite(mag)) or np.any(mag < 0):
        raise ValueError("magnitude must be finite and non-negative")
    return mag.astype(np.float32)


def data_weights(
    p: _common.InversionProblem,
    magnitude: npt.ArrayLike | None = None,
    noise_std: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Data weights ``W`` on the padded grid: mean 1 in the mask, 0 outside.

    ``noise_std`` (ppm, scalar or map) gives ``W = 1 / noise_std`` and takes precedence
    (``inf`` where a voxel has no usable signal: weight 0); otherwise ``magnitude`` gives
    ``W = |magnitude|`` (RSS if 4-D); otherwise ``W = mask``.
    """
    m = p.mask
    if noise_std is not None:
        sd = np.asarray(noise_std, dtype=np.float64)
        if sd.ndim == 0:
            sd = np.full(p.full_shape, float(sd))
        if sd.shape != p.full_shape:
            raise ValueError(f"noise_std must be a scalar or shaped {p.full_shape}, got {sd.shape}")
        sd_box = np.asarray(sd[p.box], dtype=np.float64)
        if not np.all(sd_box[_fft.crop_to(m, sd_box.shape)] > 0):  # NaN fails too
            raise ValueError("noise_std must be positive (or inf) inside the mask")
        w = _fft.pad_to(1.0 / np.where(sd_box > 0, sd_box, 1.0), p.shape)  # inf -> 0
        w = np.where(m, w, 0.0)
    elif magnitude is not None:
        w = np.where(m, _as_box(p, rss_magnitude(magnitude, p.full_shape)), 0.0)
    else:
        return m.astype(np.float32)
    mean = float(w[m].mean())
    if not mean > 0:
        raise ValueError("data weights are all zero inside the mask (magnitude is 0 there)")
    return (w / mean).astype(np.float32)


def check_phase_scale(value: float) -> float:
    return _common.check_number("phase_scale_rad_per_ppm", value, high=1e4)


def _data_step(z, dx, u1, f, w2, mu, s, steps) -> None:
    """The data split's z- and u1-updates, in place: ``steps`` Newton steps per voxel on
    ``w2 (1 - cos s(z - f)) / s^2 + mu/2 (z - v)^2`` from ``z``, with ``v = dx + u1`` (``dx``:
    ``D chi``); then ``u1 += dx - z``. One fused pass with numba, numpy otherwise."""
    mu, s = np.float32(mu), np.float32(s)
    if _common._nb is not None:
        _common._nb.nltv_data_step(z, dx, u1, f, w2, mu, s, steps)
        return
    v = dx + u1
    z[...] = _newton_phase(z, v, f, w2, mu, s, steps)
    u1[...] = v - z


def _newton_phase(z, v, f, w2, mu, s, steps):
    """A few Newton steps, per voxel, on ``w2 (1 - cos s(z - f)) / s^2 + mu/2 (z - v)^2``."""
    for _ in range(steps):
        arg = np.float32(s) * (z - f)
        grad = w2 * np.sin(arg) / np.float32(s) + mu * (z - v)
        hess = w2 * np.cos(arg) + mu
        hess = np.where(hess > 0.1 * mu, hess, w2 + mu)  # non-convex region: a safe step
        z = z - grad / hess
    return z


def _admm_nltv(p, w, *, lam, rho, mu, s, tol, max_iterations, newton_steps):
    """ADMM for ``E_data + lam ||grad x||_1`` with splits ``z = D x`` and ``y = grad x``."""
    h, d, f = p.voxel_size_mm, p.kernel, p.field_ppm
    den = np.float32(mu) * d * d + np.float32(rho) * p.grad_sq()
    den[0, 0, 0] = 1.0  # the mean is undetermined; keep it 0
    inv_den = (1.0 / den).astype(np.float32)
    del den
    w_data = (np.float32(mu) * d * inv_den).astype(np.float32)  # mu D / den
    w_tv = (np.float32(rho) * inv_den).astype(np.float32)  # rho / den
    del inv_den
    w2 = (w * w).astype(np.float32)
    z, u1 = f.copy(), np.zeros_like(f)
    u2 = [np.zeros_like(f) for _ in range(3)]
    spare = [np.empty_like(f) for _ in range(3)]  # the next u2
    adj = None  # grad^T (y - u2) of the last split step
    x, it = None, 0
    while it < max_iterations:
        it += 1
        xk = p.fft(z - u1)
        if adj is None:  # y = u2 = 0: no TV term yet
            xk *= w_data
            dk = d * xk
        else:  # X = (mu D F(z - u1) + rho F(grad^T (y - u2))) / den; D X
            dk = p.fft(adj)
            _common.spectra_step(xk, dk, w_data, w_tv, d)
        x_new = p.ifft(xk)
        adj = _common.split_adjoint_update(x_new, u2, spare, lam / rho, h)
        u2, spare = spare, u2
        dx = p.ifft(dk)
        _data_step(z, dx, u1, f, w2, mu, s, newton_steps)
        if x is not None and _common.relative_change(x_new, x) < tol:
            x = x_new
            break
        x = x_new
    return x, it


def nltv(
    local_field_ppm: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    voxel_size_mm: Sequence[float],
    b0_direction: npt.ArrayLike = (0.0, 0.0, 1.0),
    magnitude: npt.ArrayLike | None = None,
    regularization: float | None = None,
    rho: float | None = None,
    mu: float = 1.0,
    phase_scale_rad_per_ppm: float = DEFAULT_PHASE_SCALE,
    tol: float = 1e-2,
    max_iterations: int = 100,
    newton_steps: int = 4,
    pad_factor: float = _common.PAD_FACTOR,
    workers: int | None = -1,
) -> np.ndarray:
    """Nonlinear total-variation dipole inversion (FANSI nonlinear), by ADMM.

    Solves ``min_chi 1/(2 s^2) ||W (exp(i s D chi) - exp(i s f))||^2 + lambda ||grad chi||_1``
    (anisotropic TV, 1/mm) with the splits ``z = D chi`` (an image, so that the nonlinear
    part becomes voxel-wise) and ``y = grad chi``; scaled duals ``u1``, ``u2``::

        X  = (mu D F(z - u1) + rho F(grad^T (y - u2))) / (mu D^2 + rho |G|^2)
        y  = shrink(grad chi + u2, lambda / rho);        u2 += grad chi - y
        z  = argmin W^2 (1 - cos s(z - f)) / s^2 + mu/2 |z - D chi - u1|^2   (Newton)
        u1 += D chi - z

    Parameters
    ----------
    local_field_ppm, mask, voxel_size_mm, b0_direction, pad_factor, workers :
        as :func:`qsmprep.algorithms.inversion.tkd`.
    magnitude : optional magnitude (3-D, or 4-D with echoes last: RSS) for ``W``
        (normalised to mean 1 in the mask); ``W`` = mask without it.
    regularization : ``lambda`` (ppm*mm). Default (None): as
        :func:`~qsmprep.algorithms.inversion.tv`, ``2e-4 * h`` with ``h`` the geometric-mean
        voxel size in mm (the same weight on each jump between voxels at any resolution).
        Through the pipeline after RESHARP this scored better than the earlier fixed 4e-4 on
        6 of 7 simulations (mean 39.2 -> 37.9 %), and on 1 mm heads' true local fields
        9.6 / 23.0 / 20.5 -> 9.0 / 18.0 / 13.3 % (``docs/benchmarks.md``).
    rho : TV split penalty; default ``100 * lambda`` (FANSI).
    mu : data split penalty (1.0, FANSI's ``mu2`` for weights of mean 1).
    phase_scale_rad_per_ppm : ``s = 2 pi gamma_bar B0 TE 1e-6`` (rad/ppm) of the phase the
        field came from; default 3 T, TE 20 ms (16.05). Pass the real value when known.
    tol : stop when ``||chi_k - chi_{k-1}|| < tol ||chi_k||`` (1e-2).
    max_iterations : at most this many ADMM iterations (100).
    newton_steps : Newton steps of the voxel-wise ``z`` update per iteration (4).

    Returns
    -------
    chi_ppm : float32 susceptibility (ppm), 0 outside the mask, not referenced.

    Notes
    -----
    FFTs: 4 per iteration, minus 1 in the first (``<= 399``). As ``s -> 0`` this is
    :func:`~qsmprep.algorithms.inversion.tv` with weights.

    References
    ----------
    Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear susceptibility
    inversion with variational regularization (FANSI). Magn Reson Med 2018;80:814-821.
    doi:10.1002/mrm.27073
    """
    if regularization is None:  # the same weight per jump between voxels at any resolution
        regularization = _common.per_jump_regularization(voxel_size_mm)
    lam = _common.check_number("regularization", regularization)
    rho = _common.default_admm_penalty(lam) if rho is None else _common.check_number("rho", rho)
    mu = _common.check_number("mu", mu)
    s = check_phase_scale(phase_scale_rad_per_ppm)
    tol = _common.check_number("tol", tol)
    max_iterations = _common.check_count("max_iterations", max_iterations)
    newton_steps = _common.check_count("newton_steps", newton_steps)
    p = _common.setup(
        local_field_ppm, mask, voxel_size_mm=voxel_size_mm, b0_direction=b0_direction,
        pad_factor=pad_factor, workers=workers,
    )  # fmt: skip
    w = data_weights(p, magnitude)
    x, _ = _admm_nltv(
        p, w, lam=lam, rho=rho, mu=mu, s=s, tol=tol, max_iterations=max_iterations,
        newton_steps=newton_steps,
    )  # fmt: skip
    return p.to_image(x)


def ndi(
    local_field_ppm: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    voxel_size_mm: Sequence[float],
    b0_direction: npt.ArrayLike = (0.0, 0.0, 1.0),
    magnitude: npt.ArrayLike | None = None,
    regularization: float = 1e-3,
    step: float = 2.0,
    phase_scale_rad_per_ppm: float = DEFAULT_PHASE_SCALE,
    tol: float = 1e-3,
    max_iterations: int = 200,
    pad_factor: float = _common.PAD_FACTOR,
    workers: int | None = -1,
) -> np.ndarray:
    """Nonlinear dipole inversion (NDI): gradient descent on the complex data term.

    Minimises ``1/(2 s^2) ||W (exp(i s D chi) - exp(i s f))||^2 + lambda/2 ||chi||^2`` from
    ``chi = 0`` with a fixed step::

        chi <- chi - tau (D^T (W^2 sin(s (D chi - f))) / s + lambda chi)

    ``W`` is the magnitude normalised to a maximum of 1 (the mask without a magnitude), for
    which ``tau = 2`` is stable (the data Hessian is at most ``max D^2 = 4/9``). The few
    iterations are the main regulariser (early stopping), as in the paper.

    Parameters
    ----------
    local_field_ppm, mask, voxel_size_mm, b0_direction, pad_factor, workers :
        as :func:`qsmprep.algorithms.inversion.tkd`.
    magnitude : optional magnitude (3-D, or 4-D with echoes last: RSS) for ``W``.
    regularization : ``lambda`` of the Tikhonov term (1e-3, dimensionless).
    step : gradient step ``tau`` (2.0; must be < 4.5 for stability).
    phase_scale_rad_per_ppm : ``s = 2 pi gamma_bar B0 TE 1e-6`` (rad/ppm); default 3 T,
        TE 20 ms (16.05). Pass the real value when known.
    tol : stop when ``||chi_k - chi_{k-1}|| < tol ||chi_k||`` (1e-3).
    max_iterations : at most this many iterations (200).

    Returns
    -------
    chi_ppm : float32 susceptibility (ppm), 0 outside the mask, not referenced.

    Notes
    -----
    ``chi`` lives in k-space between iterations, so each costs 2 FFTs (``D chi`` back to
    image space, the weighted residual forward), plus 1 at the end (``<= 401``).

    References
    ----------
    Polak D, Chatnuntawech I, Yoon J, et al. Nonlinear dipole inversion (NDI) enables robust
    quantitative susceptibility mapping (QSM). NMR Biomed 2020;33:e4271. doi:10.1002/nbm.4271
    """
    lam = _common.check_number("regularization", regularization, low=0.0, low_open=False)
    tau = _common.check_number("step", step, high=4.5)
    s = check_phase_scale(phase_scale_rad_per_ppm)
    tol = _common.check_number("tol", tol)
    max_iterations = _common.check_count("max_iterations", max_iterations)
    p = _common.setup(
        local_field_ppm, mask, voxel_size_mm=voxel_size_mm, b0_direction=b0_direction,
        pad_factor=pad_factor, workers=workers,
    )  # fmt: skip
    w = data_weights(p, magnitude)
    w2 = (w / w.max()) ** 2 / np.float32(s)
    d, f = p.kernel, p.field_ppm
    xk = np.zeros(d.shape, np.complex64)  # chi = 0 (rfft layout, like D)
    d_chi = np.zeros_like(xk)  # D chi
    for _ in range(max_iterations):
        r = p.ifft(d_chi)  # w2 sin(s (D chi - f)), in place (numpy's sin is vectorised)
        r -= f
        r *= np.float32(s)
        np.sin(r, out=r)
        r *= w2
        step_norm, chi_norm = _ndi_update(xk, p.fft(r), d, tau, lam, d_chi)
        if step_norm < tol * max(chi_norm, 1e-30):
            break
    return p.to_image(p.ifft(xk))


def _ndi_update(xk, spectrum, d, tau, lam, d_chi) -> tuple[float, float]:
    """``dx = tau (D F + lambda x)``, ``x -= dx``, ``d_chi = D x`` in place (one numba pass);
    returns ``(||dx||, ||x||)`` over the half spectrum's entries."""
    if _common._nb is not None:
        step, norm = _common._nb.ndi_update(xk, spectrum, d, np.float32(tau), np.float32(lam),
                                            d_chi)  # fmt: skip
        return float(step), float(norm)
    dxk = np.float32(tau) * (d * spectrum + np.float32(lam) * xk)
    xk -= dxk
    np.multiply(d, xk, out=d_chi)
    return float(np.linalg.norm(dxk)), float(np.linalg.norm(xk))
