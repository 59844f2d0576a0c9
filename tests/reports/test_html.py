"""The per-subject HTML report: structure, links and escaping."""

from __future__ import annotations

from conftest import parse_report

from qsmprep.reports.html import AcquisitionSection, write_subject_report
from qsmprep.reports.qc import AcquisitionQC, Figure


def test_report_links_its_figures_and_shows_failures(tmp_path):
    out = tmp_path / "out"
    fig_dir = out / "sub-01" / "figures"
    fig_dir.mkdir(parents=True)
    png = fig_dir / "sub-01_run-1_desc-chimap_qc.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    chimap = out / "sub-01" / "anat" / "sub-01_run-1_Chimap.nii.gz"
    chimap.parent.mkdir(parents=True)
    chimap.touch()
    done = AcquisitionSection(
        name="sub-01_run-1", summary=[("echo times (ms)", "4.00, 8.00")],
        warnings=["2 echo(es); the consensus recommends at least 3"],
        qc=AcquisitionQC(files={"chimap": chimap},
                         figures=[Figure(path=png, title="Chimap", caption="window")],
                         numbers=[("matrix (voxels)", "64 x 64 x 64")],
                         metadata={"Parameters": {"inversion": {"regularization": 5e-4}}}),
        methods="First paragraph.\n\nSecond paragraph.",
    )  # fmt: skip
    failed = AcquisitionSection(name="sub-01_run-2",
                                error="ValueError: phase <range> & magnitude differ")
    path = write_subject_report(out, "01", [done, failed], version="9.9")
    assert path == out / "sub-01.html"
    page = parse_report(path)
    text = " ".join(page.text)
    assert page.src == ["sub-01/figures/sub-01_run-1_desc-chimap_qc.png"]
    assert all((out / src).exists() for src in page.src)
    assert "sub-01/anat/sub-01_run-1_Chimap.nii.gz" in page.href
    assert "#sub-01_run-1" in page.href and "#sub-01_run-2" in page.href
    assert "1 of 2 acquisition(s) finished; failed: sub-01_run-2" in text
    assert "ValueError: phase <range> & magnitude differ" in text  # escaped, then parsed back
    assert "<range>" not in path.read_text().replace("&lt;range&gt;", "")
    assert "regularization" in text and "Second paragraph." in text
    assert "qsmprep 9.9" in text
