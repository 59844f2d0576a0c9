"""Susceptibility referencing: QSM gives chi up to a constant; fix it to a stated region.

The 2024 consensus (doi:10.1002/mrm.30006) asks that susceptibility be reported relative to a
named reference region, always including the whole brain (the default here).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def reference_chi(
    chi_ppm: npt.ArrayLike,
    mask: npt.ArrayLike,
    *,
    region_mask: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Subtract the mean susceptibility of a reference region.

    ``chi_ref = M (chi - mean(chi[R]))`` with ``R = region_mask & mask`` (the whole mask
    ``M`` when ``region_mask`` is None), in ppm; 0 outside ``M``.

    Parameters
    ----------
    chi_ppm : (X, Y, Z) susceptibility (ppm) from a dipole inversion.
    mask : (X, Y, Z) brain mask.
    region_mask : optional reference region (e.g. whole brain, CSF, a white-matter ROI);
        only its voxels inside ``mask`` are used.

    Returns
    -------
    float32 array, referenced chi (ppm), 0 outside ``mask``.

    Raises
    ------
    ValueError : shape mismatch, or an empty (mask or) reference region.

    Examples
    --------
    >>> import numpy as np
    >>> chi = np.array([[[1.0, 2.0, 3.0]]])
    >>> reference_chi(chi, chi > 0, region_mask=chi == 1).tolist()
    [[[0.0, 1.0, 2.0]]]
    """
    chi = np.asarray(chi_ppm, dtype=np.float32)
    m = np.asarray(mask).astype(bool)
    if m.shape != chi.shape:
        raise ValueError(f"mask shape {m.shape} must equal chi_ppm shape {chi.shape}")
    if region_mask is None:
        region = m
    else:
        region = np.asarray(region_mask).astype(bool)
        if region.shape != chi.shape:
            raise ValueError(
                f"region_mask shape {region.shape} must equal chi_ppm shape {chi.shape}"
            )
        region = region & m
    if not region.any():
        raise ValueError("reference region is empty (no voxel of region_mask inside mask)")
    offset = np.float32(chi[region].mean(dtype=np.float64))
    return np.where(m, chi - offset, np.float32(0)).astype(np.float32)
