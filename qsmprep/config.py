"""Run settings of qsmprep: one frozen dataclass that round-trips to TOML.

The settings object is built once by :func:`qsmprep.cli.parser.parse_args` (or read back with
:meth:`Settings.from_toml`) and read only by the top-level workflow factory; everything below it
receives plain values. There is no module-level mutable state here.

The ``*_CHOICES`` constants are the single place where a new stage method is registered for the
command line and the validation below.

Examples
--------
>>> s = Settings(bids_dir="/data/bids", output_dir="/data/out", analysis_level="participant",
...              nprocs=2, participant_label=("sub-01",))
>>> s.participant_label
('01',)
>>> s.replace(inversion="tkd").inversion
'tkd'
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "ANALYSIS_LEVELS",
    "BFR_CHOICES",
    "COMBINATION_CHOICES",
    "INVERSION_CHOICES",
    "MASKING_CHOICES",
    "PHASE_SIGNS",
    "REFERENCE_CHOICES",
    "SINGLE_STEP_CHOICES",
    "UNWRAPPING_CHOICES",
    "Settings",
    "check_method_params",
    "load_plugin_settings",
    "method_parameters",
    "normalize_labels",
    "parse_param",
    "read_toml",
]

#: BIDS-Apps analysis levels.
ANALYSIS_LEVELS: tuple[str, ...] = ("participant", "group")
#: Brain-mask methods.
MASKING_CHOICES: tuple[str, ...] = ("magnitude", "phase-quality", "bet", "consensus")
#: Multi-echo combination into a total field.
COMBINATION_CHOICES: tuple[str, ...] = ("linear-fit", "nonlinear-fit")
#: Receive phase-offset removal before the echo fit.
PHASE_OFFSET_CHOICES: tuple[str, ...] = ("none", "mcpc3ds")
#: Phase-unwrapping methods.
UNWRAPPING_CHOICES: tuple[str, ...] = ("laplacian", "romeo", "path")
#: Background-field-removal methods.
BFR_CHOICES: tuple[str, ...] = ("resharp", "vsharp", "sharp", "ismv", "pdf", "lbv")
#: Dipole-inversion methods.
INVERSION_CHOICES: tuple[str, ...] = (
    "single-step-tv", "tv", "rts", "tkd", "tsvd", "tikhonov", "isqsm", "isqsm-l1", "ilsqr",
    "star", "medi", "nltv", "ndi",
)  # fmt: skip
#: Inversions that fit the total field themselves: --bfr then only makes the local field map.
SINGLE_STEP_CHOICES: tuple[str, ...] = ("single-step-tv",)
#: Susceptibility reference regions (``none`` keeps the inversion's own offset). Any region
#: name of the atlas is accepted too; ``csf`` means its lateral ventricles.
REFERENCE_CHOICES: tuple[str, ...] = ("brain", "csf", "none")
#: Default atlas (``seg`` entity) of the regional tables.
DEFAULT_ATLAS = "qsmprep"
#: Allowed phase-sign conventions (+1: the documented default, -1: flip the phase).
PHASE_SIGNS: tuple[int, ...] = (1, -1)

#: Largest magnitude of the dipole kernel D(k) = 1/3 - kz^2/k^2 (reached along B0).
_MAX_ABS_DIPOLE = 2.0 / 3.0
_LABEL_RE = re.compile(r"[0-9A-Za-z]+")
_PATH_FIELDS = (
    "bids_dir", "output_dir", "work_dir", "use_plugin", "bids_filter_file", "brain_mask_dir",
    "atlas_labels",
)  # fmt: skip
_FLOAT_FIELDS = (
    "mem_gb",
    "b0_tesla",
    "tkd_threshold",
    "vsharp_max_radius_mm",
    "vsharp_min_radius_mm",
)
_LABEL_FIELDS = {"participant_label": "sub-", "session_label": "ses-"}
_CHOICE_FIELDS = {
    "analysis_level": ANALYSIS_LEVELS,
    "masking": MASKING_CHOICES,
    "combination": COMBINATION_CHOICES,
    "phase_offset_correction": PHASE_OFFSET_CHOICES,
    "unwrapping": UNWRAPPING_CHOICES,
    "bfr": BFR_CHOICES,
    "inversion": INVERSION_CHOICES,
}


def _default_nprocs() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """All settings of one qsmprep run.

    Parameters
    ----------
    bids_dir, output_dir : Path
        Input BIDS dataset and output (derivatives) folder.
    analysis_level : {'participant', 'group'}
        BIDS-Apps analysis level.
    participant_label, session_label : tuple of str
        Labels to process, stored without the ``sub-``/``ses-`` prefix (a prefix given here is
        stripped). Empty means all.
    work_dir : Path or None
        Nipype working directory (None: the runner chooses).
    nprocs, omp_nthreads : int
        Total processes and threads per process.
    mem_gb : float or None
        Memory limit for the scheduler, in GB.
    use_plugin : Path or None
        YAML file with ``plugin:`` and ``plugin_args:`` for Nipype (as in fMRIPrep).
    bids_filter_file : Path or None
        JSON file of extra pybids query entities per data type.
    b0_tesla : float or None
        Field strength in tesla used only where a sidecar lacks ``MagneticFieldStrength``.
    phase_sign : {1, -1}
        Multiply the input phase by this sign (-1 for vendors whose phase sign is flipped).
    dry_run : bool
        Build the workflow but do not run it.
    reports_only : bool
        Write each subject's HTML report from the derivatives already in ``output_dir``,
        without running the workflow.
    verbose : int
        Verbosity (count of ``-v``).
    seed : int
        Master random seed.
    masking, combination, unwrapping, bfr, inversion, reference : str
        Stage choices; see the ``*_CHOICES`` module constants.
    tkd_threshold : float
        Truncation threshold of TKD, in (0, 2/3).
    vsharp_max_radius_mm, vsharp_min_radius_mm : float, float or None
        Largest and smallest V-SHARP kernel radii in mm (None: one voxel).
    mask_erosions : int
        Number of erosions (in voxels) applied to the brain mask.
    bfr_params, inversion_params : dict
        Parameters of the chosen background-removal and inversion methods, by the names of
        their keyword arguments (:func:`method_parameters`), e.g. ``{"radius_mm": 8.0}``.
        They override ``tkd_threshold`` and the V-SHARP radii.
    phase_offset_correction : str
        ``mcpc3ds`` removes the receive phase offset (MCPC-3D-S) before the echo fit.
    bipolar_correction : bool
        Remove the odd/even-echo phase error of bipolar readouts (>= 3 echoes).
    write_swi : bool
        Write SWI and minIP images when magnitude is available.
    brain_mask_dir : Path or None
        A BIDS derivatives folder with a ``<prefix>_desc-brain_mask.nii[.gz]`` per acquisition,
        used instead of computing masks.
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    work_dir: Path | None = None
    nprocs: int = field(default_factory=_default_nprocs)
    omp_nthreads: int = 1
    mem_gb: float | None = None
    use_plugin: Path | None = None
    bids_filter_file: Path | None = None
    b0_tesla: float | None = None
    phase_sign: int = 1
    dry_run: bool = False
    reports_only: bool = False
    verbose: int = 0
    seed: int = 0
    masking: str = "magnitude"
    combination: str = "linear-fit"
    unwrapping: str = "laplacian"
    bfr: str = "resharp"
    inversion: str = "single-step-tv"
    reference: str = "brain"
    tkd_threshold: float = 0.19
    vsharp_max_radius_mm: float = 12.0
    vsharp_min_radius_mm: float | None = None
    mask_erosions: int = 0
    bfr_params: dict[str, Any] = field(default_factory=dict)
    inversion_params: dict[str, Any] = field(default_factory=dict)
    brain_mask_dir: Path | None = None
    phase_offset_correction: str = "none"
    bipolar_correction: bool = False
    write_swi: bool = True
    regions: bool = True
    atlas: str = DEFAULT_ATLAS
    atlas_labels: Path | None = None
    use_t1w: bool = True

    def __post_init__(self) -> None:
        self._normalize()
        self._validate_choices()
        self._validate_resources()
        self._validate_parameters()

    # -- normalisation and validation -------------------------------------------------------
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _normalize(self) -> None:
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value is not None:
                self._set(name, Path(value))
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                self._set(name, float(value))
        for name, prefix in _LABEL_FIELDS.items():
            self._set(name, normalize_labels(getattr(self, name), prefix=prefix, option=name))

    def _validate_choices(self) -> None:
        for name, choices in _CHOICE_FIELDS.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        if not isinstance(self.reference, str) or not re.fullmatch(r"[\w.-]+", self.reference):
            raise ValueError(
                f"reference must be one of {', '.join(REFERENCE_CHOICES)} or an atlas region "
                f"name; got {self.reference!r}"
            )
        if self.reference not in ("brain", "none") and not self.regions:
            raise ValueError(
                f"reference {self.reference!r} needs the atlas: it cannot be used with "
                "--no-regions"
            )
        if not isinstance(self.atlas, str) or not self.atlas:
            raise ValueError(f"atlas must be a name or a file; got {self.atlas!r}")
        if self.phase_sign not in PHASE_SIGNS:
            raise ValueError(f"phase_sign must be 1 or -1; got {self.phase_sign!r}")

    def _validate_resources(self) -> None:
        _check_int(self.nprocs, "nprocs", minimum=1)
        _check_int(self.omp_nthreads, "omp_nthreads", minimum=1)
        _check_int(self.verbose, "verbose", minimum=0)
        _check_int(self.seed, "seed", minimum=0)
        if self.mem_gb is not None:
            _check_positive(self.mem_gb, "mem_gb (GB)")

    def _validate_parameters(self) -> None:
        if self.b0_tesla is not None:
            _check_positive(self.b0_tesla, "b0_tesla (T)")
        _check_positive(self.tkd_threshold, "tkd_threshold")
        if self.tkd_threshold >= _MAX_ABS_DIPOLE:
            raise ValueError(
                f"tkd_threshold must be below 2/3 (the largest |D(k)|); got {self.tkd_threshold}"
            )
        _check_positive(self.vsharp_max_radius_mm, "vsharp_max_radius_mm (mm)")
        if self.vsharp_min_radius_mm is not None:
            _check_positive(self.vsharp_min_radius_mm, "vsharp_min_radius_mm (mm)")
            if self.vsharp_min_radius_mm > self.vsharp_max_radius_mm:
                raise ValueError(
                    f"vsharp_min_radius_mm ({self.vsharp_min_radius_mm}) must not exceed "
                    f"vsharp_max_radius_mm ({self.vsharp_max_radius_mm})"
                )
        _check_int(self.mask_erosions, "mask_erosions", minimum=0)
        self._set("bfr_params", check_method_params("bfr", self.bfr, self.bfr_params))
        self._set(
            "inversion_params",
            check_method_params("inversion", self.inversion, self.inversion_params),
        )

    # -- public API ---------------------------------------------------------------------------
    def replace(self, **changes: Any) -> Settings:
        """Return a copy with some fields changed (validated again).

        Parameters
        ----------
        **changes
            Field names and new values.

        Returns
        -------
        Settings
        """
        _check_known_keys(changes, source="Settings.replace()")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as TOML-ready plain values.

        Paths become strings, tuples become lists and ``None`` values are omitted.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def to_toml(self, path: str | os.PathLike[str]) -> Path:
        """Write the settings to a TOML file (parent folders are created).

        Parameters
        ----------
        path : path-like
            Destination file.

        Returns
        -------
        Path
            The file written.
        """
        import tomli_w

        from qsmprep.__about__ import __version__

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# qsmprep {__version__} settings (read back with --config-file)\n"
        path.write_text(header + tomli_w.dumps(self.to_dict()), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **overrides: Any) -> Settings:
        """Build settings from plain values (as read from TOML), then apply ``overrides``.

        Raises
        ------
        ValueError
            On unknown keys, missing required keys or invalid values.
        """
        merged = {**values, **overrides}
        _check_known_keys(merged, source="settings")
        missing = [f.name for f in _required_fields() if f.name not in merged]
        if missing:
            raise ValueError(f"settings lack required key(s): {', '.join(missing)}")
        return cls(**merged)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> Settings:
        """Read settings written by :meth:`to_toml`; ``overrides`` take precedence.

        Relative paths in the file are kept as written (relative to the working directory).

        Raises
        ------
        ValueError
            On invalid TOML, unknown keys or invalid values (the message names the file).
        """
        values = read_toml(path)
        try:
            return cls.from_dict(values, **overrides)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from err


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a settings TOML file into a dict, checking its keys.

    Raises
    ------
    ValueError
        If the file is not valid TOML or has unknown keys (the message names the file).
    """
    with open(path, "rb") as fobj:
        try:
            values = tomllib.load(fobj)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: invalid TOML: {err}") from err
    try:
        _check_known_keys(values, source="settings")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return values


def normalize_labels(
    labels: str | Iterable[str] | None, *, prefix: str, option: str = "label"
) -> tuple[str, ...]:
    """Strip a BIDS prefix (``sub-``/``ses-``) from labels, drop duplicates, check characters.

    Examples
    --------
    >>> normalize_labels(["sub-01", "02", "01"], prefix="sub-")
    ('01', '02')
    """
    if labels is None:
        return ()
    if isinstance(labels, str):
        labels = (labels,)
    out: list[str] = []
    for raw in labels:
        label = str(raw).strip()
        label = label[len(prefix) :] if label.startswith(prefix) else label
        if not _LABEL_RE.fullmatch(label):
            raise ValueError(
                f"{option}: {raw!r} is not a BIDS label (letters and digits only, "
                f"with or without '{prefix}')"
            )
        if label not in out:
            out.append(label)
    return tuple(out)


def load_plugin_settings(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """Read a Nipype plugin YAML file (``plugin:`` and ``plugin_args:``, as in fMRIPrep).

    Returns
    -------
    plugin : str
        Nipype plugin name, e.g. ``'MultiProc'``.
    plugin_args : dict
        Keyword arguments for the plugin.

    Raises
    ------
    ValueError
        If the file is not a mapping with a string ``plugin`` key, if Nipype has no such
        plugin, or if the plugin is one of Nipype's graph plugins (``SLURMGraph``,
        ``SGEGraph``, ``PBSGraph``, ``CondorDAGMan``). Those submit every node as a job with
        its dependencies and return at once, before any job has run, so qsmprep could not
        check the outputs, remove a failed acquisition's partial ones or write the reports
        (it would report every acquisition as failed while the jobs go on writing). Their
        synchronous siblings (``SLURM``, ``SGE``, ``PBS``, ``Condor``) take the same
        ``sbatch_args``/``qsub_args`` and wait for the jobs.
    """
    import yaml

    with open(path, encoding="utf-8") as fobj:
        try:
            content = yaml.safe_load(fobj)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(content, dict) or not isinstance(content.get("plugin"), str):
        raise ValueError(f"{path}: expected a mapping with 'plugin: <name>' and 'plugin_args:'")
    plugin_args = content.get("plugin_args") or {}
    if not isinstance(plugin_args, dict):
        raise ValueError(f"{path}: 'plugin_args' must be a mapping")
    name = content["plugin"]
    plugin_class = _nipype_plugin_class(name)
    if plugin_class is None:
        raise ValueError(f"{path}: Nipype has no plugin {name!r} (e.g. MultiProc, Linear, SLURM, "
                         "SGE, PBS)")  # fmt: skip
    from nipype.pipeline.plugins.base import GraphPluginBase

    if issubclass(plugin_class, GraphPluginBase):
        use = (f"'plugin: {_SYNCHRONOUS_SIBLING[name]}' (same plugin_args)"
               if name in _SYNCHRONOUS_SIBLING else "a plugin such as SLURM, SGE or PBS")
        raise ValueError(f"{path}: plugin {name!r} submits the jobs and returns before they run, "
                         f"so qsmprep could not check their outputs or write the reports; use "
                         f"{use}, which waits for the jobs")  # fmt: skip
    return name, dict(plugin_args)


#: The waiting plugin that takes the same arguments as each of Nipype's graph plugins.
_SYNCHRONOUS_SIBLING = {"SLURMGraph": "SLURM", "SGEGraph": "SGE", "PBSGraph": "PBS",
                        "CondorDAGMan": "Condor"}  # fmt: skip


def _nipype_plugin_class(name: str):
    """Nipype's plugin class for a ``plugin:`` name (``'SLURM'`` -> ``SLURMPlugin``), or None."""
    from nipype.pipeline import plugins

    plugin_class = getattr(plugins, f"{name}Plugin", None)
    return plugin_class if isinstance(plugin_class, type) else None


# -- method parameters (--bfr-param / --inversion-param) ----------------------------------------
#: Keyword arguments of the stage methods that qsmprep sets itself: geometry, data, threads.
_INTERNAL_PARAMS = frozenset(
    {"voxel_size_mm", "b0_direction", "magnitude", "weights", "phase_scale_rad_per_ppm", "workers"}
)
_STAGE_OPTIONS = {"bfr": "--bfr-param", "inversion": "--inversion-param"}


def _registry(stage: str) -> dict:
    if stage == "bfr":
        from qsmprep.algorithms.background import BFR_METHODS

        return BFR_METHODS
    if stage == "inversion":
        from qsmprep.algorithms.inversion import INVERSION_METHODS, SINGLE_STEP_METHODS

        return {**INVERSION_METHODS, **SINGLE_STEP_METHODS}
    raise ValueError(f"stage must be 'bfr' or 'inversion', got {stage!r}")


def method_parameters(stage: str, method: str) -> dict[str, Any]:
    """The parameters a user may set for a stage method, with their defaults.

    These are the method's keyword arguments (``qsmprep.algorithms``), less those qsmprep
    fills in itself (voxel size, B0 direction, magnitude, noise weights, threads).

    >>> method_parameters("bfr", "resharp")
    {'radius_mm': 6.0, 'lambda_reg': 0.001, 'tol': 0.001, 'max_iter': 200}
    """
    function = _registry(stage)[method]
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name not in _INTERNAL_PARAMS
    }


def parse_param(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` from the command line.

    VALUE is read as a number when it is one, ``true``/``false``/``none`` as such, and a
    comma-separated list of numbers as a tuple (e.g. V-SHARP's ``radii_mm=12,9,6``).

    >>> parse_param("radius_mm=8"), parse_param("radii_mm=12,9,6")
    (('radius_mm', 8), ('radii_mm', (12.0, 9.0, 6.0)))
    """
    key, sep, raw = str(text).partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*", key) or not raw:
        raise ValueError(f"expected KEY=VALUE (e.g. radius_mm=8), got {text!r}")
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered == "none":
        return key, None
    if "," in raw:
        try:
            return key, tuple(float(v) for v in raw.split(","))
        except ValueError:
            raise ValueError(f"{key}: expected numbers separated by commas, got {raw!r}") from None
    for convert in (int, float):
        try:
            return key, convert(raw)
        except ValueError:
            pass
    return key, raw


def _coerce(name: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of the parameter's default (or an error)."""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif isinstance(default, int):
        if is_number and float(value).is_integer():
            return int(value)
        expected = "an integer"
    elif isinstance(default, float):
        if is_number and math.isfinite(value):
            return float(value)
        expected = "a number"
    elif default is None:
        if value is None or (is_number and math.isfinite(value)):
            return None if value is None else float(value)
        if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
        ):
            return tuple(float(v) for v in value)
        expected = "a number or a list of numbers"
    else:
        if isinstance(value, type(default)):
            return value
        expected = type(default).__name__
    raise ValueError(f"{name} must be {expected}, got {value!r}")


def check_method_params(stage: str, method: str, params: Mapping[str, Any] | None) -> dict:
    """Check parameter names against the method and convert values to their types.

    Ranges (e.g. a radius at least one voxel) are checked by the method itself when it runs.

    Raises
    ------
    ValueError
        One line naming the option, the method and the parameters it has.
    """
    option = _STAGE_OPTIONS.get(stage, stage)
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{option}: expected a table of name = value, got {params!r}")
    known = method_parameters(stage, method)
    out = {}
    for name, value in params.items():
        if name not in known:
            raise ValueError(
                f"{option}: {method} has no parameter {name!r}; its parameters are "
                + ", ".join(f"{k} (default {v})" for k, v in known.items())
            )
        try:
            out[name] = _coerce(name, value, known[name])
        except ValueError as err:
            raise ValueError(f"{option} for {method}: {err}") from None
    return out


def _required_fields() -> list[dataclasses.Field]:
    return [
        f
        for f in dataclasses.fields(Settings)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def _check_known_keys(values: Mapping[str, Any], *, source: str) -> None:
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {source} key(s): {', '.join(unknown)}")


def _check_int(value: Any, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def _check_positive(value: Any, name: str) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number; got {value!r}")
