"""Dipole inversion: local field (ppm) -> susceptibility (ppm).

Every method has the signature ``name(local_field_ppm, mask, *, voxel_size_mm,
b0_direction=(0, 0, 1), **params) -> chi_ppm`` and returns a float32 map on the input grid,
0 outside the mask and not referenced (see :mod:`qsmprep.algorithms.referencing`). Work is
done on the mask's bounding box, zero-padded to a 5-smooth size, with real FFTs.

=========  =====================================================  ==========================
name       model                                                  FFTs per call
=========  =====================================================  ==========================
tkd        truncated k-space division, ``|D_t| >= 0.19``          2
tsvd       k-space division, 0 where ``|D| <= 0.1``               2
tikhonov   ``min ||D X - F||^2 + lambda ||grad x||^2``, closed    2
rts        LSMR on ``D``, then TV fill of the ``|D| < 0.15`` cone  3 + 2 per iteration (<= 43)
tv         ``min ||D X - F||^2 / 2 + lambda TV(x)``, ADMM           2 + 2 per iteration (<= 202)
isqsm      band-limited fit with support constraint, CG            2 + 2 per iteration (<= 62)
isqsm-l1   the same band fit + L1 on Haar wavelets (FISTA)         2 per iteration (<= 202)
ilsqr      weighted LSQR minus LSMR-estimated cone streaks         9 + 4 per iteration (<= 409)
star       strong L1 on chi (big sources), then TV on the rest  4 + 2 per iteration (<= 404)
medi       nonlinear data, magnitude-edge-weighted TV, GN + CG   4 per GN step + 4 per CG
nltv       nonlinear data term + TV, ADMM (FANSI)                  4 per iteration (<= 399)
ndi        nonlinear data term + Tikhonov, gradient descent        1 + 2 per iteration (<= 401)
=========  =====================================================  ==========================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from qsmprep.algorithms.inversion.direct import tikhonov, tkd, tsvd
from qsmprep.algorithms.inversion.ilsqr import ilsqr
from qsmprep.algorithms.inversion.incomplete_spectrum import isqsm
from qsmprep.algorithms.inversion.incomplete_spectrum_l1 import isqsm_l1
from qsmprep.algorithms.inversion.medi import medi
from qsmprep.algorithms.inversion.nonlinear import ndi, nltv
from qsmprep.algorithms.inversion.rapid_two_step import rts
from qsmprep.algorithms.inversion.single_step import single_step_tv
from qsmprep.algorithms.inversion.star import star
from qsmprep.algorithms.inversion.total_variation import tv

#: Registry of dipole inversion methods by name.
INVERSION_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "tkd": tkd,
    "tsvd": tsvd,
    "tikhonov": tikhonov,
    "rts": rts,
    "tv": tv,
    "isqsm": isqsm,
    "isqsm-l1": isqsm_l1,
    "ilsqr": ilsqr,
    "star": star,
    "medi": medi,
    "nltv": nltv,
    "ndi": ndi,
}

#: Methods that take the *total* field and replace background removal as well:
#: ``name(total_field_ppm, mask, *, voxel_size_mm, b0_direction, **params) -> (chi, valid)``.
SINGLE_STEP_METHODS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "single-step-tv": single_step_tv,
}

#: Methods whose data term uses the magnitude (weights, edges) and the phase scale.
USES_MAGNITUDE = ("medi", "nltv", "ndi")
#: Methods that weight their data term by ``1 / noise_std``, the echo fit's field noise
#: (:func:`qsmprep.algorithms.combine.field_noise_std_hz`): MEDI, as its toolbox does.
USES_FIELD_NOISE = ("medi",)

#: The pipeline's default: most accurate on every simulated case, including those its
#: parameters were not tuned on (``benchmarks/inversion_accuracy.py``).
DEFAULT_METHOD = "tv"


def invert(
    method: str,
    local_field_ppm: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    voxel_size_mm: Sequence[float],
    b0_direction: npt.ArrayLike = (0.0, 0.0, 1.0),
    **params,
) -> np.ndarray:
    """Run the dipole inversion ``method`` (a key of :data:`INVERSION_METHODS`).

    ``params`` are the method's own keyword arguments; an unknown one raises ``TypeError``.

    Examples
    --------
    >>> sorted(INVERSION_METHODS)
    ['isqsm', 'rts', 'tikhonov', 'tkd', 'tsvd', 'tv']
    """
    try:
        fn = INVERSION_METHODS[method]
    except (KeyError, TypeError):
        choices = ", ".join(sorted(INVERSION_METHODS))
        raise ValueError(f"unknown inversion method {method!r}; choose one of: {choices}") from None
    return fn(
        local_field_ppm, mask, voxel_size_mm=voxel_size_mm, b0_direction=b0_direction, **params
    )


__all__ = [
    "DEFAULT_METHOD",
    "INVERSION_METHODS",
    "SINGLE_STEP_METHODS",
    "USES_FIELD_NOISE",
    "USES_MAGNITUDE",
    "invert",
    "isqsm",
    "rts",
    "single_step_tv",
    "tikhonov",
    "tkd",
    "tsvd",
    "tv",
]
