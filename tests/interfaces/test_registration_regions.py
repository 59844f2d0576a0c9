"""Registration (ANTs) wiring, native-space labels, regional tables and region referencing."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from qsmprep.algorithms.simulate_anatomy import rotation_matrix
from qsmprep.interfaces.qsm import Referencing
from qsmprep.interfaces.regions import COLUMNS, RegionalStatistics
from qsmprep.interfaces.registration import apply_transform, register_to_template


def _save(path, data, affine):
    img = nb.Nifti1Image(np.asarray(data), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nb.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def coarse_template(tmp_path_factory):
    """The 2009c template and HCPex's putamen/caudate/thalamus at 3 mm (fast to register)."""
    from qsmprep.data.atlases import _hcpex_files
    from qsmprep.data.templates import get_template

    tmp = tmp_path_factory.mktemp("tpl")
    tpl = nb.load(str(get_template().path))
    t1 = np.asanyarray(tpl.dataobj).astype(np.float32)[::3, ::3, ::3]
    path, names = _hcpex_files()
    hcp = np.rint(np.asanyarray(nb.load(str(path)).dataobj)).astype(int)[::3, ::3, ::3]
    labels = np.zeros(hcp.shape, np.int16)
    for value, pattern in ((1, "Putamen"), (2, "Caudate"), (3, "Thal_")):
        keys = [k for k, n in names.items() if n.startswith(pattern)]
        labels[np.isin(hcp, keys)] = value
    affine = tpl.affine @ np.diag([3.0, 3.0, 3.0, 1.0])
    return {"t1": t1, "labels": labels, "affine": affine,
            "t1_path": _save(tmp / "tpl.nii.gz", t1, affine),
            "labels_path": _save(tmp / "labels.nii.gz", labels, affine)}  # fmt: skip


def _rigid(rotation_deg, shift_mm):
    """A head motion: rotation (degrees about x, y, z) then shift (mm), as a 4x4 affine."""
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(rotation_deg)
    m[:3, 3] = shift_mm
    return m


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_registration_recovers_a_known_head_motion(coarse_template, tmp_path):
    """The 'native' image is the template's voxel array placed with a rotated, shifted affine
    (a head moved in the scanner): the atlas brought back to native space must land on the
    same voxels, and native data sent forward must land on the template."""
    t = coarse_template
    native_affine = _rigid((0.0, 0.0, 12.0), (9.0, -7.0, 5.0)) @ t["affine"]
    native = _save(tmp_path / "native.nii.gz", t["t1"], native_affine)
    mask = _save(tmp_path / "mask.nii.gz", (t["t1"] > 0).astype(np.uint8), native_affine)
    fwd, inv = register_to_template(native, t["t1_path"], tmp_path / "reg", mask=mask,
                                    spacing_mm=3.0, syn_iterations=(20, 10, 0))  # fmt: skip
    assert fwd.endswith(".h5") and inv.endswith(".h5")
    back = apply_transform(t["labels_path"], native, inv, tmp_path / "labels_native.nii.gz",
                           interpolation="nearestNeighbor", dtype="int16")  # fmt: skip
    img = nb.load(back)
    assert img.get_data_dtype() == np.int16 and np.allclose(img.affine, native_affine)
    labels = np.asanyarray(img.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}  # nearest neighbour: no blended labels
    for k in (1, 2, 3):
        assert _dice(labels == k, t["labels"] == k) > 0.75, k
    # a wrong direction (forward transform used to bring labels in) misses by the motion
    wrong = apply_transform(t["labels_path"], native, fwd, tmp_path / "wrong.nii.gz",
                            interpolation="nearestNeighbor", dtype="int16")  # fmt: skip
    assert _dice(np.asanyarray(nb.load(wrong).dataobj) == 3, t["labels"] == 3) < 0.6
    sent = apply_transform(native, t["t1_path"], fwd, tmp_path / "in_template.nii.gz")
    moved = np.asanyarray(nb.load(sent).dataobj)
    brain = t["t1"] > 0
    assert np.corrcoef(moved[brain], t["t1"][brain])[0, 1] > 0.9


def test_registration_through_a_t1w_chains_both_transforms(coarse_template, tmp_path):
    """Magnitude -> T1w (rigid) -> template (SyN): two different head positions, and the
    chained transforms must still put the atlas on the native voxels (a wrong chain order
    misses by the motions)."""
    from qsmprep.interfaces.registration import RegisterToTemplate

    t = coarse_template
    native_affine = _rigid((0.0, 0.0, 25.0), (19.0, -17.0, 15.0)) @ t["affine"]
    t1w_affine = _rigid((-20.0, 0.0, 0.0), (-15.0, 16.0, -14.0)) @ t["affine"]
    native = _save(tmp_path / "native.nii.gz", t["t1"] * 0.5 + 10.0 * (t["t1"] > 0),
                   native_affine)  # another contrast  # fmt: skip
    mask = _save(tmp_path / "mask.nii.gz", (t["t1"] > 0).astype(np.uint8), native_affine)
    head = np.pad(t["t1"], 3, constant_values=0) + 30.0  # a "scalp" the mask must strip
    t1w = _save(tmp_path / "t1w.nii.gz", head,
                t1w_affine @ np.array([[1, 0, 0, -3], [0, 1, 0, -3], [0, 0, 1, -3], [0, 0, 0, 1]]))
    res = RegisterToTemplate(moving=str(native), mask=str(mask), template=str(t["t1_path"]),
                             t1w=str(t1w), spacing_mm=3.0).run(cwd=tmp_path)  # fmt: skip
    out = res.outputs
    assert len(out.forward_transforms) == 2 and len(out.inverse_transforms) == 2
    back = apply_transform(t["labels_path"], native, out.inverse_transforms,
                           tmp_path / "labels_native.nii.gz", interpolation="nearestNeighbor",
                           dtype="int16")  # fmt: skip
    labels = np.asanyarray(nb.load(back).dataobj)
    for k in (1, 2, 3):
        assert _dice(labels == k, t["labels"] == k) > 0.7, k
    wrong = apply_transform(t["labels_path"], native, out.inverse_transforms[::-1],
                            tmp_path / "wrong.nii.gz", interpolation="nearestNeighbor",
                            dtype="int16")  # fmt: skip
    assert _dice(np.asanyarray(nb.load(wrong).dataobj) == 3, t["labels"] == 3) < 0.5
    sent = apply_transform(native, t["t1_path"], out.forward_transforms,
                           tmp_path / "in_template.nii.gz")  # fmt: skip
    moved = np.asanyarray(nb.load(sent).dataobj)
    brain = t["t1"] > 0
    assert np.corrcoef(moved[brain], t["t1"][brain])[0, 1] > 0.9


def _grid(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    chi = np.zeros((6, 4, 4), np.float32)
    labels = np.zeros((6, 4, 4), np.int16)
    labels[:2], labels[2:4] = 1, 2
    chi[:2], chi[2:4], chi[4:] = 0.10, -0.02, 0.04
    chi[0, 0, 0] = 0.30  # one bright voxel in label 1
    mask = np.ones((6, 4, 4), np.uint8)
    mask[5] = 0
    return {
        "chi": _save(tmp_path / "chi.nii.gz", chi, affine),
        "labels": _save(tmp_path / "labels.nii.gz", labels, affine),
        "mask": _save(tmp_path / "mask.nii.gz", mask, affine),
        "arrays": (chi, labels, mask.astype(bool)),
    }


def test_regional_table_columns_values_and_reference(tmp_path):
    g = _grid(tmp_path)
    res = RegionalStatistics(chimap=str(g["chi"]), labels=str(g["labels"]), mask=str(g["mask"]),
                             label_names={1: "GP_L", 2: "white_matter_R", 3: "absent"},
                             reference="csf").run(cwd=tmp_path)  # fmt: skip
    with open(res.outputs.out_table) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert tuple(rows[0]) == COLUMNS
    by = {(r["region"], r["hemisphere"]): r for r in rows}
    chi, labels, mask = g["arrays"]
    gp = by[("GP", "L")]
    assert int(gp["n_voxels"]) == 32 and float(gp["mean_ppm"]) == pytest.approx(
        chi[labels == 1].mean(), rel=1e-5)  # fmt: skip
    assert float(gp["median_ppm"]) == pytest.approx(0.10, rel=1e-5)
    assert float(by[("white_matter", "R")]["std_ppm"]) == pytest.approx(0.0, abs=1e-7)
    whole = by[("whole_brain", "n/a")]
    assert int(whole["n_voxels"]) == mask.sum()
    assert by[("absent", "n/a")]["mean_ppm"] == "n/a" and by[("absent", "n/a")]["n_voxels"] == "0"
    assert {r["reference"] for r in rows} == {"csf"}
    # cores: label 1 is a 2-voxel-thick slab and label 2 too, so neither has a core voxel
    assert gp["n_core_voxels"] == "0" and gp["core_mean_ppm"] == "n/a"
    assert whole["n_core_voxels"] == "n/a"
    lut = open(res.outputs.out_labels).read().splitlines()
    assert lut == ["index\tname", "1\tGP_L", "2\twhite_matter_R", "3\tabsent"]


def test_region_referencing_zeroes_the_region_mean(tmp_path):
    g = _grid(tmp_path)
    res = Referencing(in_file=str(g["chi"]), mask=str(g["mask"]), reference="white_matter",
                      labels=str(g["labels"]), region_labels=[2]).run(cwd=tmp_path)  # fmt: skip
    out = np.asanyarray(nb.load(res.outputs.out_file).dataobj)
    chi, labels, mask = g["arrays"]
    assert out[labels == 2].mean() == pytest.approx(0.0, abs=1e-7)
    assert out[labels == 1].mean() == pytest.approx(chi[labels == 1].mean() + 0.02, rel=1e-5)
    assert (out[~mask] == 0).all()
    with pytest.raises(Exception, match="no voxel inside the QSM mask"):
        Referencing(in_file=str(g["chi"]), mask=str(g["mask"]), reference="x",
                    labels=str(g["labels"]), region_labels=[7]).run(cwd=tmp_path)  # fmt: skip
    with pytest.raises(Exception, match="needs atlas labels"):
        Referencing(in_file=str(g["chi"]), mask=str(g["mask"]), reference="x").run(cwd=tmp_path)


def test_seeded_registration_repeats_exactly_in_one_process(tmp_path):
    """The same seeded registration, repeated in one process with another registration in
    between (as a Nipype worker registers one subject after another), gives the same
    transform. With antspyx's ``random_seed`` alone it did not (0.01-0.03 mm apart)."""
    from scipy import ndimage

    from qsmprep.interfaces.registration import import_ants, register_rigid

    ants = import_ants()
    rng = np.random.default_rng(0)
    x = np.zeros((40, 44, 36), np.float32)
    x[8:32, 10:34, 8:28] = 1.0
    x = ndimage.gaussian_filter(x + 0.3 * rng.random(x.shape).astype(np.float32), 1.5)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    fixed = _save(tmp_path / "fixed.nii.gz", x, affine)
    moving = _save(tmp_path / "moving.nii.gz", ndimage.shift(x, (2.3, -1.7, 1.1)), affine)
    first, _ = register_rigid(moving, fixed, tmp_path / "a")
    other = [ants.from_numpy(rng.random((24, 24, 24)).astype(np.float32)) for _ in range(2)]
    ants.registration(other[0], other[1], type_of_transform="Affine")  # unseeded, in between
    second, _ = register_rigid(moving, fixed, tmp_path / "b")
    a, b = (ants.read_transform(str(f)).parameters for f in (first, second))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a)[-3:]).max() > 1.0  # it did recover the shift


@pytest.mark.parametrize("slab", [False, True])
def test_a_slab_sends_the_whole_t1w_to_the_template(tmp_path, monkeypatch, slab):
    """With a T1w, the T1w is masked by the magnitude mask before the template registration,
    unless the field of view cuts that mask (a slab): the mask would cut the T1w to the slab
    too (deep-grey Dice 0.33 against 0.91 with the whole T1w, docs/benchmarks.md)."""
    from qsmprep.interfaces import nifti, registration

    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in (20, 22, 18)], indexing="ij")
    brain = x**2 + y**2 + z**2 <= 0.8**2
    mask = nifti.save(brain[:, :, 6:12] if slab else brain, np.eye(4), tmp_path / "mask.nii.gz")
    files = {name: nifti.save(brain, np.eye(4), tmp_path / f"{name}.nii.gz")
             for name in ("moving", "t1w", "template")}  # fmt: skip
    calls = {}

    def fake_rigid(moving, fixed, out_dir, **kw):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        paths = [Path(out_dir) / n for n in ("r_fwd.h5", "r_inv.h5")]
        for p in paths:
            p.write_text("x")
        return tuple(map(str, paths))

    def fake_mask_t1w(t1w, native_mask, rigid_forward, out_file, **kw):
        calls["masked"] = True
        Path(out_file).write_text("x")
        return str(out_file)

    def fake_template(moving, template, out_dir, **kw):
        calls["moving"] = str(moving)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        paths = [Path(out_dir) / n for n in ("fwd.h5", "inv.h5")]
        for p in paths:
            p.write_text("x")
        return tuple(map(str, paths))

    monkeypatch.setattr(registration, "register_rigid", fake_rigid)
    monkeypatch.setattr(registration, "mask_t1w", fake_mask_t1w)
    monkeypatch.setattr(registration, "register_to_template", fake_template)
    node = registration.RegisterToTemplate(moving=files["moving"], mask=mask, t1w=files["t1w"],
                                           template=files["template"])  # fmt: skip
    (tmp_path / "run").mkdir()
    node.run(cwd=str(tmp_path / "run"))
    assert calls.get("masked", False) is not slab
    assert (calls["moving"] == files["t1w"]) is slab
