"""Real and imaginary parts become the phase and magnitude files the pipeline reads."""

from __future__ import annotations

import numpy as np
import pytest

from qsmprep.algorithms.constants import wrap_to_pi
from qsmprep.interfaces import nifti
from qsmprep.interfaces.bids import Acquisition
from qsmprep.interfaces.complex_parts import polar_acquisition
from qsmprep.interfaces.nifti import NiftiInputError

SHAPE = (20, 18, 12)


def _parts(tmp_path, *, chop: bool):
    """Two echoes of a smooth, wrapping signal stored as int16 real/imag NIfTIs (GE-like),
    optionally with the sign alternating along the third voxel axis."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    mag = 1000 * np.exp(-(x**2 + y**2 + z**2))
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    truth, files = [], {"real": [], "imag": []}
    for echo in (1, 2):
        phase = wrap_to_pi(echo * (4.0 * x * y + 3.0 * z))
        signal = mag * np.exp(1j * phase) * ((-1.0) ** np.arange(SHAPE[2]) if chop else 1.0)
        truth.append(phase)
        for part, values in (("real", signal.real), ("imag", signal.imag)):
            path = tmp_path / f"sub-01_echo-{echo}_part-{part}_MEGRE.nii.gz"
            files[part].append(nifti.save(np.round(values), affine, path, dtype=np.int16))
    acq = Acquisition(subject="01", echo_times_s=(0.004, 0.008), b0_tesla=3.0,
                      real_files=tuple(files["real"]), imag_files=tuple(files["imag"]))  # fmt: skip
    return acq, mag, np.stack(truth, axis=-1), affine


@pytest.mark.parametrize("chop", [False, True])
def test_phase_and_magnitude_files_from_the_parts(tmp_path, chop):
    acq, mag, truth, affine = _parts(tmp_path, chop=chop)
    polar = polar_acquisition(acq, tmp_path / "work")
    assert polar.real_files == acq.real_files and polar.raw_files == acq.raw_files
    assert polar.phase_units == "rad" and len(polar.phase_files) == len(polar.magnitude_files) == 2
    assert polar.phase_files[1].endswith("sub-01_echo-2_part-phase_MEGRE.nii")
    inside = mag > 50  # int16 rounding leaves the phase of faint voxels rough
    for echo in range(2):
        phase, phase_affine = nifti.load(polar.phase_files[echo])
        np.testing.assert_allclose(phase_affine, affine)
        assert np.abs(wrap_to_pi(phase - truth[..., echo]))[inside].max() < 0.02
        np.testing.assert_allclose(nifti.load(polar.magnitude_files[echo])[0], mag, atol=1.0)
    assert bool(polar.notes) == chop
    if chop:
        assert "along voxel axis 3" in polar.notes[0]


def test_plain_phase_data_pass_through_and_a_bad_part_names_its_file(tmp_path):
    acq, *_ = _parts(tmp_path, chop=False)
    plain = Acquisition(subject="01", echo_times_s=(0.004, 0.008), b0_tesla=3.0,
                        phase_files=acq.real_files)  # fmt: skip
    assert polar_acquisition(plain, tmp_path / "work") is plain
    with open(acq.imag_files[1], "wb") as fobj:
        fobj.write(b"not a NIfTI")
    with pytest.raises(NiftiInputError, match="sub-01_echo-2_part-imag_MEGRE.nii.gz"):
        polar_acquisition(acq, tmp_path / "work")


@pytest.mark.parametrize("sign", [1, -1])
def test_phase_from_the_parts_follows_the_phase_sign(tmp_path, sign):
    """``--phase-sign`` acts on phase computed from the parts as on stored phase: the same
    PhaseScaling node reads the radians the conversion wrote (sign -1 negates them)."""
    from qsmprep.interfaces.field import PhaseScaling

    acq, mag, truth, _ = _parts(tmp_path, chop=True)
    polar = polar_acquisition(acq, tmp_path / "work")
    node = PhaseScaling(in_files=list(polar.phase_files), units=polar.phase_units, sign=sign)
    (tmp_path / "scaling").mkdir()
    result = node.run(cwd=str(tmp_path / "scaling"))
    phase, _ = nifti.load(result.outputs.out_file)
    inside = mag > 50
    for echo in range(2):
        err = wrap_to_pi(phase[..., echo] - sign * truth[..., echo])[inside]
        assert np.abs(err).max() < 0.02
