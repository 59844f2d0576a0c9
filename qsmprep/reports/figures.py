"""Figures for reports and the group level, drawn with matplotlib's Agg canvas (no display).

Figures are built on :class:`matplotlib.figure.Figure` directly rather than through ``pyplot``, so
nothing touches the global backend or figure registry, and headless runs never need a display.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

#: File formats written for every figure.
FORMATS = ("png", "svg")
_UNSAFE = re.compile(r"[^A-Za-z0-9]+")


def _safe(label: str) -> str:
    """A file-name entity label: letters and digits, camelCase (``mean_ppm`` -> meanPpm)."""
    words = [word for word in _UNSAFE.split(str(label)) if word]
    return "".join([*words[:1], *(word[:1].upper() + word[1:] for word in words[1:])]) or "unnamed"


def save_figure(fig, stem: Path, *, formats=FORMATS) -> list[Path]:
    """Save ``fig`` as ``stem.<format>`` for each format; reproducible SVG (fixed ids, no date)."""
    import matplotlib

    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        metadata = {"Date": None} if fmt == "svg" else {}
        with matplotlib.rc_context({"svg.hashsalt": "qsmprep", "svg.fonttype": "none"}):
            fig.savefig(path, format=fmt, dpi=150, bbox_inches="tight", metadata=metadata)
        written.append(path)
    return written


def box_strip_figure(groups: dict, *, title: str, ylabel: str, rng=None):
    """A box plot per group with the individual values jittered on top.

    Parameters
    ----------
    groups : dict
        Group name -> 1-D array of values (NaNs are dropped).
    title, ylabel : str
        Axis title and y-axis label (put the units in it).
    rng : numpy.random.Generator, optional
        For the horizontal jitter of the points; seeded by default so figures are reproducible.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0) if rng is None else rng
    names = list(groups)
    values = [np.asarray(groups[name], dtype=float) for name in names]
    values = [v[np.isfinite(v)] for v in values]
    fig = Figure(figsize=(1.2 + 1.1 * len(names), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = np.arange(1, len(names) + 1)
    ax.boxplot(
        values, positions=positions, widths=0.5, showfliers=False, patch_artist=True,
        boxprops={"facecolor": "#dde6f0", "edgecolor": "#44546a"},
        medianprops={"color": "#1f3b5c"},
    )  # fmt: skip
    for position, v in zip(positions, values, strict=True):
        jitter = rng.uniform(-0.12, 0.12, size=v.size)
        ax.scatter(position + jitter, v, s=16, color="#c0392b", alpha=0.8, zorder=3, linewidths=0)
    ax.set_xticks(
        positions, [f"{name}\n(n={v.size})" for name, v in zip(names, values, strict=True)]
    )
    ax.axhline(0.0, color="0.6", linewidth=0.8, linestyle=":", zorder=0)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def plot_region_distributions(
    long: pd.DataFrame,
    out_dir,
    *,
    value: str = "mean_ppm",
    group_column: str | None = None,
    formats=FORMATS,
) -> list[Path]:
    """Per atlas region, a box + strip plot of ``value`` across acquisitions, by group.

    Parameters
    ----------
    long : pandas.DataFrame
        The long regional table (columns ``atlas``, ``region``, ``hemisphere``, ``reference`` and
        ``value``; ``group_column`` when given).
    out_dir : path-like
        Folder for the figures, named
        ``seg-<atlas>_region-<region>[_hemi-<L|R>]_desc-<value>_boxplot.<format>``.
    value : str
        Column plotted; a name ending in ``_ppm`` gets ppm on the axis label.
    group_column : str, optional
        Column splitting the boxes (e.g. ``group`` from ``participants.tsv``); missing values are
        shown as ``n/a``. Without it, one box holds every acquisition.

    Returns
    -------
    list of pathlib.Path
        The files written, ``len(formats)`` per region.
    """
    out_dir = Path(out_dir)
    units = " (ppm)" if value.endswith("_ppm") else ""
    written, used = [], set()
    keys = ["atlas", "region", "hemisphere"]
    for (atlas, region, hemisphere), rows in long.groupby(keys, sort=False, dropna=False):
        if group_column is None:
            groups = {"all": rows[value].to_numpy()}
        else:
            labels = rows[group_column].astype("string").fillna("n/a")
            groups = {
                name: rows.loc[labels == name, value].to_numpy() for name in sorted(set(labels))
            }
        references = ", ".join(sorted(set(rows["reference"].dropna().astype(str)))) or "n/a"
        where = region if pd.isna(hemisphere) else f"{region} ({hemisphere})"
        fig = box_strip_figure(
            groups,
            title=f"{where}, {atlas}",
            ylabel=f"{value}{units}\nreference: {references}",
        )
        stem = f"seg-{atlas}_region-{_safe(region)}"
        if not pd.isna(hemisphere):
            stem += f"_hemi-{_safe(hemisphere)}"
        stem += f"_desc-{_safe(value)}_boxplot"
        if stem in used:  # two labels that differ only in punctuation
            stem += f"{len(used)}"
        used.add(stem)
        written += save_figure(fig, out_dir / stem, formats=formats)
    return written
