"""The whole product on an independent simulator: `qsm-forward simple` variants through the CLI.

Each variant is simulated by ``qsm-forward simple`` (PyPI, GPL; a test-only dependency, not
shipped) into a BIDS folder and run as a user would: ``qsmprep BIDS OUT participant
--no-regions [options]``. The Chimap is scored against qsm-forward's ground truth
(``derivatives/qsm-forward/sub-1/anat/sub-1_Chimap.nii``) inside its mask and qsmprep's
``desc-qsm_mask``: demeaned NRMSE (%) and the regression slope of the Chimap on the truth.

The variants change one thing each from a 64^3, 1 mm, 3 T, 4-echo acquisition (qsm-forward's
phase offset and second-order shim field are on in every variant, its defaults): field
strength, echo times, a tilted B0 (written by qsm-forward into the affine), anisotropic
voxels, noise, two echoes, a single echo. Usage::

    python benchmarks/qsm_forward_sweep.py WORKDIR [--variants base 7T ...] \
        [-- --inversion tv --bfr sharp]

Everything after ``--`` is passed to ``qsmprep``. Simulations are kept in WORKDIR and reused.

Not included: anisotropic voxels together with a tilted B0. For that combination qsm-forward
writes a sheared affine and resamples its ground truth through it, while its phase stays on
the unsheared grid: its own truth mask and magnitude then overlap with a Dice of 0.80, so no
method can be scored against it (qsmprep warns about the sheared affine).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BASE = {
    "resolution": ["64", "64", "64"],
    "voxel-size": ["1", "1", "1"],
    "TEs": ["0.004", "0.008", "0.012", "0.016"],
    "B0": ["3"],
    "peak-snr": ["100"],
}
CHANGES = {
    "base": {},
    "7T": {"B0": ["7"]},
    "1p5T-longTE": {"B0": ["1.5"], "TEs": ["0.008", "0.016", "0.024", "0.032"]},
    "tilt-15y": {"B0-dir": ["0.2588", "0", "0.9659"]},
    "tilt-21xy": {"B0-dir": ["0.2", "0.3", "0.933"]},
    "aniso-1x1x2": {"voxel-size": ["1", "1", "2"]},
    "snr30": {"peak-snr": ["30"]},
    "2echo": {"TEs": ["0.005", "0.010"]},
    "1echo": {"TEs": ["0.020"]},
    "uneven-TE": {"TEs": ["0.003", "0.0075", "0.015", "0.025"]},
    "7T-uneven-TE": {"B0": ["7"], "TEs": ["0.003", "0.0075", "0.015", "0.025"]},
}


def simulate(name: str, bids: Path) -> None:
    args = {**BASE, **CHANGES[name]}
    cmd = [sys.executable, "-m", "qsm_forward.main", "simple", str(bids)]
    for key, values in args.items():
        cmd += [f"--{key}", *values]
    subprocess.run(cmd, check=True, capture_output=True)


def score(bids: Path, out: Path) -> tuple[float, float, float]:
    import nibabel as nib

    from qsmprep.algorithms.metrics import nrmse

    def load(pattern: str, folder: Path) -> np.ndarray:
        return np.asanyarray(nib.load(next(folder.glob(pattern))).dataobj).astype(np.float64)

    truth_dir = bids / "derivatives" / "qsm-forward" / "sub-1" / "anat"
    chi = load("sub-1_Chimap.nii*", out / "sub-1" / "anat")
    valid = load("sub-1_desc-qsm_mask.nii*", out / "sub-1" / "anat") > 0
    truth = load("*_Chimap.nii*", truth_dir)
    brain = load("*_mask.nii*", truth_dir) > 0
    m = brain & valid
    x, y = truth[m] - truth[m].mean(), chi[m] - chi[m].mean()
    return nrmse(chi, truth, m), float(x @ y / (x @ x)), m.sum() / brain.sum()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("--variants", nargs="+", default=list(CHANGES), choices=list(CHANGES))
    p.add_argument("--tag", default="", help="suffix of the output folders (one per setting)")
    args = p.parse_args(argv)
    print(f"qsmprep options: {' '.join(extra) or '(defaults)'}")
    print("variant        NRMSE %  slope  kept  time s")
    for name in args.variants:
        case = args.workdir / name
        bids = case / "bids"
        if not bids.exists():
            simulate(name, bids)
        out, work = case / f"out{args.tag}", case / f"work{args.tag}"
        t0 = time.perf_counter()
        run = subprocess.run(["qsmprep", str(bids), str(out), "participant", "-w", str(work),
                              "--no-regions", *extra], capture_output=True, text=True)  # fmt: skip
        seconds = time.perf_counter() - t0
        if run.returncode:
            print(f"{name:14s} qsmprep failed: {run.stderr.strip().splitlines()[-1]}")
            continue
        err, slope, kept = score(bids, out)
        print(f"{name:14s} {err:7.1f}  {slope:5.2f}  {kept:4.2f}  {seconds:6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
