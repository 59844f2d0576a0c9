"""Speed and exactness of the spatial unwrappers on a 1 mm whole-brain simulation.

Usage::

    python benchmarks/unwrap_speed.py                 # 200 x 230 x 180, 1 mm, 4 echoes
    python benchmarks/unwrap_speed.py --shape 64 64 64 --voxel 3
    python benchmarks/unwrap_speed.py --extra-hz 3000 --snr 10   # a harder case

The head phantom at 3 T with a smooth receive-phase offset, SNR 20 (noise sd 5 % of the
maximum proton density per channel), echoes at 4, 8, 12, 16 ms. Exactness is the fraction
of brain voxels whose unwrapped phase has the true whole turn
(``round((u - phi0 - 2 pi f TE) / 2 pi)`` equal to its median), per echo; where the true
field steps by more than pi between neighbours (near the sinus at late echoes) no spatial
unwrapper can know the turn, so the table also gives the fraction of such voxels.
``--extra-hz`` adds a smooth non-harmonic field (peak to peak over the grid, Hz) for more
wraps than the phantom's own field gives. Times are
the median of ``--repeats`` runs (the first, numba compilation, is not timed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from qsmprep.algorithms import simulate
from qsmprep.algorithms.constants import GAMMA_BAR_HZ_PER_T, wrap_to_pi
from qsmprep.algorithms.romeo import unwrap_path, unwrap_romeo, unwrap_romeo_multiecho
from qsmprep.algorithms.unwrap import unwrap_laplacian

TES = (0.004, 0.008, 0.012, 0.016)


def _exact(unwrapped, truth, mask):
    turns = np.rint((unwrapped.astype(np.float64) - truth)[mask] / (2 * np.pi))
    return float(np.mean(turns == np.median(turns)))


def _undersampled(truth, mask):
    out = np.zeros(mask.shape, bool)
    for axis in range(3):
        step = np.abs(np.diff(truth, axis=axis)) >= np.pi
        both = np.delete(mask, -1, axis) & np.delete(mask, 0, axis) & step
        out |= np.pad(both, [(0, 1) if a == axis else (0, 0) for a in range(3)])
        out |= np.pad(both, [(1, 0) if a == axis else (0, 0) for a in range(3)])
    return float(np.mean(out[mask]))


def _timed(fn, repeats):
    fn()  # warm-up (numba compilation / caches)
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(200, 230, 180))
    parser.add_argument("--voxel", type=float, default=1.0)
    parser.add_argument("--snr", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra-hz", type=float, default=0.0)
    args = parser.parse_args(argv)
    shape, vox = tuple(args.shape), (args.voxel,) * 3
    t0 = time.perf_counter()
    phantom = simulate.make_head_phantom(shape, voxel_size_mm=vox)
    offset = simulate.phase_offset_map(shape, rng=1)
    sig = simulate.simulate_gre(
        phantom.chi_ppm, voxel_size_mm=vox, echo_times_s=TES, m0=phantom.m0,
        r2star_hz=phantom.r2star_3t, phase_offset_rad=offset, snr=args.snr, rng=3,
    )  # fmt: skip
    mask = phantom.brain_mask
    df = GAMMA_BAR_HZ_PER_T * sig.b0_tesla * 1e-6 * sig.total_field_ppm.astype(np.float64)
    if args.extra_hz:
        g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij", sparse=True)
        extra = 0.6 * g[0] + 0.4 * g[1] ** 2 - 0.5 * g[2] + 0.3 * np.sin(2 * g[0] * g[2])
        extra = extra / np.ptp(extra) * args.extra_hz
        df = df + extra
        sig.phase_rad = wrap_to_pi(
            sig.phase_rad + (2 * np.pi * extra[..., None] * np.array(TES)).astype(np.float32)
        ).astype(np.float32)
    truth = [offset + 2 * np.pi * df * te for te in TES]
    print(f"simulated {shape} at {vox[0]} mm, SNR {args.snr}, extra {args.extra_hz} Hz, "
          f"brain {mask.sum()} voxels, "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    phase, mag = sig.phase_rad, sig.magnitude
    single = {
        "laplacian": lambda e: unwrap_laplacian(phase[..., e], voxel_size_mm=vox, mask=mask),
        "romeo": lambda e: unwrap_romeo(
            phase[..., e], magnitude=mag[..., e], mask=mask, voxel_size_mm=vox,
            phase2_rad=phase[..., e + 1] if e + 1 < len(TES) else None,
            te_ratio=TES[e + 1] / TES[e] if e + 1 < len(TES) else None,
        ),
        "path": lambda e: unwrap_path(phase[..., e], mask=mask),
    }  # fmt: skip
    rows = []
    for name, fn in single.items():
        seconds, _ = _timed(lambda fn=fn: fn(0), args.repeats)
        exact = [_exact(fn(e), truth[e], mask) for e in range(len(TES))]
        rows.append((name, "per echo", seconds, exact))
    seconds, multi = _timed(
        lambda: unwrap_romeo_multiecho(
            phase, echo_times_s=TES, magnitude=mag, mask=mask, voxel_size_mm=vox
        ),
        args.repeats,
    )
    rows.append(("romeo multi-echo", "all 4 echoes", seconds,
                 [_exact(multi[..., e], truth[e], mask) for e in range(len(TES))]))  # fmt: skip
    under = [_undersampled(t, mask) for t in truth]
    header = " | ".join(f"echo {e + 1} ({1e3 * te:.0f} ms)" for e, te in enumerate(TES))
    print(f"\n| method | time for | median s | {header} |")
    print("|---|---|---|" + "---|" * len(TES))
    for name, what, seconds, exact in rows:
        cells = " | ".join(f"{100 * x:.3f} %" for x in exact)
        print(f"| {name} | {what} | {seconds:.2f} | {cells} |")
    cells = " | ".join(f"{100 * x:.3f} %" for x in under)
    print(f"| (voxels with a true step >= pi) | | | {cells} |")


if __name__ == "__main__":
    main()
