"""``qsmprep-tools``: single QSM stages on plain NIfTI files.

For users who already have intermediate maps (a field map, a mask, a local field) and want
one stage of the pipeline without a BIDS dataset::

    qsmprep-tools mask     --magnitude MAG1.nii.gz [MAG2 ...] -o MASK.nii.gz [--erosions N]
    qsmprep-tools mask     --phase P1.nii.gz [P2 ...] --te-s TE1 [TE2 ...] -o MASK.nii.gz
    qsmprep-tools combine  --phase P1 [P2 ...] [--magnitude M1 [M2 ...]] --te-s TE1 [TE2 ...]
                           --mask MASK -o FIELD_HZ.nii.gz [--unwrap laplacian]
    qsmprep-tools unwrap   --phase PHASE.nii.gz [--mask MASK] -o UNWRAPPED.nii.gz
    qsmprep-tools polar    --real R1 [R2 ...] --imag I1 [I2 ...] -o PHASE.nii.gz
                           [--magnitude-out MAG.nii.gz]
    qsmprep-tools bgremove --field TOTAL.nii.gz --mask MASK -o LOCAL.nii.gz [--mask-out M]
                           [--algorithm resharp] [--b0-dir X Y Z] [--param KEY=VALUE ...]
    qsmprep-tools invert   --field LOCAL.nii.gz --mask MASK -o CHI.nii.gz [--algorithm tv]
                           [--field-units {ppm,hz,rad}] [--b0-tesla T] [--te-s TE]
                           [--b0-dir X Y Z] [--param KEY=VALUE ...]
                           [--magnitude MAG.nii.gz] [--noise-std SD.nii.gz]
    qsmprep-tools r2star   --magnitude M1 [M2 ...] --te-s TE1 [TE2 ...] [--mask MASK]
                           -o R2STAR.nii.gz [--t2star-out T2STAR.nii.gz] [--method auto]
    qsmprep-tools swi      --magnitude MAG.nii.gz --phase PHASE.nii.gz -o SWI.nii.gz
                           [--minip-out MINIP.nii.gz [--slab-mm 16]] [--mask MASK]
                           [--highpass-sigma-mm 6] [--power 4] [--suppress paramagnetic]
                           [--phase-sign {1,-1}] [--echo N]

This module only parses, loads (:mod:`qsmprep.interfaces.nifti`), calls
:mod:`qsmprep.algorithms` and saves; the maths lives there. Outputs are float32 (masks
uint8) on the input grid with the input affine; images are never resampled.

B0 direction: by default B0 is along +z of the NIfTI world (scanner) frame and is expressed
in voxel axes from the affine (:func:`~qsmprep.algorithms.kernels.b0_direction_from_affine`),
so oblique acquisitions are handled exactly. ``--b0-dir X Y Z`` overrides it with a vector in
the same world (scanner RAS) frame, converted to voxel axes as
``b_vox = normalize(inv(R) @ b_world)``, ``R = affine[:3, :3] / column norms``; to give a
direction in voxel axes instead, pass ``R @ b_vox``.

Errors print one line ``qsmprep-tools: error: ...`` to stderr; the exit code is 2 for
command-line errors (bad or missing options, missing input files) and 1 for failures while
running (unreadable NIfTI, mismatched grids, an algorithm rejecting its input). Outputs are
written to a temporary name in the output folder and renamed at the end, so a failed run
leaves no output file behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PROG = "qsmprep-tools"
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


#: How a --mask file is read (:func:`qsmprep.algorithms.masking.binarize_mask`).
_MASK_HELP = "mask (nonzero = in; a probability map in 0..1: >= 0.5)"


class _UsageError(Exception):
    """A command-line error (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and do not exit (``main`` returns the code)."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        raise _UsageError(message)


# --------------------------------------------------------------------------------------------
# parser (pure)
# --------------------------------------------------------------------------------------------
_B0_DIR_HELP = (
    "B0 direction as a vector in the WORLD (scanner, NIfTI RAS) frame, like B0 itself "
    "(default 0 0 1). It is converted to voxel axes with the rotation of the image affine: "
    "b_vox = normalize(inv(R) @ b_world), R = affine[:3,:3] / column norms. To give a "
    "direction b_vox in voxel axes instead, pass R @ b_vox."
)


def _add_io(p: argparse.ArgumentParser, *, output_help: str) -> None:
    p.add_argument("-o", "--output", required=True, metavar="OUT.nii.gz", help=output_help)


def _add_b0_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--b0-dir", nargs=3, type=float, metavar=("X", "Y", "Z"), help=_B0_DIR_HELP)


def _add_param(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help=f"a parameter of the --algorithm, by name (repeatable), e.g. --param {example}; "
        "an unknown name fails with the list of the method's parameters and defaults",
    )  # fmt: skip


def _method_params(stage: str, algorithm: str, items: Sequence[str]) -> dict:
    """``--param KEY=VALUE`` items, checked against the method (a usage error if wrong)."""
    from qsmprep.config import check_method_params, parse_param

    try:
        params = dict(parse_param(item) for item in items)
        return check_method_params(stage, algorithm, params)
    except ValueError as err:
        raise _UsageError(str(err).replace(f"--{stage}-param", "--param")) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``qsmprep-tools`` parser with its subcommands (no side effects)."""
    from qsmprep.__about__ import __version__
    from qsmprep.algorithms.background import BFR_METHODS
    from qsmprep.algorithms.inversion import (
        INVERSION_METHODS,
        SINGLE_STEP_METHODS,
        USES_FIELD_NOISE,
        USES_MAGNITUDE,
    )
    from qsmprep.algorithms.r2star import R2STAR_METHODS
    from qsmprep.algorithms.swi import SWI_SUPPRESS
    from qsmprep.algorithms.unwrap import UNWRAP_METHODS

    parser = _Parser(
        prog=PROG,
        description="Run single QSM stages on plain NIfTI files (no BIDS needed). "
        "Outputs keep the input grid and affine.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "invert",
        help="dipole inversion: local field -> susceptibility (ppm)",
        description="Dipole inversion of a local (background-removed) field. Output: chi in "
        "ppm, float32, 0 outside the mask, not referenced (its mean is arbitrary). With "
        "--algorithm single-step-tv (qsmprep's default) FIELD is the total field, background "
        "included, and chi is valid in the mask eroded by radius_mm (--mask-out). "
        + "--b0-dir: "
        + _B0_DIR_HELP,
    )
    p.add_argument("--field", required=True, metavar="FIELD.nii.gz",
                   help="local field map (total field for single-step-tv)")  # fmt: skip
    p.add_argument("--mask", required=True, metavar="MASK.nii.gz", help=_MASK_HELP)
    _add_io(p, output_help="susceptibility map (ppm)")
    p.add_argument("--mask-out", metavar="MASK_OUT.nii.gz",
                   help="write the mask where chi is valid (single-step-tv: the mask eroded by "
                   "its radius_mm; otherwise the input mask)")  # fmt: skip
    p.add_argument("--algorithm", default="tv",
                   choices=sorted(INVERSION_METHODS) + sorted(SINGLE_STEP_METHODS),
                   help="inversion method (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--field-units", default=None, choices=("ppm", "hz", "rad"),
        help="unit of --field: ppm of B0; hz (needs --b0-tesla); rad, the phase of one echo, "
        "field = phase / (2 pi TE) Hz (needs --te-s and --b0-tesla) (default: the 'Units' of "
        "the field's JSON sidecar, FIELD.json, when it has one, as qsmprep's field maps do "
        "(Hz), with its MagneticFieldStrength and EchoTime; otherwise ppm)",
    )  # fmt: skip
    p.add_argument("--b0-tesla", type=float, metavar="T", help="field strength (T)")
    p.add_argument("--te-s", type=float, metavar="TE",
                   help="echo time (s) of a rad field; with --b0-tesla it also sets the phase "
                   f"scale of {', '.join(USES_MAGNITUDE)} (2 pi gamma B0 TE; e.g. the mean TE; "
                   "default 3 T and 20 ms)")  # fmt: skip
    p.add_argument("--magnitude", metavar="MAG.nii.gz",
                   help="magnitude (3-D, or 4-D with echoes last) for --algorithm "
                   f"{', '.join(USES_MAGNITUDE)}: data weights (and MEDI's edge mask)")  # fmt: skip
    p.add_argument("--noise-std", metavar="SD.nii.gz",
                   help="field noise map in the unit of --field (e.g. MEDI's N_std, or the "
                   f"echo fit's) for --algorithm {', '.join(USES_FIELD_NOISE)}: data weight "
                   "1 / noise, which takes precedence over the magnitude's")  # fmt: skip
    _add_b0_dir(p)
    _add_param(p, "regularization=2e-4")

    p = sub.add_parser(
        "bgremove",
        help="background field removal: total field -> local field (unit preserved)",
        description="Remove the background field inside the mask. The unit of the field is "
        "preserved. The B0 direction is used only by dipole-based methods (pdf). "
        + "--b0-dir: "
        + _B0_DIR_HELP,
    )
    p.add_argument("--field", required=True, metavar="TOTAL.nii.gz", help="total field map")
    p.add_argument("--mask", required=True, metavar="MASK.nii.gz", help=_MASK_HELP)
    _add_io(p, output_help="local field map (same unit as --field)")
    p.add_argument("--mask-out", metavar="MASK_OUT.nii.gz",
                   help="write the (eroded) mask where the local field is valid")  # fmt: skip
    p.add_argument("--algorithm", default="resharp", choices=sorted(BFR_METHODS),
                   help="background removal method (default: %(default)s)")  # fmt: skip
    _add_b0_dir(p)
    _add_param(p, "radius_mm=8")

    p = sub.add_parser(
        "mask",
        help="brain/tissue mask from magnitude (Otsu) or from phase quality",
        description="Mask from the magnitude (echoes combined by root-sum-of-squares, robust "
        "Otsu threshold) or, with --phase and --te-s, from phase-gradient coherence (the "
        "magnitude, if given too, then darkens low-signal voxels).",
    )
    p.add_argument("--magnitude", nargs="+", metavar="MAG", help="magnitude per echo (or 4-D)")
    p.add_argument("--phase", nargs="+", metavar="PHASE", help="phase per echo (or 4-D)")
    p.add_argument("--te-s", nargs="+", type=float, metavar="TE",
                   help="echo times (s), one per echo; needed with --phase")  # fmt: skip
    _add_io(p, output_help="mask (uint8, 0/1)")
    p.add_argument("--erosions", type=int, default=0, metavar="N",
                   help="6-connected erosions at the end (default: %(default)s)")  # fmt: skip

    p = sub.add_parser(
        "combine",
        help="multi-echo phase -> total field (Hz), spatially unwrapped",
        description="Scale the phase to radians, fit phi_n = phi0 + 2 pi f TE_n per voxel "
        "(magnitude-weighted if given), then unwrap the field spatially. Output: total "
        "field in Hz, 0 outside the mask.",
    )
    p.add_argument("--phase", nargs="+", required=True, metavar="PHASE", help="phase per echo")
    p.add_argument("--magnitude", nargs="+", metavar="MAG", help="magnitude per echo")
    p.add_argument("--te-s", nargs="+", type=float, required=True, metavar="TE",
                   help="echo times (s), one per echo, increasing")  # fmt: skip
    p.add_argument("--mask", required=True, metavar="MASK.nii.gz", help=_MASK_HELP)
    _add_io(p, output_help="total field map (Hz)")
    p.add_argument("--unwrap", default="laplacian", choices=UNWRAP_METHODS,
                   help="spatial unwrapping method (default: %(default)s)")  # fmt: skip

    p = sub.add_parser(
        "unwrap",
        help="Laplacian phase unwrapping of one phase image (radians)",
        description="Scale one phase image to radians and unwrap it with the Laplacian "
        "method. Output: unwrapped phase (rad), 0 outside the mask.",
    )
    p.add_argument("--phase", required=True, metavar="PHASE.nii.gz", help="wrapped phase (3-D)")
    p.add_argument("--mask", metavar="MASK.nii.gz", help=_MASK_HELP[:-1] + "; default all)")
    _add_io(p, output_help="unwrapped phase (rad)")

    p = sub.add_parser(
        "polar",
        help="real and imaginary parts -> phase (rad) and magnitude",
        description="Phase = atan2(imag, real) in radians and magnitude = |real + i imag| of "
        "images stored as real and imaginary parts (GE's usual export; any integer or float "
        "coding). A sign that alternates from one slice to the next (some GE 3-D "
        "reconstructions) is recognised and undone, with a note. Several files are echoes: "
        "the outputs are then 4-D with echoes last, which combine, mask, r2star and swi read.",
    )
    p.add_argument("--real", nargs="+", required=True, metavar="REAL.nii.gz",
                   help="real part(s), one per echo (or one 4-D file)")  # fmt: skip
    p.add_argument("--imag", nargs="+", required=True, metavar="IMAG.nii.gz",
                   help="imaginary part(s), in the same order")  # fmt: skip
    _add_io(p, output_help="phase (rad)")
    p.add_argument("--magnitude-out", metavar="MAG.nii.gz", help="also write the magnitude")

    p = sub.add_parser(
        "r2star",
        help="multi-echo magnitude -> R2* (1/s) and optionally T2* (s)",
        description="Fit S(TE) = M0 exp(-R2* TE) per voxel to the echo magnitudes. Output: "
        "R2* in 1/s, float32, clipped to [0, 2000], 0 outside the mask; --t2star-out adds "
        "T2* = 1/R2* in s (0 where R2* = 0).",
    )
    p.add_argument("--magnitude", nargs="+", required=True, metavar="MAG",
                   help="magnitude per echo (3-D files) or one 4-D file")  # fmt: skip
    p.add_argument("--te-s", nargs="+", type=float, required=True, metavar="TE",
                   help="echo times (s), one per echo, increasing")  # fmt: skip
    p.add_argument("--mask", metavar="MASK.nii.gz", help=_MASK_HELP[:-1] + "; default all)")
    _add_io(p, output_help="R2* map (1/s)")
    p.add_argument("--t2star-out", metavar="T2STAR.nii.gz", help="also write T2* (s)")
    p.add_argument("--method", default="auto", choices=R2STAR_METHODS,
                   help="auto: ARLO for >= 3 equally spaced echoes, else log-linear "
                   "(default: %(default)s)")  # fmt: skip

    p = sub.add_parser(
        "swi",
        help="susceptibility-weighted image (and minIP) from magnitude and phase",
        description="Scale the phase to radians, high-pass it by homodyne filtering and "
        "multiply the magnitude by the phase mask to the given power. Output: SWI, float32, "
        "in the unit of the magnitude (the magnitude itself outside --mask). 4-D inputs: "
        "the last echo is used unless --echo is given. --minip-out adds a sliding minimum-"
        "intensity projection over --slab-mm along the third voxel axis, on the same grid.",
    )
    p.add_argument("--magnitude", required=True, metavar="MAG.nii.gz",
                   help="magnitude (3-D, or 4-D with echoes last)")  # fmt: skip
    p.add_argument("--phase", required=True, metavar="PHASE.nii.gz",
                   help="wrapped phase of the same echo (3-D, or 4-D, echoes last)")  # fmt: skip
    _add_io(p, output_help="susceptibility-weighted image")
    p.add_argument("--minip-out", metavar="MINIP.nii.gz", help="also write the SWI minIP")
    p.add_argument("--slab-mm", type=float, metavar="MM",
                   help="minIP slab thickness (mm; default 16; needs --minip-out)")  # fmt: skip
    p.add_argument("--mask", metavar="MASK.nii.gz", help=_MASK_HELP[:-1] + "; default all)")
    p.add_argument("--highpass-sigma-mm", type=float, default=6.0, metavar="MM",
                   help="homodyne low-pass Gaussian sigma (mm; default: %(default)s)")  # fmt: skip
    p.add_argument("--power", type=float, default=4.0,
                   help="number of phase-mask multiplications (default: %(default)s)")  # fmt: skip
    p.add_argument("--suppress", default="paramagnetic", choices=SWI_SUPPRESS,
                   help="phase sign to darken; paramagnetic = positive phase, veins "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--phase-sign", type=int, default=1, choices=(1, -1),
                   help="-1 flips the stored phase to this package's convention, e.g. GE "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--echo", type=int, metavar="N",
                   help="echo (1-based) of 4-D inputs to use (default: the last)")  # fmt: skip
    return parser


# --------------------------------------------------------------------------------------------
# validation before any work (usage errors, exit code 2)
# --------------------------------------------------------------------------------------------
def _input_paths(args) -> list[str]:
    paths = []
    for name in ("field", "mask", "phase", "magnitude", "noise_std", "real", "imag"):
        value = getattr(args, name, None)
        if value is None:
            continue
        paths.extend([value] if isinstance(value, str) else value)
    return paths


def _validate(args) -> None:
    for path in _input_paths(args):
        if not Path(path).is_file():
            raise _UsageError(f"input file not found: {path}")
    flags = ["--output"] + [
        f"--{name.replace('_', '-')}"
        for name in ("mask_out", "t2star_out", "minip_out", "magnitude_out")
        if getattr(args, name, None)
    ]
    outputs = [getattr(args, flag[2:].replace("-", "_")) for flag in flags]
    for out in outputs:
        if not out.endswith(_NIFTI_SUFFIXES):
            raise _UsageError(f"output {out} must end in .nii or .nii.gz")
    if len(set(map(os.path.abspath, outputs))) != len(outputs):
        raise _UsageError(f"{' and '.join(flags)} must differ")
    if args.command in ("invert", "bgremove"):
        stage = "inversion" if args.command == "invert" else "bfr"
        args.params = _method_params(stage, args.algorithm, args.param)
    if args.command == "invert":
        if args.field_units is None:
            _units_from_sidecar(args)
        if args.field_units in ("hz", "rad") and args.b0_tesla is None:
            raise _UsageError(f"--field-units {args.field_units} needs --b0-tesla")
        if args.field_units == "rad" and args.te_s is None:
            raise _UsageError("--field-units rad needs --te-s (the echo time of the phase)")
        if args.b0_tesla is not None and not args.b0_tesla > 0:
            raise _UsageError(f"--b0-tesla must be positive, got {args.b0_tesla}")
        if args.te_s is not None and not 0 < args.te_s <= 1:
            raise _UsageError(f"--te-s must be in seconds (0 < TE <= 1), got {args.te_s}")
        from qsmprep.algorithms.inversion import USES_FIELD_NOISE, USES_MAGNITUDE

        for flag, users in (("magnitude", USES_MAGNITUDE), ("noise_std", USES_FIELD_NOISE)):
            if getattr(args, flag) and args.algorithm not in users:
                raise _UsageError(f"--{flag.replace('_', '-')} is used by --algorithm "
                                  f"{', '.join(users)} only, not {args.algorithm}")  # fmt: skip
    if getattr(args, "b0_dir", None) is not None:
        b = np.asarray(args.b0_dir, float)
        if not np.all(np.isfinite(b)) or not np.linalg.norm(b) > 0:
            raise _UsageError(f"--b0-dir must be a non-zero finite vector, got {args.b0_dir}")
    if args.command == "polar" and len(args.real) != len(args.imag):
        raise _UsageError(f"{len(args.real)} --real file(s) but {len(args.imag)} --imag file(s)")
    if args.command == "mask":
        if not args.magnitude and not args.phase:
            raise _UsageError("mask needs --magnitude MAG [...] or --phase P [...] --te-s TE [...]")
        if args.phase and not args.te_s:
            raise _UsageError("mask --phase needs --te-s (one echo time per echo, in seconds)")
        if args.erosions < 0:
            raise _UsageError(f"--erosions must be >= 0, got {args.erosions}")
    if args.command == "r2star":
        if not all(0 < te <= 1 for te in args.te_s):
            raise _UsageError(f"--te-s must be in seconds (0 < TE <= 1), got "
                              f"{' '.join(map(str, args.te_s))}")  # fmt: skip
    if args.command == "swi":
        for flag in ("slab_mm", "highpass_sigma_mm", "power"):
            value = getattr(args, flag)
            if value is not None and not (np.isfinite(value) and value > 0):
                raise _UsageError(f"--{flag.replace('_', '-')} must be positive, got {value}")
        if args.slab_mm is not None and not args.minip_out:
            raise _UsageError("--slab-mm needs --minip-out")
        if args.echo is not None and args.echo < 1:
            raise _UsageError(f"--echo must be >= 1 (1 = first echo), got {args.echo}")
    if args.command in ("combine", "mask") and args.phase and args.magnitude:
        if len(args.magnitude) != len(args.phase):
            raise _UsageError(f"got {len(args.phase)} --phase files but "
                              f"{len(args.magnitude)} --magnitude files")  # fmt: skip


# --------------------------------------------------------------------------------------------
# loading helpers (runtime errors name the file)
# --------------------------------------------------------------------------------------------
def _load3d(path: str) -> tuple[np.ndarray, np.ndarray]:
    from qsmprep.interfaces import nifti

    data, affine = nifti.load(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D image, got shape {data.shape}")
    return data, affine


def _load_mask(path: str, shape: tuple, affine: np.ndarray, ref: str) -> np.ndarray:
    from qsmprep.interfaces import nifti

    mask, mask_affine, note = nifti.load_mask(path)
    if mask.shape != tuple(shape):
        raise ValueError(f"{path}: mask shape {mask.shape} does not match {ref} {tuple(shape)}")
    if not np.allclose(mask_affine, affine, atol=1e-3):
        raise ValueError(f"{path}: mask affine differs from that of {ref} (different grid)")
    if note:
        print(f"{PROG}: note: {path}: {note}", file=sys.stderr)
    return mask


def _load_on_grid(path: str, shape: tuple, affine: np.ndarray, ref: str, what: str, *,
                  ndim: int = 4) -> np.ndarray:  # fmt: skip
    """A 3-D image (or, up to ``ndim``, 4-D with echoes last) on the grid of ``ref``."""
    from qsmprep.interfaces import nifti

    data, other = nifti.load(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in range(3, ndim + 1) or data.shape[:3] != tuple(shape):
        raise ValueError(f"{path}: {what} shape {data.shape} does not match {ref} {tuple(shape)}")
    if not np.allclose(other, affine, atol=1e-3):
        raise ValueError(f"{path}: {what} affine differs from that of {ref} (different grid)")
    return data


def _voxel_size_mm(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) of an affine, rounded to 1e-5 mm.

    NIfTI stores the affine in float32, so an oblique 3 mm grid reads back as 3 +- 3e-7 mm;
    rounding makes radii that are whole multiples of the voxel size (erosions, SMV spheres)
    behave the same on oblique and axial grids.
    """
    from qsmprep.interfaces import nifti

    return np.round(nifti.geometry(affine)[0], 5)


def _units_from_sidecar(args) -> None:
    """Set ``args.field_units`` (and ``b0_tesla``/``te_s`` where not given) from the field's
    JSON sidecar, or ppm (the documented default) when it has none; a note says so."""
    import json

    from qsmprep.interfaces.bids import sidecar_path

    sidecar = sidecar_path(args.field)
    meta = {}
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _UsageError(f"{sidecar}: not a readable JSON sidecar ({exc}); fix it or "
                              "give --field-units") from None  # fmt: skip
    units = meta.get("Units") if isinstance(meta, dict) else None
    if units is None:
        args.field_units = "ppm"
        return
    args.field_units = str(units).lower()
    if args.field_units not in ("ppm", "hz", "rad"):
        raise _UsageError(f"{sidecar}: Units {units!r} is not ppm, Hz or rad; give --field-units")
    used = ["Units"]
    b0 = meta.get("MagneticFieldStrength")
    if args.field_units != "ppm" and args.b0_tesla is None and isinstance(b0, (int, float)):
        args.b0_tesla = float(b0)
        used.append("MagneticFieldStrength")
    te = meta.get("EchoTime")
    if args.field_units == "rad" and args.te_s is None and isinstance(te, (int, float)):
        args.te_s = float(te)
        used.append("EchoTime")
    print(f"{PROG}: note: reading {args.field} in {units}"
          + (f" at {args.b0_tesla:g} T" if args.b0_tesla and args.field_units != "ppm" else "")
          + f", from {sidecar.name} ({', '.join(used)}); --field-units overrides it",
          file=sys.stderr)  # fmt: skip


#: Above these robust amplitudes (ppm) a field is more likely in Hz or rad than in ppm: tissue
#: local fields stay within about +-1 ppm, total fields (with the background) within about
#: +-20 ppm even beside the sinuses.
_IMPLAUSIBLE_PPM = {"local": 3.0, "total": 30.0}


def _note_implausible_ppm(field: np.ndarray, mask: np.ndarray, path: str, kind: str) -> None:
    """A note on stderr when a field read as ppm has an amplitude no field in ppm has."""
    values = field[mask]
    if values.size == 0:
        return
    amplitude = float(np.percentile(np.abs(values - np.median(values)), 99))
    if amplitude > _IMPLAUSIBLE_PPM[kind]:
        print(f"{PROG}: note: {path}: read as ppm, the {kind} field reaches {amplitude:.3g} ppm "
              f"(99th percentile of |field - median| in the mask), beyond the "
              f"+-{_IMPLAUSIBLE_PPM[kind]:g} ppm of a {kind} field; if it is in Hz or rad, "
              "give --field-units (with --b0-tesla)", file=sys.stderr)  # fmt: skip


def _note_skew(affine: np.ndarray, path: str) -> None:
    """A note on stderr when ``path``'s affine is sheared (see ``check_acquisition_advice``)."""
    from qsmprep.algorithms.kernels import axis_skew_degrees, sheared_affine_note

    note = sheared_affine_note(axis_skew_degrees(affine))
    if note:
        print(f"{PROG}: note: {path}: {note}", file=sys.stderr)


def b0_direction_voxel(affine: np.ndarray, b0_world=None) -> np.ndarray:
    """Unit B0 direction in voxel axes from a world-frame vector (default world +z).

    ``b_vox = normalize(inv(R) @ b_world)`` with ``R = affine[:3, :3] / column norms``.
    """
    from qsmprep.algorithms.kernels import b0_direction_from_affine, voxel_size_from_affine

    if b0_world is None:
        return b0_direction_from_affine(affine)
    a = np.asarray(affine, float)
    rot = a[:3, :3] / voxel_size_from_affine(a)
    b = np.linalg.solve(rot, np.asarray(b0_world, float))
    return b / np.linalg.norm(b)


# --------------------------------------------------------------------------------------------
# atomic output
# --------------------------------------------------------------------------------------------
def _tmp_name(out: Path) -> Path:
    suffix = next(s for s in _NIFTI_SUFFIXES if out.name.endswith(s))
    stem = out.name[: -len(suffix)]
    return out.with_name(f".{stem}.tmp-{uuid.uuid4().hex[:8]}{suffix}")


def _save_all(items: Sequence[tuple[np.ndarray, np.ndarray, str, type]]) -> None:
    """Save ``(data, affine, path, dtype)`` items to temporary names, then rename them all."""
    from qsmprep.interfaces import nifti

    done: list[tuple[Path, Path]] = []
    try:
        for data, affine, path, dtype in items:
            out = Path(path)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_name(out)
            done.append((tmp, out))
            nifti.save(data, affine, tmp, dtype=dtype)
        for tmp, out in done:
            os.replace(tmp, out)
    finally:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# subcommands
# --------------------------------------------------------------------------------------------
def _run_invert(args) -> None:
    from qsmprep.algorithms import constants
    from qsmprep.algorithms.inversion import SINGLE_STEP_METHODS, USES_MAGNITUDE, invert

    field, affine = _load3d(args.field)
    mask = _load_mask(args.mask, field.shape, affine, args.field)
    if not np.all(np.isfinite(field[mask])):
        raise ValueError(f"{args.field}: field has non-finite values inside the mask")
    if args.field_units == "rad":
        field = field / (2.0 * np.pi * args.te_s)  # phase of one echo -> Hz
    if args.field_units in ("hz", "rad"):
        field = constants.hz_to_ppm(field, b0_tesla=args.b0_tesla)
    else:
        kind = "total" if args.algorithm in SINGLE_STEP_METHODS else "local"
        _note_implausible_ppm(field, mask, args.field, kind)
    params = dict(args.params)
    if args.algorithm in USES_MAGNITUDE and args.b0_tesla and args.te_s:  # as the pipeline
        params["phase_scale_rad_per_ppm"] = constants.phase_rad_per_ppm(
            b0_tesla=args.b0_tesla, echo_time_s=args.te_s
        )
    if args.magnitude:
        mag = _load_on_grid(args.magnitude, field.shape, affine, args.field, "magnitude")
        if not np.all(np.isfinite(mag[mask]) & (mag[mask] >= 0)):
            raise ValueError(f"{args.magnitude}: magnitude must be finite and >= 0 in the mask")
        params["magnitude"] = mag
    if args.noise_std:
        sd = _load_on_grid(args.noise_std, field.shape, affine, args.field, "noise map", ndim=3)
        if not np.all(sd[mask] > 0):
            raise ValueError(f"{args.noise_std}: noise map must be positive inside the mask")
        if args.field_units == "rad":
            sd = sd / (2.0 * np.pi * args.te_s)
        if args.field_units in ("hz", "rad"):
            sd = constants.hz_to_ppm(sd, b0_tesla=args.b0_tesla)
        params["noise_std"] = sd
    voxel_size_mm = _voxel_size_mm(affine)
    _note_skew(affine, args.field)
    b0_dir = b0_direction_voxel(affine, args.b0_dir)
    field = np.where(mask, field, 0).astype(np.float32)
    if args.algorithm in SINGLE_STEP_METHODS:  # the total field: background removal included
        chi, valid = SINGLE_STEP_METHODS[args.algorithm](
            field, mask, voxel_size_mm=voxel_size_mm, b0_direction=b0_dir, **params)  # fmt: skip
    else:
        chi = invert(args.algorithm, field, mask, voxel_size_mm=voxel_size_mm,
                     b0_direction=b0_dir, **params)  # fmt: skip
        valid = mask
    items = [(chi, affine, args.output, np.float32)]
    if args.mask_out:
        items.append((np.asarray(valid, bool), affine, args.mask_out, np.uint8))
    _save_all(items)


def _run_bgremove(args) -> None:
    from qsmprep.algorithms.background import remove_background

    field, affine = _load3d(args.field)
    mask = _load_mask(args.mask, field.shape, affine, args.field)
    if not np.all(np.isfinite(field[mask])):
        raise ValueError(f"{args.field}: field has non-finite values inside the mask")
    voxel_size_mm = _voxel_size_mm(affine)
    _note_skew(affine, args.field)
    local, valid = remove_background(
        args.algorithm, np.where(mask, field, 0).astype(np.float32), mask,
        voxel_size_mm=voxel_size_mm, b0_direction=b0_direction_voxel(affine, args.b0_dir),
        **args.params,
    )  # fmt: skip
    items = [(local, affine, args.output, np.float32)]
    if args.mask_out:
        items.append((np.asarray(valid, bool), affine, args.mask_out, np.uint8))
    _save_all(items)


def _load_phase_stack(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Phase files as ``(X, Y, Z, E)`` radians. As in the pipeline, a header scaling that
    shrinks the phase to an implausible span is undone (with a note on stderr)."""
    from qsmprep.algorithms.phase import scale_phase
    from qsmprep.interfaces import nifti

    stack, affine, notes = nifti.load_phase_stack(paths)
    for note in notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    try:
        return scale_phase(stack), affine
    except ValueError as exc:
        raise ValueError(f"{paths[0]}: {exc}") from exc


def _load_magnitude_stack(paths, shape, affine, ref) -> np.ndarray:
    from qsmprep.interfaces import nifti

    mag, mag_affine = nifti.load_stack(paths)
    if mag.shape != tuple(shape):
        raise ValueError(f"{paths[0]}: magnitude shape {mag.shape} does not match "
                         f"{ref} {tuple(shape)}")  # fmt: skip
    if not np.allclose(mag_affine, affine, atol=1e-3):
        raise ValueError(f"{paths[0]}: magnitude affine differs from that of {ref}")
    return mag


def _check_echo_count(te_s, n_echoes: int, ref: str) -> None:
    if len(te_s) != n_echoes:
        raise _UsageError(f"{ref}: {n_echoes} echo(es) but {len(te_s)} --te-s value(s)")


def _run_mask(args) -> None:
    from qsmprep.algorithms import masking
    from qsmprep.interfaces import nifti

    if args.phase:
        phase, affine = _load_phase_stack(args.phase)
        _check_echo_count(args.te_s, phase.shape[3], args.phase[0])
        mag = None
        if args.magnitude:
            mag = _load_magnitude_stack(args.magnitude, phase.shape, affine, args.phase[0])
        mask = masking.mask_from_phase_quality(phase, mag, echo_times_s=args.te_s,
                                               erosions=args.erosions)  # fmt: skip
    else:
        mag, affine = nifti.load_stack(args.magnitude)
        mask = masking.mask_from_magnitude(mag, erosions=args.erosions,
                                           voxel_size_mm=nifti.geometry(affine)[0])  # fmt: skip
    _save_all([(mask, affine, args.output, np.uint8)])


def _run_combine(args) -> None:
    from qsmprep.algorithms.combine import fit_field_linear, temporal_unwrap_guide
    from qsmprep.algorithms.unwrap import unwrap_field_hz

    phase, affine = _load_phase_stack(args.phase)
    _check_echo_count(args.te_s, phase.shape[3], args.phase[0])
    mag = None
    if args.magnitude:
        mag = _load_magnitude_stack(args.magnitude, phase.shape, affine, args.phase[0])
    mask = _load_mask(args.mask, phase.shape[:3], affine, args.phase[0])
    voxel_size_mm = _voxel_size_mm(affine)
    ref = temporal_unwrap_guide(phase, mag, echo_times_s=args.te_s, mask=mask,
                                voxel_size_mm=voxel_size_mm, unwrapping=args.unwrap)  # fmt: skip
    fit = fit_field_linear(phase, mag, echo_times_s=args.te_s, mask=mask, guide_field_hz=ref)
    field_hz = unwrap_field_hz(
        fit.field_hz, wrap_period_hz=fit.wrap_period_hz, voxel_size_mm=voxel_size_mm, mask=mask,
        method=args.unwrap,
    )  # fmt: skip
    _save_all([(field_hz, affine, args.output, np.float32)])


def _run_unwrap(args) -> None:
    from qsmprep.algorithms.unwrap import unwrap_laplacian

    phase, affine = _load_phase_stack([args.phase])
    if phase.shape[3] != 1:
        raise ValueError(f"{args.phase}: expected a 3-D image, got shape {phase.shape}")
    phase = phase[..., 0]
    mask = None if args.mask is None else _load_mask(args.mask, phase.shape, affine, args.phase)
    voxel_size_mm = _voxel_size_mm(affine)
    unwrapped = unwrap_laplacian(phase, voxel_size_mm=voxel_size_mm, mask=mask)
    _save_all([(unwrapped, affine, args.output, np.float32)])


def _run_polar(args) -> None:
    from qsmprep.interfaces.complex_parts import chopping_note, read_polar

    magnitude, phase, affine, axes = read_polar(args.real, args.imag)
    if axes:
        print(f"{PROG}: note: {args.real[0]}: {chopping_note(axes)}", file=sys.stderr)
    squeeze = (lambda a: a[..., 0]) if phase.shape[3] == 1 else (lambda a: a)
    items = [(squeeze(phase), affine, args.output, np.float32)]
    if args.magnitude_out:
        items.append((squeeze(magnitude), affine, args.magnitude_out, np.float32))
    _save_all(items)


def _run_r2star(args) -> None:
    from qsmprep.algorithms.r2star import r2star_map, t2star_from_r2star
    from qsmprep.interfaces import nifti

    mag, affine = nifti.load_stack(args.magnitude)
    _check_echo_count(args.te_s, mag.shape[3], args.magnitude[0])
    mask = None
    if args.mask is not None:
        mask = _load_mask(args.mask, mag.shape[:3], affine, args.magnitude[0])
    try:
        r2s = r2star_map(mag, echo_times_s=args.te_s, mask=mask, method=args.method)
    except ValueError as exc:
        raise ValueError(f"{args.magnitude[0]}: {exc}") from exc
    items = [(r2s, affine, args.output, np.float32)]
    if args.t2star_out:
        items.append((t2star_from_r2star(r2s), affine, args.t2star_out, np.float32))
    _save_all(items)


def _load_echo(
    path: str, echo: int | None, *, phase: bool = False
) -> tuple[np.ndarray, np.ndarray, int]:
    """A 3-D image, or echo ``echo`` (1-based; default the last) of a 4-D one. ``phase``:
    undo a header scaling that shrinks the phase to an implausible span, as the pipeline."""
    from qsmprep.interfaces import nifti

    if phase:
        data, affine, notes = nifti.load_phase_stack([path])
        for note in notes:
            print(f"{PROG}: note: {note}", file=sys.stderr)
    else:
        data, affine = nifti.load(path)
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise ValueError(f"{path}: expected a 3-D or 4-D image, got shape {data.shape}")
    n = data.shape[3]
    if echo is not None and echo > n:
        raise ValueError(f"{path}: --echo {echo} but the image has {n} echo(es)")
    return data, affine, n


def _run_swi(args) -> None:
    from qsmprep.algorithms.phase import scale_phase
    from qsmprep.algorithms.swi import minimum_intensity_projection, swi

    mag, affine, n_mag = _load_echo(args.magnitude, args.echo)
    phase, phase_affine, n_phase = _load_echo(args.phase, args.echo, phase=True)
    if phase.shape[:3] != mag.shape[:3]:
        raise ValueError(f"{args.phase}: phase shape {phase.shape[:3]} does not match "
                         f"{args.magnitude} {mag.shape[:3]}")  # fmt: skip
    if not np.allclose(phase_affine, affine, atol=1e-3):
        raise ValueError(f"{args.phase}: phase affine differs from that of {args.magnitude}")
    if n_mag > 1 and n_phase > 1 and n_mag != n_phase:
        raise ValueError(f"{args.phase}: {n_phase} phase echoes but {n_mag} magnitude echoes")
    try:
        phase = scale_phase(phase, sign=args.phase_sign)  # whole acquisition: one period
    except ValueError as exc:
        raise ValueError(f"{args.phase}: {exc}") from exc
    echo = -1 if args.echo is None else args.echo - 1
    mag = mag[..., echo if n_mag > 1 else 0]
    phase = phase[..., echo if n_phase > 1 else 0]
    if not np.all(np.isfinite(mag)):
        raise ValueError(f"{args.magnitude}: magnitude has non-finite values")
    mask = None if args.mask is None else _load_mask(args.mask, mag.shape, affine, args.magnitude)
    voxel_size_mm = _voxel_size_mm(affine)
    image = swi(mag, phase, kind="phase", voxel_size_mm=voxel_size_mm, mask=mask,
                highpass_sigma_mm=args.highpass_sigma_mm, power=args.power,
                suppress=args.suppress)  # fmt: skip
    items = [(image, affine, args.output, np.float32)]
    if args.minip_out:
        slab_mm = 16.0 if args.slab_mm is None else args.slab_mm
        minip = minimum_intensity_projection(image, slab_mm=slab_mm, voxel_size_mm=voxel_size_mm)
        items.append((minip, affine, args.minip_out, np.float32))
    _save_all(items)


_COMMANDS = {
    "invert": _run_invert,
    "bgremove": _run_bgremove,
    "mask": _run_mask,
    "combine": _run_combine,
    "unwrap": _run_unwrap,
    "polar": _run_polar,
    "r2star": _run_r2star,
    "swi": _run_swi,
}


def _fail(message: str, code: int) -> int:
    lines = str(message).strip().splitlines() or ["unknown error"]
    print(f"{PROG}: error: {lines[0]}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``qsmprep-tools``; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        _validate(args)
    except _UsageError as exc:
        return _fail(str(exc), 2)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        _COMMANDS[args.command](args)
    except _UsageError as exc:  # found once the inputs are read (e.g. echoes vs --te-s)
        return _fail(str(exc), 2)
    except (ValueError, OSError) as exc:
        return _fail(f"{args.command}: {exc}", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
