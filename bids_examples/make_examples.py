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
from qsmprep.algorithms.simulate_anatomy import rotation_matrix

HERE = Path(__file__).resolve().parent

SUBJECTS = {
    "01": dict(shape=(56, 64, 48), voxel=(3.0, 3.0, 3.0), angles_deg=(0.0, 0.0), b0=3.0,
               tes=(0.004, 0.008, 0.012, 0.016), phase="rad", seed=1),
    "02": dict(shape=(64, 72, 48), voxel=(2.5, 2.5, 3.0), angles_deg=(20.0, 10.0), b0=7.0,
               tes=(0.003, 0.006, 0.009), phase="siemens", seed=2),
}  # fmt: skip


def oblique_affine(shape, voxel, angles_deg) -> np.ndarray:
    """Affine of a slab rotated by ``angles_deg`` about x then y, centred at the origin."""
    aff = np.eye(4)
    aff[:3, :3] = rotation_matrix((*angles_deg, 0.0)) @ np.diag(voxel)
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


def simulate_subject(cfg: dict, edit=None):
    """``(affine, b0_direction, phantom, signal)`` of one subject configuration (also used by
    the benchmarks): an (oblique) slab with B0 from its affine, SNR 100. ``edit``, if given,
    takes the head phantom and returns the one to simulate (e.g. with a lesion added)."""
    affine = oblique_affine(cfg["shape"], cfg["voxel"], cfg["angles_deg"])
    b0_dir = b0_direction_from_affine(affine)
    ph = simulate.make_head_phantom(cfg["shape"], voxel_size_mm=cfg["voxel"], rng=cfg["seed"])
    if edit is not None:
        ph = edit(ph)
    sig = simulate.simulate_gre(
        ph.chi_ppm, voxel_size_mm=cfg["voxel"], echo_times_s=cfg["tes"], b0_tesla=cfg["b0"],
        b0_direction=b0_dir, m0=ph.m0 * ph.head_mask,
        r2star_hz=simulate.r2star_at(ph.r2star_3t, cfg["b0"]),
        phase_offset_rad=simulate.phase_offset_map(cfg["shape"], rng=cfg["seed"]),
        snr=100.0, rng=cfg["seed"],
    )  # fmt: skip
    return affine, b0_dir, ph, sig


#: Default-atlas region -> simulator tissue (values in ``qsmprep.algorithms.simulate.TISSUES``);
#: the subthalamic nucleus takes the substantia nigra's iron-rich value.
ANATOMICAL_TISSUES = {
    "cortical_grey_matter": "grey_matter", "white_matter": "white_matter",
    "lateral_ventricle": "csf", "hippocampus": "grey_matter", "amygdala": "grey_matter",
    "thalamus": "thalamus", "caudate": "caudate", "putamen": "putamen",
    "nucleus_accumbens": "caudate", "GPe": "globus_pallidus", "GPi": "globus_pallidus",
    "substantia_nigra": "substantia_nigra", "subthalamic_nucleus": "substantia_nigra",
    "red_nucleus": "red_nucleus", "dentate_nucleus": "dentate_nucleus",
}  # fmt: skip


def simulate_anatomical_subject(cfg: dict):
    """An anatomically realistic subject from the MNI152NLin2009cAsym template and qsmprep's
    default atlas: the template is warped (rotation, shift and a smooth random displacement,
    so the registration has something to recover), resampled to ``cfg["voxel"]``, given
    known susceptibility per atlas region and tissue class, wrapped in CSF, skull, scalp and
    air, and simulated as multi-echo GRE (B0 from the possibly oblique affine).

    Returns ``(affine, b0_dir, phantom, sig, atlas, t1w)``; ``phantom.labels`` holds the
    true atlas labels in native space (ids above the atlas's are tissue classes) and ``t1w``
    is a T1-weighted head on the same grid (template intensities in the brain, dark CSF and
    skull, bright scalp).
    """
    from qsmprep.algorithms import simulate_anatomy as sa
    from qsmprep.algorithms.regions import split_hemisphere
    from qsmprep.data.atlases import build_default_atlas
    from qsmprep.data.templates import get_template

    tpl = nb.load(str(get_template().path))
    atlas = build_default_atlas()
    t1 = np.asanyarray(tpl.dataobj).astype(np.float32)
    labels = np.asanyarray(nb.load(str(atlas.path)).dataobj).astype(np.int16)
    lo = np.argwhere(t1 > 0).min(0) - 2
    hi = np.argwhere(t1 > 0).max(0) + 3
    t1 = t1[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    labels = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    crop = np.eye(4)
    crop[:3, 3] = lo
    voxel = np.asarray(cfg["voxel"], dtype=float)
    src_voxel = np.sqrt((tpl.affine[:3, :3] ** 2).sum(0))
    scale = voxel / src_voxel
    shape = tuple(int(n) for n in np.floor(np.array(t1.shape) / scale))
    coords = sa.smooth_random_warp(
        shape, voxel_size_mm=voxel, max_displacement_mm=cfg.get("warp_mm", 4.0),
        rotation_deg=cfg.get("rotation_deg", (0, 0, 0)),
        translation_mm=cfg.get("translation_mm", (0, 0, 0)), rng=cfg["seed"],
    )  # fmt: skip
    coords = coords * scale[:, None, None, None] + ((scale - 1) / 2)[:, None, None, None]
    t1w = sa.warp_image(t1, coords, order=1)
    labw = sa.warp_image(labels, coords, order=0)
    brain = sa.warp_image((t1 > 0).astype(np.float32), coords, order=1) > 0.5
    tissues = {k: ANATOMICAL_TISSUES[split_hemisphere(n)[0]] for k, n in atlas.labels.items()}
    phantom, pad = sa.make_anatomical_phantom(
        t1w * brain, brain, labw * brain, tissues, voxel_size_mm=voxel, pad_mm=20.0,
        rng=cfg["seed"],
    )  # fmt: skip
    zoom = np.diag([*scale, 1.0])
    zoom[:3, 3] = (scale - 1) / 2
    affine = sa.padded_affine(tpl.affine @ crop @ zoom, pad)
    tilt = np.eye(4)
    tilt[:3, :3] = rotation_matrix((*cfg.get("angles_deg", (0.0, 0.0)), 0.0))
    affine = tilt @ affine  # an oblique acquisition: the head is tilted in the scanner
    b0_dir = b0_direction_from_affine(affine)
    shape = phantom.chi_ppm.shape
    sig = simulate.simulate_gre(
        phantom.chi_ppm, voxel_size_mm=voxel, echo_times_s=cfg["tes"], b0_tesla=cfg["b0"],
        b0_direction=b0_dir, m0=phantom.m0 * phantom.head_mask,
        r2star_hz=simulate.r2star_at(phantom.r2star_3t, cfg["b0"]),
        phase_offset_rad=simulate.phase_offset_map(shape, rng=cfg["seed"]),
        snr=cfg.get("snr", 100.0), rng=cfg["seed"],
    )  # fmt: skip
    t1w = np.pad(t1w * brain, [(p, p) for p in pad])
    wm = float(np.median(t1w[phantom.brain_mask]))
    for cls, value in (("extracerebral_csf", 0.15), ("skull", 0.05), ("scalp", 1.3)):
        t1w[phantom.labels == phantom_class_id(phantom, cls)] = value * wm
    return affine, b0_dir, phantom, sig, atlas, t1w.astype(np.float32)


def write_t1w(dataset: Path, sub: str, t1w: np.ndarray, affine: np.ndarray, motion) -> None:
    """The subject's T1w, moved rigidly (``(degrees about z, shift mm)``) in the scanner."""
    move = np.eye(4)
    move[:3, :3] = rotation_matrix((0.0, 0.0, motion[0]))
    move[:3, 3] = motion[1]
    _save(t1w, move @ affine, dataset / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz",
          np.float32)


def phantom_class_id(phantom, name: str) -> int:
    """Label id of an extra tissue class (``simulate_anatomy.EXTRA_CLASSES``) in a phantom."""
    return next(k for k, v in phantom.label_names.items() if v == name)


def write_raw(root: Path, sub: str, affine, sig, cfg: dict) -> None:
    """Write one subject's multi-echo magnitude (int16) and phase (radians or Siemens-style
    integers, per ``cfg["phase"]``) with BIDS sidecars (also used by the benchmarks)."""
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


def make_subject(root: Path, sub: str, cfg: dict) -> None:
    """Simulate one subject and write raw data + ground truth."""
    affine, b0_dir, ph, sig = simulate_subject(cfg)
    write_raw(root, sub, affine, sig, cfg)
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
