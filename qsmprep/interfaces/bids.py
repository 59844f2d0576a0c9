"""BIDS input gateway: find the phase/magnitude echoes of each QSM acquisition with pybids.

Everything qsmprep reads from the raw dataset passes through :func:`collect_acquisitions`, which
returns one :class:`Acquisition` per (subject, session, acquisition, run) with its echoes sorted
by the sidecar ``EchoTime`` (never by file name: ``echo-10`` sorts before ``echo-2``), the field
strength and the phase units. Problems are reported as :class:`BIDSInputError` with one line that
names the file(s) concerned.

Supported raw data (BIDS 1.10, ``anat/``)::

    sub-<l>[_ses-<l>][_acq-<l>][_run-<i>]_echo-<i>_part-<phase|mag>_MEGRE.nii[.gz]
    sub-<l>[_ses-<l>][_acq-<l>][_run-<i>]_part-<phase|mag>_T2starw.nii[.gz]   (single echo)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qsmprep.config import normalize_labels

__all__ = [
    "SUFFIXES",
    "Acquisition",
    "BIDSInputError",
    "check_acquisition_advice",
    "collect_acquisitions",
    "list_subjects",
    "load_bids_filter",
    "validate_dataset_layout",
]

#: BIDS suffixes of the phase data qsmprep processes.
SUFFIXES: tuple[str, ...] = ("MEGRE", "T2starw")
#: Keys of a ``--bids-filter-file`` and the suffix each one filters.
FILTER_KEYS: dict[str, str] = {suffix.lower(): suffix for suffix in SUFFIXES}

_NIFTI_EXTENSIONS = [".nii", ".nii.gz"]
_ENTITY_ALIASES = {
    "sub": "subject",
    "ses": "session",
    "acq": "acquisition",
    "rec": "reconstruction",
    "ce": "ceagent",
}
_RESERVED_FILTER_ENTITIES = ("part", "suffix", "extension")
#: An ``EchoTime`` above this (in seconds) is almost surely given in milliseconds.
_MAX_ECHO_TIME_S = 1.0
_ECHO_TIME_TOL_S = 1e-6
_AFFINE_TOL_MM = 1e-3
_CONSENSUS = "the 2024 QSM consensus (doi:10.1002/mrm.30006) recommends"


class BIDSInputError(ValueError):
    """The BIDS input cannot be processed; the message names the file(s) concerned."""


@dataclass(frozen=True, kw_only=True)
class Acquisition:
    """The echoes of one QSM acquisition (phase, optional magnitude) and their metadata.

    Parameters
    ----------
    subject, session, acq, run : str or None
        BIDS labels without prefixes (``session``, ``acq``, ``run`` may be None).
    suffix : {'MEGRE', 'T2starw'}
    phase_files : tuple of str
        Absolute paths of the phase images, sorted by echo time.
    magnitude_files : tuple of str
        Magnitude images in the same order, or empty for phase-only data.
    echo_times_s : tuple of float
        Echo times in seconds, increasing.
    b0_tesla : float
        Main field strength in tesla.
    phase_units : str or None
        Sidecar ``Units`` of the phase (``'rad'``, ``'arbitrary'``, ...).
    b0_from_cli : bool
        True when ``b0_tesla`` came from ``--b0-tesla`` rather than a sidecar.
    shape : tuple of int or None
        Image shape (the same for every echo and part).
    voxel_size_mm : tuple of float or None
        Voxel size in mm (NIfTI ``pixdim``).
    t1w_file : str or None
        A T1-weighted image of the same subject and session (``anat/*_T1w.nii[.gz]``), the
        intermediate of the template registration when present.
    axis_skew_deg : float
        Largest departure of the voxel axes from perpendicular, in degrees
        (:func:`qsmprep.algorithms.kernels.axis_skew_degrees`); 0 for scanner data.
    real_files, imag_files : tuple of str
        For data stored as real and imaginary parts (``part-real``/``part-imag``), the raw
        files in echo order. ``phase_files`` and ``magnitude_files`` are then empty until
        :func:`qsmprep.interfaces.complex_parts.polar_acquisition` has written the phase and
        magnitude computed from them.
    notes : tuple of str
        What the input conversion changed (e.g. slice chopping undone), reported with the
        acquisition's warnings.
    """

    subject: str
    session: str | None = None
    acq: str | None = None
    run: str | None = None
    suffix: str = "MEGRE"
    phase_files: tuple[str, ...] = ()
    magnitude_files: tuple[str, ...] = ()
    echo_times_s: tuple[float, ...]
    b0_tesla: float
    phase_units: str | None = None
    b0_from_cli: bool = False
    shape: tuple[int, ...] | None = None
    voxel_size_mm: tuple[float, ...] | None = None
    t1w_file: str | None = None
    axis_skew_deg: float = 0.0
    real_files: tuple[str, ...] = ()
    imag_files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.suffix not in SUFFIXES:
            raise ValueError(f"suffix must be one of {', '.join(SUFFIXES)}; got {self.suffix!r}")
        if len(self.real_files) != len(self.imag_files):
            raise ValueError(f"{self.name}: {len(self.real_files)} real part file(s) for "
                             f"{len(self.imag_files)} imaginary part file(s)")  # fmt: skip
        phase_like = self.phase_files or self.real_files
        if not phase_like or len(phase_like) != len(self.echo_times_s):
            raise ValueError(
                f"{self.name}: {len(phase_like)} phase file(s) for "
                f"{len(self.echo_times_s)} echo time(s)"
            )
        if self.phase_files and self.real_files and len(self.phase_files) != len(self.real_files):
            raise ValueError(f"{self.name}: {len(self.phase_files)} phase file(s) for "
                             f"{len(self.real_files)} real part file(s)")  # fmt: skip
        if self.magnitude_files and len(self.magnitude_files) != len(self.phase_files):
            raise ValueError(
                f"{self.name}: {len(self.magnitude_files)} magnitude file(s) for "
                f"{len(self.phase_files)} phase file(s)"
            )

    @property
    def entities(self) -> dict[str, str]:
        """pybids entities of this acquisition (only those present)."""
        values = {
            "subject": self.subject,
            "session": self.session,
            "acquisition": self.acq,
            "run": self.run,
        }
        return {key: value for key, value in values.items() if value is not None}

    @property
    def name(self) -> str:
        """BIDS entity prefix, e.g. ``'sub-01_ses-1_acq-x_run-1'``."""
        keys = (("sub", self.subject), ("ses", self.session), ("acq", self.acq), ("run", self.run))
        return "_".join(f"{key}-{value}" for key, value in keys if value is not None)

    @property
    def n_echoes(self) -> int:
        """Number of echoes."""
        return len(self.echo_times_s)

    @property
    def has_magnitude(self) -> bool:
        """Whether magnitude images are available (or computable from complex parts)."""
        return bool(self.magnitude_files or self.real_files)

    @property
    def from_complex_parts(self) -> bool:
        """Whether the raw data are real and imaginary parts (``part-real``/``part-imag``)."""
        return bool(self.real_files)

    @property
    def raw_files(self) -> tuple[str, ...]:
        """The raw BIDS files of the acquisition: real and imaginary parts, or phase and
        magnitude (what the derivatives' ``Sources`` name)."""
        if self.real_files:
            return self.real_files + self.imag_files
        return self.phase_files + self.magnitude_files


# -- dataset-level checks -----------------------------------------------------------------------
def validate_dataset_layout(bids_dir: str | os.PathLike[str]) -> None:
    """Check that ``bids_dir`` is a folder with a readable ``dataset_description.json``.

    Raises
    ------
    BIDSInputError
    """
    root = Path(bids_dir)
    if not root.is_dir():
        raise BIDSInputError(f"BIDS dataset folder not found: {root}")
    description = root / "dataset_description.json"
    if not description.is_file():
        raise BIDSInputError(f"{root} is not a BIDS dataset: it has no dataset_description.json")
    try:
        content = json.loads(description.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BIDSInputError(f"cannot read {description}: {err}") from err
    if not isinstance(content, dict):
        raise BIDSInputError(f"{description} must hold a JSON object")


def load_bids_filter(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read and check a ``--bids-filter-file`` (JSON, as in fMRIPrep).

    Keys are data types (``megre``, ``t2starw``); values map pybids entities to a value, a list
    of values, ``null`` (entity absent) or ``"*"`` (entity present with any value).

    Raises
    ------
    BIDSInputError
        If the file is missing, not JSON, or not of that form.
    """
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BIDSInputError(f"cannot read the BIDS filter file {path}: {err}") from err
    try:
        _normalize_filter(content)
    except BIDSInputError as err:
        raise BIDSInputError(f"{path}: {err}") from err
    return content


def _normalize_filter(bids_filter: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Map filter keys to suffixes and entity aliases to pybids names; check the form."""
    if bids_filter is None:
        return {}
    if not isinstance(bids_filter, Mapping):
        raise BIDSInputError('the BIDS filter must be a JSON object such as {"megre": {...}}')
    out: dict[str, dict[str, Any]] = {}
    for key, query in bids_filter.items():
        suffix = FILTER_KEYS.get(str(key).lower())
        if suffix is None:
            raise BIDSInputError(
                f"unknown BIDS filter key {key!r}; expected one of {', '.join(FILTER_KEYS)}"
            )
        if not isinstance(query, Mapping):
            raise BIDSInputError(f"BIDS filter {key!r} must map entities to values")
        entities = {_ENTITY_ALIASES.get(name, name): value for name, value in query.items()}
        reserved = sorted(set(entities) & set(_RESERVED_FILTER_ENTITIES))
        if reserved:
            raise BIDSInputError(
                f"BIDS filter {key!r} may not set {', '.join(reserved)} (qsmprep selects those)"
            )
        out[suffix] = entities
    return out


def _available_subjects(root: Path) -> list[str]:
    return sorted(p.name[4:] for p in root.glob("sub-*") if p.is_dir())


def _subjects_with_phase(root: Path) -> list[str]:
    found = set()
    for pattern in ("sub-*/anat/*_part-phase_*", "sub-*/ses-*/anat/*_part-phase_*",
                    "sub-*/anat/*_part-real_*", "sub-*/ses-*/anat/*_part-real_*"):
        for path in root.glob(pattern):
            if any(path.name.endswith(f"_{s}{e}") for s in SUFFIXES for e in _NIFTI_EXTENSIONS):
                found.add(path.relative_to(root).parts[0][4:])
    return sorted(found)


def list_subjects(
    bids_dir: str | os.PathLike[str], *, participant_label: Iterable[str] | str = ()
) -> list[str]:
    """Participants to process, without the ``sub-`` prefix.

    Parameters
    ----------
    bids_dir : path-like
        Root of the raw BIDS dataset.
    participant_label : iterable of str
        Labels asked for, with or without ``sub-``.

    Returns
    -------
    list of str
        The labels asked for (each checked to exist), or else every participant with a
        ``part-phase`` MEGRE or T2starw image in ``anat/``.

    Raises
    ------
    BIDSInputError
        If the dataset is invalid or a label asked for is not in it.
    """
    root = Path(bids_dir).absolute()
    validate_dataset_layout(root)
    subjects = _as_labels(participant_label, "sub-", "participant_label")
    _check_participants(root, subjects)
    return list(subjects) if subjects else _subjects_with_phase(root)


def _check_participants(root: Path, subjects: tuple[str, ...]) -> None:
    available = _available_subjects(root)
    missing = [label for label in subjects if label not in available]
    if missing:
        shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
        raise BIDSInputError(
            f"participant label(s) {', '.join(missing)} not found in {root} "
            f"(available: {shown or 'none'})"
        )


# -- layout and queries -------------------------------------------------------------------------
def _init_layout(root: Path, subjects: tuple[str, ...]) -> Any:
    """Index only the ``anat/`` folders (of the selected subjects) of the raw dataset."""
    from bids import BIDSLayout, BIDSLayoutIndexer

    ignore = [
        re.compile(r"^/(code|derivatives|models|sourcedata|stimuli)(/|$)"),
        # every datatype folder but anat/ (file names contain a dot, folder names do not)
        re.compile(r"^/sub-[^/]+/(ses-[^/]+/)?(?!(anat|ses-[^/]*)(/|$))[^/.]+(/|$)"),
    ]
    if subjects:
        ignore.append(re.compile(rf"^/sub-(?!({'|'.join(subjects)})(/|$))[^/]+"))
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore)
    try:
        return BIDSLayout(root, validate=False, derivatives=False, indexer=indexer)
    except (OSError, ValueError) as err:  # e.g. an unreadable JSON sidecar
        raise BIDSInputError(f"pybids could not index {root}: {err}") from err


def _query(
    suffix: str,
    subjects: tuple[str, ...],
    sessions: tuple[str, ...],
    entities: Mapping[str, Any],
) -> dict[str, Any]:
    from bids.layout import Query

    special = {None: Query.NONE, "*": Query.ANY}
    query = {
        name: special.get(value, value) if isinstance(value, (str, type(None))) else value
        for name, value in entities.items()
    }
    query.update(datatype="anat", suffix=suffix, extension=_NIFTI_EXTENSIONS)
    if subjects:
        query["subject"] = list(subjects)
    if sessions:
        query["session"] = list(sessions)
    return query


def _group_key(bids_file: Any) -> tuple[str | None, ...]:
    entities = bids_file.get_entities(metadata=False)
    return tuple(
        None if entities.get(name) is None else str(entities[name])
        for name in ("subject", "session", "acquisition", "run")
    )


def _group(files: Iterable[Any]) -> dict[tuple[str | None, ...], list[Any]]:
    groups: dict[tuple[str | None, ...], list[Any]] = defaultdict(list)
    for bids_file in sorted(files, key=lambda f: f.path):
        groups[_group_key(bids_file)].append(bids_file)
    return groups


# -- one acquisition ----------------------------------------------------------------------------
def _rel(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _echo_entity(bids_file: Any, suffix: str, root: Path) -> str | None:
    echo = bids_file.get_entities(metadata=False).get("echo")
    if echo is None and suffix == "MEGRE":
        raise BIDSInputError(
            f"{_rel(bids_file.path, root)} lacks the echo-<index> entity "
            "that BIDS requires for MEGRE"
        )
    return None if echo is None else str(echo)


def _by_echo(files: list[Any], suffix: str, root: Path) -> dict[str | None, Any]:
    # A lone MEGRE image without echo-<index> (qsm-forward and some converters write a single
    # echo so) is read as one echo; check_acquisition_advice then says it is not valid BIDS.
    if len(files) == 1 and files[0].get_entities(metadata=False).get("echo") is None:
        return {None: files[0]}
    out: dict[str | None, Any] = {}
    for bids_file in files:
        echo = _echo_entity(bids_file, suffix, root)
        if echo in out:
            raise BIDSInputError(
                f"two files for the same echo: {_rel(out[echo].path, root)} and "
                f"{_rel(bids_file.path, root)} (select one with --bids-filter-file)"
            )
        out[echo] = bids_file
    return out


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The BIDS JSON sidecar beside a NIfTI file: ``X.nii.gz`` (or ``X.nii``) -> ``X.json``."""
    path = Path(path)
    for ext in (".nii.gz", ".nii"):
        if path.name.endswith(ext):
            return path.with_name(path.name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


def _sidecar_name(path: str, root: Path) -> str:
    return _rel(str(sidecar_path(path)), root)


def _echo_time_s(metadata: Mapping[str, Any], path: str, root: Path) -> float:
    value = metadata.get("EchoTime")
    if value is None:
        raise BIDSInputError(
            f"EchoTime missing for {_rel(path, root)} (add it, in seconds, to "
            f"{_sidecar_name(path, root)})"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise BIDSInputError(
            f"EchoTime of {_rel(path, root)} must be a positive number of seconds; got {value!r}"
        )
    if value > _MAX_ECHO_TIME_S:
        raise BIDSInputError(
            f"EchoTime {value} of {_rel(path, root)} looks like milliseconds; BIDS requires "
            f"seconds (e.g. {value / 1000:g}) in {_sidecar_name(path, root)}"
        )
    return float(value)


def _check_unique_echo_times(echo_times_s: list[float], paths: list[str], root: Path) -> None:
    for i in range(1, len(echo_times_s)):
        if echo_times_s[i] - echo_times_s[i - 1] < _ECHO_TIME_TOL_S:
            raise BIDSInputError(
                f"duplicate EchoTime {echo_times_s[i]} s in {_rel(paths[i - 1], root)} and "
                f"{_rel(paths[i], root)}"
            )


def _pair_magnitudes(
    phases: dict[str | None, Any], mags: list[Any], suffix: str, root: Path,
    parts: tuple[str, str] = ("phase", "mag"),
) -> dict[str | None, Any]:  # fmt: skip
    """The second part's image of each echo of the first (``parts``: phase and optional
    magnitude, or real and its required imaginary part)."""
    first, second = parts
    if not mags and second == "mag":
        return {}
    by_echo = _by_echo(mags, suffix, root) if mags else {}
    if len(by_echo) != len(phases):
        shown = _rel(next(iter(phases.values())).path, root)
        need = "" if second == "imag" else ", or none"
        words = {"phase": "phase", "mag": "magnitude", "real": "real part",
                 "imag": "imaginary part"}  # fmt: skip
        raise BIDSInputError(
            f"{len(by_echo)} {words[second]} image(s) for {len(phases)} {words[first]} "
            f"image(s) next to {shown} (need one part-{second} per part-{first} echo{need})"
        )
    for echo, phase in phases.items():
        if echo not in by_echo:
            raise BIDSInputError(
                f"no part-{second} image with the echo of {_rel(phase.path, root)}"
            )
    return by_echo


def _check_magnitude_echo_time(layout: Any, mag_path: str, echo_time_s: float, root: Path) -> None:
    value = layout.get_metadata(mag_path).get("EchoTime")
    if isinstance(value, (int, float)) and abs(value - echo_time_s) > _ECHO_TIME_TOL_S:
        raise BIDSInputError(
            f"EchoTime {value} of {_rel(mag_path, root)} differs from {echo_time_s} of its "
            "phase image"
        )


def _image_grid(path: str) -> tuple[tuple[int, ...], Any, tuple[float, ...]]:
    import nibabel as nib

    img = nib.load(path)  # header only: the data are not read
    zooms = tuple(float(z) for z in img.header.get_zooms())
    return tuple(int(n) for n in img.shape), img.affine, zooms


def _check_grids(paths: list[str], root: Path) -> tuple[tuple[int, ...], tuple[float, ...], float]:
    """Check that all images are 3D on one grid; return the shape, voxel size (mm) and the
    axes' skew (degrees)."""
    import numpy as np

    from qsmprep.algorithms.kernels import axis_skew_degrees

    shape0, affine0, zooms0 = _image_grid(paths[0])
    if len(shape0) < 3 or any(n != 1 for n in shape0[3:]):
        raise BIDSInputError(f"{_rel(paths[0], root)} is not a 3D image (shape {shape0})")
    for path in paths[1:]:
        shape, affine, _ = _image_grid(path)
        if shape != shape0:
            raise BIDSInputError(
                f"image shapes differ: {_rel(paths[0], root)} is {shape0}, "
                f"{_rel(path, root)} is {shape}"
            )
        if not np.allclose(affine, affine0, atol=_AFFINE_TOL_MM):
            raise BIDSInputError(
                f"image grids (affines) differ: {_rel(paths[0], root)} and {_rel(path, root)}"
            )
    return shape0[:3], zooms0[:3], axis_skew_degrees(affine0)


def _field_strength(
    metadata: Mapping[str, Any], path: str, b0_tesla: float | None, root: Path
) -> tuple[float, bool]:
    value = metadata.get("MagneticFieldStrength")
    if value is None:
        if b0_tesla is None:
            raise BIDSInputError(
                f"MagneticFieldStrength missing for {_rel(path, root)} (add it to "
                f"{_sidecar_name(path, root)} or pass --b0-tesla)"
            )
        return float(b0_tesla), True
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise BIDSInputError(
            f"MagneticFieldStrength of {_rel(path, root)} must be a positive number of tesla; "
            f"got {value!r}"
        )
    return float(value), False


def _phase_units(metadata: list[Mapping[str, Any]], paths: list[str], root: Path) -> str | None:
    units = [meta.get("Units") for meta in metadata]
    if any(unit != units[0] for unit in units):
        raise BIDSInputError(
            f"phase Units differ between echoes ({', '.join(map(str, units))}) of "
            f"{_rel(paths[0], root)} and others"
        )
    return units[0]


def _build_acquisition(
    layout: Any,
    key: tuple[str | None, ...],
    suffix: str,
    phase_files: list[Any],
    mag_files: list[Any],
    b0_tesla: float | None,
    root: Path,
    parts: tuple[str, str] = ("phase", "mag"),
) -> Acquisition:
    """One acquisition from its phase and magnitude files, or (``parts=("real", "imag")``)
    from its real and imaginary parts."""
    phases = _by_echo(phase_files, suffix, root)
    mags = _pair_magnitudes(phases, mag_files, suffix, root, parts)
    echoes = list(phases)
    paths = [phases[echo].path for echo in echoes]
    metadata = [layout.get_metadata(path) for path in paths]
    times = [_echo_time_s(meta, path, root) for meta, path in zip(metadata, paths, strict=True)]
    order = sorted(range(len(echoes)), key=times.__getitem__)
    echoes, paths = [echoes[i] for i in order], [paths[i] for i in order]
    metadata, times = [metadata[i] for i in order], [times[i] for i in order]
    _check_unique_echo_times(times, paths, root)
    mag_paths = [mags[echo].path for echo in echoes] if mags else []
    for mag_path, time_s in zip(mag_paths, times, strict=False):  # none if phase-only
        _check_magnitude_echo_time(layout, mag_path, time_s, root)
    shape, zooms, skew = _check_grids(paths + mag_paths, root)
    b0, from_cli = _field_strength(metadata[0], paths[0], b0_tesla, root)
    subject, session, acq, run = key
    if parts == ("real", "imag"):
        files = {"real_files": tuple(paths), "imag_files": tuple(mag_paths), "phase_files": (),
                 "magnitude_files": (), "phase_units": "rad"}  # fmt: skip
    else:
        files = {"phase_files": tuple(paths), "magnitude_files": tuple(mag_paths),
                 "phase_units": _phase_units(metadata, paths, root)}  # fmt: skip
    return Acquisition(
        subject=subject, session=session, acq=acq, run=run, suffix=suffix,
        echo_times_s=tuple(times), b0_tesla=b0, b0_from_cli=from_cli, shape=shape,
        voxel_size_mm=zooms, axis_skew_deg=skew, **files,
    )  # fmt: skip


# -- public entry point -------------------------------------------------------------------------
def _as_labels(labels: Iterable[str] | str, prefix: str, option: str) -> tuple[str, ...]:
    try:
        return normalize_labels(labels, prefix=prefix, option=option)
    except ValueError as err:
        raise BIDSInputError(str(err)) from err


def _check_selection(
    root: Path,
    acquisitions: list[Acquisition],
    subjects: tuple[str, ...],
    sessions: tuple[str, ...],
    bids_filter: Mapping[str, Any] | None,
) -> None:
    asked = (
        (f" for participant(s) {', '.join(subjects)}" if subjects else "")
        + (f" and session(s) {', '.join(sessions)}" if sessions else "")
        + (f" with BIDS filter {json.dumps(bids_filter, default=str)}" if bids_filter else "")
    )
    if not acquisitions:
        raise BIDSInputError(
            f"no MEGRE or T2starw phase images (anat/*_part-phase_MEGRE.nii[.gz] or "
            f"*_part-phase_T2starw.nii[.gz], or part-real with part-imag) found in {root}{asked}"
        )
    found_subjects = {acq.subject for acq in acquisitions}
    lacking = [label for label in subjects if label not in found_subjects]
    if lacking:
        raise BIDSInputError(
            f"no MEGRE or T2starw phase images for participant(s) {', '.join(lacking)} in "
            f"{root}{asked}"
        )
    found_sessions = {acq.session for acq in acquisitions}
    lacking = [label for label in sessions if label not in found_sessions]
    if lacking:
        raise BIDSInputError(
            f"no MEGRE or T2starw phase images for session(s) {', '.join(lacking)} in {root}{asked}"
        )


def _sort_key(acq: Acquisition) -> tuple[Any, ...]:
    run = int(acq.run) if acq.run and acq.run.isdigit() else -1
    entities = (acq.subject, acq.session or "", acq.acq or "", run)
    return (*entities, SUFFIXES.index(acq.suffix))


def collect_acquisitions(
    bids_dir: str | os.PathLike[str],
    *,
    participant_label: Iterable[str] | str = (),
    session_label: Iterable[str] | str = (),
    bids_filter: Mapping[str, Any] | None = None,
    b0_tesla: float | None = None,
) -> list[Acquisition]:
    """Find the QSM acquisitions of a raw BIDS dataset.

    Parameters
    ----------
    bids_dir : path-like
        Root of the raw BIDS dataset (``derivatives/``, ``sourcedata/`` and ``code/`` are not
        indexed, nor any datatype folder other than ``anat/``).
    participant_label, session_label : iterable of str
        Labels with or without ``sub-``/``ses-`` (empty: all).
    bids_filter : mapping, optional
        Extra pybids query entities per data type, e.g. ``{"megre": {"acquisition": "x"}}``
        (keys ``megre``, ``t2starw``; ``null`` means the entity is absent, ``"*"`` any value).
    b0_tesla : float, optional
        Field strength in tesla for sidecars without ``MagneticFieldStrength``.

    Returns
    -------
    list of Acquisition
        Sorted by subject, session, acquisition, run, suffix.

    Raises
    ------
    BIDSInputError
        With one line naming the file(s), when nothing matches the selection or when an
        acquisition is inconsistent (see the module docstring).
    """
    root = Path(bids_dir).absolute()
    validate_dataset_layout(root)
    subjects = _as_labels(participant_label, "sub-", "participant_label")
    sessions = _as_labels(session_label, "ses-", "session_label")
    filters = _normalize_filter(bids_filter)
    if b0_tesla is not None and not (isinstance(b0_tesla, (int, float)) and b0_tesla > 0):
        raise BIDSInputError(f"b0_tesla must be a positive number of tesla; got {b0_tesla!r}")
    _check_participants(root, subjects)
    layout = _init_layout(root, subjects)
    acquisitions = []
    for suffix in SUFFIXES:
        query = _query(suffix, subjects, sessions, filters.get(suffix, {}))
        phases = _group(layout.get(part="phase", **query))
        mags = _group(layout.get(part="mag", **query))
        for key, files in phases.items():
            acquisitions.append(
                _build_acquisition(layout, key, suffix, files, mags.get(key, []), b0_tesla, root)
            )
        # real and imaginary parts (GE's usual export), where the acquisition has no phase
        reals = _group(layout.get(part="real", **query))
        imags = _group(layout.get(part="imag", **query))
        for key in sorted(set(imags) - set(reals) - set(phases), key=str):
            raise BIDSInputError(f"{_rel(imags[key][0].path, root)} has no part-real image "
                                 "beside it (real and imaginary parts go together)")  # fmt: skip
        for key, files in reals.items():
            if key not in phases:
                acquisitions.append(_build_acquisition(layout, key, suffix, files,
                                                       imags.get(key, []), b0_tesla, root,
                                                       parts=("real", "imag")))  # fmt: skip
    _check_selection(root, acquisitions, subjects, sessions, bids_filter)
    acquisitions = [dataclasses.replace(a, t1w_file=find_t1w(a)) for a in acquisitions]
    return sorted(acquisitions, key=_sort_key)


def find_t1w(acq: Acquisition) -> str | None:
    """The session's T1w image (same folder, subject and session as the phase), or None.

    Several T1w images: the first by name that has neither ``ce-`` (contrast agent) nor
    ``rec-`` (a reconstruction variant) entities, else the first by name.
    """
    folder = Path(acq.raw_files[0]).parent
    prefix = f"sub-{acq.subject}" + (f"_ses-{acq.session}" if acq.session else "")
    found = sorted(p for p in folder.glob(f"{prefix}_*T1w.nii*")
                   if p.name.endswith(("_T1w.nii", "_T1w.nii.gz"))
                   and p.stat().st_size > 0)  # fmt: skip
    plain = [p for p in found if "_ce-" not in p.name and "_rec-" not in p.name]
    chosen = (plain or found or [None])[0]
    return str(chosen) if chosen else None


def check_acquisition_advice(acq: Acquisition) -> list[str]:
    """Compare an acquisition with the 2024 QSM consensus advice (warn, never refuse).

    Checks at least 3 echoes, uniform echo spacing and isotropic voxels of at most 1 mm
    (QSM Consensus Organization Committee, MRM 2024, doi:10.1002/mrm.30006). Also warns
    about two departures from BIDS or from scanner geometry that qsmprep still reads: a lone
    MEGRE image without ``echo-<index>``, and a sheared affine (qsm-forward writes one for
    anisotropic voxels with a tilted B0).

    Returns
    -------
    list of str
        One message per departure from the advice (empty if none); the messages do not repeat
        ``acq.name``, so callers prefix it.
    """
    warnings = []
    if (
        acq.suffix == "MEGRE"
        and acq.n_echoes == 1
        and "_echo-" not in Path(acq.raw_files[0]).name
    ):
        warnings.append(
            "the MEGRE phase image has no echo-<index> entity, which BIDS requires; "
            "read as a single echo"
        )
    warnings.extend(acq.notes)
    from qsmprep.algorithms.kernels import sheared_affine_note

    sheared = sheared_affine_note(acq.axis_skew_deg)
    if sheared:
        warnings.append(sheared)
    if acq.n_echoes < 3:
        warnings.append(
            f"{acq.n_echoes} echo(es); {_CONSENSUS} at least 3 echoes for a robust field estimate"
        )
    else:
        from qsmprep.algorithms.combine import uniform_spacing

        if not uniform_spacing(acq.echo_times_s, rtol=0.01):
            tes = acq.echo_times_s
            shown = ", ".join(f"{1000 * (b - a):.2f}" for a, b in zip(tes, tes[1:], strict=False))
            warnings.append(
                f"echo spacing is not uniform ({shown} ms); {_CONSENSUS} uniform spacing"
            )
    if acq.voxel_size_mm:
        largest, smallest = max(acq.voxel_size_mm), min(acq.voxel_size_mm)
        if largest > 1.0 + 1e-3 or largest - smallest > 0.01 * largest:
            shown = " x ".join(f"{v:.3g}" for v in acq.voxel_size_mm)
            warnings.append(f"voxels are {shown} mm; {_CONSENSUS} isotropic voxels of at most 1 mm")
    return warnings


#: Entities of an acquisition's name after ``sub-``: a file named ``<name>_acq-...`` (or
#: ``_ses-``, ``_run-``) belongs to another acquisition whose name extends this one.
NAME_ENTITIES = ("ses-", "acq-", "run-")


def files_of(folder: str | os.PathLike[str], name: str, pattern: str = "*") -> list[Path]:
    """The files ``<name>_<pattern>`` in ``folder`` that belong to acquisition ``name``
    itself, sorted: ``sub-01_acq-fast_Chimap.nii.gz`` is not one of ``sub-01``'s."""
    return sorted(f for f in Path(folder).glob(f"{name}_{pattern}")
                  if not f.name[len(name) + 1:].startswith(NAME_ENTITIES))  # fmt: skip


def find_user_mask(mask_dir: str | os.PathLike[str], acq: Acquisition) -> str:
    """The user's brain mask for ``acq`` in a BIDS derivatives folder.

    Looks for ``sub-X/[ses-Y/]anat/<acq.name>[_<other entities>]_desc-brain_mask.nii[.gz]``
    (``_mask`` with ``desc-brain`` anywhere in the name is accepted too).

    Raises
    ------
    BIDSInputError
        If none or several candidates are found, naming the folder searched.
    """
    root = Path(mask_dir)
    anat = root / f"sub-{acq.subject}"
    if acq.session:
        anat = anat / f"ses-{acq.session}"
    anat = anat / "anat"
    found = [p for p in files_of(anat, acq.name, "*mask.nii*")
             if "desc-brain" in p.name and p.name.endswith((".nii", ".nii.gz"))]  # fmt: skip
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} candidate"
        raise BIDSInputError(
            f"{what} brain mask for {acq.name} in {anat} "
            f"(expected {acq.name}_desc-brain_mask.nii.gz)"
        )
    return str(found[0])
