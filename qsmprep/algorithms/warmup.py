"""Compile every numba kernel of qsmprep once, so that later runs load them from numba's cache.

numba compiles a kernel the first time a process calls it, and with ``cache=True`` keeps the
machine code on disk: in ``NUMBA_CACHE_DIR`` when that is set and writable, else in the
``__pycache__`` folder beside the source, else in the user's cache folder. The first run in an
environment spends 8-14 s compiling (docs/benchmarks.md). The container image runs this
module at build time, with ``NUMBA_CACHE_DIR`` pointing into the image, so ``docker run``
starts warm. numba keys its cache by the CPU it compiled for: on a machine of another CPU
model the kernels compile again, once, into whichever cache folder is writable.

Usage::

    python -m qsmprep.algorithms.warmup

The kernels are compiled by running each stage that has one on a small simulated head
(32^3 voxels at 4 mm): every inversion, single-step TV, every background removal and ROMEO.
The array types are those of a full-size run, so the same machine code serves any grid.
"""

from __future__ import annotations

import time

import numpy as np


def cached_kernels() -> dict[str, object]:
    """Every numba dispatcher in qsmprep that caches its machine code, by qualified name
    (empty without numba)."""
    try:
        from numba.core.caching import NullCache
        from numba.core.registry import CPUDispatcher

        from qsmprep.algorithms import _kernels_numba, romeo
        from qsmprep.algorithms.inversion import _tv_numba
    except ImportError:
        return {}
    return {
        f"{module.__name__}.{name}": obj
        for module in (_tv_numba, _kernels_numba, romeo)
        for name, obj in vars(module).items()
        if isinstance(obj, CPUDispatcher) and not isinstance(obj._cache, NullCache)
    }


def compile_kernels() -> list[str]:
    """Run every stage that uses a numba kernel once on a small phantom; returns the names of
    the cached kernels (all of them compiled now, or loaded from the cache)."""
    from qsmprep.algorithms import simulate
    from qsmprep.algorithms.background import BFR_METHODS, remove_background
    from qsmprep.algorithms.constants import phase_rad_per_ppm
    from qsmprep.algorithms.inversion import (
        INVERSION_METHODS,
        USES_FIELD_NOISE,
        USES_MAGNITUDE,
        invert,
        single_step_tv,
    )
    from qsmprep.algorithms.kernels import forward_field
    from qsmprep.algorithms.romeo import unwrap_romeo, unwrap_romeo_multiecho

    vox = (4.0, 4.0, 4.0)
    ph = simulate.make_head_phantom((32, 32, 32), voxel_size_mm=vox, vein_count=1)
    brain = ph.brain_mask
    total = forward_field(ph.chi_ppm, voxel_size_mm=vox).astype(np.float32)
    local = forward_field(np.where(brain, ph.chi_ppm, 0), voxel_size_mm=vox).astype(np.float32)
    magnitude = np.where(ph.head_mask, 1.0, 0.05).astype(np.float32)
    for method in BFR_METHODS:
        remove_background(method, total, brain, voxel_size_mm=vox)
    single_step_tv(total, brain, voxel_size_mm=vox)
    for method in INVERSION_METHODS:
        params = {}
        if method in USES_MAGNITUDE:
            params["magnitude"] = magnitude
        if method in USES_FIELD_NOISE:
            params["noise_std"] = np.ones_like(magnitude)
        invert(method, local, brain, voxel_size_mm=vox, **params)
    tes = (0.004, 0.008, 0.012)  # s; wrapped phase of the total field (ppm) at 3 T
    per_ppm = np.array([phase_rad_per_ppm(b0_tesla=3.0, echo_time_s=te) for te in tes])
    phase = np.angle(np.exp(1j * total[..., None] * per_ppm)).astype(np.float32)
    mags = np.repeat(magnitude[..., None], len(tes), axis=-1)
    unwrap_romeo(phase[..., 0], magnitude=magnitude, mask=ph.head_mask, voxel_size_mm=vox)
    unwrap_romeo_multiecho(phase, echo_times_s=tes, magnitude=mags, mask=ph.head_mask,
                           voxel_size_mm=vox)  # fmt: skip
    return sorted(cached_kernels())


def main() -> int:
    start = time.perf_counter()
    names = compile_kernels()
    print(f"qsmprep: {len(names)} numba kernels compiled or loaded from the cache "
          f"in {time.perf_counter() - start:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":  # pragma: no cover - module entry point
    raise SystemExit(main())
