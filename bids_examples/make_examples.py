"""Regenerate the bundled example BIDS dataset ``bids_examples/ds-qsmsim``.

Run from the repository root: ``python bids_examples/make_examples.py``. It uses only
qsmprep's own forward simulator (``qsmprep.algorithms.simulate``) and is deterministic.

Subjects (see ``ds-qsmsim/README``):

* ``sub-01``: axial slab, 3 T, 4 echoes, 3 mm isotropic, phase in radians (float32);
* ``sub-02``: oblique slab (20 degrees about x, 10 about y), 7 T, 3 echoes,
  2.5 x 2.5 x 3 mm, Siemens-style integer phase -4096..4095 (``Units: arbitrary``).

Ground truth (referenced chi, brain mask, local field, labels) is written under
``ds-qsmsim/derivatives/groundtruth``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nb
import numpy as np

from qsmprep.algorithms import simulate
from qsmprep.algorithms.constants import ppm_to_hz
from qsmprep.algorithms.kernels import b0_direction_from_affine, forward_field

HERE = Path(__file__).resolve().parent

SUBJECTS = {
    "01": dict(shape=(56, 64, 48), voxel=(3.0, 3.0, 3.0), angles_deg=(0.0, 0.0), b0=3.0,
               tes=(0.004, 0.008, 0.012, 0.016), phase="rad", seed=1),
    "02": dict(shape=(64, 72, 48), voxel=(2.5, 2.5, 3.0), angles_deg=(20.0, 10.0), b0=7.0,
               tes=(0.003, 0.006, 0.009), phase="siemens", seed=2),
}  # fmt: skip


def oblique_affine(shape, voxel, angles_deg) -> np.ndarray:
    """Affine of a slab rotated by ``angles_deg`` about x then y, centred at the origin."""
    ax, ay = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    aff = np.eye(4)
    aff[:3, :3] = ry @ rx @ np.diag(voxel)
    aff[:3, 3] = -aff[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return aff


def _save(data, affine, path: Path, dtype, meta: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nb.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nb.save(img, str(path))
    if meta is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
            json.dumps(meta, indent=2) + "\n"
        )


def simulate_subject(cfg: dict):
    """``(affine, b0_direction, phantom, signal)`` of one subject configuration (also used by
    the benchmarks): an (oblique) slab with B0 from its affine, SNR 100."""
    affine = oblique_affine(cfg["shape"], cfg["voxel"], cfg["angles_deg"])
    b0_dir = b0_direction_from_affine(affine)
    ph = simulate.make_head_phantom(cfg["shape"], voxel_size_mm=cfg["voxel"], rng=cfg["seed"])
    sig = simulate.simulate_gre(
        ph.chi_ppm, voxel_size_mm=cfg["voxel"], echo_times_s=cfg["tes"], b0_tesla=cfg["b0"],
        b0_direction=b0_dir, m0=ph.m0 * ph.head_mask,
        r2star_hz=simulate.r2star_at(ph.r2star_3t, cfg["b0"]),
        phase_offset_rad=simulate.phase_offset_map(cfg["shape"], rng=cfg["seed"]),
        snr=100.0, rng=cfg["seed"],
    )  # fmt: skip
    return affine, b0_dir, ph, sig


def make_subject(root: Path, sub: str, cfg: dict) -> None:
    """Simulate one subject and write raw data + ground truth."""
    affine, b0_dir, ph, sig = simulate_subject(cfg)
    anat = root / f"sub-{sub}" / "anat"
    mag_scale = 4000.0 / float(sig.magnitude.max())  # one scale for all echoes keeps the decay
    for e, te in enumerate(cfg["tes"], start=1):
        stem = anat / f"sub-{sub}_echo-{e}_part-"
        common = {"EchoTime": te, "MagneticFieldStrength": cfg["b0"], "FlipAngle": 15,
                  "RepetitionTime": 0.03, "Manufacturer": "qsmprep simulator"}  # fmt: skip
        mag = sig.magnitude[..., e - 1]
        _save(np.round(mag * mag_scale), affine, Path(f"{stem}mag_MEGRE.nii.gz"),
              np.int16, common)  # fmt: skip
        phase = sig.phase_rad[..., e - 1]
        if cfg["phase"] == "siemens":
            codes = np.clip(np.round(phase / np.pi * 4096), -4096, 4095)
            _save(codes, affine, Path(f"{stem}phase_MEGRE.nii.gz"), np.int16,
                  {**common, "Units": "arbitrary"})  # fmt: skip
        else:
            _save(phase, affine, Path(f"{stem}phase_MEGRE.nii.gz"), np.float32,
                  {**common, "Units": "rad"})  # fmt: skip
    gt = root / "derivatives" / "groundtruth" / f"sub-{sub}" / "anat"
    brain = ph.brain_mask
    local_ppm = forward_field(np.where(brain, ph.chi_ppm, 0), voxel_size_mm=cfg["voxel"],
                              b0_direction=b0_dir) * brain  # fmt: skip
    _save(ph.true_chi(), affine, gt / f"sub-{sub}_Chimap.nii.gz", np.float32,
          {"Units": "ppm", "ReferenceRegion": "brain"})  # fmt: skip
    _save(brain, affine, gt / f"sub-{sub}_desc-brain_mask.nii.gz", np.uint8, {"Type": "Brain"})
    _save(ppm_to_hz(local_ppm, b0_tesla=cfg["b0"]), affine,
          gt / f"sub-{sub}_desc-local_fieldmap.nii.gz", np.float32, {"Units": "Hz"})  # fmt: skip
    _save(ppm_to_hz(sig.total_field_ppm, b0_tesla=cfg["b0"]) * ph.head_mask, affine,
          gt / f"sub-{sub}_desc-total_fieldmap.nii.gz", np.float32, {"Units": "Hz"})  # fmt: skip
    _save(ph.labels, affine, gt / f"sub-{sub}_dseg.nii.gz", np.int16)
    rows = ["index\tname\tchi_ppm"] + [
        f"{i}\t{n}\t{simulate.TISSUES[n][0]:g}" for i, n in ph.label_names.items()
    ]
    (gt / f"sub-{sub}_dseg.tsv").write_text("\n".join(rows) + "\n")


def main(out: Path = HERE / "ds-qsmsim") -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / "dataset_description.json").write_text(json.dumps(
        {"Name": "qsmprep simulated multi-echo GRE examples", "BIDSVersion": "1.10.0",
         "DatasetType": "raw", "License": "CC0",
         "GeneratedBy": [{"Name": "qsmprep bids_examples/make_examples.py"}]},
        indent=2) + "\n")  # fmt: skip
    (out / "participants.tsv").write_text("participant_id\tage\tgroup\nsub-01\t34\tcontrol\n"
                                          "sub-02\t61\tpatient\n")  # fmt: skip
    gt = out / "derivatives" / "groundtruth"
    gt.mkdir(parents=True)
    (gt / "dataset_description.json").write_text(json.dumps(
        {"Name": "ground truth of ds-qsmsim", "BIDSVersion": "1.10.0",
         "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "qsmprep.algorithms.simulate"}]}, indent=2) + "\n")  # fmt: skip
    for sub, cfg in SUBJECTS.items():
        make_subject(out, sub, cfg)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "ds-qsmsim")
