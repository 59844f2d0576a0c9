"""Acquisitions stored as real and imaginary parts (``part-real``/``part-imag``, GE's usual
export): write the phase (rad) and magnitude the pipeline reads.

The runner calls :func:`polar_acquisition` for such an acquisition before it builds the
workflow, so every stage, the registration and the report see ordinary phase and magnitude
files (in the work folder); the derivatives' ``Sources`` still name the raw parts. The maths
is :func:`qsmprep.algorithms.phase.complex_to_polar` and the slice-chopping check beside it;
``qsmprep-tools polar`` uses :func:`read_polar` too.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from qsmprep.interfaces import nifti


def read_polar(real_files, imag_files):
    """Magnitude and phase (rad), ``(X, Y, Z, E)`` float32, of per-echo real and imaginary
    part files (or one 4-D file each), with any slice-by-slice sign alternation undone.

    Returns ``(magnitude, phase, affine, chopped_axes)``; ``chopped_axes`` lists the voxel
    axes (0-based) along which the sign alternated (see
    :func:`~qsmprep.algorithms.phase.slice_chopping_axes`).

    Raises
    ------
    NiftiInputError
        If a part cannot be read, or the two parts' grids or echo counts differ (the message
        names the file).
    """
    from qsmprep.algorithms.phase import (
        complex_to_polar,
        slice_chopping_axes,
        undo_slice_chopping,
    )

    real, affine = nifti.load_stack(real_files, dtype=np.float32)
    imag, imag_affine = nifti.load_stack(imag_files, dtype=np.float32)
    if real.shape != imag.shape or not np.allclose(affine, imag_affine, atol=1e-4):
        raise nifti.NiftiInputError(f"{imag_files[0]}: grid or echo count differs from "
                                    f"{real_files[0]}")  # fmt: skip
    signal = real + 1j * imag
    del real, imag
    axes = slice_chopping_axes(signal)
    if axes:
        signal = undo_slice_chopping(signal, axes)
    magnitude, phase = complex_to_polar(signal.real, signal.imag)
    return magnitude, phase, affine, axes


def chopping_note(axes) -> str:
    """The warning for a slice-by-slice sign alternation undone along ``axes`` (0-based)."""
    shown = ", ".join(str(axis + 1) for axis in axes)
    return (f"the complex signal changes sign from one slice to the next along voxel axis "
            f"{shown} (seen in some GE 3-D reconstructions); undone before computing the "
            "phase")  # fmt: skip


def polar_acquisition(acq, out_dir: str | os.PathLike):
    """``acq`` with ``phase_files``/``magnitude_files`` computed from its complex parts.

    Writes ``<out_dir>/<name>_echo-<n>_part-{phase,mag}_<suffix>.nii`` (float32, uncompressed,
    on the raw grid and affine) from :func:`read_polar`; a slice-by-slice sign alternation
    undone there is recorded in ``notes``. An acquisition without complex parts is returned
    unchanged.

    Raises
    ------
    NiftiInputError
        If a part cannot be read (the message names the file).
    """
    if not acq.from_complex_parts:
        return acq
    magnitude, phase, affine, axes = read_polar(acq.real_files, acq.imag_files)
    notes = list(acq.notes) + ([chopping_note(axes)] if axes else [])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phase_files, magnitude_files = [], []
    for echo in range(phase.shape[3]):
        stem = f"{out / acq.name}_echo-{echo + 1}"
        phase_files.append(nifti.save(phase[..., echo], affine,
                                      f"{stem}_part-phase_{acq.suffix}.nii"))  # fmt: skip
        magnitude_files.append(nifti.save(magnitude[..., echo], affine,
                                          f"{stem}_part-mag_{acq.suffix}.nii"))  # fmt: skip
    return dataclasses.replace(acq, phase_files=tuple(phase_files),
                               magnitude_files=tuple(magnitude_files), phase_units="rad",
                               notes=tuple(notes))  # fmt: skip
