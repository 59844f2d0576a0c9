"""End to end: raw BIDS MEGRE -> derivatives, scored against ground truth.

Two independent simulators: qsmprep's own (the bundled ``bids_examples/ds-qsmsim``: an axial
3 T radian-phase subject and an oblique, anisotropic 7 T integer-phase subject) and
``qsm-forward`` (a different phantom, kernel implementation and phase-offset/shim model).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import parse_report

from qsmprep.algorithms.metrics import nrmse
from qsmprep.cli.run import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "bids_examples" / "ds-qsmsim"
EXPECTED = [
    "dataset_description.json",
    "logs/CITATION.md",
    "sub-{s}/log/qsmprep.toml",
    "sub-{s}.html",
    "sub-{s}/figures/sub-{s}_desc-chimap_qc.png",
    "sub-{s}/anat/sub-{s}_Chimap.nii.gz",
    "sub-{s}/anat/sub-{s}_Chimap.json",
    "sub-{s}/anat/sub-{s}_desc-brain_mask.nii.gz",
    "sub-{s}/anat/sub-{s}_desc-qsm_mask.nii.gz",
    "sub-{s}/anat/sub-{s}_desc-total_fieldmap.nii.gz",
    "sub-{s}/anat/sub-{s}_desc-local_fieldmap.nii.gz",
    "sub-{s}/anat/sub-{s}_R2starmap.nii.gz",
    "sub-{s}/anat/sub-{s}_T2starmap.nii.gz",
    "sub-{s}/anat/sub-{s}_swi.nii.gz",
    "sub-{s}/anat/sub-{s}_minIP.nii.gz",
    "sub-{s}/anat/sub-{s}_seg-qsmprep_dseg.nii.gz",
    "sub-{s}/anat/sub-{s}_seg-qsmprep_dseg.tsv",
    "sub-{s}/anat/sub-{s}_seg-qsmprep_desc-regions_stats.tsv",
    "sub-{s}/anat/sub-{s}_seg-qsmprep_desc-regions_stats.json",
    "sub-{s}/anat/sub-{s}_space-MNI152NLin2009cAsym_Chimap.nii.gz",
    "sub-{s}/anat/sub-{s}_from-MEGRE_to-MNI152NLin2009cAsym_mode-image_xfm.h5",
    "sub-{s}/anat/sub-{s}_from-MNI152NLin2009cAsym_to-MEGRE_mode-image_xfm.h5",
]
# Whole-pipeline NRMSE threshold (demeaned, %, inside truth-brain AND the Chimap's valid mask).
# Issue 4's goal for the defaults is 45 % (the walking skeleton's bound was 70 %; published
# whole pipelines from raw phase score ~68 % on a realistic head, QSM-CI). Single-step TV, the
# default, measures 43.0 / 41.1 % on the examples and 21.7 % on qsm-forward; RESHARP + TV, the
# earlier default, 52.1 % there. A wrong sign gives ~200 %, a wrong unit (Hz taken as ppm, or a
# 2 pi error) >> 100 %, B0 along the wrong axis > 100 %.
MAX_NRMSE = 46.0


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("example") / "out"
    rc = main([str(EXAMPLE), str(out), "participant", "-w", str(out.parent / "work"),
               "--nprocs", "2"])  # fmt: skip
    return rc, out


def _load(path):
    img = nb.load(str(path))
    return np.asanyarray(img.dataobj).astype(np.float64), img.affine


@pytest.mark.slow
@pytest.mark.parametrize("sub", ["01", "02"])
def test_example_outputs_on_input_grid_and_accurate(example_run, sub):
    rc, out = example_run
    assert rc == 0
    for rel in EXPECTED:
        assert (out / rel.format(s=sub)).exists(), rel
    report = parse_report(out / f"sub-{sub}.html")
    assert len(report.src) == 7 and all((out / src).exists() for src in report.src)
    assert all((out / href).exists() for href in report.href if not href.startswith("#"))
    written = {p.name for p in (out / f"sub-{sub}/anat").iterdir() if p.suffix != ".json"}
    assert written <= {Path(href).name for href in report.href}  # links to every output
    chi, aff = _load(out / f"sub-{sub}/anat/sub-{sub}_Chimap.nii.gz")
    raw = nb.load(str(next(EXAMPLE.glob(f"sub-{sub}/anat/*echo-1_part-phase_MEGRE.nii.gz"))))
    assert chi.shape == raw.shape and np.allclose(aff, raw.affine)
    assert (
        nb.load(str(out / f"sub-{sub}/anat/sub-{sub}_Chimap.nii.gz")).get_data_dtype() == np.float32
    )
    meta = json.loads((out / f"sub-{sub}/anat/sub-{sub}_Chimap.json").read_text())
    assert meta["Units"] == "ppm" and meta["ReferenceRegion"] == "brain"
    assert meta["Sources"][0].startswith("bids:raw:sub-")
    gt = EXAMPLE / "derivatives" / "groundtruth" / f"sub-{sub}" / "anat"
    truth, _ = _load(gt / f"sub-{sub}_Chimap.nii.gz")
    brain = _load(gt / f"sub-{sub}_desc-brain_mask.nii.gz")[0] > 0
    valid = _load(out / f"sub-{sub}/anat/sub-{sub}_desc-qsm_mask.nii.gz")[0] > 0
    evaluated = brain & valid
    assert evaluated.sum() > 0.5 * brain.sum()
    score = nrmse(chi, truth, evaluated)
    print(f"sub-{sub} whole-pipeline NRMSE {score:.1f} %")
    assert score < MAX_NRMSE
    # paramagnetic deep grey (globus pallidus) must come out positive relative to white matter
    labels = _load(gt / f"sub-{sub}_dseg.nii.gz")[0].astype(int)
    names = dict(
        line.split("\t")[:2] for line in (gt / f"sub-{sub}_dseg.tsv").read_text().splitlines()[1:]
    )
    idx = {v: int(k) for k, v in names.items()}
    gp = (labels == idx["globus_pallidus"]) & evaluated
    wm = (labels == idx["white_matter"]) & evaluated
    assert chi[gp].mean() - chi[wm].mean() > 0.08  # truth: 0.18 ppm
    # R2* (1/s) from the magnitude decay: truth scales 3 T values with B0 (GP 45, WM 22 at 3 T)
    r2s, _ = _load(out / f"sub-{sub}/anat/sub-{sub}_R2starmap.nii.gz")
    b0 = meta["MagneticFieldStrength"]
    for region, r2s_3t in (("globus_pallidus", 45.0), ("white_matter", 22.0)):
        sel = (labels == idx[region]) & brain
        assert abs(r2s[sel].mean() - r2s_3t * b0 / 3.0) < 0.15 * r2s_3t * b0 / 3.0, region


def _restore_order(stored: np.ndarray) -> np.ndarray:
    """Inverse of the storage change in the test below: flip axis 0 back, then the axes."""
    return np.transpose(stored[::-1], (1, 2, 0))


@pytest.mark.slow
def test_voxel_storage_order_does_not_change_the_chimap(example_run, tmp_path):
    """The oblique, anisotropic 7 T subject stored with its voxel axes permuted and one of them
    reversed (the same head in the same world: B0 along another, reflected voxel axis) gives
    the same Chimap, voxel for voxel. A step that assumed B0 along the third voxel axis, took
    voxel sizes in the wrong order or ignored a reflection would change it. Measured on
    qsm-forward's phantom the same way: 3e-7 ppm apart (float32 rounding)."""
    rc, out = example_run
    assert rc == 0
    bids = tmp_path / "bids"
    (bids / "sub-02" / "anat").mkdir(parents=True)
    shutil.copy(EXAMPLE / "dataset_description.json", bids)
    order = np.zeros((4, 4))
    order[0, 1] = order[1, 2] = order[2, 0] = order[3, 3] = 1  # new voxel (a,b,c) = old (b,c,a)
    for src in (EXAMPLE / "sub-02" / "anat").iterdir():
        dst = bids / "sub-02" / "anat" / src.name
        if not src.name.endswith(".nii.gz"):
            shutil.copy(src, dst)
            continue
        img = nb.load(str(src))
        data = np.transpose(img.dataobj.get_unscaled(), (2, 0, 1))[::-1]  # header scaling kept
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, data.shape[0] - 1
        stored = nb.Nifti1Image(np.ascontiguousarray(data), img.affine @ order @ flip, img.header)
        stored.set_sform(stored.affine, code=1)
        stored.set_qform(stored.affine, code=1)
        nb.save(stored, str(dst))
    out2 = tmp_path / "out"
    assert main([str(bids), str(out2), "participant", "-w", str(tmp_path / "work"),
                 "--no-regions"]) == 0  # fmt: skip
    chi, _ = _load(out / "sub-02/anat/sub-02_Chimap.nii.gz")
    moved, affine = _load(out2 / "sub-02/anat/sub-02_Chimap.nii.gz")
    assert moved.shape != chi.shape  # stored differently ...
    raw = nb.load(str(bids / "sub-02/anat/sub-02_echo-1_part-phase_MEGRE.nii.gz"))
    assert np.allclose(affine, raw.affine)  # ... and written on the grid it came in
    np.testing.assert_allclose(_restore_order(moved), chi, atol=1e-4)


@pytest.mark.slow
def test_real_and_imaginary_parts_give_the_same_chimap(example_run, tmp_path, caplog):
    """sub-01 stored as GE exports it: real and imaginary parts (part-real/part-imag), int16,
    with the sign alternating slice by slice along the third voxel axis. The run computes
    phase and magnitude from them, undoes the chopping (and says so) and gives the Chimap of
    the phase/magnitude run; the derivatives' Sources name the raw parts. Without the
    chopping undone, every other slice's phase is off by pi and the Chimap is far off."""
    rc, out = example_run
    assert rc == 0
    bids = tmp_path / "bids"
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(EXAMPLE / "dataset_description.json", bids)
    src = EXAMPLE / "sub-01" / "anat"
    phases = sorted(src.glob("*_part-phase_MEGRE.nii.gz"))
    signals = []
    for phase_file in phases:
        mag_img = nb.load(str(phase_file).replace("part-phase", "part-mag"))
        phase = nb.load(str(phase_file)).get_fdata()
        signals.append(mag_img.get_fdata() * np.exp(1j * phase))
    scale = 20000.0 / max(np.abs(s).max() for s in signals)
    chop = (-1.0) ** np.arange(signals[0].shape[2])
    for phase_file, signal in zip(phases, signals, strict=True):
        signal = signal * scale * chop
        for part, values in (("real", signal.real), ("imag", signal.imag)):
            name = phase_file.name.replace("part-phase", f"part-{part}")
            img = nb.Nifti1Image(np.round(values).astype(np.int16), mag_img.affine)
            nb.save(img, str(anat / name))
            shutil.copy(str(phase_file).replace(".nii.gz", ".json"),
                        anat / name.replace(".nii.gz", ".json"))  # fmt: skip
    out2 = tmp_path / "out"
    assert main([str(bids), str(out2), "participant", "-w", str(tmp_path / "work"),
                 "--no-regions"]) == 0  # fmt: skip
    assert "changes sign from one slice to the next along voxel axis 3" in caplog.text
    chi, _ = _load(out / "sub-01/anat/sub-01_Chimap.nii.gz")
    from_parts, affine = _load(out2 / "sub-01/anat/sub-01_Chimap.nii.gz")
    assert np.allclose(affine, nb.load(str(phases[0])).affine)
    valid = _load(out / "sub-01/anat/sub-01_desc-qsm_mask.nii.gz")[0] > 0
    assert nrmse(from_parts, chi, valid) < 1.0  # int16 rounding only
    meta = json.loads((out2 / "sub-01/anat/sub-01_Chimap.json").read_text())
    assert all("_part-real_" in s or "_part-imag_" in s for s in meta["Sources"])
    report = (out2 / "sub-01.html").read_text()
    assert "real + imaginary parts" in report and "changes sign from one slice" in report


@pytest.mark.slow
def test_example_regional_outputs_and_group_level(example_run, tmp_path):
    """Native-space labels on the input grid, a table per acquisition, then the cohort table.
    (The example phantoms are geometric, so only the structure is checked here; regional
    accuracy on anatomical phantoms is tested in test_regional_accuracy.py.)"""
    import pandas as pd

    rc, out = example_run
    assert rc == 0
    for sub in ("01", "02"):
        anat = out / f"sub-{sub}" / "anat"
        dseg = nb.load(str(anat / f"sub-{sub}_seg-qsmprep_dseg.nii.gz"))
        chi = nb.load(str(anat / f"sub-{sub}_Chimap.nii.gz"))
        assert dseg.shape == chi.shape and np.allclose(dseg.affine, chi.affine)
        assert np.issubdtype(dseg.get_data_dtype(), np.integer)
        table = pd.read_csv(anat / f"sub-{sub}_seg-qsmprep_desc-regions_stats.tsv", sep="\t")
        assert list(table.columns[:2]) == ["region", "hemisphere"]
        assert {"n_voxels", "mean_ppm", "median_ppm", "std_ppm", "iqr_ppm",
                "reference"} <= set(table.columns)  # fmt: skip
        assert table["region"].iloc[0] == "whole_brain" and (table["reference"] == "brain").all()
        assert abs(table["mean_ppm"].iloc[0]) < 1e-6  # referenced to the whole-brain mean
        meta = json.loads((anat / f"sub-{sub}_seg-qsmprep_desc-regions_stats.json").read_text())
        assert meta["mean_ppm"]["Units"] == "ppm" and meta["ReferenceRegion"] == "brain"
        std = nb.load(str(anat / f"sub-{sub}_space-MNI152NLin2009cAsym_Chimap.nii.gz"))
        assert std.shape == (193, 229, 193)
    rc = main([str(EXAMPLE), str(out), "group"])
    assert rc == 0
    long = pd.read_csv(out / "group" / "regions_long.tsv", sep="\t")
    assert set(long["participant_id"]) == {"sub-01", "sub-02"}
    assert (long["atlas"] == "qsmprep").all()
    figures = out / "group" / "figures"
    assert list(figures.glob("*.svg")) and list(figures.glob("*.png"))
    report = parse_report(out / "group" / "report.html")
    assert sorted(report.href) == ["../sub-01.html", "../sub-02.html"]
    assert all((out / "group" / src).exists() for src in report.src)


@pytest.mark.slow
def test_failed_subject_does_not_stop_others(tmp_path):
    bids = tmp_path / "bids"
    shutil.copytree(EXAMPLE, bids, ignore=shutil.ignore_patterns("derivatives"))
    # break sub-02: a magnitude/phase echo count mismatch
    for f in bids.glob("sub-02/anat/*echo-3_part-mag*"):
        f.unlink()
    out = tmp_path / "out"
    rc = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
               "--no-regions"])
    assert rc != 0
    assert (out / "sub-01/anat/sub-01_Chimap.nii.gz").exists()
    assert not list(out.glob("sub-02/anat/*")) and not list(out.glob("sub-02/figures/*"))
    # the refused subject's report says why, in the words printed on the terminal
    text = " ".join(parse_report(out / "sub-02.html").text)
    assert "Failed:" in text and "magnitude" in text
    assert "1 of 1" not in text and "0 of 1 acquisition(s) finished" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("echo_times", "b0_dir"),
    [
        (["0.004", "0.008", "0.012", "0.016"], ["0", "0", "1"]),
        # one echo: qsm-forward names it without echo-<index> (read as one echo, with a
        # warning); B0 tilted 21 degrees, which qsm-forward writes into the affine.
        # Measured 21.7 % and 31.3 % (26.4 % with one echo alone, 26.2 % with the tilt alone).
        (["0.020"], ["0.2", "0.3", "0.933"]),
    ],
    ids=["4-echoes", "1-echo-tilted"],
)
def test_qsm_forward_independent_simulator(tmp_path, echo_times, b0_dir):
    pytest.importorskip("qsm_forward")
    bids = tmp_path / "qf"
    cmd = [sys.executable, "-m", "qsm_forward.main", "simple", str(bids), "--resolution", "64",
           "64", "64", "--TEs", *echo_times, "--B0", "3", "--B0-dir", *b0_dir,
           "--peak-snr", "100", "--voxel-size", "1", "1", "1"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    rc = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
               "--no-regions"])
    assert rc == 0
    chi, _ = _load(out / "sub-1/anat/sub-1_Chimap.nii.gz")
    gt = bids / "derivatives" / "qsm-forward" / "sub-1" / "anat"
    truth, _ = _load(next(gt.glob("*_Chimap.nii*")))
    mask = _load(next(gt.glob("*_mask.nii*")))[0] > 0
    valid = _load(out / "sub-1/anat/sub-1_desc-qsm_mask.nii.gz")[0] > 0
    score = nrmse(chi, truth, mask & valid)
    print(f"qsm-forward simple whole-pipeline NRMSE {score:.1f} %")
    assert score < MAX_NRMSE


@pytest.mark.slow
def test_real_scan_crop_runs_end_to_end(tmp_path):
    """Real phase and magnitude (ROMEO's 3-echo crop) through the CLI: real wraps, noise and
    vessels. The data have no ground truth, so the checks are
    physical: the total field has no residual 2 pi jumps (a wrap is 1/TE1 = 250 Hz; field
    steps between neighbours stay under half of that), and the Chimap is in the tissue
    range (a ppm/Hz mix-up scales it by ~300, a lost 2 pi by ~6)."""
    from conftest import real_crop_dir

    src = real_crop_dir()
    if not (src / "phase.nii.gz").exists():
        pytest.skip("shared real data not available")
    anat = tmp_path / "bids" / "sub-real" / "anat"
    anat.mkdir(parents=True)
    (tmp_path / "bids" / "dataset_description.json").write_text(
        json.dumps({"Name": "real crop", "BIDSVersion": "1.10.0"}))
    for part in ("phase", "mag"):
        img = nb.load(str(src / f"{part}.nii.gz"))
        # the stored phase floats are radians; the header's slope is spurious (its README)
        data = img.dataobj.get_unscaled() if part == "phase" else img.dataobj
        data = np.asanyarray(data).astype(np.float32)
        for echo in range(3):  # the README's echo times; the field strength is an assumption
            stem = anat / f"sub-real_echo-{echo + 1}_part-{part}_MEGRE"
            nb.save(nb.Nifti1Image(data[..., echo], img.affine), str(stem) + ".nii.gz")
            stem.with_suffix(".json").write_text(json.dumps(
                {"EchoTime": 0.004 * (echo + 1), "MagneticFieldStrength": 7.0}))
    out = tmp_path / "out"
    rc = main([str(tmp_path / "bids"), str(out), "participant", "-w", str(tmp_path / "work"),
               "--no-regions"])  # fmt: skip
    assert rc == 0
    res = out / "sub-real" / "anat" / "sub-real_"
    field, _ = _load(str(res) + "desc-total_fieldmap.nii.gz")
    brain = _load(str(res) + "desc-brain_mask.nii.gz")[0] > 0
    for axis in range(3):
        steps = np.abs(np.diff(field, axis=axis))
        pairs = np.delete(brain, -1, axis) & np.delete(brain, 0, axis)
        assert np.percentile(steps[pairs], 99.99) < 125.0, axis  # measured 64-68 Hz
    chi, _ = _load(str(res) + "Chimap.nii.gz")
    valid = _load(str(res) + "desc-qsm_mask.nii.gz")[0] > 0
    p99 = np.percentile(np.abs(chi[valid]), 99)
    assert 0.03 < p99 < 0.5  # measured 0.115 ppm: veins and grey/white contrast
    assert len(parse_report(out / "sub-real.html").src) == 6  # no atlas figure without regions
