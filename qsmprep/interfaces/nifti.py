"""The one place that turns NIfTI files into arrays and back (nibabel only here)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class NiftiInputError(ValueError):
    """A NIfTI input that cannot be used; the message names the file."""


def load(path: str | os.PathLike, *, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI as ``(data, affine)``; scl_slope/scl_inter are applied by nibabel.

    Images of more than four axes lose singleton axes after the third, so the
    ``(X, Y, Z, 1, 1)`` or ``(X, Y, Z, 1, E)`` images some software writes read as
    ``(X, Y, Z, 1)`` and ``(X, Y, Z, E)``. Complex-valued data are refused when a real
    ``dtype`` is asked for (casting would silently keep the real part).
    """
    import nibabel as nb

    try:
        img = nb.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for bad files
        raise NiftiInputError(f"{path}: cannot read NIfTI ({exc})") from exc
    while data.ndim > 4:  # keep (X, Y, Z, 1): a one-echo stack stays 4-D
        singles = [axis for axis in range(3, data.ndim) if data.shape[axis] == 1]
        if not singles:
            break
        data = data.squeeze(axis=singles[-1])
    if dtype is not None:
        if np.iscomplexobj(data) and not np.issubdtype(np.dtype(dtype), np.complexfloating):
            raise NiftiInputError(
                f"{path}: complex-valued image ({data.dtype}); expected real values (split "
                f"complex data into part-real/part-imag or phase/magnitude files)"
            )
        data = data.astype(dtype, copy=False)
    return data, np.asarray(img.affine, dtype=float)


def load_mask(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Read a user's mask as ``(mask, affine, note)``: a 3-D boolean array, the affine and a
    note (or None) saying how the values were read
    (:func:`qsmprep.algorithms.masking.binarize_mask`). One-line errors name the file."""
    from qsmprep.algorithms.masking import binarize_mask

    data, affine = load(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NiftiInputError(f"{path}: expected a 3-D mask, got shape {data.shape}")
    try:
        mask, note = binarize_mask(data)
    except ValueError as exc:
        raise NiftiInputError(f"{path}: {exc}") from exc
    return mask, affine, note


def load_affine(path: str | os.PathLike) -> np.ndarray:
    """The affine of a NIfTI, without reading its data."""
    import nibabel as nb

    try:
        return np.asarray(nb.load(str(path)).affine, dtype=float)
    except Exception as exc:  # nibabel raises many types for bad files
        raise NiftiInputError(f"{path}: cannot read NIfTI ({exc})") from exc


def load_stack(paths: Sequence[str | os.PathLike], *, dtype=np.float32):
    """Read per-echo 3-D files (or one 4-D file) into an ``(X, Y, Z, E)`` array."""
    arrays, affine = [], None
    for p in paths:
        data, aff = load(p, dtype=dtype)
        if affine is None:
            affine = aff
        elif not np.allclose(aff, affine, atol=1e-4):
            raise NiftiInputError(f"{p}: affine differs from {paths[0]}")
        arrays.append(data if data.ndim == 4 else data[..., None])
    if any(a.shape[:3] != arrays[0].shape[:3] for a in arrays):
        raise NiftiInputError(f"{paths[0]}: echoes have different shapes")
    return np.concatenate(arrays, axis=3), affine


def load_phase_stack(paths: Sequence[str | os.PathLike]):
    """Per-echo phase files as ``(X, Y, Z, E)``, float64, with spurious header scaling undone.

    Returns ``(data, affine, notes)``; see :func:`qsmprep.algorithms.phase.pick_phase_values`.
    """
    import nibabel as nb

    from qsmprep.algorithms.phase import pick_phase_values

    load_stack(paths, dtype=None)  # validates shapes and affines, names the file
    arrays, notes, affine = [], [], None
    for p in paths:
        scaled, affine = load(p, dtype=np.float64)
        raw = np.asanyarray(nb.load(str(p)).dataobj.get_unscaled()).astype(np.float64)
        try:
            values, note = pick_phase_values(scaled, raw)
        except ValueError as exc:
            raise NiftiInputError(f"{p}: {exc}") from exc
        if note:
            notes.append(f"{p}: {note}")
        arrays.append(values if values.ndim == 4 else values[..., None])
    return np.concatenate(arrays, axis=3), affine, notes


def save(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike, *, dtype=np.float32) -> str:
    """Write ``data`` with ``affine`` (sform and qform) as ``dtype``; returns the path."""
    import nibabel as nb

    arr = np.asarray(data)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
        dtype = np.uint8
    img = nb.Nifti1Image(arr.astype(dtype, copy=False), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    out = Path(path).absolute()
    nb.save(img, str(out))
    return str(out)


def geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(voxel_size_mm, b0_direction)`` of an affine (B0 along world +z)."""
    from qsmprep.algorithms.kernels import b0_direction_from_affine, voxel_size_from_affine

    return voxel_size_from_affine(affine), b0_direction_from_affine(affine)
