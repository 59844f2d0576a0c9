"""QC figures and numbers of the subject report, on derivatives with known content."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from qsmprep.reports import qc


def _rotation_x(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


def _oblique_affine(degrees: float, voxel_mm: float = 2.0) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _rotation_x(degrees) * voxel_mm
    affine[:3, 3] = [-20.0, -24.0, -16.0]
    return affine


def _ellipsoid(shape, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    centre = (np.array(shape) - 1) / 2.0
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    return r2 <= 1.0


@pytest.fixture
def derivatives(tmp_path):
    """A finished acquisition's derivatives on an oblique grid (B0 30 degrees from voxel z):
    chi 0.8 ppm (extreme) in 27 voxels, 0.05 ppm elsewhere in the QSM mask."""
    shape, affine = (20, 24, 16), _oblique_affine(30.0)
    brain = _ellipsoid(shape, (8, 10, 6))
    qsm_mask = _ellipsoid(shape, (6, 8, 4))
    chi = np.where(qsm_mask, 0.05, 0.0).astype(np.float32)
    chi[9:12, 11:14, 7:10] = 0.8
    field = np.linspace(-50, 50, chi.size, dtype=np.float32).reshape(shape) * brain
    magnitude = 100 + 900 * brain.astype(np.float32)
    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    maps = {"Chimap": chi, "desc-brain_mask": brain, "desc-qsm_mask": qsm_mask,
            "desc-total_fieldmap": field, "desc-local_fieldmap": 0.1 * field * qsm_mask,
            "R2starmap": 30.0 * brain, "minIP": magnitude}  # fmt: skip
    for key, data in maps.items():
        nb.save(nb.Nifti1Image(np.asarray(data, dtype=np.float32), affine),
                str(anat / f"sub-01_{key}.nii.gz"))  # fmt: skip
    mag_file = tmp_path / "mag.nii.gz"
    nb.save(nb.Nifti1Image(magnitude, affine), str(mag_file))
    return {"anat": anat, "mag": str(mag_file), "brain": brain, "qsm_mask": qsm_mask}


def test_numbers_and_figures_of_a_finished_acquisition(derivatives, tmp_path):
    files = qc.find_derivatives(derivatives["anat"], "sub-01")
    assert set(files) == {"chimap", "mask", "qsm_mask", "total_field_hz", "local_field_hz",
                          "r2starmap", "minip"}  # fmt: skip
    result = qc.acquisition_qc(files, magnitude_file=derivatives["mag"],
                               fig_dir=tmp_path / "figures", name="sub-01")  # fmt: skip
    numbers = dict(result.numbers)
    n_brain, n_qsm = derivatives["brain"].sum(), derivatives["qsm_mask"].sum()
    assert numbers["matrix (voxels)"] == "20 x 24 x 16"
    assert numbers["voxel size (mm)"] == "2 x 2 x 2"
    # B0 is world z; the voxel axes are rotated 30 degrees about x: a wrong B0 reading or a
    # transposed affine gives 0 or 60 degrees
    assert "30.0 degrees from the nearest voxel axis" in numbers[
        "B0 direction in voxel axes (from the affine)"]
    assert float(numbers["brain mask volume (mL)"]) == pytest.approx(n_brain * 8 / 1000, rel=1e-3)
    assert numbers["QSM mask volume (mL, % of the brain mask)"].endswith(
        f"({100 * n_qsm / n_brain:.0f} %)")  # fmt: skip
    mean, median, _ = numbers["Chimap mean / median / SD in the QSM mask (ppm)"].split(" / ")
    assert float(median) == pytest.approx(0.05)
    assert float(mean) == pytest.approx((0.05 * (n_qsm - 27) + 0.8 * 27) / n_qsm, abs=1e-4)
    assert float(numbers["voxels with |chi| > 0.5 ppm (% of the QSM mask)"]) == pytest.approx(
        100 * 27 / n_qsm, abs=0.01)  # fmt: skip
    assert numbers["R2* median in the brain mask (1/s)"] == "30"
    descs = [f.path.name for f in result.figures]
    expected = ("masks", "totalfield", "localfield", "chimap", "r2star", "minip")
    assert descs == [f"sub-01_desc-{d}_qc.png" for d in expected]
    for fig in result.figures:
        assert fig.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.caption


def test_cuts_lie_in_the_mask_for_an_oblique_affine():
    shape, affine = (20, 24, 16), _oblique_affine(30.0)
    mask = _ellipsoid(shape, (8, 10, 6))
    cuts = qc.cut_coords(mask, affine, n_cuts=5)
    world = np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]
    for i, axis in enumerate("xyz"):
        assert len(cuts[axis]) == 5 and cuts[axis] == sorted(cuts[axis])
        for c in cuts[axis]:  # every slice cuts through the brain
            assert np.any(np.abs(world[:, i] - c) < 2.0), (axis, c)
    with pytest.raises(ValueError, match="empty"):
        qc.cut_coords(np.zeros(shape, bool), affine)


def test_masked_maps_are_black_outside_the_mask_and_the_field_of_view():
    """Voxels outside the mask, and the corners an oblique grid leaves when put on world
    axes, get a value below every display window (black), never 0 (mid-grey in a symmetric
    window); voxels in the mask keep their values."""
    shape = (20, 24, 16)
    mask = _ellipsoid(shape, (8, 10, 6))
    data = np.full(shape, 0.1, dtype=np.float32)
    for degrees in (0.0, 30.0):
        img = nb.Nifti1Image(data, _oblique_affine(degrees))
        shown_img = qc._masked_image(img, data, mask)
        rotation = shown_img.affine[:3, :3]  # world-aligned, so nilearn adds no grey corners
        assert np.allclose(rotation, np.diag(np.diag(rotation)), atol=1e-6)
        shown = np.asanyarray(shown_img.dataobj)
        assert set(np.unique(shown).tolist()) == {qc._OUTSIDE, np.float32(0.1)}
        assert shown[0, 0, 0] == qc._OUTSIDE and shown[-1, -1, -1] == qc._OUTSIDE


def test_small_labels_keep_the_nuclei_and_drop_tissue_classes():
    brain = np.ones((10, 10, 10), bool)
    dseg = np.zeros((10, 10, 10))
    dseg[:5] = 1  # a tissue class: half the brain
    dseg[6, 6, 6:8] = 7  # a nucleus: 2 voxels
    kept = qc.small_labels(dseg, brain)
    assert set(np.unique(kept).tolist()) == {0.0, 7.0}


@pytest.mark.parametrize(
    ("low", "high", "units", "read"),
    [(-np.pi, np.pi, "rad", "read as radians"),
     (-4096, 4095, "arbitrary", "read as integer codes, 8192 per turn (2 pi)"),
     (0, 4095, None, "read as integer codes, 4096 per turn (2 pi)"),
     (-1000 * np.pi, 1000 * np.pi, None, "read as milliradians")],
)  # fmt: skip
def test_phase_scaling_note_says_how_the_phase_was_read(tmp_path, low, high, units, read):
    rng = np.random.default_rng(0)
    files, lowest = [], np.inf
    for echo in (1, 2):  # the range is read over every echo, as the pipeline does
        data = rng.uniform(low, high, (8, 8, 8))
        data.flat[0], data.flat[1] = (low, high) if echo == 2 else (0.5 * low, 0.5 * high)
        if units != "rad" and high > 100:
            data = np.round(data)
        lowest = min(lowest, float(np.float32(data.min())))
        files.append(tmp_path / f"echo-{echo}.nii.gz")
        nb.save(nb.Nifti1Image(data.astype(np.float32), np.eye(4)), str(files[-1]))
    note = qc.phase_scaling_note(files, units)
    assert read in note and note.startswith(f"stored {lowest:g} ..")
