"""A writable cache folder for qsmprep's numba kernels, wherever qsmprep is installed.

numba keeps compiled kernels in ``NUMBA_CACHE_DIR`` when that is set, else in ``__pycache__``
beside the source file, else in the user's cache folder (``~/.cache/numba``), taking the
first that is writable. When none is (a read-only installation run with a read-only home,
as on some cluster compute nodes, or a read-only container image run as another user) it
refuses to define a cached kernel, and importing the module fails with "cannot cache
function ...: no locator available". qsmprep then points numba at a private folder in the
temporary directory instead: the kernels compile once per machine and user, and nothing
fails.

A cache folder that was filled once and then made read-only (``NUMBA_CACHE_DIR`` of a container
image whose build compiled the kernels, run by Apptainer or as another user) is worse than
none: numba neither writes to it nor reads from it, and compiles every kernel again. Its files
are then copied into the private folder, so the kernels the image shipped load from there.
"""

from __future__ import annotations

import os
import shutil
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


def _writable(path: str) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def read_only_cache_dir() -> str | None:
    """``NUMBA_CACHE_DIR`` when it names an existing folder this process cannot write to."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured and os.path.isdir(configured) and not _writable(configured):
        return configured
    return None


def seed_cache(source: str, target: str) -> int:
    """Copy the files under ``source`` that ``target`` lacks, keeping the layout; returns how
    many were copied (unreadable files are skipped: numba then compiles those kernels)."""
    copied = 0
    for root, _dirs, files in os.walk(source):
        dest = os.path.join(target, os.path.relpath(root, source))
        for name in files:
            if os.path.exists(os.path.join(dest, name)):
                continue
            try:
                os.makedirs(dest, mode=0o700, exist_ok=True)
                shutil.copy2(os.path.join(root, name), os.path.join(dest, name))
            except OSError:
                continue
            copied += 1
    return copied


def fallback_cache_dir(source_file: str) -> str | None:
    """``None`` when numba can cache kernels defined in ``source_file`` in one of its own
    locations; otherwise a private folder in the temporary directory (created, mode 700),
    or ``None`` when that cannot be created either (numba's own error then stands).

    A read-only ``NUMBA_CACHE_DIR`` (:func:`read_only_cache_dir`) always gets the private
    folder, seeded with its files (:func:`seed_cache`), even where numba could compile into
    the user's cache folder instead."""
    locators = locator_classes()
    if not locators:
        return None
    shipped = read_only_cache_dir()
    if shipped is None:
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
    if shipped is not None:
        seed_cache(shipped, path)
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
