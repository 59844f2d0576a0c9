"""qsmprep.algorithms must stay free of I/O and pipeline libraries."""

import subprocess
import sys


def test_algorithms_import_no_io_libraries():
    code = (
        "import sys, pkgutil, importlib, qsmprep.algorithms as A\n"
        "for m in pkgutil.walk_packages(A.__path__, 'qsmprep.algorithms.'):\n"
        "    importlib.import_module(m.name)\n"
        "io = ('nipype', 'nibabel', 'bids', 'templateflow', 'nilearn')\n"
        "bad = [n for n in io if n in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
