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

from qsmprep.reports.qc import AcquisitionQC

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
    rows = []
    for _, row in table[columns].iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if isinstance(value, float):
                value = "n/a" if value != value else f"{round(value, 4) + 0.0:.4f}"
            cells.append(value)
        rows.append(cells)
    return _table(rows, header=columns)


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _section(section: AcquisitionSection, out: Path) -> str:
    parts = [f'<h2 id="{_e(section.name)}">{_e(section.name)}</h2>']
    if section.error:
        parts.append(f'<div class="error"><b>Failed:</b> {_e(section.error)}. No derivatives of '
                     "this acquisition were kept.</div>")  # fmt: skip
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
            for p in sorted(qc.files.values())) + "</ul>")  # fmt: skip
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
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>qsmprep: sub-{_e(subject)}</title><style>{_STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")  # fmt: skip
    path = out / f"sub-{subject}.html"
    path.write_text(page, encoding="utf-8")
    return path
