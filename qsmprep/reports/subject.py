"""The participant run's reports: one :mod:`qsmprep.reports.html` page per subject, with the
QC of :mod:`qsmprep.reports.qc` for each acquisition that finished."""

from __future__ import annotations

import logging
from pathlib import Path

LOGGER = logging.getLogger("qsmprep")


def anat_dir(out: Path, acq) -> Path:
    """``out/sub-X[/ses-Y]/anat``, where the acquisition's derivatives are written."""
    anat = Path(out) / f"sub-{acq.subject}"
    if acq.session:
        anat = anat / f"ses-{acq.session}"
    return anat / "anat"


def _phase_scaling(acq) -> str:
    from qsmprep.reports.qc import phase_scaling_note

    if acq.from_complex_parts:
        return "computed from the real and imaginary parts: atan2(imag, real), radians"
    try:
        return phase_scaling_note(acq.phase_files, acq.phase_units)
    except (ValueError, OSError) as exc:  # the run has said why it could not read them
        return f"not read: {str(exc).splitlines()[0]}"


def acquisition_summary(acq, metadata: dict, *, phase_sign: int,
                        t1w_used: bool) -> list[tuple[str, str]]:  # fmt: skip
    """The report's "input and processing" rows of one acquisition (``metadata``: its Chimap
    sidecar, empty when it did not finish)."""
    rows = [
        ("data", f"{acq.suffix}, {acq.n_echoes} echo(es), "
                 + ("real + imaginary parts" if acq.from_complex_parts
                    else "phase + magnitude" if acq.magnitude_files else "phase only")),
        ("echo times (ms)", ", ".join(f"{t * 1e3:.2f}" for t in acq.echo_times_s)),
        ("field strength (T)", f"{acq.b0_tesla:g}"
                               + (" (from --b0-tesla)" if acq.b0_from_cli else " (sidecar)")),
        ("phase units (sidecar)", "rad (computed)" if acq.from_complex_parts
         else acq.phase_units or "not given (range detected)"),
        ("phase scaling", _phase_scaling(acq)),
        ("phase sign", f"{phase_sign:+d}"),
    ]  # fmt: skip
    if acq.t1w_file and t1w_used:
        rows.append(("T1w (registration intermediate)", Path(acq.t1w_file).name))
    if metadata.get("EstimationAlgorithm"):
        rows.append(("stages", metadata["EstimationAlgorithm"]))
    if metadata.get("ReferenceRegion"):
        rows.append(("susceptibility reference", metadata["ReferenceRegion"]))
    return rows


def partial_coverage_warning(files: dict[str, Path]) -> str | None:
    """A warning when the brain mask is cut by the field of view (a slab acquisition) and
    regions were computed from a template registration, else None."""
    from qsmprep.algorithms.masking import PARTIAL_COVERAGE_FRACTION, field_of_view_cut
    from qsmprep.interfaces import nifti

    if "mask" not in files or "dseg" not in files:
        return None
    mask, _ = nifti.load(files["mask"])
    axis, fraction = field_of_view_cut(mask > 0)
    if fraction < PARTIAL_COVERAGE_FRACTION:
        return None
    return (f"the field of view cuts the brain along voxel axis {axis + 1} (the edge slice "
            f"holds {100 * fraction:.0f} % of the largest slice's brain area): partial "
            "coverage. The template registration and the atlas regions assume a whole brain; "
            "check the registration figure, and read the regional values with care (a 40 mm "
            "slab measured deep-grey Dice 0.68 without a T1w and 0.91 with one, against "
            "0.79-0.93 for whole brains; docs/benchmarks.md).")


def _section(acq, out: Path, *, error: str | None, methods: str, phase_sign: int,
             t1w_used: bool):  # fmt: skip
    from qsmprep.interfaces.bids import check_acquisition_advice, files_of
    from qsmprep.reports.html import AcquisitionSection
    from qsmprep.reports.qc import acquisition_qc, find_derivatives

    section = AcquisitionSection(name=acq.name, warnings=check_acquisition_advice(acq),
                                 methods=methods, error=error)  # fmt: skip
    if error is None:
        try:
            section.qc = acquisition_qc(
                find_derivatives(anat_dir(out, acq), acq.name),
                fig_dir=out / f"sub-{acq.subject}" / "figures", name=acq.name,
                magnitude_file=acq.magnitude_files[0] if acq.magnitude_files else None,
            )  # fmt: skip
        except Exception as exc:  # QC must never fail a finished acquisition
            LOGGER.warning("%s: QC figures could not be drawn: %s", acq.name, exc)
            section.warnings.append(f"QC figures could not be drawn: {exc}")
        section.outputs = [p for p in files_of(anat_dir(out, acq), acq.name)
                           if not p.name.endswith(".json")]  # fmt: skip
        coverage = partial_coverage_warning(find_derivatives(anat_dir(out, acq), acq.name))
        if coverage:
            LOGGER.warning("%s: %s", acq.name, coverage)
            section.warnings.append(coverage)
    metadata = section.qc.metadata if section.qc else {}
    section.summary = acquisition_summary(acq, metadata, phase_sign=phase_sign,
                                          t1w_used=t1w_used)  # fmt: skip
    return section


def write_reports(output_dir, acquisitions, *, failed: dict[str, str], refused: dict[str, str],
                  methods: dict[str, str], phase_sign: int = 1,
                  t1w_used: bool = False) -> list[Path]:  # fmt: skip
    """Write ``<output_dir>/sub-<label>.html`` for every subject of ``acquisitions`` and of
    ``refused`` (label -> the error that refused its input).

    ``failed`` maps an acquisition name to the reason it failed, ``methods`` to its methods
    text. A report that cannot be drawn is a warning, never a failed run. Returns the pages
    written.
    """
    from qsmprep.__about__ import __version__
    from qsmprep.reports.html import AcquisitionSection, write_subject_report

    out = Path(output_dir)
    written = []
    for subject in sorted({a.subject for a in acquisitions} | set(refused)):
        sections = ([AcquisitionSection(name=f"sub-{subject}", error=refused[subject])]
                    if subject in refused else [])  # fmt: skip
        sections += [_section(acq, out, error=failed.get(acq.name),
                              methods=methods.get(acq.name, ""), phase_sign=phase_sign,
                              t1w_used=t1w_used)
                     for acq in acquisitions if acq.subject == subject]  # fmt: skip
        try:
            written.append(write_subject_report(out, subject, sections, version=__version__))
        except OSError as exc:
            LOGGER.warning("sub-%s: the HTML report could not be written: %s", subject, exc)
    return written
