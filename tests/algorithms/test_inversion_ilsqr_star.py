"""Ground-truth tests of iLSQR and STAR-QSM on the simulated head phantom.

Same case as ``test_inversion.py``: 64^3 at 3 mm, local field = forward model of the brain's
chi plus seeded Gaussian noise of 1e-3 ppm. Thresholds are the measured NRMSE (%) plus a
margin. What breaks them: a zero map gives 100 %, B0 along x instead of z 176 % (iLSQR) and
185 % (STAR), a sign error ~190 %; skipping iLSQR's artefact removal (step 1 alone) 42 %;
STAR with its level 1 switched off is plain TV (11.8 %).
"""

import importlib

import numpy as np
import pytest
from conftest import noisy_local_field

from qsmprep.algorithms import metrics, simulate
from qsmprep.algorithms.inversion import _common

ilsqr_mod = importlib.import_module("qsmprep.algorithms.inversion.ilsqr")
star_mod = importlib.import_module("qsmprep.algorithms.inversion.star")
METHODS = {"ilsqr": ilsqr_mod.ilsqr, "star": star_mod.star}

VOX = (3.0, 3.0, 3.0)
NOISE_PPM = 1e-3
DEEP_GREY = (
    "caudate",
    "putamen",
    "globus_pallidus",
    "thalamus",
    "substantia_nigra",
    "red_nucleus",
    "dentate_nucleus",
)
#: measured NRMSE % -> threshold
NRMSE_MAX = {"ilsqr": 34.0, "star": 14.0}  # measured 30.2, 11.1
#: measured HFEN % -> threshold
HFEN_MAX = {"ilsqr": 27.0, "star": 11.0}  # measured 23.4, 8.2


def _field(ph, chi=None):
    return noisy_local_field(ph, voxel_size_mm=VOX, noise_ppm=NOISE_PPM, chi=chi)[1]


def _label(ph, name):
    return next(k for k, v in ph.label_names.items() if v == name)


@pytest.fixture(scope="module")
def axial():
    ph = simulate.make_head_phantom((64, 64, 64), voxel_size_mm=VOX)
    chi = ph.true_chi()
    return ph, chi, _field(ph)


@pytest.fixture(scope="module")
def estimates(axial):
    ph, _, f = axial
    return {m: fn(f, ph.brain_mask, voxel_size_mm=VOX) for m, fn in METHODS.items()}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_accuracy_against_ground_truth(method, axial, estimates):
    ph, chi, _ = axial
    est = estimates[method]
    assert est.dtype == np.float32 and est.shape == chi.shape
    assert np.all(est[~ph.brain_mask] == 0)
    assert metrics.nrmse(est, chi, ph.brain_mask) < NRMSE_MAX[method]
    assert metrics.hfen(est, chi, ph.brain_mask) < HFEN_MAX[method]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_pallidum_above_white_matter_and_deep_grey_slope(method, axial, estimates):
    ph, chi, _ = axial
    est = estimates[method]
    gp = est[ph.labels == _label(ph, "globus_pallidus")].mean()
    wm = est[ph.labels == _label(ph, "white_matter")].mean()
    assert gp > wm + 0.1  # truth 0.15 vs -0.03; measured 0.15 vs -0.02 (both)
    ids = [_label(ph, n) for n in DEEP_GREY]
    slope = metrics.regression_slope(
        metrics.region_means(est, ph.labels, ids), metrics.region_means(chi, ph.labels, ids)
    )
    assert 0.75 <= slope <= 1.2  # measured: ilsqr 0.85, star 0.92


@pytest.mark.parametrize("method", sorted(METHODS))
def test_wrong_b0_direction_breaks_accuracy(method, axial):
    ph, chi, f = axial
    est = METHODS[method](f, ph.brain_mask, voxel_size_mm=VOX, b0_direction=(1, 0, 0))
    assert metrics.nrmse(est, chi, ph.brain_mask) > 2 * NRMSE_MAX[method]  # measured > 170


def test_ilsqr_removes_artefacts_and_scales_with_the_field(axial, estimates):
    ph, chi, f = axial
    p = _common.setup(f, ph.brain_mask, voxel_size_mm=VOX, b0_direction=(0, 0, 1))
    step1 = p.to_image(ilsqr_mod._lsqr_step(p, 1e-2, 50))
    err1 = metrics.nrmse(step1, chi, ph.brain_mask)  # measured 42.3
    assert metrics.nrmse(estimates["ilsqr"], chi, ph.brain_mask) < err1 - 8
    # percentile weights are scale invariant, Krylov iterates scale equivariant: 2f -> 2chi
    est2 = METHODS["ilsqr"](2 * f, ph.brain_mask, voxel_size_mm=VOX)
    np.testing.assert_allclose(est2, 2 * estimates["ilsqr"], rtol=1e-4, atol=1e-6)


def test_star_beats_tv_with_a_haemorrhage(axial):
    """STAR's purpose: a 1.5 ppm bleed; tissue away from it is recovered better than by TV."""
    from qsmprep.algorithms.inversion import tv

    ph, chi0, _ = axial
    g = np.indices(chi0.shape)
    bleed = ((g - np.array([40, 32, 36])[:, None, None, None]) ** 2).sum(0) <= 2.2**2
    chi = np.where(bleed, np.float32(1.5), chi0)
    f = _field(ph, chi)
    away = ph.brain_mask & ~bleed
    e_star = METHODS["star"](f, ph.brain_mask, voxel_size_mm=VOX)
    e_tv = tv(f, ph.brain_mask, voxel_size_mm=VOX, masked=False)
    assert metrics.nrmse(e_star, chi, away) < metrics.nrmse(e_tv, chi, away) - 0.4  # 11.5, 12.3
    assert e_star[bleed].mean() > 1.0  # the bleed itself is kept (measured ~1.3)


def test_star_without_strong_sources_is_tv(axial):
    from qsmprep.algorithms.inversion import tv

    ph, _, f = axial
    e = METHODS["star"](f, ph.brain_mask, voxel_size_mm=VOX, strong_regularization=1.0)
    # STAR's level 2 is tv's k-space form with STAR's fixed weight
    same = {"regularization": 4e-4, "masked": False}
    np.testing.assert_allclose(e, tv(f, ph.brain_mask, voxel_size_mm=VOX, **same), atol=1e-6)


@pytest.mark.parametrize(
    ("method", "kwargs", "match"),
    [
        ("ilsqr", dict(delta=0.5), "delta"),
        ("ilsqr", dict(tol=0.0), "tol"),
        ("ilsqr", dict(lsqr_iterations=0), "lsqr_iterations"),
        ("ilsqr", dict(artefact_iterations=1.5), "artefact_iterations"),
        ("ilsqr", dict(smv_radius_mm=-1.0), "smv_radius_mm"),
        ("star", dict(strong_regularization=0.0), "strong_regularization"),
        ("star", dict(regularization=-1.0), "regularization"),
        ("star", dict(max_iterations=0), "max_iterations"),
        ("star", dict(mask=np.zeros((8, 8, 8), bool)), "mask is empty"),
        ("ilsqr", dict(mask=np.ones((8, 8, 7), bool)), "mask shape"),
        ("ilsqr", dict(voxel_size_mm=(1.0, 0.0, 1.0)), "voxel_size_mm"),
        ("star", dict(b0_direction=(0, 0, 0)), "b0_direction"),
        ("star", dict(local_field_ppm=np.full((8, 8, 8), np.nan, np.float32)), "non-finite"),
    ],
)
def test_invalid_input_raises(method, kwargs, match):
    args = dict(
        local_field_ppm=np.zeros((8, 8, 8), np.float32),
        mask=np.ones((8, 8, 8), bool),
        voxel_size_mm=(1.0, 1.0, 1.0),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        METHODS[method](args.pop("local_field_ppm"), args.pop("mask"), **args)


def _weighted_grad(v, wg, h):
    """The written-out ``W grad`` (periodic forward differences), shaped ``(3, *v.shape)``."""
    return np.stack([w * (np.roll(v, -1, axis=a) - v) / h[a] for a, w in enumerate(wg)])


def test_row_gradient_and_its_adjoint(engine):
    """iLSQR step 3's operator ``W grad`` at the rows where ``W > 0`` (numba kernels or
    numpy) equals the written-out forward differences there, and its adjoint passes the
    dot-product test."""
    rng = np.random.default_rng(5)
    shape, h = (7, 8, 9), (1.0, 2.0, 0.5)
    v = rng.normal(size=shape).astype(np.float32)
    wg = [np.where(rng.random(shape) > 0.4, rng.random(shape), 0).astype(np.float32)
          for _ in range(3)]  # fmt: skip
    op = ilsqr_mod._RowGradient(wg, h)
    full = _weighted_grad(v, wg, h)
    rows = np.stack(wg).ravel() != 0
    got = op.apply(v)
    assert got.dtype == np.float32 and got.size == rows.sum() < full.size
    np.testing.assert_allclose(got, full.ravel()[rows], rtol=1e-5, atol=1e-5)
    r = rng.normal(size=got.size).astype(np.float32)
    lhs = float(np.vdot(got.astype(np.float64), r))
    back = op.adjoint(r, 2.0)
    rhs = float(np.vdot(v.astype(np.float64), back)) / 2.0
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_star_numpy_fallback_gives_the_same_map(axial, estimates, monkeypatch):
    """STAR's L1 split runs as one numba pass; without numba the numpy steps give the same
    map (the kernel keeps z, u, w = z - u and the change of z)."""
    if _common._nb is None:
        pytest.skip("numba is not installed")
    ph, _, f = axial
    monkeypatch.setattr(_common, "_nb", None)
    plain = star_mod.star(f, ph.brain_mask, voxel_size_mm=VOX)
    ref = estimates["star"]
    assert np.abs(plain - ref).max() < 1e-4 * np.abs(ref).max()


def test_ilsqr_krylov_steps_equal_the_plain_image_space_solvers(axial, engine):
    """Steps 1 and 3 run LSQR/LSMR on the Parseval-scaled half spectrum, restricted to the
    cone's entries and to the rows with non-zero weight. That is an exact change of
    variables: the same solutions as scipy's solvers on the image-space operators written
    out with two FFTs per product (same iteration counts, stopping rules, weights)."""
    from scipy.sparse.linalg import LinearOperator, lsmr, lsqr

    ph, _, f = axial
    p = _common.setup(f, ph.brain_mask, voxel_size_mm=VOX, b0_direction=(0, 0, 1))
    shape, h, n = p.shape, p.voxel_size_mm, p.mask.size

    def conv(v, k):
        return p.ifft(p.fft(np.asarray(v, np.float32).reshape(shape)) * k)

    sw = np.sqrt(ilsqr_mod._laplacian_weights(p))
    op1 = LinearOperator(
        (n, n), dtype=np.float32,
        matvec=lambda v: (sw * conv(v, p.kernel)).ravel(),
        rmatvec=lambda v: conv(sw * v.reshape(shape), p.kernel).ravel(),
    )  # fmt: skip
    with np.errstate(over="ignore"):
        x = lsqr(op1, (sw * p.field_ppm).ravel(), atol=1e-2, btol=1e-2, conlim=0, iter_lim=8)[0]
    plain1 = x.reshape(shape).astype(np.float32) * p.mask
    fast1 = ilsqr_mod._lsqr_step(p, 1e-2, 8)
    assert np.abs(fast1 - plain1).max() < 1e-4 * np.abs(plain1).max()

    x_fs = ilsqr_mod._fast_qsm(p, p.fft(p.field_ppm), 3.0)
    wg = [ilsqr_mod._ramp_down(np.abs(g), p.mask, 50.0, 70.0) for g in _common.grad(x_fs, h)]
    cone = (np.abs(p.kernel) < 0.1).astype(np.float32)
    op3 = LinearOperator(
        (3 * n, n), dtype=np.float32,
        matvec=lambda v: _weighted_grad(conv(v, cone), wg, h).ravel(),
        rmatvec=lambda r: conv(_common.grad_adjoint(
            np.stack(wg) * np.asarray(r, np.float32).reshape((3, *shape)), h), cone).ravel(),
    )  # fmt: skip
    rhs = _weighted_grad(fast1, wg, h).ravel()
    with np.errstate(over="ignore"):
        y = lsmr(op3, rhs, atol=1e-2, btol=1e-2, conlim=0, maxiter=12)[0]
    plain3 = y.reshape(shape).astype(np.float32) * p.mask
    fast3 = ilsqr_mod._artefact_step(p, fast1, x_fs, delta=0.1, tol=1e-2, iterations=12)
    assert np.abs(fast3 - plain3).max() < 1e-4 * np.abs(plain3).max()
    assert np.abs(plain3).max() > 1e-2 * np.abs(fast1).max()  # the artefact is not ~0
