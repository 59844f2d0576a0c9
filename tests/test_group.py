"""The group level: collecting regional tables, joining participants, wide table, files, figures."""

import json

import pandas as pd
import pytest

from qsmprep.group import (
    collect_regional_tables,
    join_participants,
    run_group,
    wide_table,
)

REGIONS = [("putamen", "L"), ("putamen", "R"), ("caudate", "L"), ("caudate", "R"),
           ("brain", "n/a")]  # fmt: skip
#: (folder, file-name entities, atlas); sub-03 has a session and two runs.
ACQUISITIONS = [
    ("sub-01/anat", "sub-01", "deepgrey"),
    ("sub-01/anat", "sub-01", "wholebrain"),
    ("sub-02/anat", "sub-02_acq-fast", "deepgrey"),
    ("sub-03/ses-pre/anat", "sub-03_ses-pre_run-1", "deepgrey"),
    ("sub-03/ses-pre/anat", "sub-03_ses-pre_run-2", "deepgrey"),
]


def _mean(subject_index, region_index):
    return round(0.01 * subject_index + 0.001 * region_index, 6)


def _write_table(out, folder, prefix, atlas, *, index, regions=REGIONS, drop=None):
    rows = []
    for j, (region, hemisphere) in enumerate(regions):
        mean = _mean(index, j)
        rows.append({"region": region, "hemisphere": hemisphere, "n_voxels": 100 + j,
                     "mean_ppm": mean, "median_ppm": mean, "std_ppm": 0.02, "iqr_ppm": 0.03,
                     "reference": "brain"})  # fmt: skip
    table = pd.DataFrame(rows)
    if drop:
        table = table.drop(columns=drop)
    path = out / folder / f"{prefix}_seg-{atlas}_desc-regions_stats.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", index=False)
    sidecar = {"mean_ppm": {"Description": "Mean chi", "Units": "ppm"}, "Reference": "brain"}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


@pytest.fixture
def dataset(tmp_path):
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    (bids / "participants.tsv").write_text(
        "participant_id\tage\tgroup\nsub-01\t71\tcontrol\nsub-02\t68\tpatient\n"
        "sub-03\t75\tpatient\n"
    )
    (bids / "participants.json").write_text(json.dumps({"age": {"Units": "year"}}))
    for index, (folder, prefix, atlas) in enumerate(ACQUISITIONS):
        _write_table(out, folder, prefix, atlas, index=index)
    return bids, out


def test_collect_parses_entities_and_keeps_columns(dataset):
    _, out = dataset
    long = collect_regional_tables(out)
    assert len(long) == len(ACQUISITIONS) * len(REGIONS)
    assert list(long.columns[:5]) == ["participant_id", "session_id", "acq", "run", "atlas"]
    assert {"region", "hemisphere", "n_voxels", "mean_ppm", "median_ppm", "std_ppm", "iqr_ppm",
            "reference"} <= set(long.columns)  # fmt: skip
    keys = long[["participant_id", "session_id", "acq", "run", "atlas"]].drop_duplicates()
    keys = [tuple(None if pd.isna(v) else v for v in row) for row in keys.itertuples(index=False)]
    assert keys == [
        ("sub-01", None, None, None, "deepgrey"),
        ("sub-01", None, None, None, "wholebrain"),
        ("sub-02", None, "fast", None, "deepgrey"),
        ("sub-03", "ses-pre", None, "1", "deepgrey"),
        ("sub-03", "ses-pre", None, "2", "deepgrey"),
    ]
    # "n/a" hemisphere is missing, not the text "n/a"; values travel with their row
    assert long.loc[long.region == "brain", "hemisphere"].isna().all()
    row = long[(long.participant_id == "sub-02") & (long.region == "caudate")
               & (long.hemisphere == "R")]  # fmt: skip
    assert row["mean_ppm"].item() == pytest.approx(_mean(2, 3))


def test_join_participants(dataset, tmp_path):
    bids, out = dataset
    long = collect_regional_tables(out)
    joined = join_participants(long, bids)
    assert len(joined) == len(long)
    assert list(joined["participant_id"]) == list(long["participant_id"])
    assert {"age", "group"} <= set(joined.columns)
    by_subject = joined.drop_duplicates("participant_id").set_index("participant_id")
    assert by_subject.loc["sub-03", "group"] == "patient"
    assert by_subject.loc["sub-01", "age"] == 71

    # no participants.tsv: unchanged; a subject missing from it: NA
    assert join_participants(long, tmp_path).equals(long)
    (bids / "participants.tsv").write_text("participant_id\tage\n01\t70\n")
    partial = join_participants(long, bids)
    assert (partial.loc[partial.participant_id == "sub-01", "age"] == 70).all()
    assert partial.loc[partial.participant_id == "sub-02", "age"].isna().all()


def test_wide_table(dataset):
    _, out = dataset
    wide = wide_table(collect_regional_tables(out))
    assert len(wide) == len(ACQUISITIONS)
    regions = ["putamen_L", "putamen_R", "caudate_L", "caudate_R", "brain"]
    keys = ["participant_id", "session_id", "acq", "run", "atlas", "reference"]
    assert list(wide.columns) == keys + regions
    assert wide["session_id"].isna().sum() == 3
    row = wide[(wide.participant_id == "sub-03") & (wide.run == "2")]
    assert row["putamen_R"].item() == pytest.approx(_mean(4, 1))
    with pytest.raises(ValueError, match="no_such_stat"):
        wide_table(collect_regional_tables(out), value="no_such_stat")


def test_wide_table_missing_region_and_duplicates(tmp_path):
    _write_table(tmp_path, "sub-01/anat", "sub-01", "a", index=0)
    _write_table(tmp_path, "sub-02/anat", "sub-02", "a", index=1, regions=REGIONS[:2])
    wide = wide_table(collect_regional_tables(tmp_path))
    assert wide.loc[wide.participant_id == "sub-02", "caudate_L"].isna().all()
    _write_table(tmp_path, "sub-03/anat", "sub-03", "a", index=2, regions=REGIONS[:2] * 2)
    with pytest.raises(ValueError, match="repeat a region"):
        wide_table(collect_regional_tables(tmp_path))


def test_run_group_writes_tables_sidecars_and_figures(dataset):
    bids, out = dataset
    written = run_group(bids, out)
    group = out / "group"
    assert written["long"] == group / "regions_long.tsv"
    assert written["wide"] == group / "regions_wide.tsv"

    long = pd.read_csv(written["long"], sep="\t", keep_default_na=False, na_values=["n/a"])
    assert len(long) == len(ACQUISITIONS) * len(REGIONS)
    assert {"age", "group", "mean_ppm"} <= set(long.columns)
    wide = pd.read_csv(written["wide"], sep="\t")
    assert wide.shape == (len(ACQUISITIONS), 6 + len(REGIONS) + 2)

    long_meta = json.loads(written["long_sidecar"].read_text())
    assert set(long_meta) == set(long.columns)
    assert long_meta["mean_ppm"]["Units"] == "ppm"
    assert long_meta["age"]["Units"] == "year"
    wide_meta = json.loads(written["wide_sidecar"].read_text())
    assert wide_meta["putamen_L"]["Units"] == "ppm"
    assert "putamen, hemisphere L" in wide_meta["putamen_L"]["Description"]

    figures = written["figures"]
    # one figure per (atlas, region, hemisphere): deepgrey and wholebrain carry the same 5 regions
    assert len(figures) == 2 * 2 * len(REGIONS)
    assert {p.suffix for p in figures} == {".png", ".svg"}
    assert all(p.parent == group / "figures" and p.stat().st_size > 0 for p in figures)
    assert (group / "figures" / "seg-deepgrey_region-putamen_hemi-L_desc-meanPpm_boxplot.png") in (
        figures
    )
    assert figures[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = next(p for p in figures if p.suffix == ".svg").read_text()
    assert "patient" in svg and "control" in svg  # grouped by participants.tsv's group column


def test_run_group_without_participants(dataset):
    bids, out = dataset
    (bids / "participants.tsv").unlink()
    written = run_group(bids, out)
    svg = next(p for p in written["figures"] if p.suffix == ".svg").read_text()
    assert "patient" not in svg and "all" in svg


def test_malformed_table_names_the_file(dataset):
    _, out = dataset
    bad = _write_table(out, "sub-04/anat", "sub-04", "deepgrey", index=9, drop=["iqr_ppm"])
    with pytest.raises(ValueError, match=r"sub-04_seg-deepgrey_desc-regions_stats\.tsv.*iqr_ppm"):
        collect_regional_tables(out)
    bad.unlink()
    _write_table(out, "sub-04/anat", "sub-05", "deepgrey", index=9)
    with pytest.raises(ValueError, match="sub-05_seg-deepgrey.*folder"):
        collect_regional_tables(out)


def test_no_tables_is_file_not_found(tmp_path):
    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"desc-regions_stats\.tsv.*under") as err:
        run_group(tmp_path, tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "group").exists()


def _cohort(values, region=("putamen", "L"), atlas="deepgrey"):
    """A long table: one acquisition per value (sub-01, sub-02, ...)."""
    return pd.DataFrame({"participant_id": [f"sub-{i + 1:02d}" for i in range(len(values))],
                         "atlas": atlas, "region": region[0], "hemisphere": region[1],
                         "mean_ppm": values})  # fmt: skip


def test_flag_outliers_by_modified_z_score():
    from qsmprep.group import flag_outliers

    typical = [0.050, 0.052, 0.048, 0.051, 0.049, 0.053, 0.047]
    flagged = flag_outliers(pd.concat([
        _cohort([*typical, 0.300]),  # a streaked or misregistered acquisition
        _cohort([0.02] * 8, region=("caudate", "L")),  # MAD 0: nothing to compare with
        _cohort([0.1, 0.1, 0.1, 0.9], region=("thalamus", "R")),  # too few acquisitions
    ]))  # fmt: skip
    assert flagged["participant_id"].tolist() == ["sub-08"]
    row = flagged.iloc[0]
    assert row["region"] == "putamen" and row["cohort_median"] == pytest.approx(0.0505)
    # deviations from 0.0505: 0.5, 0.5, 1.5, 1.5, 2.5, 2.5, 3.5, 249.5 ppb: MAD 2 ppb
    assert row["modified_z"] == pytest.approx(0.6745 * 0.2495 / 0.002, rel=1e-6)
    # on either side of the threshold (same median and MAD): z = 2.53 stays, z = 3.88 goes
    assert flag_outliers(_cohort([*typical, 0.058])).empty
    assert flag_outliers(_cohort([*typical, 0.062]))["participant_id"].tolist() == ["sub-08"]


def test_group_report_lists_outliers_and_links_subject_reports(tmp_path):
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    regions = [("whole_brain", "n/a"), ("putamen", "L")]
    for index in range(6):
        _write_table(out, f"sub-{index:02d}/anat", f"sub-{index:02d}", "deepgrey",
                     index=index, regions=regions)  # fmt: skip
    table = out / "sub-05/anat/sub-05_seg-deepgrey_desc-regions_stats.tsv"
    rows = pd.read_csv(table, sep="\t")
    rows.loc[rows["region"] == "putamen", "mean_ppm"] = 0.5  # the others: 0.001-0.051
    rows.to_csv(table, sep="\t", index=False)
    (out / "sub-00.html").write_text("<html></html>")  # a participant-level report
    written = run_group(bids, out)
    outliers = pd.read_csv(written["outliers"], sep="\t")
    assert outliers["participant_id"].tolist() == ["sub-05"]
    assert json.loads(written["outliers_sidecar"].read_text())["modified_z"]["Description"]
    assert written["report"] == out / "group" / "report.html"
    from conftest import parse_report

    page = parse_report(written["report"])
    text = " ".join(page.text)
    assert "6 acquisition(s) of 6 participant(s)" in text and "0.5000" in text
    assert page.href == ["../sub-00.html"]  # only reports that exist are linked
    assert all((out / "group" / src).exists() for src in page.src) and len(page.src) == 2
