"""Process-wide settings made by ``import qsmprep``."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_idle_threads_sleep_unless_the_user_chose(given, expected):
    # Spinning OpenMP threads (numba kernels) steal the cores from the FFT threads between
    # calls; qsmprep asks them to sleep, but a user's own choice wins.
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, qsmprep; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.strip() == expected
