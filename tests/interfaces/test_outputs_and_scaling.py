"""NIfTI-level phase scaling (real headers) and the derivatives sink."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np
import pytest

from qsmprep.interfaces.derivatives import DerivativesSink, bids_uri, derivative_path
from qsmprep.interfaces.field import PhaseScaling

TRUE = np.linspace(-np.pi, np.pi, 4 * 4 * 4, endpoint=False).reshape(4, 4, 4).astype(np.float32)


def _save(tmp_path, name, data, slope=None, inter=None):
    img = nb.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    path = tmp_path / name
    nb.save(img, str(path))
    return str(path)


@pytest.mark.parametrize(
    ("stored", "slope", "inter", "units"),
    [
        (TRUE, None, None, "rad"),  # radians
        (np.round(TRUE / np.pi * 4096).astype(np.int16), None, None, "arbitrary"),  # Siemens
        # 0..4095 codes with scl_slope=2, scl_inter=-4096 in the header (nibabel applies them)
        (np.round((TRUE + np.pi) / (2 * np.pi) * 4096).astype(np.uint16), 2.0, -4096.0, None),
    ],
)
def test_phase_scaling_from_files(tmp_path, monkeypatch, stored, slope, inter, units):
    monkeypatch.chdir(tmp_path)
    path = _save(tmp_path, "phase.nii.gz", stored, slope, inter)
    res = PhaseScaling(in_files=[path, path], units=units).run()
    out = nb.load(res.outputs.out_file)
    rad = np.asanyarray(out.dataobj)
    assert out.shape == (4, 4, 4, 2) and rad.dtype == np.float32
    assert np.allclose(out.affine, np.diag([2.0, 2.0, 3.0, 1.0]))
    err = np.angle(np.exp(1j * (rad[..., 0] - TRUE)))
    assert np.abs(err).max() < 2 * np.pi / 4096 + 1e-4


def test_derivative_names_and_sidecar(tmp_path):
    ents = {"subject": "01", "session": "pre", "acquisition": "highres", "run": "2"}
    assert derivative_path(ents, suffix="Chimap") == (
        "sub-01/ses-pre/anat/sub-01_ses-pre_acq-highres_run-2_Chimap.nii.gz"
    )
    assert (
        bids_uri(str(tmp_path / "sub-01" / "x.nii.gz"), str(tmp_path)) == "bids:raw:sub-01/x.nii.gz"
    )
    src = _save(tmp_path, "chi.nii.gz", TRUE)
    res = DerivativesSink(
        in_file=src, output_dir=str(tmp_path / "out"), entities={"subject": "01"},
        suffix="fieldmap", desc="local", metadata={"Units": "Hz"},
        source_files=[str(tmp_path / "sub-01" / "anat" / "p.nii.gz")], bids_dir=str(tmp_path),
    ).run()  # fmt: skip
    out = tmp_path / "out" / "sub-01" / "anat" / "sub-01_desc-local_fieldmap.nii.gz"
    assert res.outputs.out_file == str(out) and out.exists()
    meta = json.loads(out.with_name("sub-01_desc-local_fieldmap.json").read_text())
    assert meta["Units"] == "Hz" and meta["Sources"] == ["bids:raw:sub-01/anat/p.nii.gz"]
    assert not list(out.parent.glob(".*.tmp"))  # no temporary left behind
    with pytest.raises(ValueError, match="subject"):
        derivative_path({}, suffix="Chimap")


def test_real_crop_with_bogus_slope_is_read_as_radians(tmp_path, monkeypatch):
    """ROMEO's test crop stores radians with a spurious scl_slope (~1/855)."""
    from conftest import real_crop_dir

    src = real_crop_dir() / "phase.nii.gz"
    if not src.exists():
        pytest.skip("shared real data not available")
    monkeypatch.chdir(tmp_path)
    assert np.ptp(np.asanyarray(nb.load(str(src)).dataobj)) < 0.01  # what nibabel returns
    rad = np.asanyarray(nb.load(PhaseScaling(in_files=[str(src)]).run().outputs.out_file).dataobj)
    assert np.ptp(rad) > 6.0  # wrapped radians, not +-0.0037


def test_user_mask_node_binarizes_and_erodes(tmp_path):
    from qsmprep.interfaces import nifti
    from qsmprep.interfaces.field import UserMask

    prob = np.zeros((10, 10, 10), np.float32)
    prob[2:8, 2:8, 2:8] = 0.9
    prob[1, 2:8, 2:8] = 0.3  # the interpolated margin of a resampled mask
    path = nifti.save(prob, np.eye(4), tmp_path / "prob.nii.gz")
    for erosions, inside in ((0, 216), (1, 64)):
        (tmp_path / str(erosions)).mkdir()
        res = UserMask(in_file=path, erosions=erosions).run(cwd=str(tmp_path / str(erosions)))
        mask = nifti.load(res.outputs.out_file)[0]
        assert int(mask.sum()) == inside and set(np.unique(mask)) <= {0, 1}


def test_five_axis_images_lose_singleton_axes_and_complex_is_refused(tmp_path):
    from qsmprep.interfaces import nifti

    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for shape, expected in (((2, 3, 4, 1, 1), (2, 3, 4, 1)), ((2, 3, 4, 1), (2, 3, 4, 1))):
        path = str(tmp_path / "x.nii.gz")
        nb.save(nb.Nifti1Image(data.reshape(shape), np.eye(4)), path)
        assert nifti.load(path)[0].shape == expected
    echoes = np.stack([data, 2 * data], axis=-1)[:, :, :, None, :]  # (X, Y, Z, 1, E)
    nb.save(nb.Nifti1Image(echoes, np.eye(4)), str(tmp_path / "e.nii.gz"))
    np.testing.assert_array_equal(nifti.load(tmp_path / "e.nii.gz")[0][..., 1], 2 * data)
    nb.save(nb.Nifti1Image(data.astype(np.complex64), np.eye(4)), str(tmp_path / "c.nii.gz"))
    with pytest.raises(nifti.NiftiInputError, match="c.nii.gz: complex-valued"):
        nifti.load(tmp_path / "c.nii.gz")
