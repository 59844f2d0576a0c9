"""The ``group`` analysis level: cohort tables and figures from the per-acquisition regional tables.

The participant level writes one table of regional statistics per acquisition::

    <output_dir>/sub-X/[ses-Y/]anat/sub-X[_ses-Y][_acq-A][_run-N]_seg-<atlas>_desc-regions_stats.tsv

:func:`run_group` gathers them into ``<output_dir>/group/``:

- ``regions_long.tsv``: one row per subject/session/acquisition/run/atlas x region/hemisphere, with
  the columns of ``participants.tsv`` joined on ``participant_id``;
- ``regions_wide.tsv``: one row per subject/session/acquisition/run/atlas, one column per
  ``region[_hemisphere]`` holding ``mean_ppm``;
- a JSON sidecar per table describing its columns and units;
- ``regions_outliers.tsv``: the regional values far from the cohort (modified z-score),
  with a sidecar;
- ``figures/``: per region a box + strip plot of ``mean_ppm`` (PNG and SVG);
- ``report.html``: the cohort at a glance (acquisitions, outliers, figures, links to each
  subject's report).

Reading and reshaping are plain pandas functions so that they can be used from a notebook too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

#: Columns every per-acquisition regional table must have.
REQUIRED_COLUMNS = (
    "region",
    "hemisphere",
    "n_voxels",
    "mean_ppm",
    "median_ppm",
    "std_ppm",
    "iqr_ppm",
    "reference",
)
#: Columns parsed from the file name, in order; they identify one acquisition's table.
ENTITY_COLUMNS = ("participant_id", "session_id", "acq", "run", "atlas")
#: File-name entity -> column (``sub``/``ses`` keep their prefix, as in ``participants.tsv``).
_ENTITY_TO_COLUMN = {"sub": "participant_id", "ses": "session_id", "acq": "acq", "run": "run",
                     "seg": "atlas"}  # fmt: skip
SUFFIX = "_desc-regions_stats.tsv"
#: Where the tables are looked for, relative to the output folder (for messages).
SEARCH_PATTERN = "sub-*/[ses-*/]anat/*_seg-*" + SUFFIX
_GLOBS = ("sub-*/anat/*_seg-*" + SUFFIX, "sub-*/ses-*/anat/*_seg-*" + SUFFIX)
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
#: BIDS writes missing values as ``n/a``; keep region names such as "None" or "NA" as text.
_NA_VALUES = ["n/a", ""]

COLUMN_DESCRIPTIONS = {
    "participant_id": {"Description": "Participant label, as in participants.tsv (sub-<label>)"},
    "session_id": {"Description": "Session label (ses-<label>); n/a for datasets without sessions"},
    "acq": {"Description": "acq entity of the acquisition; n/a when absent"},
    "run": {"Description": "run entity of the acquisition; n/a when absent"},
    "atlas": {"Description": "Atlas (seg entity) that defined the regions"},
    "region": {"Description": "Region name in the atlas"},
    "hemisphere": {
        "Description": "Hemisphere of the region",
        "Levels": {"L": "left", "R": "right"},
    },  # fmt: skip
    "n_voxels": {"Description": "Number of voxels of the region in native space"},
    "mean_ppm": {
        "Description": "Mean susceptibility in the region, relative to the reference",
        "Units": "ppm",
    },  # fmt: skip
    "median_ppm": {
        "Description": "Median susceptibility in the region, relative to the reference",
        "Units": "ppm",
    },  # fmt: skip
    "std_ppm": {
        "Description": "Standard deviation of susceptibility in the region",
        "Units": "ppm",
    },  # fmt: skip
    "iqr_ppm": {
        "Description": "Interquartile range of susceptibility in the region",
        "Units": "ppm",
    },  # fmt: skip
    "n_core_voxels": {
        "Description": "Voxels of the region's core: its voxels whose six neighbours are in the "
        "same region (boundary voxels, where partial volume and registration errors mix in "
        "neighbouring tissue, left out), inside the QSM mask; n/a for the whole brain"
    },  # fmt: skip
    "core_mean_ppm": {
        "Description": "Mean susceptibility over the region's core, relative to the reference",
        "Units": "ppm",
    },  # fmt: skip
    "core_median_ppm": {
        "Description": "Median susceptibility over the region's core, relative to the reference",
        "Units": "ppm",
    },  # fmt: skip
    "reference": {
        "Description": "Reference region whose mean susceptibility was set to zero "
        "(brain, csf, an atlas region, or none)"
    },  # fmt: skip
}


def _parse_name(path: Path) -> dict:
    """Entity columns of one regional-table file name; ``ValueError`` for a name off the pattern."""
    parts = path.name[: -len(SUFFIX)].split("_")
    entities = {}
    for part in parts:
        key, sep, label = part.partition("-")
        if not sep or key not in _ENTITY_TO_COLUMN or key in entities or not _LABEL.match(label):
            raise ValueError(
                f"{path}: unexpected part {part!r} in the file name; expected "
                f"sub-X[_ses-Y][_acq-A][_run-N]_seg-<atlas>{SUFFIX}"
            )
        entities[key] = label
    order = [key for key in _ENTITY_TO_COLUMN if key in entities]
    if list(entities) != order or "sub" not in entities or "seg" not in entities:
        raise ValueError(
            f"{path}: file name needs sub- first and seg- last, in the order sub, ses, acq, run, "
            f"seg; found {'_'.join(parts)!r}"
        )
    folders = [p for p in path.parent.parent.parts[-2:] if p.startswith(("sub-", "ses-"))]
    expected = [f"sub-{entities['sub']}"] + (
        [f"ses-{entities['ses']}"] if "ses" in entities else []
    )
    if folders != expected:
        raise ValueError(f"{path}: file name entities do not match its folder {'/'.join(folders)}")
    row = {column: pd.NA for column in ENTITY_COLUMNS}
    for key, label in entities.items():
        prefix = f"{key}-" if key in ("sub", "ses") else ""
        row[_ENTITY_TO_COLUMN[key]] = prefix + label
    return row


def find_regional_tables(output_dir) -> list[Path]:
    """Sorted paths of the per-acquisition regional tables under ``output_dir``."""
    root = Path(output_dir)
    return sorted({path for pattern in _GLOBS for path in root.glob(pattern)})


def read_regional_table(path) -> pd.DataFrame:
    """One regional table with its entity columns first; ``ValueError`` naming a malformed file."""
    path = Path(path)
    entities = _parse_name(path)
    try:
        table = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=_NA_VALUES)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable tab-separated table ({err})") from err
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: missing required column(s) {', '.join(missing)}; expected at least "
            f"{', '.join(REQUIRED_COLUMNS)}, found {', '.join(map(str, table.columns)) or 'none'}"
        )
    for column, label in entities.items():
        if column in table.columns:
            clash = table[column].dropna().astype(str) != str(label)
            if clash.any():
                raise ValueError(
                    f"{path}: column {column!r} disagrees with the file name ({label})"
                )
            table = table.drop(columns=column)
    for column in ("label", "n_voxels", "n_core_voxels"):  # counts stay integers beside n/a
        if column in table.columns and pd.api.types.is_numeric_dtype(table[column]):
            table[column] = table[column].astype("Int64")
    table.insert(0, "hemisphere", table.pop("hemisphere"))
    table.insert(0, "region", table.pop("region"))
    for position, (column, label) in enumerate(entities.items()):
        table.insert(position, column, pd.Series([label] * len(table), dtype="string"))
    return table


def collect_regional_tables(output_dir) -> pd.DataFrame:
    """Gather every per-acquisition regional table under ``output_dir`` into one long table.

    Parameters
    ----------
    output_dir : path-like
        The qsmprep output folder (the BIDS derivatives root).

    Returns
    -------
    pandas.DataFrame
        One row per (participant_id, session_id, acq, run, atlas) x (region, hemisphere): the entity
        columns parsed from the file names (``session_id``, ``acq`` and ``run`` are NA when absent),
        then every column of the tables.

    Raises
    ------
    FileNotFoundError
        When no table matches :data:`SEARCH_PATTERN` under ``output_dir``.
    ValueError
        For a file with a malformed name or without the :data:`REQUIRED_COLUMNS`.
    """
    paths = find_regional_tables(output_dir)
    if not paths:
        raise FileNotFoundError(
            f"no regional tables ({SEARCH_PATTERN}) found under {Path(output_dir)}; "
            "run the participant level first"
        )
    tables = [read_regional_table(path) for path in paths]
    return pd.concat(tables, ignore_index=True)


def read_participants(bids_dir) -> pd.DataFrame | None:
    """``bids_dir/participants.tsv`` with ``sub-`` prefixed ids, or None when the file is absent."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        return None
    table = pd.read_csv(
        path, sep="\t", keep_default_na=False, na_values=_NA_VALUES,
        dtype={"participant_id": "string"},
    )  # fmt: skip
    if "participant_id" not in table.columns:
        raise ValueError(f"{path}: no participant_id column (found {', '.join(table.columns)})")
    ids = table["participant_id"].astype("string").str.strip()
    table["participant_id"] = ids.where(ids.str.startswith("sub-"), "sub-" + ids)
    duplicated = table["participant_id"][table["participant_id"].duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"{path}: participant_id repeated: {', '.join(duplicated)}")
    return table


def join_participants(df: pd.DataFrame, bids_dir) -> pd.DataFrame:
    """Left-join the columns of ``bids_dir/participants.tsv`` on ``participant_id``.

    Rows and their order are kept; subjects missing from ``participants.tsv`` get NA. A
    participants column whose name the table already uses is added with a ``_participants``
    suffix. Without ``participants.tsv`` the table is returned unchanged (a copy).
    """
    participants = read_participants(bids_dir)
    if participants is None:
        return df.copy()
    return df.merge(
        participants, on="participant_id", how="left", suffixes=("", "_participants"),
        validate="many_to_one",
    )  # fmt: skip


def region_labels(df: pd.DataFrame) -> pd.Series:
    """``region`` or ``region_hemisphere`` (``putamen_L``; no suffix where hemisphere is NA)."""
    region = df["region"].astype("string")
    hemisphere = df["hemisphere"].astype("string")
    return region.where(hemisphere.isna(), region + "_" + hemisphere).rename("region_label")


def _key_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in (*ENTITY_COLUMNS, "reference") if c in df.columns]


def wide_table(df: pd.DataFrame, value: str = "mean_ppm") -> pd.DataFrame:
    """One row per participant/session/acq/run/atlas, one column of ``value`` per region label.

    Parameters
    ----------
    df : pandas.DataFrame
        A long table from :func:`collect_regional_tables`.
    value : str
        The statistic to spread into columns (``mean_ppm``, ``median_ppm``, ...).

    Returns
    -------
    pandas.DataFrame
        The entity columns and ``reference``, then one column per ``region[_hemisphere]`` in the
        order of first appearance; NA where an acquisition lacks a region.
    """
    if value not in df.columns:
        raise ValueError(f"value column {value!r} not in the table (columns: {', '.join(df)})")
    keys = _key_columns(df)
    long = df[keys].copy()
    long["region_label"] = region_labels(df)
    long[value] = df[value]
    duplicated = long.duplicated(subset=[*keys, "region_label"], keep=False)
    if duplicated.any():
        first = long[duplicated].iloc[0]
        raise ValueError(
            f"{int(duplicated.sum())} rows repeat a region within one acquisition, e.g. "
            f"{first['region_label']} of {first['participant_id']} ({first['atlas']})"
        )
    # Number the acquisitions (NA keys included) and spread on that number, not on the keys.
    row = long.groupby(keys, dropna=False, sort=False).ngroup().rename("_row")
    spread = long.set_index([row, "region_label"])[value].unstack("region_label")
    spread = spread.reindex(columns=list(dict.fromkeys(long["region_label"])))
    spread.columns.name = None
    ids = long.loc[~row.duplicated(), keys].set_index(row[~row.duplicated()])
    wide = ids.join(spread).reset_index(drop=True)
    return wide


#: Modified z-score above which a regional value is flagged (Iglewicz & Hoaglin 1993).
OUTLIER_Z = 3.5
#: Fewest acquisitions per region for outlier flags (a median and MAD need a cohort).
OUTLIER_MIN_N = 5

OUTLIER_COLUMNS = {
    "cohort_median": {"Description": "Median of the value over the cohort's acquisitions, for "
                      "this atlas region and hemisphere", "Units": "ppm"},
    "modified_z": {"Description": "Modified z-score 0.6745 (value - cohort median) / MAD, MAD "
                   "the median absolute deviation over the cohort (Iglewicz & Hoaglin 1993); "
                   f"rows with |z| > {OUTLIER_Z} are listed"},
}  # fmt: skip


def flag_outliers(df: pd.DataFrame, value: str = "mean_ppm", *, threshold: float = OUTLIER_Z,
                  min_n: int = OUTLIER_MIN_N) -> pd.DataFrame:  # fmt: skip
    """Regional values far from the cohort, by the modified z-score.

    For each atlas region (and hemisphere) seen in at least ``min_n`` acquisitions,
    ``z = 0.6745 (x - median) / MAD`` with MAD the median absolute deviation from the median;
    rows with ``|z| > threshold`` are returned (Iglewicz & Hoaglin, How to Detect and Handle
    Outliers, ASQC 1993). The median and MAD ignore the outliers' pull, so one failed
    acquisition (a streaked Chimap, a misregistered atlas) stands out in a cohort. A region
    whose values are all equal (MAD 0) is not flagged.

    Returns
    -------
    pandas.DataFrame
        The entity columns, ``region``, ``hemisphere``, ``value``, ``cohort_median`` and
        ``modified_z``, largest ``|z|`` first; empty when nothing is flagged.
    """
    keys = [c for c in ENTITY_COLUMNS if c in df.columns and c != "atlas"]
    columns = [*keys, "atlas", "region", "hemisphere", value, "cohort_median", "modified_z"]
    flagged = []
    for _, rows in df.groupby(["atlas", "region", "hemisphere"], sort=False, dropna=False):
        x = rows[value].astype(float)
        if x.notna().sum() < min_n:
            continue
        median = x.median()
        mad = (x - median).abs().median()
        if not mad > 0:
            continue
        z = 0.6745 * (x - median) / mad
        hits = rows.loc[z.abs() > threshold].copy()
        hits["cohort_median"], hits["modified_z"] = median, z[z.abs() > threshold]
        flagged.append(hits)
    if not flagged:
        return pd.DataFrame(columns=columns)
    out = pd.concat(flagged)[columns]
    return out.iloc[out["modified_z"].abs().argsort()[::-1]].reset_index(drop=True)


def _sidecar_columns(paths: list[Path]) -> dict:
    """Column descriptions found in the per-acquisition sidecars (``{column: {...}}`` entries)."""
    found = {}
    for path in paths:
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            meta = json.loads(sidecar.read_text())
            found.update({k: v for k, v in meta.items() if isinstance(v, dict) and k not in found})
    return found


def _participants_columns(bids_dir) -> dict:
    sidecar = Path(bids_dir) / "participants.json"
    if sidecar.is_file():
        return {k: v for k, v in json.loads(sidecar.read_text()).items() if isinstance(v, dict)}
    return {}


def describe_long(columns, *, known: dict | None = None) -> dict:
    """BIDS tabular sidecar for the long table: a description (and units) per column."""
    known = {**(known or {}), **COLUMN_DESCRIPTIONS}
    default = {"Description": "Column from participants.tsv or the regional tables"}
    return {column: known.get(column, default) for column in columns}


def describe_wide(wide: pd.DataFrame, long: pd.DataFrame, *, value: str, known: dict) -> dict:
    """BIDS tabular sidecar for the wide table: region columns say which statistic and units."""
    stat = COLUMN_DESCRIPTIONS.get(value, known.get(value, {}))
    units = stat.get("Units", "ppm" if value.endswith("_ppm") else None)
    labels = dict(zip(region_labels(long), zip(long["region"], long["hemisphere"], strict=True),
                      strict=True))  # fmt: skip
    sidecar = {}
    for column in wide.columns:
        if column in labels:
            region, hemisphere = labels[column]
            where = region if pd.isna(hemisphere) else f"{region}, hemisphere {hemisphere}"
            entry = {"Description": f"{value} of {where}, relative to the reference column"}
            if units:
                entry["Units"] = units
            sidecar[column] = entry
        else:
            sidecar[column] = describe_long([column], known=known)[column]
    return sidecar


def _write_tsv(table: pd.DataFrame, path: Path, sidecar: dict) -> list[Path]:
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(sidecar, indent=2) + "\n")
    return [path, json_path]


def run_group(bids_dir, output_dir, *, value: str = "mean_ppm") -> dict:
    """Build the cohort tables and figures under ``output_dir/group/``.

    Parameters
    ----------
    bids_dir : path-like
        The input BIDS dataset (for ``participants.tsv`` and ``participants.json``).
    output_dir : path-like
        The qsmprep output folder holding the participant-level regional tables.
    value : str
        The statistic spread in the wide table and plotted (default ``mean_ppm``).

    Returns
    -------
    dict
        Paths written: ``long``, ``long_sidecar``, ``wide``, ``wide_sidecar``, ``outliers``,
        ``outliers_sidecar``, ``report`` and ``figures`` (a list of PNG and SVG files); and
        ``n_outliers``, the number of rows of the outlier table.

    Raises
    ------
    FileNotFoundError
        When the participant level has left no regional table; the CLI prints the message and
        exits with a non-zero status.
    """
    from .reports.figures import plot_region_distributions

    output_dir = Path(output_dir)
    paths = find_regional_tables(output_dir)
    collected = collect_regional_tables(output_dir)
    known = {**_sidecar_columns(paths), **_participants_columns(bids_dir)}

    long = join_participants(collected, bids_dir)
    wide = join_participants(wide_table(collected, value=value), bids_dir)

    group_dir = output_dir / "group"
    group_dir.mkdir(parents=True, exist_ok=True)
    long_path, long_sidecar = _write_tsv(
        long, group_dir / "regions_long.tsv", describe_long(long.columns, known=known)
    )
    wide_path, wide_sidecar = _write_tsv(
        wide, group_dir / "regions_wide.tsv", describe_wide(wide, long, value=value, known=known)
    )
    group_column = "group" if "group" in long.columns and long["group"].notna().any() else None
    figures = plot_region_distributions(
        long, group_dir / "figures", value=value, group_column=group_column
    )
    outliers = flag_outliers(collected, value=value)
    outliers_path, outliers_sidecar = _write_tsv(
        outliers, group_dir / "regions_outliers.tsv",
        {**describe_long(outliers.columns, known=known), **OUTLIER_COLUMNS},
    )  # fmt: skip
    from .reports.html import write_group_report

    report = write_group_report(output_dir, collected, outliers, figures, value=value)
    return {
        "long": long_path,
        "long_sidecar": long_sidecar,
        "wide": wide_path,
        "wide_sidecar": wide_sidecar,
        "outliers": outliers_path,
        "outliers_sidecar": outliers_sidecar,
        "n_outliers": len(outliers),
        "figures": figures,
        "report": report,
    }
