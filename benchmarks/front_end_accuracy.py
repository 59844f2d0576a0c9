"""Front-end accuracy: brain-mask Dice per masking method and total-field NRMSE per
combination x unwrapping method, on qsmprep's simulator (the example geometries + a 1 mm case).

Usage: ``python benchmarks/front_end_accuracy.py [--large]``. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from qsmprep.algorithms import combine, combine_complex, masking
from qsmprep.algorithms.constants import ppm_to_hz
from qsmprep.algorithms.metrics import nrmse
from qsmprep.algorithms.unwrap import unwrap_field_hz

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bids_examples"))


def cases(large: bool):
    from make_examples import SUBJECTS, simulate_subject

    cfgs = dict(SUBJECTS)
    if large:
        cfgs["1mm"] = dict(shape=(160, 192, 160), voxel=(1.0, 1.0, 1.0), angles_deg=(0, 0),
                           b0=3.0, tes=(0.004, 0.008, 0.012, 0.016), seed=5)  # fmt: skip
    for name, cfg in cfgs.items():
        affine, _, ph, sig = simulate_subject(cfg)
        yield name, cfg, affine, ph, sig


def dice(a, b):
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def bet_mask(mag, affine):
    try:
        from qsmprep.interfaces.field import _bet
    except ImportError:
        return None
    try:
        return _bet(mag, affine)
    except ValueError:
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--large", action="store_true")
    args = p.parse_args(argv)
    print("| case | mask | Dice vs brain | Dice vs brain+CSF | s |\n|---|---|---|---|---|")
    fields = []
    for name, cfg, affine, ph, sig in cases(args.large):
        csf = ph.labels == (list(ph.label_names.values()).index("csf") + 1)
        target = ph.brain_mask | (csf & ph.head_mask)
        masks = {}
        for method in ("magnitude", "phase-quality", "bet", "consensus"):
            t0 = time.perf_counter()
            if method == "magnitude":
                m = masking.mask_from_magnitude(sig.magnitude, voxel_size_mm=cfg["voxel"])
            elif method == "phase-quality":
                m = masking.mask_from_phase_quality(sig.phase_rad, sig.magnitude,
                                                    echo_times_s=cfg["tes"])  # fmt: skip
            else:
                b = bet_mask(sig.magnitude, affine)
                if b is None:
                    continue
                m = (
                    b
                    if method == "bet"
                    else masking.consensus_mask(
                        b, sig.phase_rad, sig.magnitude, echo_times_s=cfg["tes"]
                    )
                )
            dt = time.perf_counter() - t0
            masks[method] = m
            print(f"| {name} | {method} | {dice(m, ph.brain_mask):.3f} | {dice(m, target):.3f} "
                  f"| {dt:.1f} |", flush=True)  # fmt: skip
        mask = masks["magnitude"]
        truth = ppm_to_hz(sig.total_field_ppm, b0_tesla=cfg["b0"])
        for comb in ("linear-fit", "nonlinear-fit"):
            if comb == "linear-fit":
                fit = combine.fit_field_linear(sig.phase_rad, sig.magnitude,
                                               echo_times_s=cfg["tes"], mask=mask)  # fmt: skip
            else:
                fit = combine_complex.fit_field_nonlinear(
                    sig.phase_rad, sig.magnitude, echo_times_s=cfg["tes"], mask=mask
                )
            for unwrap in ("laplacian", "romeo", "path"):
                t0 = time.perf_counter()
                total = unwrap_field_hz(fit.field_hz, wrap_period_hz=fit.wrap_period_hz,
                                        voxel_size_mm=cfg["voxel"], mask=mask, method=unwrap,
                                        magnitude=sig.magnitude)  # fmt: skip
                dt = time.perf_counter() - t0
                diff = (total - truth)[ph.brain_mask]
                diff -= fit.wrap_period_hz * np.round(np.median(diff) / fit.wrap_period_hz)
                exact = np.mean(np.abs(diff) < 0.1 * fit.wrap_period_hz)
                score = nrmse(total, truth, ph.brain_mask)
                fields.append(f"| {name} | {comb} | {unwrap} | {score:.2f} | {100 * exact:.2f} "
                              f"| {dt:.2f} |")  # fmt: skip
    print("\n| case | combination | unwrapping | total-field NRMSE % (brain) | "
          "exact turn % | unwrap s |\n|---|---|---|---|---|---|")  # fmt: skip
    print("\n".join(fields))


if __name__ == "__main__":
    main()
