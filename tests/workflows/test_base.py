"""Workflow graphs build for every stage choice (fast: nothing runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qsmprep.config import (
    BFR_CHOICES,
    COMBINATION_CHOICES,
    INVERSION_CHOICES,
    MASKING_CHOICES,
    SINGLE_STEP_CHOICES,
    UNWRAPPING_CHOICES,
    Settings,
)
from qsmprep.interfaces.bids import Acquisition
from qsmprep.workflows.base import init_qsmprep_wf, init_single_acquisition_wf


def _acq(tmp_path: Path, *, echoes: int = 3, magnitude: bool = True) -> Acquisition:
    tes = tuple(0.004 * (i + 1) for i in range(echoes))
    phase = tuple(
        str(tmp_path / f"sub-01_echo-{i + 1}_part-phase_MEGRE.nii.gz") for i in range(echoes)
    )
    mag = tuple(p.replace("part-phase", "part-mag") for p in phase) if magnitude else ()
    return Acquisition(
        subject="01", session=None, acq=None, run=None, suffix="MEGRE", phase_files=phase,
        magnitude_files=mag, echo_times_s=tes, b0_tesla=3.0, phase_units="rad",
        b0_from_cli=False, shape=(8, 8, 8), voxel_size_mm=(1.0, 1.0, 1.0),
    )  # fmt: skip


def _nodes(wf):
    return {name.split(".")[-1] for name in wf.list_node_names()}


@pytest.mark.parametrize("inversion", INVERSION_CHOICES)
@pytest.mark.parametrize("bfr", BFR_CHOICES)
def test_every_bfr_and_inversion_builds(tmp_path, bfr, inversion):
    wf = init_single_acquisition_wf(
        _acq(tmp_path), output_dir=str(tmp_path / "out"), bids_dir=str(tmp_path), bfr=bfr,
        inversion=inversion,
    )
    nodes = _nodes(wf)
    if inversion in SINGLE_STEP_CHOICES:  # one fit from the total field
        assert {"single_step", "referencing", "ds_chimap", "ds_qsm_mask"} <= nodes
        assert "dipole_inversion" not in nodes
        qsm_wf = wf.get_node("qsm_wf")
        assert qsm_wf.get_node("single_step").inputs.method == inversion
        # --bfr still makes the local field map, which chi does not depend on
        assert "ds_local_field_hz" in nodes
        bg = qsm_wf.get_node("bg_removal")
        assert bg.inputs.method == bfr
        assert [n.name for n in qsm_wf._graph.successors(bg)] == ["outputnode"]
        assert "high-pass (6 mm)" in qsm_wf.__desc__ and "does not depend on it" in qsm_wf.__desc__
        return
    assert {"bg_removal", "dipole_inversion", "referencing", "ds_chimap"} <= nodes
    inv = wf.get_node("qsm_wf").get_node("dipole_inversion")
    assert inv.inputs.method == inversion
    if inversion in ("medi", "nltv", "ndi"):  # nonlinear data terms need the phase scale
        assert inv.inputs.params["phase_scale_rad_per_ppm"] == pytest.approx(
            2 * 3.141592653589793 * 42.57747892e6 * 3.0 * 1e-6 * 0.008
        )


@pytest.mark.parametrize("unwrapping", UNWRAPPING_CHOICES)
@pytest.mark.parametrize("combination", COMBINATION_CHOICES)
@pytest.mark.parametrize("masking", MASKING_CHOICES)
def test_every_front_end_choice_builds(tmp_path, masking, combination, unwrapping):
    wf = init_single_acquisition_wf(
        _acq(tmp_path), output_dir=str(tmp_path / "out"), bids_dir=str(tmp_path),
        masking=masking, combination=combination, unwrapping=unwrapping,
    )  # fmt: skip
    field = wf.get_node("field_wf")
    assert field.get_node("brain_mask").inputs.method == masking
    assert field.get_node("echo_combination").inputs.method == combination
    assert field.get_node("unwrap").inputs.method == unwrapping


def test_phase_only_single_echo_has_no_magnitude_outputs(tmp_path):
    wf = init_single_acquisition_wf(_acq(tmp_path, echoes=1, magnitude=False),
                                    output_dir=str(tmp_path), bids_dir=str(tmp_path))  # fmt: skip
    nodes = _nodes(wf)
    assert "r2star" not in nodes and "swi" not in nodes and "magnitude_stack" not in nodes
    assert "ds_r2starmap" not in nodes and "ds_chimap" in nodes
    # phase-only data are masked by phase quality whatever --masking says
    assert wf.get_node("field_wf").get_node("brain_mask").inputs.method == "phase-quality"


def test_user_mask_replaces_the_mask_node(tmp_path):
    mask = tmp_path / "mask.nii.gz"
    mask.touch()
    wf = init_single_acquisition_wf(_acq(tmp_path), output_dir=str(tmp_path),
                                    bids_dir=str(tmp_path), user_mask=str(mask),
                                    mask_erosions=2)  # fmt: skip
    node = wf.get_node("field_wf").get_node("brain_mask")
    assert node.inputs.in_file == str(mask) and node.inputs.erosions == 2
    desc = wf.get_node("field_wf").__desc__
    assert "user-supplied mask" in desc and "eroded by 2 voxel(s)" in desc


def test_top_workflow_sends_crash_files_to_the_subject_log(tmp_path):
    settings = Settings(bids_dir=tmp_path, output_dir=tmp_path / "out",
                        analysis_level="participant")  # fmt: skip
    wf = init_qsmprep_wf(settings, [_acq(tmp_path)], work_dir=tmp_path / "work")
    node = wf.get_node("sub_01_wf").get_node("qsm_wf").get_node("single_step")
    assert node.config["execution"]["crashdump_dir"] == str(tmp_path / "out" / "sub-01" / "log")


def test_sidecar_records_the_per_jump_lambda_used(tmp_path):
    """TV's and single-step TV's default lambda depends on the voxel size: the sidecar gives
    its value (2e-4 ppm x the geometric-mean voxel size), and an explicit value as given."""
    import dataclasses

    def recorded(acq, **kw):
        wf = init_single_acquisition_wf(acq, output_dir=str(tmp_path), bids_dir=str(tmp_path),
                                        **kw)  # fmt: skip
        meta = wf.get_node("derivatives_wf").get_node("ds_chimap").inputs.metadata
        return meta["Parameters"]["inversion"]["regularization"]

    assert recorded(_acq(tmp_path)) == pytest.approx(2e-4)
    aniso = dataclasses.replace(_acq(tmp_path), voxel_size_mm=(2.0, 2.0, 3.0))
    assert recorded(aniso) == pytest.approx(2e-4 * 12 ** (1 / 3), rel=1e-3)
    assert recorded(aniso, inversion_params={"regularization": 5e-4}) == 5e-4
    # single-step TV's support penalty defaults to 100 lambda, recorded as its value
    wf = init_single_acquisition_wf(aniso, output_dir=str(tmp_path), bids_dir=str(tmp_path))
    meta = wf.get_node("derivatives_wf").get_node("ds_chimap").inputs.metadata
    assert meta["Parameters"]["inversion"]["support_penalty"] == pytest.approx(
        100 * 2e-4 * 12 ** (1 / 3), rel=1e-3)
    # TV and nonlinear TV follow the same rule (two-step pipeline)
    for method in ("tv", "nltv"):
        assert recorded(aniso, inversion=method) == pytest.approx(2e-4 * 12 ** (1 / 3), rel=1e-3)
    # TV's padding follows its data term
    def pad(**kw):
        wf = init_single_acquisition_wf(aniso, output_dir=str(tmp_path), bids_dir=str(tmp_path),
                                        inversion="tv", **kw)  # fmt: skip
        meta = wf.get_node("derivatives_wf").get_node("ds_chimap").inputs.metadata
        return meta["Parameters"]["inversion"]["pad_factor"]

    assert pad() == 1.25 and pad(inversion_params={"masked": False}) == 1.5


def test_phase_sign_and_field_strength_reach_the_nodes(tmp_path):
    """A sign flip or a wrong B0 here would scale or invert every Chimap."""
    acq = _acq(tmp_path)
    wf = init_single_acquisition_wf(acq, output_dir=str(tmp_path), bids_dir=str(tmp_path),
                                    phase_sign=-1)  # fmt: skip
    assert wf.get_node("field_wf").get_node("phase_scaling").inputs.sign == -1
    assert wf.get_node("qsm_wf").get_node("single_step").inputs.b0_tesla == acq.b0_tesla == 3.0
    two_step = init_single_acquisition_wf(acq, output_dir=str(tmp_path), bids_dir=str(tmp_path),
                                          inversion="tv")  # fmt: skip
    assert two_step.get_node("qsm_wf").get_node("dipole_inversion").inputs.b0_tesla == 3.0
    assert wf.get_node("field_wf").get_node("phase_scaling").inputs.units == "rad"


def test_method_params_reach_the_nodes_and_override_the_named_options(tmp_path):
    settings = Settings(bids_dir=tmp_path, output_dir=tmp_path / "out",
                        analysis_level="participant", regions=False, bfr="vsharp",
                        vsharp_max_radius_mm=10.0, bfr_params={"max_radius_mm": 14.0,
                        "threshold": 0.1}, inversion="tkd", tkd_threshold=0.2,
                        inversion_params={"correct_scaling": True})  # fmt: skip
    wf = init_qsmprep_wf(settings, [_acq(tmp_path)], work_dir=tmp_path / "work")
    qsm = wf.get_node("sub_01_wf").get_node("qsm_wf")
    assert qsm.get_node("bg_removal").inputs.params == {"max_radius_mm": 14.0, "threshold": 0.1}
    inv = qsm.get_node("dipole_inversion").inputs.params
    assert inv == {"threshold": 0.2, "correct_scaling": True}


@pytest.mark.parametrize("inversion", ["medi", "tv"])
def test_medi_is_weighted_by_the_echo_fits_field_noise(tmp_path, inversion):
    """MEDI's data weight is 1 / the field noise of the echo fit (its toolbox's N_std): the
    echo combination's ``field_noise_std_hz`` reaches the inversion's ``noise_std_hz``; other
    methods do not take it."""
    wf = init_single_acquisition_wf(_acq(tmp_path), output_dir=str(tmp_path / "out"),
                                    bids_dir=str(tmp_path), inversion=inversion)  # fmt: skip
    field_wf, qsm_wf = wf.get_node("field_wf"), wf.get_node("qsm_wf")
    links = wf._graph.get_edge_data(field_wf, qsm_wf)["connect"]
    assert ("outputnode.field_noise_std_hz", "inputnode.field_noise_std_hz") in links
    combine, out = field_wf.get_node("echo_combination"), field_wf.get_node("outputnode")
    links = field_wf._graph.get_edge_data(combine, out)["connect"]
    assert ("field_noise_std_hz", "field_noise_std_hz") in links
    inode, inv = qsm_wf.get_node("inputnode"), qsm_wf.get_node("dipole_inversion")
    edge = qsm_wf._graph.get_edge_data(inode, inv) or {"connect": []}
    assert (("field_noise_std_hz", "noise_std_hz") in edge["connect"]) == (inversion == "medi")


def test_methods_text_says_when_tv_fits_the_mask_only():
    from qsmprep.workflows.qsm import init_qsm_wf

    masked = init_qsm_wf(b0_tesla=3.0, inversion="tv").__desc__  # the default
    kspace = init_qsm_wf(b0_tesla=3.0, inversion="tv", inversion_params={"masked": False}).__desc__
    assert "restricted to the mask" in masked and "restricted" not in kspace
    assert "k-space data term" in kspace
