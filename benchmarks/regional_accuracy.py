"""Registration and regional susceptibility accuracy on anatomical simulated subjects.

Each subject is the MNI152NLin2009cAsym template warped by a known rotation, shift and smooth
random displacement, with known susceptibility per atlas region
(``make_examples.simulate_anatomical_subject``). The script writes them as a BIDS dataset,
runs ``qsmprep`` (default pipeline: registration, native-space atlas, regional table), then
reports against the truth:

- registration time on this machine (median of ``--repeats`` runs of the registration alone);
- Dice of the native-space atlas labels (``_seg-qsmprep_dseg``) against the true labels;
- error per region (ppb) and the slope of estimated vs true region means (least squares,
  intercept free), both referenced to the whole-brain mean over the QSM mask;
- the same slope with the true labels, which separates QSM underestimation from registration.

Usage::

    python benchmarks/regional_accuracy.py [--voxel 1.0] [--repeats 3] [--keep DIR]
    python benchmarks/regional_accuracy.py --slab 40 --repeats 0   # partial coverage
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bids_examples"))

DEEP_GREY = ("caudate", "putamen", "GPe", "GPi", "thalamus", "substantia_nigra", "red_nucleus",
             "subthalamic_nucleus", "dentate_nucleus")  # fmt: skip

SUBJECTS = {
    "01": dict(b0=3.0, tes=(0.005, 0.010, 0.015, 0.020), seed=11, rotation_deg=(6, -4, 3),
               translation_mm=(3, -4, 2), angles_deg=(0.0, 0.0), phase="rad"),
    "02": dict(b0=7.0, tes=(0.004, 0.008, 0.012), seed=12, rotation_deg=(-5, 3, -6),
               translation_mm=(-2, 3, -3), angles_deg=(15.0, 0.0), phase="siemens",
               t1w_motion=(8.0, (4.0, -3.0, 5.0))),  # a T1w in another head position
}  # fmt: skip


def load(path) -> np.ndarray:
    return np.asanyarray(nb.load(str(path)).dataobj)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else float("nan")


def evaluate(sub: str, out: Path, phantom, atlas) -> dict:
    """Dice, per-region truth/estimate (ppm) and slopes of one subject."""
    from qsmprep.algorithms.regions import split_hemisphere

    anat = out / f"sub-{sub}" / "anat"
    chi = load(anat / f"sub-{sub}_Chimap.nii.gz").astype(float)
    qsm_mask = load(anat / f"sub-{sub}_desc-qsm_mask.nii.gz") > 0
    dseg = load(anat / f"sub-{sub}_seg-{atlas.name}_dseg.nii.gz").astype(int)
    table = np.genfromtxt(anat / f"sub-{sub}_seg-{atlas.name}_desc-regions_stats.tsv",
                          delimiter="\t", names=True, dtype=None, encoding=None)  # fmt: skip
    true_labels = np.where(phantom.brain_mask, phantom.labels, 0)
    truth = np.where(phantom.brain_mask, phantom.chi_ppm, 0).astype(float)
    truth_ref = truth - truth[qsm_mask].mean()
    rows = []
    for k, name in sorted(atlas.labels.items()):
        region, hemi = split_hemisphere(name)
        true_k = (true_labels == k) & qsm_mask
        est_k = (dseg == k) & qsm_mask
        rec = table[table["label"] == k]
        rows.append(dict(
            region=region, hemi=hemi, dice=dice(true_labels == k, dseg == k),
            true=truth_ref[true_k].mean() if true_k.any() else np.nan,
            est=float(rec["mean_ppm"][0]) if len(rec) and est_k.any() else np.nan,
            est_median=float(rec["median_ppm"][0]) if len(rec) and est_k.any() else np.nan,
            est_core=float(rec["core_mean_ppm"][0]) if len(rec) and est_k.any() else np.nan,
            est_true_labels=chi[true_k].mean() if true_k.any() else np.nan,
        ))  # fmt: skip
    from qsmprep.algorithms.metrics import nrmse

    evaluated = phantom.brain_mask & qsm_mask
    score = nrmse(chi, np.where(evaluated, truth_ref, 0), evaluated)
    return {"rows": rows, "nrmse": score}


def crop_slab(affine, phantom, sig, atlas, thickness_mm: float):
    """The acquisition cut to ``thickness_mm`` along the third voxel axis, centred on the deep
    grey nuclei (a basal-ganglia slab); returns the slab's affine, phantom and signal."""
    import dataclasses

    from qsmprep.algorithms.regions import split_hemisphere

    deep = [k for k, name in atlas.labels.items() if split_hemisphere(name)[0] in DEEP_GREY]
    z = np.flatnonzero(np.isin(phantom.labels, deep).any(axis=(0, 1)))
    half = int(round(thickness_mm / float(np.linalg.norm(affine[:3, 2])) / 2))
    centre = int(round(z.mean()))
    sl = slice(max(centre - half, 0), centre + half)
    shift = np.eye(4)
    shift[2, 3] = sl.start
    cut = {f.name: getattr(phantom, f.name)[:, :, sl]
           for f in dataclasses.fields(phantom)
           if isinstance(getattr(phantom, f.name), np.ndarray)}  # fmt: skip
    sig_cut = {name: getattr(sig, name)[:, :, sl]
               for name in ("magnitude", "phase_rad", "total_field_ppm", "phase_offset_rad")}
    return (affine @ shift, dataclasses.replace(phantom, **cut),
            dataclasses.replace(sig, **sig_cut))  # fmt: skip


def slope(x, y) -> tuple[float, float]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    a, b = np.polyfit(x[ok], y[ok], 1)
    return float(a), float(b)


#: Estimates compared with the truth: table mean, median, core mean, and mean over true labels.
_ESTIMATES = (("est", "means"), ("est_median", "medians"), ("est_core", "core means"),
              ("est_true_labels", "means with the true labels"))  # fmt: skip


def describe_slopes(rows: list[dict]) -> str:
    """One line: slope (and intercept of the means) of every estimate against the truth."""
    true = [r["true"] for r in rows]
    parts = []
    for key, name in _ESTIMATES:
        a, b = slope(true, [r[key] for r in rows])
        parts.append(f"slope of {name} {a:.3f}" + (f" (intercept {1e3 * b:.1f} ppb)"
                                                  if key == "est" else ""))  # fmt: skip
    return "; ".join(parts)


def time_registration(dataset: Path, out: Path, sub: str, repeats: int) -> list[float]:
    """Wall time of the registration node (through the T1w when the subject has one)."""
    from qsmprep.data.templates import get_template
    from qsmprep.interfaces.registration import RegisterToTemplate

    anat = dataset / f"sub-{sub}" / "anat"
    mag = anat / f"sub-{sub}_echo-1_part-mag_MEGRE.nii.gz"
    mask = out / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-brain_mask.nii.gz"
    t1w = anat / f"sub-{sub}_T1w.nii.gz"
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            node = RegisterToTemplate(moving=str(mag), mask=str(mask),
                                      template=str(get_template().path))  # fmt: skip
            if t1w.exists():
                node.inputs.t1w = str(t1w)
            t0 = time.perf_counter()
            node.run(cwd=tmp)
            times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    from make_examples import simulate_anatomical_subject, write_raw, write_t1w

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxel", type=float, default=1.0, help="isotropic voxel size (mm)")
    parser.add_argument("--repeats", type=int, default=3, help="registration timing runs")
    parser.add_argument("--subjects", nargs="*", default=list(SUBJECTS))
    parser.add_argument("--keep", type=Path, help="keep the dataset and outputs here")
    parser.add_argument("--slab", type=float, metavar="MM",
                        help="keep only an axial slab of MM (third voxel axis) centred on the "
                        "deep grey nuclei, as a partial-coverage acquisition (a T1w stays "
                        "whole-head)")  # fmt: skip
    parser.add_argument("--qsmprep-args", default="", metavar="'ARGS'",
                        help="extra qsmprep options, e.g. '--bfr vsharp --vsharp-min-radius-mm 6'")
    args = parser.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="qsmprep-regional-"))
    dataset, out = work / "bids", work / "out"
    if dataset.exists():
        shutil.rmtree(dataset)
    dataset.mkdir(parents=True)
    (dataset / "dataset_description.json").write_text(
        '{"Name": "qsmprep anatomical phantom", "BIDSVersion": "1.9.0"}\n')  # fmt: skip
    truths = {}
    for sub in args.subjects:
        cfg = dict(SUBJECTS[sub], voxel=(args.voxel,) * 3)
        t0 = time.perf_counter()
        affine, _, phantom, sig, atlas, t1w = simulate_anatomical_subject(cfg)
        raw_affine = affine
        if args.slab:
            raw_affine, phantom, sig = crop_slab(affine, phantom, sig, atlas, args.slab)
        write_raw(dataset, sub, raw_affine, sig, cfg)
        if cfg.get("t1w_motion"):
            write_t1w(dataset, sub, t1w, affine, cfg["t1w_motion"])
        truths[sub] = (phantom, atlas)
        print(f"sub-{sub}: simulated {phantom.chi_ppm.shape} at {args.voxel} mm, "
              f"{cfg['b0']} T{', with a T1w' if cfg.get('t1w_motion') else ''}, in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "qsmprep.cli.run", str(dataset), str(out), "participant",
           "--nprocs", "2", "--work-dir", str(work / "work")]  # fmt: skip
    cmd += args.qsmprep_args.split()
    run = subprocess.run(cmd, capture_output=True, text=True)
    label = args.qsmprep_args or "defaults"
    print(f"qsmprep participant ({label}, {len(args.subjects)} subjects): "
          f"{time.perf_counter() - t0:.0f} s, exit {run.returncode}")  # fmt: skip
    if run.returncode:
        print(run.stderr[-3000:])
        return 1
    all_rows = []
    for sub, (phantom, atlas) in truths.items():
        res = evaluate(sub, out, phantom, atlas)
        times = time_registration(dataset, out, sub, args.repeats) if args.repeats else [np.nan]
        rows = res["rows"]
        all_rows += rows
        deep = [r for r in rows if r["region"] in DEEP_GREY]
        print(f"\nsub-{sub}: registration {np.median(times):.1f} s (median of {len(times)}: "
              f"{', '.join(f'{t:.1f}' for t in times)}); whole-pipeline Chimap NRMSE "
              f"{res['nrmse']:.1f} %")  # fmt: skip
        print(f"  deep-grey Dice: mean {np.nanmean([r['dice'] for r in deep]):.3f}, "
              f"min {np.nanmin([r['dice'] for r in deep]):.3f}")  # fmt: skip
        print(f"  {'region':24s} {'hemi':4s} {'Dice':>6s} {'true ppb':>9s} {'est ppb':>9s} "
              f"{'err ppb':>8s} {'true-label est':>14s}")  # fmt: skip
        for r in rows:
            print(f"  {r['region']:24s} {r['hemi']:4s} {r['dice']:6.3f} {1e3 * r['true']:9.1f} "
                  f"{1e3 * r['est']:9.1f} {1e3 * (r['est'] - r['true']):8.1f} "
                  f"{1e3 * r['est_true_labels']:14.1f}")  # fmt: skip
        print("  " + describe_slopes(rows))
    err = 1e3 * np.nanmedian(np.abs([r["est"] - r["true"] for r in all_rows]))
    print(f"\nall subjects: {describe_slopes(all_rows)}; median |error of the mean| "
          f"{err:.1f} ppb")  # fmt: skip
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
