"""Whole-pipeline accuracy from raw phase, per background-removal x inversion choice.

Runs qsmprep.algorithms stage by stage (no Nipype) on simulated subjects from two
independent simulators and prints demeaned NRMSE (%) of the referenced Chimap against ground
truth inside truth-brain & the valid mask. Usage::

    python benchmarks/pipeline_accuracy.py [--bfr vsharp pdf ...] [--inversion tkd rts ...]
    python benchmarks/pipeline_accuracy.py --large --bfr resharp \
        --config vsharp-min6=vsharp:min_radius_mm=6 --inversion tv

``--large`` adds three 1 mm subjects: the geometric phantom on 160 x 192 x 160 (3 T, 4 echoes,
Siemens-style integer phase) and the two anatomical phantoms of
``benchmarks/regional_accuracy.py`` (189 x 226 x 199; they need the default atlas, cached).
``--config LABEL=METHOD[:key=value,...]`` adds a background-removal setting beside ``--bfr``.
``--rim-shell MM PPM`` adds sources of PPM filling the mask's outer MM outside the brain (what a
mask that takes in bone or dura brings), to test robustness. ``--slab MM`` keeps only an
axial slab of MM (third voxel axis) through the brain's centre before the front end, as a
partial-coverage acquisition would (the field still comes from the whole head).
``--masking magnitude phase-quality bet consensus`` runs each case once per masking method
(the pipeline's own dispatch; bet and consensus need ``brainextractor``) and prints each mask's
Dice with the true brain. ``--single-step-radii 3 4 5 6 8`` scans single-step TV's SMV radius.
``--single-step-config LABEL=key=value[,...]`` (repeatable) adds single-step TV with other
parameters (``lambda_factor`` multiplies the default per-jump lambda). ``--edge`` also scores
the brain outside the mask eroded by 6 mm, where the default Chimap is not written
(single-step TV's values there, referenced by its core's mean).
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qsmprep.algorithms import combine
from qsmprep.algorithms.background import erode_mask, remove_background
from qsmprep.algorithms.constants import hz_to_ppm, phase_rad_per_ppm, ppm_to_hz
from qsmprep.algorithms.inversion import USES_FIELD_NOISE, USES_MAGNITUDE, invert
from qsmprep.algorithms.inversion._common import per_jump_regularization
from qsmprep.algorithms.inversion.single_step import single_step_tv
from qsmprep.algorithms.kernels import forward_field
from qsmprep.algorithms.metrics import nrmse
from qsmprep.algorithms.referencing import reference_chi
from qsmprep.algorithms.unwrap import unwrap_field_hz

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bids_examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


#: A 1.5 T single-echo oblique subject of qsmprep's simulator, beside the bundled examples.
SINGLE_ECHO_1P5T = dict(shape=(64, 64, 52), voxel=(2.0, 2.0, 2.5), angles_deg=(0, 15), b0=1.5,
                        tes=(0.020,), phase="rad", seed=3)  # fmt: skip


def own_subjects():
    """Subjects from qsmprep's simulator: the example geometries plus a 1.5 T single echo."""
    from make_examples import SUBJECTS, simulate_subject

    cases = dict(SUBJECTS)
    cases["1p5T-single"] = SINGLE_ECHO_1P5T
    for name, cfg in cases.items():
        affine, b0_dir, ph, sig = simulate_subject(cfg)
        yield name, dict(phase=sig.phase_rad, mag=sig.magnitude, tes=cfg["tes"], b0=cfg["b0"],
                         vox=cfg["voxel"], b0_dir=b0_dir, truth=ph.true_chi(),
                         brain=ph.brain_mask)  # fmt: skip


def qsm_forward_subjects():
    """The `qsm-forward simple` phantom (an independent simulator), if installed."""
    import nibabel as nb

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "qsm_forward.main", "simple", tmp, "--resolution", "64",
               "64", "64", "--TEs", "0.004", "0.008", "0.012", "0.016", "--B0", "3",
               "--peak-snr", "100"]  # fmt: skip
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            return
        load = lambda p: np.asanyarray(nb.load(str(p)).dataobj).astype(np.float32)  # noqa: E731
        anat = Path(tmp) / "sub-1" / "anat"
        phase = np.stack(
            [load(anat / f"sub-1_echo-{e}_part-phase_MEGRE.nii") for e in range(1, 5)], -1
        )
        mag = np.stack([load(anat / f"sub-1_echo-{e}_part-mag_MEGRE.nii") for e in range(1, 5)], -1)
        gt = Path(tmp) / "derivatives" / "qsm-forward" / "sub-1" / "anat"
        brain = load(gt / "sub-1_mask.nii") > 0
        truth = load(gt / "sub-1_Chimap.nii")
    yield "qsm-forward", dict(phase=phase, mag=mag, tes=(0.004, 0.008, 0.012, 0.016), b0=3.0,
                              vox=(1.0, 1.0, 1.0), b0_dir=(0, 0, 1), truth=truth,
                              brain=brain)  # fmt: skip


def large_subjects():
    """1 mm subjects: the geometric phantom and the two anatomical phantoms."""
    from make_examples import simulate_anatomical_subject, simulate_subject
    from regional_accuracy import SUBJECTS as ANATOMICAL

    cfg = dict(shape=(160, 192, 160), voxel=(1.0, 1.0, 1.0), angles_deg=(0, 0), b0=3.0,
               tes=(0.005, 0.010, 0.015, 0.020), phase="siemens", seed=5)  # fmt: skip
    _, b0_dir, ph, sig = simulate_subject(cfg)
    yield "geo-1mm", dict(phase=sig.phase_rad, mag=sig.magnitude, tes=cfg["tes"], b0=3.0,
                          vox=cfg["voxel"], b0_dir=b0_dir, truth=ph.true_chi(),
                          brain=ph.brain_mask)  # fmt: skip
    for sub, sub_cfg in ANATOMICAL.items():
        cfg = dict(sub_cfg, voxel=(1.0, 1.0, 1.0))
        _, b0_dir, ph, sig, *_ = simulate_anatomical_subject(cfg)
        yield f"anat-{sub}", dict(phase=sig.phase_rad, mag=sig.magnitude, tes=cfg["tes"],
                                  b0=cfg["b0"], vox=cfg["voxel"], b0_dir=b0_dir,
                                  truth=ph.true_chi(), brain=ph.brain_mask)  # fmt: skip


def add_rim_sources(case, mask, total_hz, shell_mm: float, chi_ppm: float):
    """Add the field of ``chi_ppm`` sources filling the mask's outer ``shell_mm`` outside the
    brain (partial-volume bone or dura that a real mask takes in); returns the new total (Hz)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=case["vox"])
    shell = mask & (dist[1:-1, 1:-1, 1:-1] <= shell_mm) & ~case["brain"]
    extra = forward_field(np.where(shell, np.float32(chi_ppm), 0).astype(np.float32),
                          voxel_size_mm=case["vox"], b0_direction=case["b0_dir"])  # fmt: skip
    return total_hz + ppm_to_hz(extra, b0_tesla=case["b0"]) * mask


def crop_slab(case, thickness_mm: float) -> dict:
    """The case cut to a slab of ``thickness_mm`` along the third voxel axis, centred on the
    brain (phase, magnitude, truth and brain mask alike)."""
    z = np.flatnonzero(case["brain"].any(axis=(0, 1)))
    half = int(round(thickness_mm / case["vox"][2] / 2))
    sl = slice(max((z[0] + z[-1]) // 2 - half, 0), (z[0] + z[-1]) // 2 + half)
    return dict(case, phase=case["phase"][:, :, sl], mag=case["mag"][:, :, sl],
                truth=case["truth"][:, :, sl], brain=case["brain"][:, :, sl])  # fmt: skip


def front_end(case, erosions: int = 0, method: str = "magnitude",
              unwrapping: str = "laplacian"):  # fmt: skip
    """The pipeline's front end: ``--masking method``, the echo fit (guided by the closest
    pair's field for uneven echoes) and ``--unwrapping`` (default Laplacian)."""
    from qsmprep.interfaces.field import compute_mask

    mask = compute_mask(method, case["phase"], case["mag"], np.diag([*case["vox"], 1.0]),
                        echo_times_s=case["tes"], erosions=erosions)  # fmt: skip
    ref = combine.temporal_unwrap_guide(case["phase"], case["mag"], echo_times_s=case["tes"],
                                        mask=mask, voxel_size_mm=case["vox"],
                                        unwrapping=unwrapping)  # fmt: skip
    fit = combine.fit_field_linear(case["phase"], case["mag"], echo_times_s=case["tes"],
                                   mask=mask, guide_field_hz=ref)  # fmt: skip
    total = unwrap_field_hz(fit.field_hz, wrap_period_hz=fit.wrap_period_hz,
                            voxel_size_mm=case["vox"], mask=mask, method=unwrapping,
                            magnitude=case["mag"]) * mask  # fmt: skip
    return mask, total


def pipeline_params(inversion: str, case, mask, weights: str) -> dict:
    """What the pipeline gives a method besides the field (qsmprep/workflows/base.py and
    qsm.py): magnitude and phase scale for the nonlinear data terms, and for MEDI the echo
    fit's field noise as ``noise_std`` (``weights="noise"``, the pipeline's choice) or not
    (``"magnitude"``: W = the magnitude)."""
    params = {}
    if inversion in USES_MAGNITUDE:
        tes = case["tes"]
        params["magnitude"] = case["mag"]
        params["phase_scale_rad_per_ppm"] = phase_rad_per_ppm(
            b0_tesla=case["b0"], echo_time_s=sum(tes) / len(tes))
    if inversion in USES_FIELD_NOISE and weights == "noise":
        sd = combine.field_noise_std_hz(case["mag"], echo_times_s=case["tes"], mask=mask)
        params["noise_std"] = hz_to_ppm(sd, b0_tesla=case["b0"])
    return params


def parse_single_step_config(text: str) -> tuple[str, dict]:
    """``LABEL=key=value[,key=value...]`` -> ``(LABEL, {key: float(value)})``."""
    label, _, rest = text.partition("=")
    params = dict(item.split("=", 1) for item in rest.split(",") if item)
    return label, {key: float(value) for key, value in params.items()}


def radius_scan(case, mask, total, args) -> str:
    """Single-step TV with each SMV radius of ``--single-step-radii``: NRMSE % in its own
    core, in the core of the largest radius (the same voxels for all), and the fraction of
    the brain its core holds."""
    brain, radii = case["brain"], sorted(args.single_step_radii)
    fits = {r: single_step_tv(hz_to_ppm(total, b0_tesla=case["b0"]), mask, radius_mm=r,
                              voxel_size_mm=case["vox"], b0_direction=case["b0_dir"])
            for r in radii if r >= max(case["vox"])}  # fmt: skip
    common = fits[radii[-1]][1] & brain
    cells = []
    for r in radii:
        if r not in fits:
            cells.append(f"{r:g} mm: -")
            continue
        chi, core = fits[r]
        cells.append(f"{r:g} mm: {nrmse(chi, case['truth'], core & brain):.1f} / "
                     f"{nrmse(chi, case['truth'], common):.1f} / "
                     f"{(core & brain).sum() / brain.sum():.2f}")  # fmt: skip
    return " | ".join(cells)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bfr", nargs="*", default=["vsharp", "sharp", "resharp", "ismv", "pdf", "lbv"])
    p.add_argument("--inversion", nargs="+", default=["tkd", "tikhonov", "isqsm", "rts", "tv"])
    p.add_argument("--single-step-config", action="append", default=[],
                   metavar="LABEL=key=value[,key=value]",
                   help="also run single-step TV with these parameters (floats)")
    p.add_argument("--large", action="store_true", help="add the three 1 mm subjects")
    p.add_argument("--single-step", action="store_true",
                   help="add single-step TV from the total field (scored on RESHARP's voxels)")
    p.add_argument("--single-step-radii", nargs="+", type=float, metavar="MM",
                   help="single-step TV with each SMV radius: NRMSE in its own core / in the "
                   "largest radius's core / the brain fraction its core holds")
    p.add_argument("--edge", action="store_true",
                   help="also score the brain outside the mask eroded by 6 mm (the edge ring "
                   "where the default Chimap is not valid), and print the core's coverage")
    p.add_argument("--rim-shell", nargs=2, type=float, metavar=("MM", "PPM"),
                   help="add sources of PPM in the mask's outer MM outside the brain")  # fmt: skip
    p.add_argument("--slab", type=float, metavar="MM",
                   help="keep an axial slab of MM through the brain (partial coverage)")
    p.add_argument("--mask-erosions", type=int, default=0, metavar="N",
                   help="erode the magnitude mask by N voxels (the CLI's --mask-erosions)")
    p.add_argument("--masking", nargs="+", default=["magnitude"],
                   help="--masking method(s) of the front end (bet and consensus need "
                   "brainextractor); each case runs once per method")  # fmt: skip
    p.add_argument("--config", action="append", default=[], metavar="LABEL=METHOD[:k=v,...]",
                   help="a background-removal setting to score beside --bfr")  # fmt: skip
    p.add_argument("--medi-weights", choices=["noise", "magnitude"], default="noise",
                   help="MEDI's data weight: the echo fit's field noise (the pipeline's) or "
                   "the magnitude")  # fmt: skip
    args = p.parse_args(argv)
    from bfr_accuracy import parse_config

    settings = [(b, b, {}) for b in args.bfr] + [parse_config(c) for c in args.config]
    cases = list(own_subjects()) + list(qsm_forward_subjects())
    if args.large:
        cases += list(large_subjects())
    print("case | bfr | " + " | ".join(args.inversion) + " | (NRMSE %, time s)")
    for (case_name, case), masking_method in itertools.product(cases, args.masking):
        name = case_name if len(args.masking) == 1 else f"{case_name} [{masking_method}]"
        if args.slab:
            case = crop_slab(case, args.slab)
        t0 = time.perf_counter()
        mask, total = front_end(case, args.mask_erosions, masking_method)
        if len(args.masking) > 1:
            brain = case["brain"]
            print(f"{name} | mask: Dice {2 * (mask & brain).sum() / (mask.sum() + brain.sum()):.3f}"
                  f", {(mask & ~brain).sum()} voxels outside the brain, "
                  f"{(brain & ~mask).sum()} brain voxels left out ({time.perf_counter() - t0:.1f} s"
                  " front end)", flush=True)  # fmt: skip
        if args.rim_shell:
            total = add_rim_sources(case, mask, total, *args.rim_shell)
        if args.single_step:
            t0 = time.perf_counter()
            chi, core = single_step_tv(hz_to_ppm(total, b0_tesla=case["b0"]), mask,
                                       voxel_size_mm=case["vox"], b0_direction=case["b0_dir"])
            dt = time.perf_counter() - t0
            edge = ""
            if args.edge:  # the fit's values outside its valid core, referenced as inside
                ring = mask & case["brain"] & ~core
                full = np.where(mask, chi - chi[core].mean(), 0).astype(np.float32)
                edge = (f" | edge {nrmse(full, case['truth'], ring):6.1f}, core holds "
                        f"{(core & case['brain']).sum() / case['brain'].sum():.2f} of the brain; "
                        f"edge std truth / fit {1e3 * case['truth'][ring].std():.0f} / "
                        f"{1e3 * full[ring].std():.0f} ppb")  # fmt: skip
            chi = reference_chi(chi, core)  # core: the data region, RESHARP's valid mask
            score = nrmse(chi, case["truth"], core & case["brain"])
            print(f"{name} | single-step-tv | {score:6.1f} ({dt:4.1f}){edge}", flush=True)
        for label, params in map(parse_single_step_config, args.single_step_config):
            if "lambda_factor" in params:  # times the default per-jump lambda of this case
                params["regularization"] = params.pop("lambda_factor") * per_jump_regularization(
                    case["vox"])
            t0 = time.perf_counter()
            chi, core = single_step_tv(hz_to_ppm(total, b0_tesla=case["b0"]), mask,
                                       voxel_size_mm=case["vox"], b0_direction=case["b0_dir"],
                                       **params)  # fmt: skip
            dt = time.perf_counter() - t0
            score = nrmse(reference_chi(chi, core), case["truth"], core & case["brain"])
            print(f"{name} | single-step-tv {label} | {score:6.1f} ({dt:4.1f})", flush=True)
        if args.single_step_radii:
            scan = radius_scan(case, mask, total, args)
            print(f"{name} | single-step radii | {scan}", flush=True)
        for bfr, method, params in settings:
            local, valid = remove_background(method, total, mask, voxel_size_mm=case["vox"],
                                             b0_direction=case["b0_dir"], **params)  # fmt: skip
            local_ppm = hz_to_ppm(local, b0_tesla=case["b0"])
            evaluated = valid & case["brain"]
            row = []
            for inv in args.inversion:
                t0 = time.perf_counter()
                chi = invert(inv, local_ppm, valid, voxel_size_mm=case["vox"],
                             b0_direction=case["b0_dir"],
                             **pipeline_params(inv, case, mask, args.medi_weights))  # fmt: skip
                dt = time.perf_counter() - t0
                chi = reference_chi(chi, valid)
                cell = f"{nrmse(chi, case['truth'], evaluated):6.1f} ({dt:4.1f})"
                if args.edge:
                    core = erode_mask(mask, voxel_size_mm=case["vox"], radius_mm=6.0)
                    cell += f" edge {nrmse(chi, case['truth'], evaluated & ~core):6.1f}"
                row.append(cell)
            print(f"{name} | {bfr} | " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
