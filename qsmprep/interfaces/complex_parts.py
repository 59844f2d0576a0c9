"""Acquisitions stored as real and imaginary parts (``part-real``/``part-imag``, GE's usual
export): write the phase (rad) and magnitude the pipeline reads.

The runner calls :func:`polar_acquisition` for such an acquisition before it builds the
workflow, so every stage, the registration and the report see ordinary phase and magnitude
files (in the work folder); the derivatives' ``Sources`` still name the raw parts. The maths
is :func:`qsmprep.algorithms.phase.complex_to_polar` and the slice-chopping check beside it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from qsmprep.interfaces import nifti


def polar_acquisition(acq, out_dir: str | os.PathLike):
    """``acq`` with ``phase_files``/``magnitude_files`` computed from its complex parts.

    Writes ``<out_dir>/<name>_echo-<n>_part-{phase,mag}_<suffix>.nii`` (float32, uncompressed,
    on the raw grid and affine). A sign that alternates slice by slice (see
    :func:`~qsmprep.algorithms.phase.slice_chopping_axes`) is undone and recorded in
    ``notes``. An acquisition without complex parts is returned unchanged.

    Raises
    ------
    NiftiInputError
        If a part cannot be read (the message names the file).
    """
    from qsmprep.algorithms.phase import (
        complex_to_polar,
        slice_chopping_axes,
        undo_slice_chopping,
    )

    if not acq.from_complex_parts:
        return acq
    real, affine = nifti.load_stack(acq.real_files, dtype=np.float32)
    imag, imag_affine = nifti.load_stack(acq.imag_files, dtype=np.float32)
    if real.shape != imag.shape or not np.allclose(affine, imag_affine, atol=1e-4):
        raise nifti.NiftiInputError(f"{acq.imag_files[0]}: grid differs from {acq.real_files[0]}")
    signal = real + 1j * imag
    del real, imag
    notes = list(acq.notes)
    axes = slice_chopping_axes(signal)
    if axes:
        signal = undo_slice_chopping(signal, axes)
        shown = ", ".join(str(axis + 1) for axis in axes)
        notes.append(f"the complex signal changes sign from one slice to the next along voxel "
                     f"axis {shown} (seen in some GE 3-D reconstructions); undone before "
                     "computing the phase")  # fmt: skip
    magnitude, phase = complex_to_polar(signal.real, signal.imag)
    del signal
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
