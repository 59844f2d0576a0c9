"""The per-subject HTML report: ``<output_dir>/sub-<label>.html``.

One self-contained page per subject (styles inline, figures as PNG files beside it under
``sub-<label>/figures/``), with one section per acquisition: what was found and how it was
processed, the warnings, quality-control figures and numbers, the regional table, the
methods text, or the one-line reason an acquisition failed.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from qsmprep.reports.qc import AcquisitionQC, format_ppm

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1150px; padding: 1em;
       color: #222; }
h1 { border-bottom: 2px solid #1f3b5c; }
h2 { background: #1f3b5c; color: white; padding: 0.3em 0.5em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #eef2f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.error { background: #fde8e6; border-left: 5px solid #c0392b; padding: 0.6em; }
.warning { background: #fff6dc; border-left: 5px solid #d4a017; padding: 0.3em 0.6em; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #444; max-width: 60em; }
pre { background: #f6f6f6; padding: 0.6em; white-space: pre-wrap; font-size: 0.85em; }
.methods p { max-width: 60em; }
"""


@dataclass
class AcquisitionSection:
    """One acquisition's part of the report."""

    name: str
    summary: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    qc: AcquisitionQC | None = None
    error: str | None = None
    methods: str = ""
    #: every file the run wrote for the acquisition (sidecars aside); default: the QC's files
    outputs: list[Path] = field(default_factory=list)


def _e(text) -> str:
    return html.escape(str(text))


def _table(rows, header=None) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _key_values(rows) -> str:
    return ("<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
            + "</table>")  # fmt: skip


def _regions_table(path: Path) -> str:
    import pandas as pd

    table = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
    columns = [c for c in ("region", "hemisphere", "n_voxels", "mean_ppm", "median_ppm",
                           "std_ppm", "core_mean_ppm") if c in table]  # fmt: skip
    rows = [[_cell(v) for v in row] for row in table[columns].itertuples(index=False)]
    return _table(rows, header=columns)


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _section(section: AcquisitionSection, out: Path) -> str:
    parts = [f'<h2 id="{_e(section.name)}">{_e(section.name)}</h2>']
    if section.error:
        parts.append(f'<div class="error"><b>Failed:</b> {_e(section.error)}</div>')
    if section.summary:
        parts += ["<h3>Input and processing</h3>", _key_values(section.summary)]
    if section.warnings:
        parts.append("<h3>Warnings</h3>")
        parts += [f'<p class="warning">{_e(w)}</p>' for w in section.warnings]
    qc = section.qc
    if qc is not None:
        if qc.numbers:
            parts += ["<h3>Quality-control numbers</h3>", _key_values(qc.numbers)]
        for fig in qc.figures:
            src = _e(_relative(fig.path, out))
            parts.append(f'<h3>{_e(fig.title)}</h3><figure><img src="{src}"'
                         f' alt="{_e(fig.title)}"><figcaption>{_e(fig.caption)}</figcaption>'
                         "</figure>")  # fmt: skip
        if "regions" in qc.files:
            parts += ["<h3>Regional susceptibility (ppm)</h3>",
                      f"<p>From <code>{_e(_relative(qc.files['regions'], out))}</code>.</p>",
                      _regions_table(qc.files["regions"])]  # fmt: skip
        if qc.metadata.get("Parameters"):
            parts += ["<h3>Parameters</h3>",
                      f"<pre>{_e(json.dumps(qc.metadata['Parameters'], indent=2))}</pre>"]
        parts.append("<h3>Outputs</h3><ul>" + "".join(
            f'<li><a href="{_e(_relative(p, out))}">{_e(p.name)}</a></li>'
            for p in sorted(section.outputs or qc.files.values())) + "</ul>")  # fmt: skip
    if section.methods:
        paragraphs = "".join(f"<p>{_e(p)}</p>" for p in section.methods.split("\n\n") if p.strip())
        parts += ['<h3>Methods</h3><div class="methods">', paragraphs, "</div>"]
    return "\n".join(parts)


def write_subject_report(output_dir, subject: str, sections: list[AcquisitionSection], *,
                         version: str) -> Path:  # fmt: skip
    """Write ``<output_dir>/sub-<subject>.html`` and return its path."""
    out = Path(output_dir)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: UP017 (py3.10)
    failed = [s.name for s in sections if s.error]
    status = (f"{len(sections) - len(failed)} of {len(sections)} acquisition(s) finished"
              + (f"; failed: {', '.join(failed)}" if failed else ""))  # fmt: skip
    nav = " · ".join(f'<a href="#{_e(s.name)}">{_e(s.name)}</a>' for s in sections)
    settings = out / f"sub-{subject}" / "log" / "qsmprep.toml"
    body = [
        f"<h1>qsmprep report: sub-{_e(subject)}</h1>",
        f"<p>qsmprep {_e(version)}, {when}. {_e(status)}. Settings: "
        f'<a href="{_e(_relative(settings, out))}">{_e(_relative(settings, out))}</a>; crash '
        f"files, if any, in <code>sub-{_e(subject)}/log/</code>.</p>",
        f"<p>{nav}</p>",
    ] + [_section(s, out) for s in sections]  # fmt: skip
    path = out / f"sub-{subject}.html"
    path.write_text(_page(f"qsmprep: sub-{subject}", body), encoding="utf-8")
    return path


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")  # fmt: skip


def _cell(value) -> str:
    """A table cell: n/a for a missing value (None, NaN, pandas.NA), ppm to 0.1 ppb."""
    import pandas as pd

    if pd.isna(value):
        return "n/a"
    if isinstance(value, float):
        return format_ppm(value)
    return str(value)


def write_group_report(output_dir, long, outliers, figures, *, value: str = "mean_ppm") -> Path:
    """Write ``<output_dir>/group/report.html``: the acquisitions (whole-brain numbers, outlier
    count, link to each subject's report), the regional outliers and the cohort figures.

    ``long`` is the cohort's long table (:func:`qsmprep.group.collect_regional_tables`),
    ``outliers`` :func:`qsmprep.group.flag_outliers`'s table, ``figures`` the files of
    :func:`qsmprep.reports.figures.plot_region_distributions` (the PNGs are shown).
    """
    from qsmprep.__about__ import __version__
    from qsmprep.group import OUTLIER_MIN_N, OUTLIER_Z

    out = Path(output_dir)
    group_dir = out / "group"
    keys = [c for c in ("participant_id", "session_id", "acq", "run", "atlas") if c in long]
    whole = long.loc[long["region"] == "whole_brain", [*keys, "n_voxels", "std_ppm"]]
    table = long[keys].drop_duplicates().merge(whole, on=keys, how="left")
    if len(outliers):  # pandas merges NaN keys (no session, no run) as equal
        counts = outliers.groupby(keys, dropna=False).size().rename("n_outliers")
        table = table.merge(counts.reset_index(), on=keys, how="left")
    table = table.assign(n_outliers=table.get("n_outliers", 0)).fillna({"n_outliers": 0})
    rows = []
    for row in table.sort_values(keys).itertuples(index=False):
        report = out / f"{row[0]}.html"
        link = (f'<a href="{_e(_relative(report, group_dir))}">{_e(report.name)}</a>'
                if report.exists() else "n/a")  # fmt: skip
        cells = [_cell(v) for v in row[: len(keys)]] + [
            _cell(row.n_voxels), _cell(float(row.std_ppm)), str(int(row.n_outliers))]
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + f"<td>{link}</td></tr>")
    header = "".join(f"<th>{_e(h)}</th>" for h in (*keys, "whole-brain voxels",
                                                   "whole-brain SD (ppm)", "outliers",
                                                   "report"))  # fmt: skip
    n_acq = len(rows)
    body = [
        "<h1>qsmprep group report</h1>",
        f"<p>qsmprep {_e(__version__)}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. "
        f"{n_acq} acquisition(s) of {long['participant_id'].nunique()} participant(s); "
        f"values: <code>{_e(value)}</code>. Tables: <code>regions_long.tsv</code>, "
        "<code>regions_wide.tsv</code>, <code>regions_outliers.tsv</code>.</p>",
        "<h2>Acquisitions</h2>",
        "<p>The whole-brain SD of the Chimap rises with noise, streaks and rim artefacts; "
        "compare it across the cohort, then open the subject's report.</p>",
        f"<table><tr>{header}</tr>{''.join(rows)}</table>",
        "<h2>Regional outliers</h2>",
        f"<p>Values whose modified z-score (0.6745 (x - median) / MAD over the cohort, "
        f"Iglewicz &amp; Hoaglin 1993) exceeds {OUTLIER_Z}, for regions seen in at least "
        f"{OUTLIER_MIN_N} acquisitions. Check these acquisitions' reports (mask, streaks, "
        "atlas placement) before excluding anything.</p>",
    ]  # fmt: skip
    if len(outliers):
        columns = [*keys, "region", "hemisphere", value, "cohort_median", "modified_z"]
        body.append(_table([[_cell(v) for v in r] for r in outliers[columns].itertuples(
            index=False)], header=columns))  # fmt: skip
    else:
        body.append("<p>None" + (f" (fewer than {OUTLIER_MIN_N} acquisitions)"
                                 if n_acq < OUTLIER_MIN_N else "") + ".</p>")  # fmt: skip
    pngs = [Path(f) for f in figures if str(f).endswith(".png")]
    if pngs:
        body.append("<h2>Regions across the cohort</h2>")
        body += [f'<img src="{_e(_relative(p, group_dir))}" alt="{_e(p.stem)}" '
                 'style="max-width: 32%">' for p in pngs]  # fmt: skip
    path = group_dir / "report.html"
    path.write_text(_page("qsmprep group report", body), encoding="utf-8")
    return path
