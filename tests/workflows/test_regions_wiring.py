"""The registration and regional stages are wired as documented (fast: nothing runs)."""

from __future__ import annotations

import pytest
from nipype.interfaces.base import isdefined
from test_base import _acq, _nodes

from qsmprep.config import Settings
from qsmprep.workflows.base import init_single_acquisition_wf, resolve_regions


def _regions(tmp_path, **changes):
    """Regional-stage settings; touches the files nipype checks for existence."""
    for name in ("tpl.nii.gz", "atlas.nii.gz"):
        (tmp_path / name).touch()
    for echo in (1, 2, 3):
        for part in ("phase", "mag"):
            (tmp_path / f"sub-01_echo-{echo}_part-{part}_MEGRE.nii.gz").touch()
    return {"template": str(tmp_path / "tpl.nii.gz"), "template_name": "MNI152NLin2009cAsym",
            "atlas_name": "qsmprep", "atlas_path": str(tmp_path / "atlas.nii.gz"),
            "label_names": {1: "putamen_L", 2: "lateral_ventricle_L", 3: "lateral_ventricle_R"},
            "reference_labels": None, "atlas_source": "test", **changes}  # fmt: skip


def _edges(wf, src, dst):
    """(source field, destination field) pairs between two nodes of the flattened graph."""
    from nipype.pipeline.engine.utils import _remove_nonjoin_identity_nodes

    flat = _remove_nonjoin_identity_nodes(wf._create_flat_graph())  # as nipype does to run
    nodes = {n.fullname.split(".", 1)[1] if "." in n.fullname else n.fullname: n
             for n in flat.nodes()}  # fmt: skip
    s = next(n for k, n in nodes.items() if k.endswith(src))
    d = next(n for k, n in nodes.items() if k.endswith(dst))
    data = flat.get_edge_data(s, d)
    return [] if data is None else [(a, b) for a, b in data["connect"]]


def test_regions_add_registration_labels_stats_and_sinks(tmp_path):
    wf = init_single_acquisition_wf(_acq(tmp_path), output_dir=str(tmp_path),
                                    bids_dir=str(tmp_path), regions=_regions(tmp_path))  # fmt: skip
    nodes = _nodes(wf)
    assert {"register", "atlas_to_native", "regional_stats", "chimap_to_template", "ds_dseg",
            "ds_dseg_tsv", "ds_regions_stats", "ds_chimap_std", "ds_template_forward",
            "ds_template_inverse"} <= nodes  # fmt: skip
    assert "ds_rigid_forward" not in nodes
    reg = wf.get_node("registration_wf")
    assert reg.get_node("register").inputs.template == str(tmp_path / "tpl.nii.gz")
    assert reg.inputs.inputnode.moving.endswith("echo-1_part-mag_MEGRE.nii.gz")
    to_native = reg.get_node("atlas_to_native")
    assert to_native.inputs.interpolation == "nearestNeighbor"
    assert ("inverse_transforms", "transform") in _edges(wf, "register", "atlas_to_native")
    assert ("forward_transforms", "transform") in _edges(wf, "register", "chimap_to_template")
    # statistics read the referenced Chimap and the QSM mask, in native space
    assert ("out_file", "chimap") in _edges(wf, "referencing", "regional_stats")
    assert ("out_mask", "mask") in _edges(wf, "single_step", "regional_stats")
    two_step = init_single_acquisition_wf(_acq(tmp_path), output_dir=str(tmp_path),
                                          bids_dir=str(tmp_path), regions=_regions(tmp_path),
                                          inversion="tv")  # fmt: skip
    assert ("out_mask", "mask") in _edges(two_step, "bg_removal", "regional_stats")
    ds = wf.get_node("derivatives_wf")
    assert ds.get_node("ds_regions_stats").inputs.entities["seg"] == "qsmprep"
    assert ds.get_node("ds_chimap_std").inputs.entities["space"] == "MNI152NLin2009cAsym"
    xfm = ds.get_node("ds_template_forward").inputs
    assert xfm.extension == ".h5" and xfm.suffix == "xfm"
    assert (xfm.entities["from"], xfm.entities["to"]) == ("MEGRE", "MNI152NLin2009cAsym")
    assert not isdefined(reg.get_node("register").inputs.t1w)  # no T1w: from the magnitude


def test_a_session_t1w_becomes_the_registration_intermediate(tmp_path):
    import dataclasses

    t1w = tmp_path / "sub-01_T1w.nii.gz"
    t1w.touch()
    acq = dataclasses.replace(_acq(tmp_path), t1w_file=str(t1w))
    wf = init_single_acquisition_wf(acq, output_dir=str(tmp_path), bids_dir=str(tmp_path),
                                    regions=_regions(tmp_path))  # fmt: skip
    reg = wf.get_node("registration_wf")
    assert reg.get_node("register").inputs.t1w == str(t1w)
    assert "T1w" in reg.__desc__
    ds = wf.get_node("derivatives_wf")
    pairs = {n: (ds.get_node(n).inputs.entities["from"], ds.get_node(n).inputs.entities["to"])
             for n in ("ds_template_forward", "ds_template_inverse", "ds_rigid_forward",
                       "ds_rigid_inverse")}  # fmt: skip
    assert pairs == {"ds_template_forward": ("T1w", "MNI152NLin2009cAsym"),
                     "ds_template_inverse": ("MNI152NLin2009cAsym", "T1w"),
                     "ds_rigid_forward": ("MEGRE", "T1w"),
                     "ds_rigid_inverse": ("T1w", "MEGRE")}  # fmt: skip
    off = init_single_acquisition_wf(acq, output_dir=str(tmp_path), bids_dir=str(tmp_path),
                                     regions=_regions(tmp_path), use_t1w=False)  # fmt: skip
    assert "ds_rigid_forward" not in _nodes(off)


def test_region_reference_feeds_native_labels_to_referencing(tmp_path):
    regions = _regions(tmp_path, reference_labels=[2, 3])
    wf = init_single_acquisition_wf(_acq(tmp_path), output_dir=str(tmp_path),
                                    bids_dir=str(tmp_path), reference="csf",
                                    regions=regions)  # fmt: skip
    ref = wf.get_node("qsm_wf").get_node("referencing")
    assert ref.inputs.reference == "csf" and ref.inputs.region_labels == [2, 3]
    assert ("out_file", "labels") in _edges(wf, "atlas_to_native", "referencing")
    assert "lateral ventricles" in wf.get_node("qsm_wf").__desc__


def test_without_magnitude_no_regions_and_no_region_reference(tmp_path):
    acq = _acq(tmp_path, magnitude=False)
    wf = init_single_acquisition_wf(acq, output_dir=str(tmp_path), bids_dir=str(tmp_path),
                                    regions=_regions(tmp_path))  # fmt: skip
    assert "register" not in _nodes(wf) and "ds_chimap" in _nodes(wf)
    with pytest.raises(ValueError, match="needs atlas labels"):
        init_single_acquisition_wf(acq, output_dir=str(tmp_path), bids_dir=str(tmp_path),
                                   reference="csf",
                                   regions=_regions(tmp_path, reference_labels=[2]))


def test_resolve_regions_checks_the_reference_against_the_atlas(tmp_path):
    import nibabel as nb
    import numpy as np

    data = np.zeros((4, 4, 4), np.int16)
    data[0], data[1] = 1, 2
    nb.save(nb.Nifti1Image(data, np.eye(4)), str(tmp_path / "atlas-Mini_dseg.nii.gz"))
    (tmp_path / "labels.tsv").write_text("index\tname\n1\tputamen_L\n2\tputamen_R\n")
    base = dict(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="participant",
                atlas=str(tmp_path / "atlas-Mini_dseg.nii.gz"),
                atlas_labels=tmp_path / "labels.tsv")  # fmt: skip
    regions = resolve_regions(Settings(**base, reference="putamen"))
    assert regions["atlas_name"] == "Mini" and regions["reference_labels"] == [1, 2]
    with pytest.raises(ValueError, match="csf: not a region of the Mini atlas.*putamen"):
        resolve_regions(Settings(**base, reference="csf"))
    assert resolve_regions(Settings(**base, regions=False)) is None
