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


def test_malloc_tuning_is_applied_on_glibc_and_can_be_declined():
    # Freed FFT-sized arrays stay on the heap (glibc thresholds raised): on, unless the user
    # opted out or set glibc's own variables; never on another C library.
    import platform

    from qsmprep import _malloc

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert _malloc.tune({}) is glibc
    for off in ("0", "false", "OFF"):
        assert _malloc.tune({"QSMPREP_MALLOC_TUNING": off}) is False
    assert _malloc.tune({"MALLOC_MMAP_THRESHOLD_": "131072"}) is False
    assert _malloc.tune({"MALLOC_TRIM_THRESHOLD_": "131072"}) is False
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "QSMPREP_MALLOC"))}
    code = "import qsmprep; print(qsmprep.MALLOC_TUNED)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.strip() == str(glibc)
    env["QSMPREP_MALLOC_TUNING"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.strip() == "False"
