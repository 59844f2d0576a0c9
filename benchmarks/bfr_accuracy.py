"""Background field removal alone: local-field accuracy and speed of every ``--bfr`` method.

Usage::

    python benchmarks/bfr_accuracy.py                # geometric head phantom, 64^3 at 3 mm
    python benchmarks/bfr_accuracy.py --large        # + 1 mm geometric and anatomical heads
    python benchmarks/bfr_accuracy.py --config r8=resharp:radius_mm=8,lambda_reg=1e-4
    python benchmarks/bfr_accuracy.py --rim          # sources inside the mask, outside the brain

Input of each method: the phantom's total field (the dipole field of everything: brain, CSF,
skull, scalp, sinus and the air around the head), optionally plus white noise, and the true
brain mask. Truth: the field of the brain's susceptibility alone. Score, as in the QSM-CI
background-removal stage: demeaned NRMSE (%) of the local field in the method's valid mask.
``kept`` is the fraction of the brain in that mask; ``s`` the median time of ``--repeats``.

All methods are linear, so each error splits exactly into a *leak* (the method applied to the
background field alone: background left in) and a *distortion* (the method applied to the true
local field alone, minus that field: local field removed or reshaped). Both are printed in %
of the true local field's norm, demeaned in the same mask.

Cases:

* ``geo-3mm``: qsmprep's geometric head phantom, 64^3, 3 mm (the unit-test phantom);
* ``geo-1mm``: the same geometry, 164 x 205 x 205 at 1 mm (issue 4's speed size);
* ``anat-1mm``: the anatomical phantom (MNI template, default atlas; regional benchmark's
  subject 01), 189 x 226 x 199 at 1 mm. Building it needs the default atlas (cached).

``--completed`` scores RESHARP completed by the dipole model, an idea measured and not adopted
(docs/benchmarks.md): single-step TV is fitted to the total field and
``local = D chi + RESHARP(total - D chi)``, so RESHARP only removes the harmonic part of what
the fit missed. Printed beside plain RESHARP on the same cases.

``--rim`` runs another experiment, on the coarse example subjects (``01``: 3 mm; ``1p5T``:
2 x 2 x 2.5 mm) with the pipeline's magnitude mask, which takes in the CSF layer under the
skull. There the simulated partial volume of the skull puts strong diamagnetic sources inside
the mask but outside the brain. Each method runs on the total field as simulated and with those
sources removed (chi set to 0 in mask & not brain), and TV inverts its result: local-field
and Chimap NRMSE (%) in valid & brain.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from qsmprep.algorithms import simulate
from qsmprep.algorithms.background import BFR_METHODS, remove_background
from qsmprep.algorithms.kernels import forward_field

ROOT = Path(__file__).resolve().parents[1]


def _case(chi, brain, vox, b0) -> dict:
    chi = np.asarray(chi, np.float32)
    local = forward_field(np.where(brain, chi, 0), voxel_size_mm=vox, b0_direction=b0)
    background = forward_field(np.where(brain, 0, chi), voxel_size_mm=vox, b0_direction=b0)
    return dict(local=local.astype(np.float32), background=background.astype(np.float32),
                brain=brain, vox=vox, b0=b0)  # fmt: skip


def make_cases(large: bool):
    """Yield ``(name, case)``; ``case`` holds local and background fields on the whole grid."""
    ph = simulate.make_head_phantom((64, 64, 64), voxel_size_mm=(3.0, 3.0, 3.0))
    yield "geo-3mm", _case(ph.chi_ppm, ph.brain_mask, (3.0, 3.0, 3.0), (0.0, 0.0, 1.0))
    if not large:
        return
    ph = simulate.make_head_phantom((164, 205, 205), voxel_size_mm=(1.0, 1.0, 1.0), rng=1)
    yield "geo-1mm", _case(ph.chi_ppm, ph.brain_mask, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))
    sys.path.insert(0, str(ROOT / "bids_examples"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_examples import simulate_anatomical_subject
    from regional_accuracy import SUBJECTS

    _, b0, ph, *_ = simulate_anatomical_subject(dict(SUBJECTS["01"], voxel=(1.0, 1.0, 1.0)))
    yield "anat-1mm", _case(ph.chi_ppm, ph.brain_mask, (1.0, 1.0, 1.0), tuple(b0))


def _norm_demeaned(x: np.ndarray) -> float:
    return float(np.linalg.norm(x - x.mean()))


def evaluate(case: dict, method: str, params: dict, *, noise_ppm: float, repeats: int, rng):
    """Score one method on one case; returns a dict of the printed columns."""
    brain, vox, b0 = case["brain"], case["vox"], case["b0"]
    total = case["local"] + case["background"]
    if noise_ppm:
        total = total + rng.normal(0.0, noise_ppm, total.shape).astype(np.float32)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        local, valid = remove_background(method, total, brain, voxel_size_mm=vox,
                                         b0_direction=b0, **params)  # fmt: skip
        times.append(time.perf_counter() - t0)
    valid = valid & brain
    truth = case["local"][valid]
    scale = _norm_demeaned(truth)
    leak, _ = remove_background(method, case["background"], brain, voxel_size_mm=vox,
                                b0_direction=b0, **params)  # fmt: skip
    only, _ = remove_background(method, case["local"], brain, voxel_size_mm=vox,
                                b0_direction=b0, **params)  # fmt: skip
    return dict(
        nrmse=100 * _norm_demeaned(local[valid] - truth) / scale,
        leak=100 * _norm_demeaned(leak[valid]) / scale,
        distortion=100 * _norm_demeaned(only[valid] - truth) / scale,
        kept=valid.sum() / brain.sum(),
        seconds=statistics.median(times),
    )


def parse_config(text: str) -> tuple[str, str, dict]:
    """``LABEL=METHOD[:key=value,...]`` -> ``(label, method, params)`` (values as floats)."""
    label, _, spec = text.partition("=")
    method, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        number = float(value)
        params[key] = int(number) if number.is_integer() and key in ("peel", "max_iter") else number
    if method not in BFR_METHODS:
        raise SystemExit(f"--config {text!r}: unknown method {method!r}")
    return label, method, params


def rim_experiment(methods) -> None:
    """The ``--rim`` table (see the module docstring)."""
    sys.path.insert(0, str(ROOT / "bids_examples"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_examples import SUBJECTS, simulate_subject
    from pipeline_accuracy import SINGLE_ECHO_1P5T

    from qsmprep.algorithms.inversion import invert
    from qsmprep.algorithms.masking import mask_from_magnitude
    from qsmprep.algorithms.metrics import nrmse
    from qsmprep.algorithms.referencing import reference_chi

    print("case | field | method | local-field NRMSE % | Chimap NRMSE % (TV)")
    print("|---|---|---|---|---|")
    for name, cfg in (("01", SUBJECTS["01"]), ("1p5T", SINGLE_ECHO_1P5T)):
        _, b0, ph, sig = simulate_subject(cfg)
        vox, brain = cfg["voxel"], ph.brain_mask
        mask = mask_from_magnitude(sig.magnitude, voxel_size_mm=vox)
        rim = mask & ~brain
        print(f"<!-- {name}: {rim.sum()} mask voxels outside the brain, chi median "
              f"{np.median(ph.chi_ppm[rim]):.2f} ppm -->")  # fmt: skip
        local_true = forward_field(np.where(brain, ph.chi_ppm, 0), voxel_size_mm=vox,
                                   b0_direction=b0)  # fmt: skip
        for label, chi in (
            ("as simulated", ph.chi_ppm),
            ("rim sources removed", np.where(rim, 0, ph.chi_ppm)),
        ):
            total = forward_field(chi, voxel_size_mm=vox, b0_direction=b0)
            for method in methods:
                local, valid = remove_background(method, total, mask, voxel_size_mm=vox,
                                                 b0_direction=b0)  # fmt: skip
                est = reference_chi(invert("tv", local, valid, voxel_size_mm=vox,
                                           b0_direction=b0), valid)  # fmt: skip
                scored = valid & brain
                print(f"| {name} | {label} | {method} | {nrmse(local, local_true, scored):.1f} | "
                      f"{nrmse(est, ph.true_chi(), scored):.1f} |", flush=True)  # fmt: skip


def completed_experiment(large: bool) -> None:
    """The ``--completed`` table (see the module docstring)."""
    from qsmprep.algorithms.inversion.single_step import single_step_tv

    print("case | resharp NRMSE % | completed NRMSE % | kept")
    print("|---|---|---|---|")
    for name, case in make_cases(large):
        brain, vox, b0 = case["brain"], case["vox"], case["b0"]
        total = case["local"] + case["background"]
        chi, _ = single_step_tv(total, brain, voxel_size_mm=vox, b0_direction=b0)
        model = forward_field(chi, voxel_size_mm=vox, b0_direction=b0)
        scores = []
        for field, add in ((total, 0.0), (total - model, model)):
            local, valid = remove_background("resharp", field, brain, voxel_size_mm=vox)
            valid = valid & brain
            truth = case["local"][valid]
            err = (local + add)[valid] - truth
            scores.append(100 * _norm_demeaned(err) / _norm_demeaned(truth))
        print(f"| {name} | {scores[0]:.1f} | {scores[1]:.1f} | "
              f"{valid.sum() / brain.sum():.3f} |", flush=True)  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--large", action="store_true", help="add the two 1 mm heads")
    p.add_argument(
        "--noise-ppm",
        type=float,
        default=0.0,
        help="white noise added to the total field (default 0: the stage alone)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (median)")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="LABEL=METHOD[:k=v,...]",
        help="extra parameter settings to score beside the defaults",
    )
    p.add_argument("--methods", nargs="+", default=list(BFR_METHODS), choices=list(BFR_METHODS))
    p.add_argument("--rim", action="store_true", help="only the rim-source experiment")
    p.add_argument(
        "--completed",
        action="store_true",
        help="only RESHARP completed by a single-step dipole fit (not adopted)",
    )
    args = p.parse_args(argv)
    if args.rim:
        rim_experiment(args.methods)
        return 0
    if args.completed:
        completed_experiment(args.large)
        return 0
    configs = [(m, m, {}) for m in args.methods] + [parse_config(c) for c in args.config]
    rng = np.random.default_rng(0)
    print("case | method | NRMSE % | leak % | distortion % | kept | s (median)")
    print("|---|---|---|---|---|---|---|")
    for name, case in make_cases(args.large):
        for label, method, params in configs:
            r = evaluate(case, method, params, noise_ppm=args.noise_ppm, repeats=args.repeats,
                         rng=rng)  # fmt: skip
            cells = [name, label] + [f"{r[k]:.1f}" for k in ("nrmse", "leak", "distortion")]
            cells += [f"{r['kept']:.3f}", f"{r['seconds']:.2f}"]
            print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
