"""Tests of the real-FFT helpers (:mod:`qsmprep.algorithms.fft`)."""

import numpy as np
import pytest

from qsmprep.algorithms.fft import irfftn, parseval_weight, rfftn


@pytest.mark.parametrize("shape", [(6, 5, 8), (7, 4, 9), (5, 6, 2)])
def test_parseval_weight_is_an_isometry_with_the_inverse_fft_as_adjoint(shape):
    # Krylov solvers iterate on Z = s rfftn(x) (RESHARP's CG, iLSQR's LSQR/LSMR): that needs
    # ||Z|| = ||x|| and <irfftn(Z / s), y> = <Z, s rfftn(y)> over real and imaginary parts,
    # for every Z, Hermitian-consistent or not (even and odd last axes).
    rng = np.random.default_rng(sum(shape))
    s = parseval_weight(shape)
    x = rng.normal(size=shape)
    z = s * rfftn(x)
    assert np.sum(np.abs(z) ** 2) == pytest.approx(np.sum(x**2), rel=1e-6)
    kshape = z.shape
    w = rng.normal(size=kshape) + 1j * rng.normal(size=kshape)  # arbitrary half spectrum
    y = rng.normal(size=shape)
    lhs = np.sum(irfftn(w / s, shape) * y)
    rhs = np.sum((np.conj(w) * (s * rfftn(y))).real)
    assert lhs == pytest.approx(rhs, rel=1e-6)  # s is float32
    # without the self-conjugate planes' weight of 1 the identity fails
    wrong = np.full_like(s, np.sqrt(2.0 / np.prod(shape)))
    assert np.sum(np.abs(wrong * rfftn(x)) ** 2) != pytest.approx(np.sum(x**2), rel=1e-3)
