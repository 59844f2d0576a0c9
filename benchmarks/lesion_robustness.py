"""Strong focal sources: a haemorrhage and a calcification through the default pipeline.

Clinical QSM meets sources far stronger than the deep grey nuclei: haemorrhages and
microbleeds (+0.5 to +2 ppm, with T2* so short that their magnitude is dark) and
calcifications (diamagnetic, -0.2 to -1 ppm, also dark). Their fields wrap within a few
millimetres and their signal void sits inside the brain mask. This script adds one such
lesion to qsmprep's simulated heads and runs the pipeline's stages
(``pipeline_accuracy.front_end``: magnitude mask, echo fit, Laplacian unwrapping or
``--unwrapping``; then single-step TV, the default, and RESHARP + TV) on the same data with
and without it.

Printed per case (NRMSE % as everywhere in docs/benchmarks.md; chi in ppm):

* ``in mask``: fraction of the lesion inside the magnitude mask;
* ``wraps``: brain voxels of the valid core whose estimated total field differs from the
  true one by more than half a wrap period (a residual 2 pi error of the front end);
* ``far NRMSE``: NRMSE in the core & brain farther than ``--far-mm`` (15 mm) from the lesion's
  edge, where the Chimap should be what it is without the lesion (the no-lesion run's figure
  on the same voxels is printed beside it);
* ``lesion chi``: the Chimap's median inside the lesion eroded by one voxel, against the
  truth (both referenced like the Chimap: the mean over the core & brain; "-" when the
  eroded lesion is empty or not all in the valid mask);
* ``moment ratio``: the lesion's susceptibility moment, the sum of referenced chi within two
  voxels of the lesion, over the truth's (1 = the source's strength recovered; for sources of
  a voxel or two, the measure microbleed studies use).

Usage::

    python benchmarks/lesion_robustness.py            # 3 mm example subject 01
    python benchmarks/lesion_robustness.py --large    # + the geometric 1 mm head
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from qsmprep.algorithms.background import remove_background
from qsmprep.algorithms.constants import hz_to_ppm
from qsmprep.algorithms.inversion import invert
from qsmprep.algorithms.inversion.single_step import single_step_tv
from qsmprep.algorithms.metrics import nrmse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bids_examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: name -> (chi ppm, proton density, R2* at 3 T in 1/s, radius mm)
LESIONS = {
    "haemorrhage": (1.5, 0.5, 150.0, 5.0),
    "microbleed": (2.0, 0.5, 200.0, 2.5),
    "calcification": (-0.6, 0.2, 100.0, 4.0),
    "severe-haemorrhage": (3.0, 0.5, 400.0, 4.0),
}


def simulate_case(cfg: dict, lesion: str | None):
    """``simulate_subject``'s head with ``lesion`` (or none) placed in the left deep white
    matter, lateral to the putamen."""
    import dataclasses

    from make_examples import simulate_subject

    region = None

    def add_lesion(ph):
        nonlocal region
        region = np.zeros(ph.brain_mask.shape, bool)
        if lesion is None:
            return ph
        value, pd, r2, radius = LESIONS[lesion]
        idx = np.argwhere(ph.brain_mask)
        lo, hi = idx.min(0), idx.max(0)
        centre = lo + (hi - lo) * np.array([0.22, 0.55, 0.55])
        parts = zip(np.indices(region.shape), centre, cfg["voxel"], strict=True)
        dist = np.sqrt(sum(((g - c) * v) ** 2 for g, c, v in parts))
        region = (dist <= radius) & ph.brain_mask
        chi, m0, r2s = ph.chi_ppm.copy(), ph.m0.copy(), ph.r2star_3t.copy()
        chi[region], m0[region], r2s[region] = value, pd, r2
        return dataclasses.replace(ph, chi_ppm=chi, m0=m0, r2star_3t=r2s)

    _, b0_dir, ph, sig = simulate_subject(cfg, edit=add_lesion)
    return dict(phase=sig.phase_rad, mag=sig.magnitude, tes=cfg["tes"], b0=cfg["b0"],
                vox=cfg["voxel"], b0_dir=b0_dir, brain=ph.brain_mask, lesion=region,
                truth=np.where(ph.brain_mask, ph.chi_ppm, 0).astype(np.float32),
                total_true_ppm=sig.total_field_ppm)  # fmt: skip


def run_case(case, unwrapping: str = "laplacian") -> dict:
    from pipeline_accuracy import front_end

    mask, total_hz = front_end(case, unwrapping=unwrapping)
    total = hz_to_ppm(total_hz, b0_tesla=case["b0"])
    vox, b0 = case["vox"], case["b0_dir"]
    chi_ss, core = single_step_tv(total, mask, voxel_size_mm=vox, b0_direction=b0)
    local, valid = remove_background("resharp", total, mask, voxel_size_mm=vox)
    chi_tv = invert("tv", local, valid, voxel_size_mm=vox, b0_direction=b0)
    period_ppm = hz_to_ppm(1.0 / float(np.diff(case["tes"]).min() if len(case["tes"]) > 1
                                       else case["tes"][0]), b0_tesla=case["b0"])  # fmt: skip
    err = total - case["total_true_ppm"]
    scored = core & case["brain"]
    err = err - np.median(err[scored])
    return dict(mask=mask, core=core, valid=valid, chi_ss=chi_ss, chi_tv=chi_tv,
                wraps=int((np.abs(err[scored]) > period_ppm / 2).sum()))  # fmt: skip


def _ref(chi, where):
    return chi - chi[where].mean()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--large", action="store_true", help="add the geometric 1 mm head")
    p.add_argument("--far-mm", type=float, default=15.0)
    p.add_argument("--lesions", nargs="+", default=list(LESIONS), choices=list(LESIONS))
    p.add_argument("--unwrapping", default="laplacian", help="the front end's --unwrapping")
    args = p.parse_args(argv)
    from make_examples import SUBJECTS

    cases = {"01 (3 mm)": SUBJECTS["01"]}
    if args.large:
        cases["geo-1mm"] = dict(shape=(160, 192, 160), voxel=(1.0, 1.0, 1.0),
                                angles_deg=(0, 0), b0=3.0, tes=(0.005, 0.010, 0.015, 0.020),
                                phase="siemens", seed=5)  # fmt: skip
    print("| case | lesion | in mask | wraps | method | far NRMSE % (no lesion) | "
          "lesion chi: median / truth | moment ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, cfg in cases.items():
        base_case = simulate_case(cfg, None)
        base = run_case(base_case, args.unwrapping)
        for lesion in args.lesions:
            case = simulate_case(cfg, lesion)
            res = run_case(case, args.unwrapping)
            region = case["lesion"]
            dist = ndimage.distance_transform_edt(~region, sampling=cfg["voxel"])
            inner = ndimage.binary_erosion(region)
            for method, key, where in (("single-step TV", "chi_ss", "core"),
                                       ("RESHARP + TV", "chi_tv", "valid")):  # fmt: skip
                scored = res[where] & base[where] & case["brain"]
                far = scored & (dist > args.far_mm)
                chi = _ref(res[key], res[where] & case["brain"])
                truth = _ref(case["truth"], res[where] & case["brain"])
                far_now = nrmse(res[key], case["truth"], far)
                far_base = nrmse(base[key], base_case["truth"], far)
                lesion_est = (f"{np.median(chi[inner]):+.2f} / {np.median(truth[inner]):+.2f}"
                              if inner.any() and res[where][inner].all() else "-")
                near = dist <= 2 * max(cfg["voxel"])
                moment = (f"{chi[near].sum() / truth[near].sum():.2f}"
                          if res[where][near].all() else "-")
                print(f"| {name} | {lesion} | {np.mean(res['mask'][region]):.2f} | "
                      f"{res['wraps']} | {method} | {far_now:.1f} ({far_base:.1f}) | "
                      f"{lesion_est} | {moment} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
