"""The warm-up that the container image runs at build time compiles every cached kernel."""

import subprocess
import sys

import pytest

from qsmprep.algorithms import warmup

_CHECK = """
from qsmprep.algorithms import warmup
warmup.main()
kernels = warmup.cached_kernels()
print(len(kernels), sorted(name for name, k in kernels.items() if not k.signatures))
"""


def test_warmup_compiles_every_cached_numba_kernel():
    """Each cached numba kernel has machine code after one warm-up, so an image built with it
    never compiles at run time on the same CPU model. In a fresh process, so that kernels
    compiled by other tests do not count: a kernel that no warm-up stage runs fails here."""
    pytest.importorskip("numba")
    kernels = warmup.cached_kernels()
    assert len(kernels) >= 30  # _tv_numba's kernels and ROMEO's region growing
    assert "qsmprep.algorithms.romeo._grow" in kernels
    out = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True,
                         check=True).stdout.splitlines()  # fmt: skip
    assert out[0].startswith(f"qsmprep: {len(kernels)} numba kernels")
    assert out[1] == f"{len(kernels)} []"
