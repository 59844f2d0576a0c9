"""Echo-time schemes through the default front end and single-step TV.

The example subject 01 (3 mm, 3 T; qsmprep's simulator with its air, sinus and skull, so a
realistic background field) simulated with other echo times: uneven spacing, a long first
echo, two echoes, 7 T. The pipeline's stages as functions (``pipeline_accuracy.front_end``:
magnitude mask, echo fit, Laplacian unwrapping; then single-step TV). Printed: the 99th
percentile and maximum of |estimated - true total field| in the scored core (after removing
the median: a constant is harmonic), the mask's brain voxels lost, and the Chimap NRMSE (%)
in the core & brain. Usage::

    python benchmarks/echo_times.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bids_examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SCHEMES = {
    "uniform 4/8/12/16 ms": ((0.004, 0.008, 0.012, 0.016), 3.0),
    "uneven 3/7.5/15/25 ms": ((0.003, 0.0075, 0.015, 0.025), 3.0),
    "long first echo 10/20/30 ms": ((0.010, 0.020, 0.030), 3.0),
    "7 T uneven 2.5/6/11/17 ms": ((0.0025, 0.006, 0.011, 0.017), 7.0),
    "2 echoes 5/25 ms": ((0.005, 0.025), 3.0),
}


def main() -> int:
    from make_examples import SUBJECTS, simulate_subject
    from pipeline_accuracy import front_end

    from qsmprep.algorithms.constants import hz_to_ppm, ppm_to_hz
    from qsmprep.algorithms.inversion.single_step import single_step_tv
    from qsmprep.algorithms.kernels import forward_field
    from qsmprep.algorithms.metrics import nrmse

    print("| echo times | field error p99 / max (Hz) | brain voxels not in the mask | "
          "Chimap NRMSE % |")
    print("|---|---|---|---|")
    for label, (tes, b0) in SCHEMES.items():
        cfg = dict(SUBJECTS["01"], tes=tes, b0=b0)
        _, b0_dir, ph, sig = simulate_subject(cfg)
        case = dict(phase=sig.phase_rad, mag=sig.magnitude, tes=tes, b0=b0, vox=cfg["voxel"],
                    b0_dir=b0_dir, truth=ph.true_chi(), brain=ph.brain_mask)  # fmt: skip
        mask, total = front_end(case)
        true = ppm_to_hz(forward_field(ph.chi_ppm, voxel_size_mm=cfg["voxel"],
                                       b0_direction=b0_dir), b0_tesla=b0)  # fmt: skip
        chi, core = single_step_tv(hz_to_ppm(total, b0_tesla=b0), mask,
                                   voxel_size_mm=cfg["voxel"], b0_direction=b0_dir)  # fmt: skip
        scored = core & ph.brain_mask
        err = (total - true)[scored]
        err = np.abs(err - np.median(err))
        print(f"| {label} | {np.percentile(err, 99):.2f} / {err.max():.1f} | "
              f"{int((ph.brain_mask & ~mask).sum())} | "
              f"{nrmse(chi, ph.true_chi(), scored):.1f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
