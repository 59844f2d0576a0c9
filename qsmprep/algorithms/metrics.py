"""Accuracy metrics against ground truth (QSM Challenge 2.0 definitions).

References
----------
QSM Challenge 2.0 Organization Committee. Magn Reson Med 2021;86:526-542.
doi:10.1002/mrm.28754
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _masked_pair(estimate, truth, mask, demean):
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(truth, dtype=np.float64)
    if est.shape != ref.shape:
        raise ValueError(f"shape mismatch: {est.shape} vs {ref.shape}")
    m = np.ones(est.shape, bool) if mask is None else np.asarray(mask, bool)
    if not m.any():
        raise ValueError("mask is empty")
    x, y = est[m], ref[m]
    if demean:
        x, y = x - x.mean(), y - y.mean()
    return x, y


def nrmse(estimate, truth, mask=None, *, demean: bool = True) -> float:
    """Normalised RMS error in percent: ``100 ||x - y|| / ||y||`` inside ``mask``.

    With ``demean`` (default, as in the QSM challenges) both are demeaned in the mask first,
    so a constant reference offset is not counted.
    """
    x, y = _masked_pair(estimate, truth, mask, demean)
    return float(100.0 * np.linalg.norm(x - y) / np.linalg.norm(y))


def hfen(estimate, truth, mask=None, *, sigma_vox: float = 1.5) -> float:
    """High-frequency error norm (%): :func:`nrmse` of Laplacian-of-Gaussian filtered maps."""
    m = np.ones(np.shape(truth), bool) if mask is None else np.asarray(mask, bool)
    est = np.where(m, estimate, 0.0).astype(np.float64)
    ref = np.where(m, truth, 0.0).astype(np.float64)
    return nrmse(
        ndimage.gaussian_laplace(est, sigma_vox),
        ndimage.gaussian_laplace(ref, sigma_vox),
        m,
        demean=False,
    )


def region_means(image, labels, label_ids) -> np.ndarray:
    """Mean of ``image`` in each label of ``label_ids`` (NaN for an empty label)."""
    img = np.asarray(image, dtype=np.float64)
    out = []
    for lab in label_ids:
        sel = labels == lab
        out.append(float(img[sel].mean()) if sel.any() else np.nan)
    return np.asarray(out)


def regression_slope(estimate_means, true_means) -> float:
    """Least-squares slope of estimated vs true region means (with intercept)."""
    x = np.asarray(true_means, float)
    y = np.asarray(estimate_means, float)
    ok = np.isfinite(x) & np.isfinite(y)
    return float(np.polyfit(x[ok], y[ok], 1)[0])
