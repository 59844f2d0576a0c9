"""Tests of the BIDS input gateway qsmprep.interfaces.bids."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmprep.interfaces.bids import (
    Acquisition,
    BIDSInputError,
    check_acquisition_advice,
    collect_acquisitions,
    list_subjects,
    load_bids_filter,
    validate_dataset_layout,
)


def _edit_sidecar(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


def _anat(root: Path, subject: str = "01") -> Path:
    return root / f"sub-{subject}" / "anat"


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# -- dataset and selection ----------------------------------------------------------------------
def test_basic_megre(make_bids):
    root = make_bids(echo_times_s=(0.005, 0.010, 0.015))
    (acq,) = collect_acquisitions(root)
    assert (acq.subject, acq.session, acq.acq, acq.run) == ("01", None, None, None)
    assert acq.suffix == "MEGRE" and acq.name == "sub-01"
    assert acq.entities == {"subject": "01"}
    assert acq.echo_times_s == (0.005, 0.010, 0.015)
    assert [Path(f).name for f in acq.phase_files] == [
        f"sub-01_echo-{i}_part-phase_MEGRE.nii.gz" for i in (1, 2, 3)
    ]
    assert [Path(f).name for f in acq.magnitude_files] == [
        f"sub-01_echo-{i}_part-mag_MEGRE.nii.gz" for i in (1, 2, 3)
    ]
    assert all(Path(f).is_absolute() for f in acq.phase_files + acq.magnitude_files)
    assert acq.b0_tesla == 3.0 and not acq.b0_from_cli
    assert acq.phase_units == "rad"
    assert acq.shape == (8, 8, 4) and acq.voxel_size_mm == (1.0, 1.0, 1.0)


def test_echoes_sorted_by_echo_time_not_file_name(make_bids):
    # echo-10 sorts before echo-2 by name; the echo times decide
    root = make_bids(echoes=11)
    # make the echo index and the echo time disagree for two files
    _edit_sidecar(_anat(root) / "sub-01_echo-10_part-phase_MEGRE.json", EchoTime=0.0005)
    _edit_sidecar(_anat(root) / "sub-01_echo-10_part-mag_MEGRE.json", EchoTime=0.0005)
    (acq,) = collect_acquisitions(root)
    names = [Path(f).name.split("_")[1] for f in acq.phase_files]
    assert names == ["echo-10", "echo-1", "echo-2", "echo-3", "echo-4", "echo-5", "echo-6",
                     "echo-7", "echo-8", "echo-9", "echo-11"]  # fmt: skip
    assert [Path(f).name.split("_")[1] for f in acq.magnitude_files] == names
    assert list(acq.echo_times_s) == sorted(acq.echo_times_s)
    assert acq.echo_times_s[0] == 0.0005 and acq.echo_times_s[-1] == pytest.approx(0.044)


def test_sessions_runs_acquisitions_are_grouped(make_bids):
    root = make_bids(subjects=("01", "02"), sessions=("1", "2"), runs=("1", "2"),
                     acquisitions=("lo", "hi"))  # fmt: skip
    acqs = collect_acquisitions(root)
    assert len(acqs) == 2 * 2 * 2 * 2
    names = [a.name for a in acqs]
    assert len(set(names)) == len(names)
    assert "sub-02_ses-2_acq-hi_run-1" in names
    first = acqs[0]
    assert first.entities == {"subject": "01", "session": "1", "acquisition": "hi", "run": "1"}
    assert all(a.n_echoes == 3 for a in acqs)


def test_session_t1w_is_found_for_the_registration(make_bids):
    import shutil

    root = make_bids(subjects=("01", "02"), sessions=("1", "2"))
    anat = root / "sub-01" / "ses-2" / "anat"
    mag = next(anat.glob("*echo-1_part-mag_MEGRE.nii.gz"))
    shutil.copy(mag, anat / "sub-01_ses-2_T1w.nii.gz")
    shutil.copy(mag, anat / "sub-01_ses-2_ce-gad_T1w.nii.gz")  # contrast-enhanced: not chosen
    (anat / "sub-01_ses-2_rec-norm_T1w.nii.gz").write_bytes(b"")  # empty: ignored
    found = {a.name: a.t1w_file for a in collect_acquisitions(root)}
    assert found["sub-01_ses-2"] == str(anat / "sub-01_ses-2_T1w.nii.gz")
    assert found["sub-01_ses-1"] is None and found["sub-02_ses-2"] is None
    (anat / "sub-01_ses-2_T1w.nii.gz").unlink()
    found = {a.name: a.t1w_file for a in collect_acquisitions(root)}
    assert found["sub-01_ses-2"].endswith("sub-01_ses-2_ce-gad_T1w.nii.gz")


@pytest.mark.parametrize("label", ["02", "sub-02", ["sub-02"]])
def test_participant_label_with_or_without_prefix(make_bids, label):
    root = make_bids(subjects=("01", "02", "03"))
    acqs = collect_acquisitions(root, participant_label=label)
    assert [a.subject for a in acqs] == ["02"]


def test_unknown_participant_label(make_bids):
    root = make_bids(subjects=("01", "02"))
    with pytest.raises(BIDSInputError, match=r"participant label\(s\) 05 not found") as err:
        collect_acquisitions(root, participant_label=["sub-01", "05"])
    assert "available: 01, 02" in _one_line(err)


def test_list_subjects(make_bids):
    root = make_bids(subjects=("01", "02"), sessions=("1",))
    (root / "sub-03" / "func").mkdir(parents=True)  # no QSM data
    assert list_subjects(root) == ["01", "02"]
    assert list_subjects(root, participant_label=["sub-02", "03"]) == ["02", "03"]
    with pytest.raises(BIDSInputError, match="available: 01, 02, 03"):
        list_subjects(root, participant_label="04")


def test_participant_without_qsm_data(make_bids):
    root = make_bids(subjects=("01",))
    (root / "sub-02" / "func").mkdir(parents=True)
    with pytest.raises(BIDSInputError, match=r"participant\(s\) 02"):
        collect_acquisitions(root, participant_label=["01", "02"])


def test_session_filter(make_bids):
    root = make_bids(subjects=("01", "02"), sessions=("pre", "post"))
    acqs = collect_acquisitions(root, session_label=["ses-post"])
    assert [(a.subject, a.session) for a in acqs] == [("01", "post"), ("02", "post")]
    assert acqs[0].name == "sub-01_ses-post"
    with pytest.raises(BIDSInputError, match=r"session\(s\) later"):
        collect_acquisitions(root, session_label=["post", "later"])


def test_no_data_found_names_dataset_and_labels(make_bids):
    root = make_bids(sessions=("1",))
    with pytest.raises(BIDSInputError) as err:
        collect_acquisitions(root, participant_label=["01"], session_label=["9"])
    message = _one_line(err)
    assert "no MEGRE or T2starw phase images" in message
    assert str(root) in message and "participant(s) 01" in message and "session(s) 9" in message


def test_derivatives_and_other_datatypes_are_not_indexed(make_bids):
    junk = {"EchoTime": 0.004, "MagneticFieldStrength": 3}
    root = make_bids(
        extra_files={
            "derivatives/x/dataset_description.json": {"Name": "x", "BIDSVersion": "1.10.0"},
            "derivatives/x/sub-01/anat/sub-01_echo-1_part-phase_MEGRE.json": junk,
            "sourcedata/sub-01/anat/sub-01_echo-1_part-phase_MEGRE.json": junk,
            "sub-01/func/sub-01_task-rest_bold.json": {"RepetitionTime": 2},
        }
    )
    (acq,) = collect_acquisitions(root)
    assert all("/derivatives/" not in f and "/sourcedata/" not in f for f in acq.phase_files)


def test_validate_dataset_layout(tmp_path, make_bids):
    with pytest.raises(BIDSInputError, match="not found"):
        validate_dataset_layout(tmp_path / "missing")
    with pytest.raises(BIDSInputError, match="no dataset_description.json"):
        validate_dataset_layout(tmp_path)
    validate_dataset_layout(make_bids())
    with pytest.raises(BIDSInputError, match="no dataset_description.json"):
        collect_acquisitions(tmp_path)


# -- phase-only, T2starw, integer phase ---------------------------------------------------------
def test_phase_only(make_bids):
    (acq,) = collect_acquisitions(make_bids(phase_only=True))
    assert acq.magnitude_files == () and not acq.has_magnitude
    assert acq.n_echoes == 3


def _as_complex_parts(root: Path) -> Path:
    """Rename a dataset's part-phase/part-mag files to part-real/part-imag (the collection
    reads names and sidecars only)."""
    for path in sorted(root.rglob("*_part-*")):
        path.rename(path.with_name(path.name.replace("part-phase", "part-real")
                                   .replace("part-mag", "part-imag")))  # fmt: skip
    return root


def test_real_and_imaginary_parts_are_an_acquisition(make_bids):
    root = _as_complex_parts(make_bids(subjects=("01", "02")))
    assert list_subjects(root) == ["01", "02"]
    acqs = collect_acquisitions(root)
    assert [a.subject for a in acqs] == ["01", "02"]
    acq = acqs[0]
    assert acq.from_complex_parts and acq.has_magnitude and acq.n_echoes == 3
    assert acq.phase_files == () and acq.magnitude_files == () and acq.phase_units == "rad"
    assert [Path(f).name for f in acq.real_files] == [
        f"sub-01_echo-{e}_part-real_MEGRE.nii.gz" for e in (1, 2, 3)]  # fmt: skip
    assert acq.raw_files == acq.real_files + acq.imag_files
    assert all("_part-imag_" in f for f in acq.imag_files)


def test_a_real_part_without_its_imaginary_part_is_refused(make_bids):
    root = _as_complex_parts(make_bids())
    (root / "sub-01" / "anat" / "sub-01_echo-2_part-imag_MEGRE.nii.gz").unlink()
    with pytest.raises(BIDSInputError, match=r"2 imaginary part image\(s\) for 3 real part"):
        collect_acquisitions(root)
    for path in (root / "sub-01" / "anat").glob("*part-real*"):
        path.unlink()
    with pytest.raises(BIDSInputError, match="has no part-real image beside it"):
        collect_acquisitions(root)


def test_phase_wins_over_complex_parts_of_the_same_acquisition(make_bids):
    """Datasets that keep both (some converters write all four parts) use phase/magnitude."""
    root = make_bids()
    anat = root / "sub-01" / "anat"
    for path in sorted(anat.glob("*_part-*")):
        twin = path.name.replace("part-phase", "part-real").replace("part-mag", "part-imag")
        (anat / twin).write_bytes(path.read_bytes())
    (acq,) = collect_acquisitions(root)
    assert not acq.from_complex_parts and len(acq.phase_files) == 3


def test_t2starw_single_echo(make_bids):
    root = make_bids(suffix="T2starw", echo_times_s=(0.025,))
    (acq,) = collect_acquisitions(root)
    assert acq.suffix == "T2starw" and acq.echo_times_s == (0.025,)
    assert Path(acq.phase_files[0]).name == "sub-01_part-phase_T2starw.nii.gz"
    assert Path(acq.magnitude_files[0]).name == "sub-01_part-mag_T2starw.nii.gz"


def test_megre_and_t2starw_in_one_dataset(make_bids):
    root = make_bids(echoes=3)
    make_bids(suffix="T2starw")  # same folder: adds T2starw files next to MEGRE
    acqs = collect_acquisitions(root)
    assert [a.suffix for a in acqs] == ["MEGRE", "T2starw"]


def test_integer_phase_units(make_bids):
    root = make_bids(phase_dtype=np.int16, extension=".nii")
    (acq,) = collect_acquisitions(root)
    assert acq.phase_units == "arbitrary"
    data = np.asarray(nib.load(acq.phase_files[0]).dataobj)
    assert data.dtype == np.int16 and data.min() >= -4096 and data.max() <= 4095


# -- metadata -----------------------------------------------------------------------------------
def test_missing_field_strength_uses_b0_tesla_else_errors(make_bids):
    root = make_bids(b0=None)
    (acq,) = collect_acquisitions(root, b0_tesla=7.0)
    assert acq.b0_tesla == 7.0 and acq.b0_from_cli
    with pytest.raises(BIDSInputError, match="MagneticFieldStrength missing") as err:
        collect_acquisitions(root)
    message = _one_line(err)
    assert "sub-01_echo-1_part-phase_MEGRE.json" in message and "--b0-tesla" in message


def test_sidecar_field_strength_wins_over_b0_tesla(make_bids):
    (acq,) = collect_acquisitions(make_bids(b0=3.0), b0_tesla=7.0)
    assert acq.b0_tesla == 3.0 and not acq.b0_from_cli


def test_top_level_sidecar_is_inherited(make_bids):
    root = make_bids(b0=None, extra_files={"MEGRE.json": {"MagneticFieldStrength": 7}})
    (acq,) = collect_acquisitions(root)
    assert acq.b0_tesla == 7.0 and not acq.b0_from_cli


def test_missing_echo_time_names_the_file(make_bids):
    root = make_bids()
    _edit_sidecar(_anat(root) / "sub-01_echo-2_part-phase_MEGRE.json", EchoTime=None)
    with pytest.raises(BIDSInputError, match="EchoTime missing") as err:
        collect_acquisitions(root)
    message = _one_line(err)
    assert "sub-01/anat/sub-01_echo-2_part-phase_MEGRE.nii.gz" in message
    assert "sub-01_echo-2_part-phase_MEGRE.json" in message


def test_echo_time_in_milliseconds(make_bids):
    root = make_bids()
    _edit_sidecar(_anat(root) / "sub-01_echo-3_part-phase_MEGRE.json", EchoTime=12.0)
    with pytest.raises(BIDSInputError, match="looks like milliseconds") as err:
        collect_acquisitions(root)
    assert "sub-01_echo-3_part-phase_MEGRE" in _one_line(err)


def test_duplicate_echo_times(make_bids):
    root = make_bids()
    _edit_sidecar(_anat(root) / "sub-01_echo-3_part-phase_MEGRE.json", EchoTime=0.008)
    with pytest.raises(BIDSInputError, match="duplicate EchoTime") as err:
        collect_acquisitions(root)
    message = _one_line(err)
    assert "echo-2_part-phase" in message and "echo-3_part-phase" in message


def test_magnitude_echo_time_must_match_phase(make_bids):
    root = make_bids()
    _edit_sidecar(_anat(root) / "sub-01_echo-1_part-mag_MEGRE.json", EchoTime=0.0045)
    with pytest.raises(BIDSInputError, match="differs"):
        collect_acquisitions(root)


def test_unreadable_sidecar(make_bids):
    root = make_bids()
    (_anat(root) / "sub-01_echo-1_part-phase_MEGRE.json").write_text("{not json")
    with pytest.raises(BIDSInputError, match="could not index"):
        collect_acquisitions(root)


# -- pairing and grids --------------------------------------------------------------------------
def test_magnitude_count_mismatch(make_bids):
    root = make_bids()
    for ext in (".nii.gz", ".json"):
        (_anat(root) / f"sub-01_echo-3_part-mag_MEGRE{ext}").unlink()
    with pytest.raises(BIDSInputError, match=r"2 magnitude image\(s\) for 3 phase image\(s\)"):
        collect_acquisitions(root)


def test_lone_megre_without_echo_entity_is_one_echo_with_a_warning(make_bids):
    # qsm-forward writes a single echo so; refusing it would refuse QSMxT users' data.
    root = make_bids(echoes=1)
    anat = _anat(root)
    for part in ("phase", "mag"):
        for ext in (".nii.gz", ".json"):
            (anat / f"sub-01_echo-1_part-{part}_MEGRE{ext}").rename(
                anat / f"sub-01_part-{part}_MEGRE{ext}"
            )
    (acq,) = collect_acquisitions(root)
    assert acq.n_echoes == 1 and len(acq.magnitude_files) == 1
    assert any("no echo-<index> entity" in w for w in check_acquisition_advice(acq))


def test_megre_without_echo_entity_among_echoes(make_bids):
    root = make_bids(echoes=2, phase_only=True)
    anat = _anat(root)
    for ext in (".nii.gz", ".json"):
        (anat / f"sub-01_echo-1_part-phase_MEGRE{ext}").rename(
            anat / f"sub-01_part-phase_MEGRE{ext}"
        )
    with pytest.raises(BIDSInputError, match="lacks the echo-<index> entity"):
        collect_acquisitions(root)


def test_shape_mismatch_names_both_files(make_bids):
    root = make_bids()
    mag = _anat(root) / "sub-01_echo-2_part-mag_MEGRE.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 5), np.float32), np.eye(4)), mag)
    with pytest.raises(BIDSInputError, match="image shapes differ") as err:
        collect_acquisitions(root)
    message = _one_line(err)
    assert "sub-01_echo-1_part-phase_MEGRE.nii.gz" in message
    assert "sub-01_echo-2_part-mag_MEGRE.nii.gz" in message and "(8, 8, 5)" in message


def test_echo_shape_mismatch_between_phases(make_bids):
    root = make_bids(phase_only=True)
    phase = _anat(root) / "sub-01_echo-3_part-phase_MEGRE.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), phase)
    with pytest.raises(BIDSInputError, match="echo-3_part-phase"):
        collect_acquisitions(root)


def test_affine_mismatch(make_bids):
    root = make_bids()
    mag = _anat(root) / "sub-01_echo-1_part-mag_MEGRE.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.diag([2.0, 1, 1, 1])), mag)
    with pytest.raises(BIDSInputError, match="affines"):
        collect_acquisitions(root)


def test_oblique_anisotropic_grid_is_reported(make_bids):
    angle = np.deg2rad(20)
    rot = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.8, 2.0])
    (acq,) = collect_acquisitions(make_bids(affine=affine, shape=(8, 6, 4)))
    assert acq.shape == (8, 6, 4)
    assert acq.voxel_size_mm == pytest.approx((0.8, 0.8, 2.0))


# -- filters ------------------------------------------------------------------------------------
def test_bids_filter(make_bids):
    root = make_bids(acquisitions=("lo", "hi"), runs=(None,))
    (acq,) = collect_acquisitions(root, bids_filter={"megre": {"acquisition": "hi"}})
    assert acq.acq == "hi" and acq.name == "sub-01_acq-hi"
    (acq,) = collect_acquisitions(root, bids_filter={"MEGRE": {"acq": "lo"}})
    assert acq.acq == "lo"
    with pytest.raises(BIDSInputError, match="BIDS filter"):
        collect_acquisitions(root, bids_filter={"megre": {"acquisition": "none"}})


def test_bids_filter_null_means_absent(make_bids):
    root = make_bids(runs=(None,))
    make_bids(runs=("1",))
    acqs = collect_acquisitions(root)
    assert [a.run for a in acqs] == [None, "1"]
    (acq,) = collect_acquisitions(root, bids_filter={"megre": {"run": None}})
    assert acq.run is None


@pytest.mark.parametrize(
    ("bids_filter", "match"),
    [
        ({"bold": {}}, "unknown BIDS filter key"),
        ({"megre": {"part": "mag"}}, "may not set part"),
        ({"megre": "acq-x"}, "must map entities"),
    ],
)
def test_bad_bids_filter(make_bids, bids_filter, match):
    with pytest.raises(BIDSInputError, match=match):
        collect_acquisitions(make_bids(), bids_filter=bids_filter)


def test_load_bids_filter(tmp_path):
    path = tmp_path / "filter.json"
    path.write_text('{"megre": {"acquisition": "x", "run": null}}')
    assert load_bids_filter(path) == {"megre": {"acquisition": "x", "run": None}}
    path.write_text("{oops")
    with pytest.raises(BIDSInputError, match="cannot read the BIDS filter file"):
        load_bids_filter(path)
    path.write_text('{"t1w": {}}')
    with pytest.raises(BIDSInputError, match="filter.json: unknown BIDS filter key"):
        load_bids_filter(path)


# -- acquisition model and advice ---------------------------------------------------------------
def _acq(**changes) -> Acquisition:
    base = dict(subject="01", phase_files=("a", "b", "c"), echo_times_s=(0.004, 0.008, 0.012),
                b0_tesla=3.0, voxel_size_mm=(1.0, 1.0, 1.0))  # fmt: skip
    return Acquisition(**{**base, **changes})


def test_acquisition_model_checks_lengths():
    with pytest.raises(ValueError, match="phase file"):
        _acq(echo_times_s=(0.004,))
    with pytest.raises(ValueError, match="magnitude file"):
        _acq(magnitude_files=("m",))
    assert _acq(session="1", run="2").name == "sub-01_ses-1_run-2"


def test_advice_follows_the_consensus():
    assert check_acquisition_advice(_acq()) == []
    two = check_acquisition_advice(_acq(phase_files=("a", "b"), echo_times_s=(0.004, 0.008)))
    assert len(two) == 1 and "at least 3 echoes" in two[0]
    uneven = check_acquisition_advice(_acq(echo_times_s=(0.004, 0.008, 0.016)))
    assert len(uneven) == 1 and "not uniform" in uneven[0]
    thick = check_acquisition_advice(_acq(voxel_size_mm=(1.0, 1.0, 2.0)))
    assert len(thick) == 1 and "isotropic" in thick[0] and "1 x 1 x 2 mm" in thick[0]
    coarse = check_acquisition_advice(_acq(voxel_size_mm=(1.2, 1.2, 1.2)))
    assert len(coarse) == 1 and "at most 1 mm" in coarse[0]
    assert check_acquisition_advice(_acq(voxel_size_mm=(0.7, 0.7, 0.7))) == []


def test_advice_on_collected_t2starw(make_bids):
    (acq,) = collect_acquisitions(make_bids(suffix="T2starw"))
    (warning,) = check_acquisition_advice(acq)
    assert warning.startswith("1 echo(es);") and "doi:10.1002/mrm.30006" in warning


def test_sheared_affine_is_measured_and_warned(make_bids):
    root = make_bids(echoes=3)
    sheared = np.array([[1.0, 0, 0.2, 0], [0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    for path in _anat(root).glob("*.nii.gz"):
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), sheared), path)
    (acq,) = collect_acquisitions(root)
    assert acq.axis_skew_deg == pytest.approx(np.degrees(np.arctan(0.2 / 2.0)), abs=0.01)
    assert any("sheared" in w for w in check_acquisition_advice(acq))
    assert not any("sheared" in w for w in check_acquisition_advice(_acq()))


def test_find_user_mask_picks_the_acquisitions_own_mask(tmp_path):
    from qsmprep.interfaces.bids import Acquisition, BIDSInputError, find_user_mask

    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    for name in ("sub-01_desc-brain_mask.nii.gz", "sub-01_acq-fast_desc-brain_mask.nii.gz",
                 "sub-01_acq-fast_desc-brain_mask.json"):  # fmt: skip
        (anat / name).touch()
    plain, fast = (Acquisition(subject="01", acq=a, phase_files=("p.nii",),
                               echo_times_s=(0.01,), b0_tesla=3.0) for a in (None, "fast"))
    # sub-01's own mask, not also sub-01_acq-fast's (whose name extends it)
    assert find_user_mask(tmp_path, plain) == str(anat / "sub-01_desc-brain_mask.nii.gz")
    assert find_user_mask(tmp_path, fast).endswith("sub-01_acq-fast_desc-brain_mask.nii.gz")
    (anat / "sub-01_space-orig_desc-brain_mask.nii.gz").touch()  # two of its own: ambiguous
    with pytest.raises(BIDSInputError, match="2 candidate brain mask for sub-01 in"):
        find_user_mask(tmp_path, plain)
    other = Acquisition(subject="02", phase_files=("p.nii",), echo_times_s=(0.01,), b0_tesla=3)
    with pytest.raises(BIDSInputError, match="expected sub-02_desc-brain_mask.nii.gz"):
        find_user_mask(tmp_path, other)
