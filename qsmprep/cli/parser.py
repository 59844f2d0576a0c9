"""Command-line parser of qsmprep (BIDS-Apps convention).

:func:`build_parser` builds the :class:`argparse.ArgumentParser`; :func:`parse_args` turns a
command line into a validated :class:`~qsmprep.config.Settings`. Both are pure: the only I/O is
reading a ``--config-file`` TOML and checking that the BIDS folder exists. Options given on the
command line override the values of the ``--config-file``, which override the defaults.

Examples
--------
>>> settings = parse_args(["/data/bids", "/data/out", "participant", "--inversion", "tkd"])
... # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qsmprep.__about__ import __version__
from qsmprep.config import (
    ANALYSIS_LEVELS,
    BFR_CHOICES,
    COMBINATION_CHOICES,
    INVERSION_CHOICES,
    MASKING_CHOICES,
    PHASE_OFFSET_CHOICES,
    PHASE_SIGNS,
    REFERENCE_CHOICES,
    UNWRAPPING_CHOICES,
    Settings,
    normalize_labels,
    parse_param,
    read_toml,
)

__all__ = ["build_parser", "parse_args"]

_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING
}
_PATH_KEYS = (
    "bids_dir", "output_dir", "work_dir", "use_plugin", "bids_filter_file", "brain_mask_dir",
)  # fmt: skip
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)b?\s*$", re.IGNORECASE)
_MEMORY_SCALE_TO_GB = {"": 1.0, "k": 1e-6, "m": 1e-3, "g": 1.0, "t": 1e3}


# -- argument types (raise ArgumentTypeError so argparse names the option) ----------------------
def _path(value: str) -> Path:
    return Path(value).expanduser().absolute()


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return number


def _nonnegative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return number


def _memory_gb(value: str) -> float:
    match = _MEMORY_RE.match(value)
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive amount of memory such as 16, 16GB or 16000MB, got {value!r}"
        )
    return float(match[1]) * _MEMORY_SCALE_TO_GB[match[2].lower()]


def _method_param(value: str) -> tuple[str, Any]:
    try:
        return parse_param(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _label(prefix: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        try:
            return normalize_labels(value, prefix=prefix, option="label")[0]
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("label: ")) from err

    convert.__name__ = f"{prefix}label"
    return convert


# -- parser -------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (argparse's own also prints the whole usage
    block, 20+ lines here, above the line that says what is wrong)."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        self.exit(2, f"{self.prog}: error: {message} ('{self.prog} --help' lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the qsmprep command-line parser.

    Options have ``argparse.SUPPRESS`` defaults, so the parsed namespace holds only what was
    given on the command line; :func:`parse_args` fills the rest from ``--config-file`` and the
    :class:`~qsmprep.config.Settings` defaults.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = _Parser(
        prog="qsmprep",
        description=(
            "qsmprep: quantitative susceptibility mapping (QSM) from multi-echo gradient-echo "
            "(MEGRE) or single-echo T2starw phase and magnitude images in a BIDS dataset."
        ),
        epilog="Example: qsmprep /data/bids /data/bids/derivatives/qsmprep participant "
        "--participant-label 01 --inversion tv",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    _add_positionals(parser)
    _add_bids_options(parser)
    _add_resource_options(parser)
    _add_acquisition_options(parser)
    _add_stage_options(parser)
    _add_region_options(parser)
    _add_other_options(parser)
    return parser


def _add_positionals(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bids_dir",
        type=_path,
        help="root folder of the input BIDS dataset (the one holding dataset_description.json)",
    )
    parser.add_argument(
        "output_dir",
        type=_path,
        help="folder for the derivatives (e.g. <bids_dir>/derivatives/qsmprep); created if missing",
    )
    parser.add_argument(
        "analysis_level",
        choices=ANALYSIS_LEVELS,
        help="BIDS-Apps analysis level: "
        "'participant' processes each participant; 'group' runs group-level steps",
    )


def _add_bids_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Selecting the input data")
    group.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_label",
        nargs="+",
        type=_label("sub-"),
        metavar="LABEL",
        help="participant label(s) to process, with or without 'sub-' (default: all)",
    )
    group.add_argument(
        "--session-label",
        "--session_label",
        dest="session_label",
        nargs="+",
        type=_label("ses-"),
        metavar="LABEL",
        help="session label(s) to process, with or without 'ses-' (default: all)",
    )
    group.add_argument(
        "--bids-filter-file",
        dest="bids_filter_file",
        type=_path,
        metavar="FILE.json",
        help="JSON file of extra pybids query entities per data type, as in fMRIPrep, "
        'e.g. {"megre": {"acquisition": "highres"}, "t2starw": {"run": 1}}',
    )


def _add_resource_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Computing resources")
    group.add_argument(
        "--nprocs",
        "--n-cpus",
        dest="nprocs",
        type=_positive_int,
        metavar="N",
        help="maximum number of processes run in parallel (default: all CPUs)",
    )
    group.add_argument(
        "--omp-nthreads",
        dest="omp_nthreads",
        type=_positive_int,
        metavar="N",
        help=f"threads per process for FFT-heavy steps (default: {_DEFAULTS['omp_nthreads']})",
    )
    group.add_argument(
        "--mem-gb",
        "--mem",
        dest="mem_gb",
        type=_memory_gb,
        metavar="GB",
        help="memory limit for scheduling, in GB (units MB/GB/TB also accepted, e.g. 16GB) "
        "(default: no limit)",
    )
    group.add_argument(
        "--use-plugin",
        dest="use_plugin",
        type=_path,
        metavar="FILE.yml",
        help="Nipype plugin YAML with 'plugin:' and 'plugin_args:' keys, as in fMRIPrep "
        "(default: MultiProc with --nprocs)",
    )
    group.add_argument(
        "-w",
        "--work-dir",
        dest="work_dir",
        type=_path,
        metavar="DIR",
        help="working folder for intermediate results; reuse it to resume a run",
    )


def _add_acquisition_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Acquisition")
    group.add_argument(
        "--b0-tesla",
        dest="b0_tesla",
        type=_positive_float,
        metavar="TESLA",
        help="main field strength in tesla, used only where a sidecar lacks "
        "MagneticFieldStrength (BIDS recommends it but does not require it)",
    )
    group.add_argument(
        "--phase-sign",
        dest="phase_sign",
        type=int,
        choices=PHASE_SIGNS,
        help="multiply the input phase by this sign; use -1 when paramagnetic tissue (veins, "
        "iron) comes out negative, as with some vendors, e.g. GE (default: 1)",
    )


def _add_stage_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("QSM processing stages")
    stages = (
        (
            "masking",
            MASKING_CHOICES,
            "brain mask: magnitude threshold, phase quality, bet "
            "(BET-class extraction; pip install 'qsmprep[bet]') or consensus (bet AND phase "
            "quality)",
        ),
        ("combination", COMBINATION_CHOICES, "combination of the echoes into one field map (Hz)"),
        ("unwrapping", UNWRAPPING_CHOICES, "phase unwrapping"),
        ("bfr", BFR_CHOICES, "background field removal"),
        (
            "inversion",
            INVERSION_CHOICES,
            "dipole inversion to susceptibility (ppm): single-step-tv fits the total field "
            "itself (--bfr then only makes the local field map); the others invert the "
            "local field of --bfr; see docs/algorithms.md (tv = total variation ADMM, "
            "rts = rapid two-step, tkd = "
            "truncated k-space division, medi/nltv/ndi = nonlinear data terms)",
        ),
    )
    for name, choices, text in stages:
        group.add_argument(
            f"--{name}",
            dest=name,
            choices=choices,
            help=f"{text} (default: {_DEFAULTS[name]})",
        )
    group.add_argument(
        "--tkd-threshold",
        dest="tkd_threshold",
        type=_positive_float,
        metavar="T",
        help="TKD truncation threshold on |D(k)|, dimensionless, below 2/3 "
        f"(default: {_DEFAULTS['tkd_threshold']})",
    )
    group.add_argument(
        "--vsharp-max-radius-mm",
        dest="vsharp_max_radius_mm",
        type=_positive_float,
        metavar="MM",
        help=f"largest V-SHARP kernel radius in mm (default: {_DEFAULTS['vsharp_max_radius_mm']})",
    )
    group.add_argument(
        "--vsharp-min-radius-mm",
        dest="vsharp_min_radius_mm",
        type=_positive_float,
        metavar="MM",
        help="smallest V-SHARP kernel radius in mm (default: one voxel)",
    )
    for stage, example in (("bfr", "radius_mm=8"), ("inversion", "regularization=2e-4")):
        group.add_argument(
            f"--{stage}-param",
            dest=f"{stage}_params",
            action="append",
            type=_method_param,
            metavar="KEY=VALUE",
            help=f"set a parameter of the --{stage} method by its name (repeatable), e.g. "
            f"--{stage}-param {example}; an unknown name fails with the list of the method's "
            "parameters and defaults (also in docs/algorithms.md); overrides "
            + ("--vsharp-*-radius-mm" if stage == "bfr" else "--tkd-threshold"),
        )
    group.add_argument(
        "--mask-erosions",
        dest="mask_erosions",
        type=_nonnegative_int,
        metavar="N",
        help=f"erode the brain mask by N voxels (default: {_DEFAULTS['mask_erosions']})",
    )
    group.add_argument(
        "--phase-offset-correction",
        dest="phase_offset_correction",
        choices=PHASE_OFFSET_CHOICES,
        help="remove the receive phase offset before combining echoes: mcpc3ds = MCPC-3D-S "
        "(Eckstein 2018) (default: none; the echo fit estimates an offset itself)",
    )
    group.add_argument(
        "--bipolar-correction",
        dest="bipolar_correction",
        action=argparse.BooleanOptionalAction,
        help="correct the odd/even-echo phase difference of bipolar readouts (>= 3 echoes, "
        "equally spaced)",
    )
    group.add_argument(
        "--swi",
        dest="write_swi",
        action=argparse.BooleanOptionalAction,
        help="write SWI (_swi) and minimum-intensity projection (_minIP) images (default: on "
        "when magnitude is available)",
    )
    group.add_argument(
        "--brain-mask-dir",
        dest="brain_mask_dir",
        type=Path,
        metavar="DIR",
        help="use your own masks: a BIDS derivatives folder holding "
        "sub-X/[ses-Y/]anat/<prefix>_desc-brain_mask.nii[.gz] for every acquisition, on its "
        "grid (overrides --masking; nonzero = inside, a probability map in 0..1: >= 0.5; "
        "--mask-erosions applies)",
    )


def _add_region_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Template registration and regional susceptibility")
    group.add_argument(
        "--reference",
        dest="reference",
        metavar="REGION",
        help="susceptibility reference: 'brain' subtracts the mean over the QSM mask (the "
        "brain mask where the Chimap is valid, _desc-qsm_mask), 'csf' "
        "the mean of the atlas's lateral ventricles, any atlas region name (e.g. "
        "white_matter; both hemispheres) its mean, 'none' keeps the inversion's own offset "
        f"(default: {_DEFAULTS['reference']}; choices: {', '.join(REFERENCE_CHOICES)} or a "
        "region)",
    )
    group.add_argument(
        "--atlas",
        dest="atlas",
        metavar="NAME|FILE",
        help="atlas of the regional tables: 'qsmprep' (deep grey nuclei, cortex, white matter, "
        "ventricles; see docs/atlases.md), 'AAL3', 'HCPex', an atlas in TemplateFlow's cache, "
        "or a label NIfTI in MNI152NLin2009cAsym with --atlas-labels "
        f"(default: {_DEFAULTS['atlas']})",
    )
    group.add_argument(
        "--atlas-labels",
        dest="atlas_labels",
        type=Path,
        metavar="FILE.tsv",
        help="label table of an --atlas file: a TSV with columns index and name",
    )
    group.add_argument(
        "--t1w",
        dest="use_t1w",
        action=argparse.BooleanOptionalAction,
        help="register through the session's T1w when it has one (magnitude -> T1w rigid, "
        "T1w -> template nonlinear) (default: on)",
    )
    group.add_argument(
        "--regions",
        dest="regions",
        action=argparse.BooleanOptionalAction,
        help="register to MNI152NLin2009cAsym (ANTs) and write the native-space atlas "
        "(_dseg), the regional table (_desc-regions_stats.tsv), the transforms and a "
        "template-space Chimap (default: on when magnitude is available)",
    )


def _add_other_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Other options")
    group.add_argument(
        "--config-file",
        dest="config_file",
        type=_path,
        metavar="FILE.toml",
        help="TOML file of settings (as written into each subject's log folder); options "
        "given on the command line override it",
    )
    group.add_argument(
        "--dry-run",
        dest="dry_run",
        action=argparse.BooleanOptionalAction,
        help="check the inputs and build the workflow without running it",
    )
    group.add_argument(
        "--reports-only",
        dest="reports_only",
        action=argparse.BooleanOptionalAction,
        help="write each subject's HTML report (OUTPUT_DIR/sub-<label>.html) from the "
        "derivatives already in OUTPUT_DIR, without running anything",
    )
    group.add_argument(
        "--seed",
        dest="seed",
        type=_nonnegative_int,
        metavar="N",
        help=f"master random seed (default: {_DEFAULTS['seed']})",
    )
    group.add_argument(
        "-v",
        "--verbose",
        dest="verbose",
        action="count",
        help="more messages; repeat for more (-vv)",
    )
    group.add_argument("--version", action="version", version=f"qsmprep {__version__}")


# -- parse --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Parse a command line into validated settings.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    Settings

    Notes
    -----
    Errors exit with status 2 and a one-line message (``argparse`` convention).
    """
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    config_file = given.pop("config_file", None)
    values: dict[str, Any] = _read_config(parser, config_file) if config_file else {}
    for key in ("bfr_params", "inversion_params"):  # KEY=VALUE pairs add to the file's table
        if key in given:
            given[key] = {**(values.get(key) or {}), **dict(given[key])}
    values.update(given)
    _absolute_paths(values)
    _check_dirs(parser, values["bids_dir"], values["output_dir"])
    try:
        return Settings.from_dict(values)
    except ValueError as err:
        parser.error(str(err))
        raise  # pragma: no cover - parser.error exits


def _read_config(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    if not path.is_file():
        parser.error(f"--config-file: file not found: {path}")
    try:
        return read_toml(path)
    except ValueError as err:
        parser.error(f"--config-file {' '.join(str(err).split())}")
        raise  # pragma: no cover - parser.error exits


def _absolute_paths(values: dict[str, Any]) -> None:
    for key in _PATH_KEYS:
        if values.get(key) is not None:
            values[key] = _path(str(values[key]))


def _check_dirs(parser: argparse.ArgumentParser, bids_dir: Path, output_dir: Path) -> None:
    if not bids_dir.is_dir():
        parser.error(f"BIDS dataset folder not found: {bids_dir}")
    if output_dir == bids_dir:
        parser.error(
            f"output_dir must differ from bids_dir ({bids_dir}); "
            "use e.g. <bids_dir>/derivatives/qsmprep"
        )
