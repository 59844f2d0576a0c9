"""FFT engine comparison for the inversion grid: scipy.fft vs pyfftw (planned builders).

One r2c + c2r pair on the 1.5x-padded 5-smooth grid of a 164x205x205 image, float32.
Prints the median of ``--repeats`` runs per engine and the ratio to scipy.fft measured in the
same run. Usage: ``python benchmarks/fft_engines.py [--repeats 7] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.fft as sfft

from qsmprep.algorithms.fft import fast_shape


def median_time(fn, repeats):
    fn()  # warm-up (plans, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    shape = fast_shape((164, 205, 205), pad_factor=1.5)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    results = {}
    results["scipy.fft"] = median_time(
        lambda: sfft.irfftn(sfft.rfftn(x, workers=args.threads), s=shape, workers=args.threads),
        args.repeats,
    )
    try:
        import pyfftw

        a = pyfftw.empty_aligned(shape, dtype="float32")
        a[...] = x
        fwd = pyfftw.builders.rfftn(a, threads=args.threads, planner_effort="FFTW_MEASURE")
        spec = pyfftw.empty_aligned(fwd.output_shape, dtype="complex64")
        inv = pyfftw.builders.irfftn(spec, s=shape, threads=args.threads,
                                     planner_effort="FFTW_MEASURE")  # fmt: skip

        def pyfftw_pair():
            spec[...] = fwd(a)
            return inv(spec)

        results["pyfftw (FFTW_MEASURE)"] = median_time(pyfftw_pair, args.repeats)
    except ImportError:
        pass
    base = results["scipy.fft"]
    print(f"grid {shape} float32, r2c+c2r pair, {args.threads} threads, median of {args.repeats}")
    print("| engine | s per pair | ratio to scipy.fft |\n|---|---|---|")
    for name, t in results.items():
        print(f"| {name} | {t:.3f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
