"""Real-to-complex FFT helpers and padding shared by every k-space method.

All k-space operators in qsmprep act on real images, so they use ``rfftn``/``irfftn``
(half the work and memory of complex FFTs) on a grid padded to a 5-smooth size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft as sfft


def fast_shape(shape: Sequence[int], *, pad_factor: float = 1.0) -> tuple[int, ...]:
    """Smallest 5-smooth sizes ``>= ceil(n * pad_factor)`` for each axis (even on the last)."""
    if pad_factor < 1.0:
        raise ValueError(f"pad_factor must be >= 1, got {pad_factor}")
    out = []
    for n in shape:
        m = sfft.next_fast_len(int(np.ceil(n * pad_factor)), real=True)
        out.append(int(m))
    return tuple(out)


def pad_to(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Zero-pad ``image`` at the end of each axis up to ``shape``."""
    pads = [(0, int(s) - n) for n, s in zip(image.shape, shape, strict=True)]
    if any(p[1] < 0 for p in pads):
        raise ValueError(f"cannot pad shape {image.shape} to smaller {tuple(shape)}")
    return np.pad(image, pads)


def crop_to(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Undo :func:`pad_to`: keep the leading ``shape`` block."""
    return image[tuple(slice(0, int(s)) for s in shape)]


def rfftn(image: np.ndarray, *, workers: int | None = -1) -> np.ndarray:
    """Forward real FFT over all axes (scipy.fft, multithreaded)."""
    return sfft.rfftn(image, workers=workers)


def irfftn(spectrum: np.ndarray, shape: Sequence[int], *, workers: int | None = -1) -> np.ndarray:
    """Inverse of :func:`rfftn` to a real array of ``shape``."""
    return sfft.irfftn(spectrum, s=tuple(shape), workers=workers)


def kspace_grid(
    shape: Sequence[int], voxel_size_mm: Sequence[float], *, real: bool = True
) -> list[np.ndarray]:
    """Spatial-frequency coordinates (cycles/mm) for an (r)FFT of ``shape``.

    Returns broadcastable arrays ``[k0, k1, k2]``; with ``real=True`` the last axis has
    ``n // 2 + 1`` samples as produced by :func:`rfftn`.
    """
    if len(shape) != 3 or len(voxel_size_mm) != 3:
        raise ValueError("kspace_grid needs a 3-D shape and three voxel sizes")
    axes = []
    for i, (n, d) in enumerate(zip(shape, voxel_size_mm, strict=True)):
        if real and i == 2:
            k = np.fft.rfftfreq(int(n), d=float(d))
        else:
            k = np.fft.fftfreq(int(n), d=float(d))
        view = [1, 1, 1]
        view[i] = k.size
        axes.append(k.reshape(view))
    return axes


def parseval_weight(shape: Sequence[int]) -> np.ndarray:
    """``s = sqrt(c / N)`` on the rfft half spectrum of a real grid ``shape`` (``N`` voxels;
    ``c`` = 1 on the last axis's self-conjugate planes, index 0 and ``n / 2`` for even ``n``,
    2 elsewhere), shaped to broadcast (float32).

    ``Z = s rfftn(x)`` is an isometry: ``sum x^2 = sum |Z|^2``. As a real-linear map of the
    real and imaginary parts, the adjoint of ``Z -> irfftn(Z / s)`` is ``x -> s rfftn(x)``.
    A Krylov solver (CG, LSQR, LSMR) can so iterate on ``Z``, viewed as float32 pairs: where
    its operator starts or ends with a real, even k-space factor ``K`` (``irfftn(K Z / s)``,
    adjoint ``s K rfftn``), each product costs one FFT fewer, and the iterates are the
    images' own mapped by the isometry (they stay in its range, as ``K`` is Hermitian).
    """
    n = int(np.prod(shape))
    last = shape[-1]
    c = np.full(last // 2 + 1, 2.0)
    c[0] = 1.0
    if last % 2 == 0:
        c[-1] = 1.0
    return np.sqrt(c / n).astype(np.float32).reshape((1,) * (len(shape) - 1) + (-1,))
