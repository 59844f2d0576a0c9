"""Atlases: label tables, user/TemplateFlow atlases, and the assembled default atlas."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from qsmprep.data import atlases
from qsmprep.data.atlases import (
    DEFAULT_LABELS,
    Atlas,
    AtlasError,
    assemble_default_labels,
    read_label_table,
    resolve_atlas,
)
from qsmprep.data.templates import TEMPLATE


# ---------------------------------------------------------------------------- label tables
@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("index\tname\n0\tBackground\n1\tPutamen_L\n2\tPutamen_R\n", "labels.tsv"),
        ("index,name\n0,Background\n1,Putamen_L\n2,Putamen_R\n", "labels.csv"),
        ("1 Putamen_L\n2 Putamen_R 2\n", "AAL3.txt"),  # AAL style, extra column ignored
        ("name\tindex\tcolour\nPutamen_L\t1\tred\nPutamen_R\t2\tblue\n", "swapped.tsv"),
    ],
)
def test_label_tables_in_the_usual_formats(tmp_path, text, name):
    path = tmp_path / name
    path.write_text(text)
    assert read_label_table(path) == {1: "Putamen_L", 2: "Putamen_R"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("index\tlabel\n1\tA\n", "columns 'index' and 'name'"),
        ("index\tname\nx\tA\n", "not an integer"),
        ("0 Background\n", "no label other than 0"),
        ("1\n", "not 'index name'"),
    ],
)
def test_bad_label_tables_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(AtlasError, match=message) as err:
        read_label_table(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------- user atlases
def _label_image(path, data, affine=None):
    nb.save(nb.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def test_user_atlas_file_with_its_table(tmp_path):
    data = np.zeros((5, 5, 5), np.int16)
    data[1, 1, 1], data[3, 3, 3] = 1, 2
    img = _label_image(tmp_path / "tpl-MNI152NLin2009cAsym_atlas-Nuclei_dseg.nii.gz", data)
    table = tmp_path / "labels.tsv"
    table.write_text("index\tname\n1\tGP_L\n2\tGP_R\n")
    atlas = resolve_atlas(img, table)
    assert atlas.name == "Nuclei" and atlas.labels == {1: "GP_L", 2: "GP_R"}
    assert atlas.region_indices("gp") == [1, 2] and atlas.region_indices("GP_R") == [2]
    # a table beside the image with the same stem is found without --atlas-labels
    other = _label_image(tmp_path / "my_atlas.nii.gz", data)
    (tmp_path / "my_atlas.tsv").write_text("index\tname\n1\tA\n2\tB\n")
    assert resolve_atlas(other).name == "myatlas"


def test_user_atlas_errors_are_one_line_naming_the_file(tmp_path):
    table = tmp_path / "labels.tsv"
    table.write_text("index\tname\n1\tA\n")
    with pytest.raises(AtlasError, match="not found"):
        resolve_atlas(tmp_path / "missing.nii.gz", table)
    no_table = _label_image(tmp_path / "lonely.nii.gz", np.ones((3, 3, 3), np.int16))
    with pytest.raises(AtlasError, match="--atlas-labels"):
        resolve_atlas(no_table)
    four_d = _label_image(tmp_path / "4d.nii.gz", np.ones((3, 3, 3, 2), np.int16))
    with pytest.raises(AtlasError, match="3-D"):
        resolve_atlas(four_d, table)
    frac = _label_image(tmp_path / "frac.nii.gz", np.full((3, 3, 3), 0.5, np.float32))
    with pytest.raises(AtlasError, match="integer"):
        resolve_atlas(frac, table)
    other = _label_image(tmp_path / "other.nii.gz", np.full((3, 3, 3), 7, np.int16))
    with pytest.raises(AtlasError, match="none of its labels"):
        resolve_atlas(other, table)
    with pytest.raises(AtlasError, match="only for an atlas file"):
        resolve_atlas("qsmprep", table)


def test_unknown_atlas_name_lists_the_choices(monkeypatch, tmp_path):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    with pytest.raises(AtlasError, match="qsmprep, AAL3, HCPex.*TemplateFlow"):
        resolve_atlas("Schaefer2018")


def test_templateflow_atlas_by_name_when_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    folder = tmp_path / f"tpl-{TEMPLATE}"
    folder.mkdir()
    stub = folder / f"tpl-{TEMPLATE}_res-01_atlas-Foo_desc-100_dseg.nii.gz"
    stub.write_bytes(b"")  # zero-byte stubs are never used (they would need a download)
    with pytest.raises(AtlasError):
        resolve_atlas("Foo")
    data = np.zeros((4, 4, 4), np.int16)
    data[0] = 3
    _label_image(stub, data)
    (folder / f"tpl-{TEMPLATE}_atlas-Foo_desc-100_dseg.tsv").write_text("index\tname\n3\tX\n")
    atlas = resolve_atlas("Foo")
    assert atlas.path == stub and atlas.labels == {3: "X"}


# ---------------------------------------------------------------------------- assembly
def test_default_labels_cover_the_qsm_regions_with_both_hemispheres():
    names = set(DEFAULT_LABELS.values())
    for region in ("caudate", "putamen", "GPe", "GPi", "thalamus", "substantia_nigra",
                   "red_nucleus", "subthalamic_nucleus", "dentate_nucleus", "hippocampus",
                   "amygdala", "cortical_grey_matter", "white_matter", "lateral_ventricle"):
        assert {f"{region}_L", f"{region}_R"} <= names
    atlas = Atlas("qsmprep", None, dict(DEFAULT_LABELS), "")
    assert len(atlas.region_indices("csf")) == 2
    assert atlas.region_indices("CSF") == atlas.region_indices("lateral_ventricle")


def test_assembly_paints_nuclei_over_cortex_and_splits_at_the_midline():
    shape = (20, 8, 10)
    t1 = np.full(shape, 100.0)
    t1[:, :, 1:5] = 300.0  # bright "white matter" slab
    t1[:, :, 8:] = 20.0  # dark "CSF" slab
    t1[:, 0] = 0.0  # outside the brain
    x_mm = np.broadcast_to((np.arange(20) - 9.5)[:, None, None], shape)
    hcpex = np.zeros(shape, np.int32)
    hcp_labels = {1: "Area_1_L", 2: "Area_1_R", 382: "Putamen_L", 415: "Putamen_R"}
    hcpex[:10, 1:, 5:7] = 1
    hcpex[10:, 1:, 5:7] = 2
    hcpex[3:5, 2:4, 5:7] = 382
    aal = np.zeros(shape, np.int32)
    aal[12:14, 3, 6] = 166
    tal = np.zeros(shape, np.int32)
    tal[8:12, 3, 2] = 7  # dentate across the midline
    vent = np.zeros(shape)
    vent[2:4, 3, 8] = 80.0
    out = assemble_default_labels(
        t1, x_mm, hcpex=hcpex, hcpex_labels=hcp_labels, aal3=aal,
        aal3_labels={165: "Red_N_L", 166: "Red_N_R"}, talairach=tal,
        talairach_labels={7: "Dentate"}, ventricle_prob=(vent, np.zeros(shape)),
    )  # fmt: skip
    idx = {v: k for k, v in DEFAULT_LABELS.items()}
    assert out[3, 3, 5] == idx["putamen_L"]  # nucleus over cortex
    assert out[6, 3, 5] == idx["cortical_grey_matter_L"]
    assert out[15, 3, 5] == idx["cortical_grey_matter_R"]
    assert out[12, 3, 6] == idx["red_nucleus_R"]
    assert out[9, 3, 2] == idx["dentate_nucleus_L"] and out[10, 3, 2] == idx["dentate_nucleus_R"]
    assert out[2, 3, 8] == idx["lateral_ventricle_L"]
    assert (out[:, 0] == 0).all()  # nothing outside the brain
    wm = np.isin(out, [idx["white_matter_L"], idx["white_matter_R"]])
    assert wm.any() and (t1[wm] == 300).all()
    assert out[5, 4, 3] == idx["white_matter_L"] and out[15, 4, 3] == idx["white_matter_R"]
    assert not wm[:, 1].any()  # eroded away from the brain edge


# ---------------------------------------------------------------------------- built atlas
@pytest.fixture(scope="module")
def default_atlas():
    atlas = resolve_atlas("qsmprep")
    img = nb.load(str(atlas.path))
    return atlas, np.asanyarray(img.dataobj).astype(int), img.affine


def _centroid(data, affine, index):
    ijk = np.argwhere(data == index)
    return nb.affines.apply_affine(affine, ijk).mean(0), len(ijk)


def test_default_atlas_is_cached_on_the_template_grid(default_atlas):
    atlas, data, affine = default_atlas
    assert atlas.name == "qsmprep" and atlas.path.is_file()
    assert atlas.path.parent.parent == atlases.cache_dir()
    assert data.shape == (193, 229, 193)
    np.testing.assert_allclose(affine[:3, 3], [-96, -132, -78])
    assert atlas.path.with_name(atlas.path.name.replace(".nii.gz", ".tsv")).is_file()
    assert resolve_atlas("qsmprep").path == atlas.path  # second call: the cache


def test_default_atlas_regions_sit_where_anatomy_puts_them(default_atlas):
    """MNI coordinates (mm) of each region's centroid: catches a flipped, shifted or
    mis-registered source atlas."""
    atlas, data, affine = default_atlas
    idx = {v: k for k, v in atlas.labels.items()}
    centre = {}
    for name, k in idx.items():
        xyz, n = _centroid(data, affine, k)
        assert n > 50, f"{name} has only {n} voxels"
        side = name.rsplit("_", 1)[1]
        assert (xyz[0] < 0) == (side == "L"), f"{name} centroid x = {xyz[0]:.1f}"
        centre[name] = xyz
    for side in "LR":
        c = {k.rsplit("_", 1)[0]: v for k, v in centre.items() if k.endswith(f"_{side}")}
        assert 18 < abs(c["putamen"][0]) < 32
        assert abs(c["GPi"][0]) < abs(c["GPe"][0]) < abs(c["putamen"][0])
        assert c["caudate"][1] > c["thalamus"][1] and c["caudate"][2] > c["putamen"][2]
        assert c["substantia_nigra"][2] < c["thalamus"][2] - 8
        assert abs(c["red_nucleus"][0]) < 10 and c["substantia_nigra"][2] < c["red_nucleus"][2]
        assert c["dentate_nucleus"][1] < -45 and c["dentate_nucleus"][2] < -20
        assert c["hippocampus"][2] < c["thalamus"][2] and c["amygdala"][1] > c["hippocampus"][1]
        assert abs(c["lateral_ventricle"][0]) < abs(c["putamen"][0])
    for region in ("putamen", "GPe", "thalamus", "substantia_nigra"):  # near-symmetric nuclei
        left, right = centre[f"{region}_L"], centre[f"{region}_R"]
        assert abs(left[0] + right[0]) < 4 and np.abs(left[1:] - right[1:]).max() < 4
