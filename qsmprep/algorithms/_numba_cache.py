"""A writable cache folder for qsmprep's numba kernels, wherever qsmprep is installed.

numba keeps compiled kernels in ``NUMBA_CACHE_DIR`` when that is set, else in ``__pycache__``
beside the source file, else in the user's cache folder (``~/.cache/numba``), taking the
first that is writable. When none is (a read-only installation run with a read-only home,
as on some cluster compute nodes, or a read-only container image run as another user) it
refuses to define a cached kernel, and importing the module fails with "cannot cache
function ...: no locator available". qsmprep then points numba at a private folder in the
temporary directory instead: the kernels compile once per machine and user, and nothing
fails.
"""

from __future__ import annotations

import os
import tempfile


def _probe():  # pragma: no cover - never called; a function for numba's locators to place
    return None


def locator_classes() -> list:
    """numba's cache locators, in the order it tries them (``[]`` without numba, or with a
    numba whose internals differ: ``CacheImpl`` in current numba, ``_CacheImpl`` in older
    releases)."""
    try:
        from numba.core import caching
    except ImportError:
        return []
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    return list(getattr(impl, "_locator_classes", []))


def fallback_cache_dir(source_file: str) -> str | None:
    """``None`` when numba can cache kernels defined in ``source_file`` in one of its own
    locations; otherwise a private folder in the temporary directory (created, mode 700),
    or ``None`` when that cannot be created either (numba's own error then stands)."""
    locators = locator_classes()
    if not locators:
        return None
    for cls in locators:
        try:
            if cls.from_function(_probe, source_file) is not None:
                return None
        except Exception:  # noqa: BLE001 - a locator that cannot be probed: try the next
            continue
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    path = os.path.join(tempfile.gettempdir(), f"qsmprep-numba-{uid}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return path


def ensure_writable_cache(source_file: str) -> str | None:
    """Call before defining cached kernels in ``source_file``: if numba has no writable
    cache location, use :func:`fallback_cache_dir` (for this process and the processes it
    starts). Returns the folder chosen, or ``None`` when numba's own locations serve."""
    path = fallback_cache_dir(source_file)
    if path is not None:
        from numba.core import config

        config.CACHE_DIR = path
        os.environ["NUMBA_CACHE_DIR"] = path
    return path
