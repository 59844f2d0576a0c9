"""The one place that turns NIfTI files into arrays and back (nibabel only here)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class NiftiInputError(ValueError):
    """A NIfTI input that cannot be used; the message names the file."""


def load(path: str | os.PathLike, *, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI as ``(data, affine)``; scl_slope/scl_inter are applied by nibabel."""
    import nibabel as nb

    try:
        img = nb.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for bad files
        raise NiftiInputError(f"{path}: cannot read NIfTI ({exc})") from exc
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return data, np.asarray(img.affine, dtype=float)


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
