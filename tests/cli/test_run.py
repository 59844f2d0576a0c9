"""The ``qsmprep`` command: plans, selections and clear failures (no workflow run here)."""

import json

import pytest

from qsmprep.cli.run import main


def test_dry_run_lists_acquisitions_and_stages(make_bids, tmp_path, capsys):
    bids = make_bids(subjects=("01", "02"), echoes=3)
    rc = main([str(bids), str(tmp_path / "out"), "participant", "--dry-run",
               "--participant-label", "sub-02", "--inversion", "tkd"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "sub-02" in out and "sub-01" not in out
    assert "inversion: tkd" in out and "TE=[4.00, 8.00, 12.00] ms" in out
    assert not (tmp_path / "out" / "sub-02").exists()  # a dry run writes nothing
    assert "registration to MNI152NLin2009cAsym" in out and "atlas qsmprep" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--atlas", "NoSuchAtlas"], "atlas 'NoSuchAtlas': not a file"),
        (["--reference", "nucleus_ruber"], "--reference nucleus_ruber: not a region of the "
                                           "qsmprep atlas"),
        (["--atlas", "missing.nii.gz", "--atlas-labels", "x.tsv"], "atlas file not found"),
    ],
)
def test_bad_atlas_or_reference_is_one_line_and_nonzero(make_bids, tmp_path, capsys, extra,
                                                        message):
    bids = make_bids()
    rc = main([str(bids), str(tmp_path / "out"), "participant", "--dry-run", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and message in err[0], err


def test_no_megre_data_is_a_clear_error(tmp_path, capsys):
    bids = tmp_path / "empty"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10"}))
    rc = main([str(bids), str(tmp_path / "out"), "participant"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "error" in err and "MEGRE" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_echo_time_names_the_file(make_bids, tmp_path, capsys):
    bids = make_bids(echoes=3)
    sidecar = next(bids.glob("sub-01/anat/*echo-2_part-phase*.json"))
    meta = json.loads(sidecar.read_text())
    del meta["EchoTime"]
    sidecar.write_text(json.dumps(meta))
    rc = main([str(bids), str(tmp_path / "out"), "participant"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "EchoTime" in err and "echo-2_part-phase" in err


def test_mismatched_magnitude_and_phase_shapes(make_bids, tmp_path, capsys):
    import nibabel as nb
    import numpy as np

    bids = make_bids(echoes=2)
    mag = next(bids.glob("sub-01/anat/*echo-1_part-mag*.nii.gz"))
    nb.save(nb.Nifti1Image(np.zeros((9, 8, 4), np.float32), np.eye(4)), str(mag))
    rc = main([str(bids), str(tmp_path / "out"), "participant"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "part-mag" in err and "part-phase" in err


def test_unknown_participant_is_refused(make_bids, tmp_path, capsys):
    bids = make_bids()
    rc = main([str(bids), str(tmp_path / "out"), "participant", "--participant-label", "99"])
    assert rc != 0
    assert "99" in capsys.readouterr().err


def test_group_level_without_regional_tables_is_a_clear_error(make_bids, tmp_path, capsys):
    bids = make_bids()
    assert main([str(bids), str(tmp_path / "out"), "group"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "regional tables" in err[0]


def test_version(capsys):
    from qsmprep import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_local_runs_poll_fast_and_cluster_runs_keep_nipypes_default():
    from qsmprep.cli.run import LOCAL_POLL_SLEEP_S, execution_config

    assert execution_config("MultiProc")["poll_sleep_duration"] == LOCAL_POLL_SLEEP_S < 1
    assert "poll_sleep_duration" not in execution_config("SLURM")


@pytest.mark.parametrize(
    ("nprocs", "plugin", "poll"), [("2", "MultiProc", 0.1), ("1", "Linear", 2.0)]
)
def test_the_run_uses_the_execution_config_of_its_plugin(make_bids, tmp_path, monkeypatch,
                                                         nprocs, plugin, poll):  # fmt: skip
    """The workflow runs with the plugin chosen from --nprocs and, for MultiProc, the short
    poll (the workflow itself is replaced: only the wiring is under test)."""
    from nipype import config as ncfg

    import qsmprep.workflows.base as base

    seen = {}

    class Recorder:
        def list_node_names(self):
            return []

        def run(self, plugin, plugin_args):
            seen["plugin"] = plugin
            seen["poll"] = float(ncfg.get("execution", "poll_sleep_duration"))

    monkeypatch.setattr(base, "init_qsmprep_wf", lambda *a, **k: Recorder())
    ncfg.set("execution", "poll_sleep_duration", "2")  # Nipype's default, whatever ran before
    root = make_bids()
    main([str(root), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
          "--no-regions", "--nprocs", nprocs])  # fmt: skip
    assert seen["plugin"] == plugin
    assert seen["poll"] == poll


def test_a_graph_plugin_fails_in_one_line_before_any_output(make_bids, tmp_path, capsys):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: SLURMGraph\nplugin_args:\n  sbatch_args: --mem=8G\n")
    rc = main([str(make_bids()), str(tmp_path / "out"), "participant", "--use-plugin",
               str(plugin)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "use 'plugin: SLURM'" in err[0], err
    assert not (tmp_path / "out").exists()


def test_bidsignore_keeps_the_users_lines_and_adds_ours_once(tmp_path):
    from qsmprep.cli.run import BIDSIGNORE, write_dataset_description

    (tmp_path / ".bidsignore").write_text("extra/\n**/log/\n")
    write_dataset_description(tmp_path)
    write_dataset_description(tmp_path)  # a second run adds nothing
    lines = (tmp_path / ".bidsignore").read_text().splitlines()
    assert lines[:2] == ["extra/", "**/log/"]
    assert sorted(lines) == sorted({"extra/", *BIDSIGNORE})  # the report and its figures too
    assert {"sub-*.html", "**/figures/"} <= set(lines)


def test_reports_only_redraws_reports_without_running(make_bids, tmp_path, capsys):
    """--reports-only reads the derivatives on disk: a finished acquisition gets its figures,
    one without a Chimap is reported as not processed (non-zero exit), nothing is removed,
    and no work folder is made."""
    import nibabel as nb
    import numpy as np

    bids = make_bids(subjects=("01", "02"))
    out = tmp_path / "out"
    anat = out / "sub-01" / "anat"
    anat.mkdir(parents=True)
    raw = nb.load(str(next((bids / "sub-01" / "anat").glob("*echo-1_part-phase*.nii*"))))
    brain = np.zeros(raw.shape[:3], np.float32)
    brain[tuple(slice(n // 4, n - n // 4) for n in brain.shape)] = 1
    for tail, data in (("Chimap", 0.05 * brain), ("desc-brain_mask", brain),
                       ("desc-total_fieldmap", 10 * brain)):  # fmt: skip
        nb.save(nb.Nifti1Image(data, raw.affine), str(anat / f"sub-01_{tail}.nii.gz"))
    (out / "sub-02" / "anat").mkdir(parents=True)
    kept = out / "sub-02" / "anat" / "sub-02_desc-brain_mask.nii.gz"
    kept.touch()  # an incomplete acquisition: --reports-only must not clean it up
    rc = main([str(bids), str(out), "participant", "--reports-only", "--no-regions",
               "-w", str(tmp_path / "work")])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "sub-02" in err and "Chimap.nii.gz not found" in err and "sub-01" not in err
    assert kept.exists() and not (tmp_path / "work").exists()
    assert sorted(p.name for p in (out / "sub-01" / "figures").iterdir()) == [
        "sub-01_desc-chimap_qc.png", "sub-01_desc-masks_qc.png",
        "sub-01_desc-totalfield_qc.png"]  # fmt: skip
    assert "Methods" in (out / "sub-01.html").read_text()
    assert "Failed:" in (out / "sub-02.html").read_text()
    rc = main([str(bids), str(tmp_path / "none"), "participant", "--reports-only"])
    assert rc == 1 and "does not exist" in capsys.readouterr().err


def test_cleanup_removes_only_the_failed_acquisitions_files(tmp_path):
    """sub-01 failed, sub-01_acq-fast finished: the cleanup must not take the second's
    outputs, whose names start with the first's name."""
    from types import SimpleNamespace

    from qsmprep.cli.run import _cleanup_failed
    from qsmprep.interfaces.bids import Acquisition

    anat, figures = tmp_path / "sub-01" / "anat", tmp_path / "sub-01" / "figures"
    anat.mkdir(parents=True)
    figures.mkdir()
    for name in ("sub-01_desc-brain_mask.nii.gz", "sub-01_acq-fast_Chimap.nii.gz",
                 "sub-01_acq-fast_desc-brain_mask.nii.gz"):  # fmt: skip
        (anat / name).touch()
    for name in ("sub-01_desc-masks_qc.png", "sub-01_acq-fast_desc-masks_qc.png"):
        (figures / name).touch()
    acqs = [Acquisition(subject="01", acq=a, phase_files=("p.nii",), echo_times_s=(0.01,),
                        b0_tesla=3.0) for a in (None, "fast")]  # fmt: skip
    failed = _cleanup_failed(SimpleNamespace(output_dir=tmp_path), acqs)
    assert failed == ["sub-01"]
    assert sorted(p.name for p in anat.iterdir()) == [
        "sub-01_acq-fast_Chimap.nii.gz", "sub-01_acq-fast_desc-brain_mask.nii.gz"]
    assert [p.name for p in figures.iterdir()] == ["sub-01_acq-fast_desc-masks_qc.png"]


def test_a_failed_acquisition_is_cleaned_and_reported(make_bids, tmp_path, monkeypatch):
    """A workflow that leaves only a partial output: the run exits 1, removes it, and the
    subject's report says the acquisition failed and that its outputs were removed."""
    import qsmprep.workflows.base as base

    out = tmp_path / "out"

    class Partial:
        def list_node_names(self):
            return []

        def run(self, plugin, plugin_args):
            anat = out / "sub-01" / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            (anat / "sub-01_desc-brain_mask.nii.gz").touch()  # no Chimap: a crash midway

    monkeypatch.setattr(base, "init_qsmprep_wf", lambda *a, **k: Partial())
    rc = main([str(make_bids(subjects=("01",))), str(out), "participant", "--no-regions",
               "-w", str(tmp_path / "work")])  # fmt: skip
    assert rc == 1
    assert not (out / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz").exists()
    text = (out / "sub-01.html").read_text()
    assert "0 of 1 acquisition(s) finished; failed: sub-01" in text
    assert "no crash file was written" in text and "partial outputs were removed" in text


def test_user_masks_are_read_and_checked_before_the_run(make_bids, tmp_path, capsys):
    """--brain-mask-dir: a mask on another grid (same shape, shifted affine) refuses its
    subject in one line naming the file; a probability map is read at >= 0.5 with a note."""
    import nibabel as nb
    import numpy as np

    bids = make_bids(subjects=("01", "02", "03"), echoes=2)
    masks = tmp_path / "masks"
    for sub in ("01", "02", "03"):
        img = nb.load(next(bids.glob(f"sub-{sub}/anat/*echo-1_part-phase*.nii.gz")))
        affine, data = img.affine.copy(), np.ones(img.shape[:3], np.float32)
        if sub == "02":
            affine[0, 3] += 5.0
        if sub == "03":  # a resampled mask: a fractional margin
            data[:2] = 0.3
        folder = masks / f"sub-{sub}" / "anat"
        folder.mkdir(parents=True)
        nb.save(nb.Nifti1Image(data, affine), str(folder / f"sub-{sub}_desc-brain_mask.nii.gz"))
    rc = main([str(bids), str(tmp_path / "out"), "participant", "--dry-run",
               "--brain-mask-dir", str(masks)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1  # a refused subject
    assert "sub-02_desc-brain_mask.nii.gz: mask affine differs" in captured.err
    assert "sub-03_desc-brain_mask.nii.gz: the mask has fractional values" in captured.err
    assert "sub-01" in captured.out and "sub-03" in captured.out and "sub-02" not in captured.out
