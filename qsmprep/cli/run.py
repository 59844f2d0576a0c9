"""``qsmprep`` entry point: validate, build, run, report, exit code."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

LOGGER = logging.getLogger("qsmprep")


def _fail(msg: str, code: int = 1) -> int:
    print(f"qsmprep: error: {msg}", file=sys.stderr)
    return code


#: Outputs outside BIDS (logs, SWI, the reports and their figures, the group level's cohort
#: tables), for ``.bidsignore``.
BIDSIGNORE = ("**/log/", "logs/", "*_swi.nii.gz", "*_swi.json", "*_minIP.nii.gz", "*_minIP.json",
              "**/figures/", "sub-*.html", "group/")  # fmt: skip


def write_dataset_description(output_dir: Path) -> Path:
    """Write the derivative ``dataset_description.json`` (BIDS 1.10)."""
    from qsmprep.__about__ import __version__

    output_dir.mkdir(parents=True, exist_ok=True)
    desc = {
        "Name": "qsmprep derivatives: quantitative susceptibility maps",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "qsmprep", "Version": __version__,
                         "CodeURL": "https://github.com/qsmprep/qsmprep"}],
        "HowToAcknowledge": "Cite qsmprep and the methods listed in logs/CITATION.md.",
    }  # fmt: skip
    path = output_dir / "dataset_description.json"
    path.write_text(json.dumps(desc, indent=2) + "\n")
    bidsignore = output_dir / ".bidsignore"
    existing = bidsignore.read_text().splitlines() if bidsignore.exists() else []
    missing = [line for line in BIDSIGNORE if line not in existing]
    if missing:  # add to a user's own file, never drop their lines
        bidsignore.write_text("".join(f"{line}\n" for line in existing + missing))
    return path


def _params_text(params: dict) -> str:
    return " (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else ""


def describe_plan(settings, acquisitions) -> str:
    """Human-readable list of acquisitions found and the stages that would run."""
    lines = [f"qsmprep would process {len(acquisitions)} acquisition(s) from {settings.bids_dir}:"]
    for acq in acquisitions:
        tes = ", ".join(f"{t * 1e3:.2f}" for t in acq.echo_times_s)
        mag = (("real/imaginary parts" if acq.from_complex_parts else "magnitude")
               if acq.has_magnitude else "phase-only")
        b0 = f"{acq.b0_tesla:g} T" + (" (from --b0-tesla)" if acq.b0_from_cli else "")
        t1w = f", T1w {Path(acq.t1w_file).name}" if acq.t1w_file and settings.use_t1w else ""
        lines.append(f"  {acq.name}: {acq.n_echoes} echo(es) TE=[{tes}] ms, {mag}, "
                     f"{b0}{t1w}")  # fmt: skip
    lines.append("stages:")
    lines.append(
        f"  phase scaling (sign {settings.phase_sign:+d}) -> masking: {settings.masking}"
        f" -> combination: {settings.combination} -> unwrapping: {settings.unwrapping}"
    )
    from qsmprep.config import SINGLE_STEP_CHOICES
    from qsmprep.workflows.base import stage_parameters

    bfr_params, inv_params = stage_parameters(settings)
    bfr_text = f"{settings.bfr}{_params_text(bfr_params)}" + (
        " (local field map only: the inversion fits the total field)"
        if settings.inversion in SINGLE_STEP_CHOICES else "")  # fmt: skip
    lines.append(
        f"  -> bfr: {bfr_text}"
        f" -> inversion: {settings.inversion}{_params_text(inv_params)}"
        f" -> reference: {settings.reference} -> derivatives in {settings.output_dir}"
    )
    extras = [f"phase offset: {settings.phase_offset_correction}"]
    if settings.bipolar_correction:
        extras.append("bipolar correction")
    if settings.brain_mask_dir:
        extras.append(f"user masks from {settings.brain_mask_dir}")
    extras.append("R2*/T2*" + (", SWI/minIP" if settings.write_swi else "") + " with magnitude")
    lines.append("  " + "; ".join(extras))
    if settings.regions:
        lines.append(f"  registration to MNI152NLin2009cAsym (ANTs) -> atlas {settings.atlas} "
                     "in native space -> regional table (acquisitions with magnitude)")  # fmt: skip
    return "\n".join(lines)


#: Seconds between Nipype's scheduling rounds with the local MultiProc plugin.
LOCAL_POLL_SLEEP_S = 0.1


def execution_config(plugin: str) -> dict:
    """Nipype's ``[execution]`` settings for a run with ``plugin``.

    Nipype's scheduler sleeps up to ``poll_sleep_duration`` (default 2 s) between rounds, that
    is after almost every node of a chain: 2/3 of a 64^3 subject's wall time. Local MultiProc
    workers need no such pause (the bundled example: 58 -> 34 s, same outputs); cluster
    plugins (SLURM, ...) keep the default, since each of their polls queries the scheduler.
    """
    execution = {"stop_on_first_crash": False, "hash_method": "content",
                 "remove_unnecessary_outputs": True}  # fmt: skip
    if plugin == "MultiProc":
        execution["poll_sleep_duration"] = LOCAL_POLL_SLEEP_S
    return execution


def _plugin(settings) -> tuple[str, dict]:
    if settings.use_plugin:
        from qsmprep.config import load_plugin_settings

        plugin, args = load_plugin_settings(settings.use_plugin)
        if plugin == "MultiProc":
            args.setdefault("mp_context", "forkserver")
        return plugin, args
    if settings.nprocs > 1:
        # forkserver: forking a parent whose FFT/numba/BLAS thread pools are live can deadlock
        args = {"n_procs": settings.nprocs, "raise_insufficient": False,
                "mp_context": "forkserver"}  # fmt: skip
        if settings.mem_gb:
            args["memory_gb"] = settings.mem_gb
        return "MultiProc", args
    return "Linear", {}


def collect(settings):
    """Acquisitions, and the error of each subject whose input was refused (by label); a
    subject with bad input is reported, not fatal to others."""
    from qsmprep.interfaces.bids import BIDSInputError, collect_acquisitions, list_subjects

    subjects = list_subjects(settings.bids_dir, participant_label=settings.participant_label)
    acquisitions, errors = [], {}
    for sub in subjects:
        try:
            acquisitions.extend(collect_acquisitions(
                settings.bids_dir, participant_label=(sub,), session_label=settings.session_label,
                bids_filter=_bids_filter(settings), b0_tesla=settings.b0_tesla,
            ))  # fmt: skip
        except BIDSInputError as exc:
            errors[sub] = str(exc)
    return acquisitions, errors


def _bids_filter(settings):
    from qsmprep.interfaces.bids import load_bids_filter

    return load_bids_filter(settings.bids_filter_file) if settings.bids_filter_file else None


def _cleanup_failed(settings, acquisitions, regions=None) -> list[str]:
    """Remove the outputs of incomplete acquisitions (no Chimap, or no regional table when
    the regional stage ran); return their names."""
    from qsmprep.interfaces.bids import files_of
    from qsmprep.reports.subject import anat_dir

    failed = []
    for acq in acquisitions:
        anat = anat_dir(Path(settings.output_dir), acq)
        expected = [f"{acq.name}_Chimap.nii.gz"]
        if regions and acq.has_magnitude:
            expected.append(f"{acq.name}_seg-{regions['atlas_name']}_desc-regions_stats.tsv")
        if not all((anat / name).exists() for name in expected):
            failed.append(acq.name)
            figures = Path(settings.output_dir) / f"sub-{acq.subject}" / "figures"
            for f in [*files_of(anat, acq.name), *files_of(figures, acq.name)]:
                f.unlink()
    return failed


def _polar_inputs(acquisitions, folder: Path, refused: dict, errors: list) -> list:
    """Acquisitions stored as real and imaginary parts get the phase and magnitude computed
    from them (:func:`~qsmprep.interfaces.complex_parts.polar_acquisition`); one that cannot
    be read is refused with one line, and the others go on."""
    from qsmprep.interfaces.complex_parts import polar_acquisition
    from qsmprep.interfaces.nifti import NiftiInputError

    kept = []
    for acq in acquisitions:
        try:
            converted = polar_acquisition(acq, folder)
        except (NiftiInputError, ValueError, OSError) as exc:
            message = f"{acq.name}: {str(exc).splitlines()[0]}"
            print(f"qsmprep: error: {message}", file=sys.stderr)
            errors.append(message)
            refused.setdefault(acq.subject, message)
            continue
        for note in converted.notes[len(acq.notes):]:
            LOGGER.warning("%s: %s", acq.name, note)
        kept.append(converted)
    return kept


def _with_user_masks(mask_dir, acquisitions, errors: list) -> list:
    """Keep acquisitions whose user mask exists and matches their grid; report the others."""
    import numpy as np

    from qsmprep.interfaces import nifti
    from qsmprep.interfaces.bids import BIDSInputError, find_user_mask

    kept = []
    for acq in acquisitions:
        try:
            path = find_user_mask(mask_dir, acq)
            mask, affine, note = nifti.load_mask(path)
            if tuple(mask.shape) != tuple(acq.shape[:3]):
                raise BIDSInputError(f"{path}: mask shape {mask.shape} differs from the data "
                                     f"{tuple(acq.shape[:3])}")  # fmt: skip
            data_affine = nifti.load_affine(acq.raw_files[0])
            if not np.allclose(affine, data_affine, atol=1e-3):
                raise BIDSInputError(f"{path}: mask affine differs from that of "
                                     f"{acq.raw_files[0]} (another grid or orientation)")
        except (BIDSInputError, nifti.NiftiInputError) as exc:
            print(f"qsmprep: error: {exc}", file=sys.stderr)
            errors.append(str(exc))
            continue
        if note:
            print(f"qsmprep: note: {path}: {note}", file=sys.stderr)
        kept.append(acq)
    return kept


def _quiet_nipype_workers(work_dir: Path, level: str) -> None:
    """Worker processes re-read nipype's config file: give them ours (log levels)."""
    cfg_dir = Path(work_dir) / "nipype_config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "nipype.cfg").write_text(
        f"[logging]\nworkflow_level = {level}\ninterface_level = {level}\n"
        f"utils_level = {level}\n[monitoring]\nenabled = false\n"
    )
    os.environ["NIPYPE_CONFIG_DIR"] = str(cfg_dir)


def _crash_reason(log_dir: Path) -> str:
    """The last exception line of the newest crash file in ``log_dir``."""
    crashes = sorted(log_dir.glob("crash-*.txt"), key=lambda p: p.stat().st_mtime)
    if not crashes:
        return "no crash file was written"
    lines = [ln.strip() for ln in crashes[-1].read_text(errors="replace").splitlines()]
    errors = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", ln)]
    return errors[-1] if errors else "see the crash file"


def run_participant(settings) -> int:
    """Run the participant level; return the process exit code."""
    from qsmprep.interfaces.bids import BIDSInputError, check_acquisition_advice

    plugin, plugin_args = _plugin(settings)  # a bad --use-plugin file fails before any work
    try:
        acquisitions, refused = collect(settings)
    except BIDSInputError as exc:
        return _fail(str(exc))
    errors = [f"sub-{sub}: {err}" for sub, err in refused.items()]
    for err in errors:
        print(f"qsmprep: error: {err}", file=sys.stderr)
    if not acquisitions:
        return (
            _fail("no acquisition could be processed")
            if errors
            else _fail(f"no MEGRE/T2starw phase data found in {settings.bids_dir}")
        )
    if settings.brain_mask_dir:
        acquisitions = _with_user_masks(settings.brain_mask_dir, acquisitions, errors)
        if not acquisitions:
            return _fail("no acquisition has a usable mask in --brain-mask-dir")
    for acq in acquisitions:
        for warning in check_acquisition_advice(acq):
            LOGGER.warning("%s: %s", acq.name, warning)
    from qsmprep.data.atlases import AtlasError
    from qsmprep.data.templates import TemplateNotFoundError
    from qsmprep.workflows.base import resolve_regions

    try:
        regions = resolve_regions(settings)
    except (AtlasError, TemplateNotFoundError, ValueError) as exc:
        return _fail(str(exc).splitlines()[0])
    if regions:
        for acq in acquisitions:
            if not acq.has_magnitude:
                if settings.reference not in ("brain", "none"):
                    return _fail(f"{acq.name}: --reference {settings.reference} needs "
                                 "magnitude images (for the registration); it has none")
                LOGGER.warning("%s: no magnitude images, so no template registration or "
                               "regional table", acq.name)  # fmt: skip
    if settings.dry_run:
        print(describe_plan(settings, acquisitions))
        return 1 if errors else 0
    if settings.reports_only:
        return _reports_only(settings, acquisitions, refused, regions)

    from nipype import config as ncfg

    from qsmprep.workflows.base import init_qsmprep_wf

    out = Path(settings.output_dir)
    work_dir = Path(settings.work_dir or (out.parent / "work"))
    acquisitions = _polar_inputs(acquisitions, work_dir / "complex_parts", refused, errors)
    if not acquisitions:
        return _fail("no acquisition could be processed")
    write_dataset_description(out)
    level = "INFO" if settings.verbose else "WARNING"
    _quiet_nipype_workers(work_dir, level)
    ncfg.update_config({"execution": execution_config(plugin),
                        "logging": {"workflow_level": level, "interface_level": level,
                                    "utils_level": level},
                        "monitoring": {"enabled": False}})  # fmt: skip
    from nipype import logging as nlogging

    nlogging.update_logging(ncfg)
    for sub in sorted({a.subject for a in acquisitions}):
        log_dir = out / f"sub-{sub}" / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        settings.to_toml(log_dir / "qsmprep.toml")
    workflow = init_qsmprep_wf(settings, acquisitions, work_dir=work_dir, regions=regions)
    methods = _write_citation(workflow, out)
    try:
        workflow.run(plugin=plugin, plugin_args=plugin_args)
    except Exception as exc:  # nipype raises RuntimeError listing crashed nodes
        LOGGER.debug("nipype reported crashed nodes: %s", exc)
    failed = {}
    for name in _cleanup_failed(settings, acquisitions, regions):
        log_dir = out / name.split("_")[0] / "log"
        failed[name] = f"{_crash_reason(log_dir)} (crash files in {log_dir})"
        print(f"qsmprep: error: {name} failed: {failed[name]}", file=sys.stderr)
    removed = {name: f"{why}; its partial outputs were removed" for name, why in failed.items()}
    reports = _write_reports(settings, acquisitions, removed, methods, refused=refused)
    done = len(acquisitions) - len(failed)
    print(f"qsmprep: {done}/{len(acquisitions)} acquisition(s) finished; outputs in {out}"
          + (f"; reports: {', '.join(p.name for p in reports)}" if reports else ""))
    return 1 if (failed or errors) else 0


def _descriptions(workflow) -> dict[str, list[str]]:
    """The ``__desc__`` texts of the sub-workflows that run, by top-level sub-workflow (one per
    acquisition), in node order."""
    by_top: dict[str, list[str]] = {}
    for name in workflow.list_node_names():
        parts = name.split(".")
        seen = by_top.setdefault(parts[0], [])
        for i in range(1, len(parts)):
            desc = getattr(workflow.get_node(".".join(parts[:i])), "__desc__", None)
            if desc and desc not in seen:
                seen.append(desc)
    return by_top


def _write_citation(workflow, out: Path) -> dict[str, str]:
    """Assemble the run's methods text from the ``__desc__`` of the sub-workflows that run;
    return each acquisition sub-workflow's own text, by its name."""
    by_top = _descriptions(workflow)
    seen: list[str] = []
    for descs in by_top.values():
        seen += [d for d in descs if d not in seen]
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    from qsmprep.__about__ import __version__

    text = f"Results were generated with qsmprep {__version__}.\n\n" + "\n\n".join(seen) + "\n"
    (logs / "CITATION.md").write_text(text)
    return {top: "\n\n".join(descs) for top, descs in by_top.items()}


def _reports_only(settings, acquisitions, refused: dict[str, str], regions) -> int:
    """``--reports-only``: the reports from the derivatives on disk; nothing runs or is
    removed. An acquisition without a Chimap is reported as not processed."""
    from qsmprep.reports.subject import anat_dir
    from qsmprep.workflows.base import init_qsmprep_wf

    out = Path(settings.output_dir)
    if not out.is_dir():
        return _fail(f"--reports-only: {out} does not exist; run the participant level first")
    workflow = init_qsmprep_wf(settings, acquisitions, regions=regions,
                               work_dir=settings.work_dir or (out.parent / "work"))  # fmt: skip
    methods = {top: "\n\n".join(descs) for top, descs in _descriptions(workflow).items()}
    missing = {}
    for acq in acquisitions:
        chimap = anat_dir(out, acq) / f"{acq.name}_Chimap.nii.gz"
        if not chimap.exists():
            missing[acq.name] = (f"{chimap} not found: run the participant level without "
                                 "--reports-only first")  # fmt: skip
            print(f"qsmprep: error: {acq.name}: {missing[acq.name]}", file=sys.stderr)
    reports = _write_reports(settings, acquisitions, missing, methods, refused=refused)
    if reports:
        print(f"qsmprep: reports written: {', '.join(str(p) for p in reports)}")
    return 1 if (missing or refused) else 0


def _write_reports(settings, acquisitions, failed: dict[str, str], methods: dict[str, str],
                   refused: dict[str, str] | None = None) -> list[Path]:  # fmt: skip
    """The subject reports (:func:`qsmprep.reports.subject.write_reports`); ``methods`` is
    keyed by acquisition sub-workflow, as :func:`_write_citation` returns it."""
    from qsmprep.reports.subject import write_reports
    from qsmprep.workflows.base import acquisition_workflow_name

    return write_reports(
        settings.output_dir, acquisitions, failed=failed, refused=refused or {},
        methods={a.name: methods.get(acquisition_workflow_name(a), "") for a in acquisitions},
        phase_sign=settings.phase_sign, t1w_used=bool(settings.use_t1w and settings.regions),
    )  # fmt: skip


def run_group_level(settings) -> int:
    """Gather every acquisition's regional table into cohort tables and figures."""
    from qsmprep.group import run_group

    try:
        written = run_group(settings.bids_dir, settings.output_dir)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(str(exc).splitlines()[0])
    print(f"qsmprep: group tables in {Path(written['long']).parent} "
          f"({len(written['figures'])} figure files, {written['n_outliers']} "
          f"outlier(s)); report: {written['report']}")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``qsmprep``."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    from qsmprep.cli.parser import parse_args

    settings = parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(settings.verbose, 2),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")  # fmt: skip
    if settings.analysis_level == "group":
        return run_group_level(settings)
    try:
        return run_participant(settings)
    except (ValueError, OSError) as exc:
        return _fail(str(exc).splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
