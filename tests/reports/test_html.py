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


def test_partial_coverage_is_a_report_warning_only_with_regions(tmp_path):
    import numpy as np

    from qsmprep.interfaces import nifti
    from qsmprep.reports.subject import partial_coverage_warning

    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in (30, 34, 28)], indexing="ij")
    brain = x**2 + y**2 + z**2 <= 0.8**2
    files = {"dseg": nifti.save(brain, np.eye(4), tmp_path / "dseg.nii.gz")}
    files["mask"] = nifti.save(brain, np.eye(4), tmp_path / "whole.nii.gz")
    assert partial_coverage_warning(files) is None
    files["mask"] = nifti.save(brain[:, :, 10:18], np.eye(4), tmp_path / "slab.nii.gz")
    warning = partial_coverage_warning(files)
    assert "partial coverage" in warning and "voxel axis 3" in warning
    assert partial_coverage_warning({"mask": files["mask"]}) is None  # --no-regions
