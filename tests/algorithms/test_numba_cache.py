"""qsmprep's kernels import even where none of numba's cache folders is writable."""

import os
import stat
import tempfile

import pytest

from qsmprep.algorithms import _numba_cache

numba = pytest.importorskip("numba")


class _Finds:
    @classmethod
    def from_function(cls, py_func, py_file):
        return cls()


class _Fails:
    @classmethod
    def from_function(cls, py_func, py_file):
        return None


class _Raises:
    @classmethod
    def from_function(cls, py_func, py_file):
        raise OSError("read-only")


def test_numbas_locators_are_found():
    """The probe reads numba's own locator list; if a numba release renames it, this fails
    (the fallback would silently never engage)."""
    names = [cls.__name__ for cls in _numba_cache.locator_classes()]
    assert any("InTree" in n for n in names) and any("UserWide" in n for n in names)


def test_fallback_only_when_no_locator_is_writable(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    src = _numba_cache.__file__
    monkeypatch.setattr(_numba_cache, "locator_classes", lambda: [_Raises, _Fails, _Finds])
    assert _numba_cache.fallback_cache_dir(src) is None
    monkeypatch.setattr(_numba_cache, "locator_classes", lambda: [_Raises, _Fails])
    path = _numba_cache.fallback_cache_dir(src)
    assert path == str(tmp_path / f"qsmprep-numba-{os.getuid()}")
    assert os.path.isdir(path) and stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_ensure_points_numba_and_child_processes_at_the_fallback(monkeypatch, tmp_path):
    from numba.core import config

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(config, "CACHE_DIR", config.CACHE_DIR)
    monkeypatch.setenv("NUMBA_CACHE_DIR", "unchanged")
    monkeypatch.setattr(_numba_cache, "locator_classes", lambda: [_Finds])
    assert _numba_cache.ensure_writable_cache(_numba_cache.__file__) is None
    assert os.environ["NUMBA_CACHE_DIR"] == "unchanged"
    monkeypatch.setattr(_numba_cache, "locator_classes", lambda: [_Fails])
    path = _numba_cache.ensure_writable_cache(_numba_cache.__file__)
    assert config.CACHE_DIR == path == os.environ["NUMBA_CACHE_DIR"]


def test_a_read_only_shipped_cache_seeds_the_private_folder(monkeypatch, tmp_path):
    """A container image's compiled kernels, in a NUMBA_CACHE_DIR the user cannot write to,
    are copied into the private folder (numba would neither read nor write them there), even
    where numba could compile into the user's own cache folder."""
    shipped = tmp_path / "image-cache"
    (shipped / "qsmprep_algorithms").mkdir(parents=True)
    (shipped / "qsmprep_algorithms" / "k.nbi").write_bytes(b"index")
    (shipped / "qsmprep_algorithms" / "k.1.nbc").write_bytes(b"code")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(shipped))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(_numba_cache, "locator_classes", lambda: [_Finds])
    # writable: numba's own folder serves, nothing is copied
    assert _numba_cache.fallback_cache_dir(_numba_cache.__file__) is None
    monkeypatch.setattr(_numba_cache, "_writable", lambda path: path != str(shipped))
    path = _numba_cache.fallback_cache_dir(_numba_cache.__file__)
    assert path == str(tmp_path / "tmp" / f"qsmprep-numba-{os.getuid()}")
    copied = sorted(p.name for p in (tmp_path / "tmp").rglob("*") if p.is_file())
    assert copied == ["k.1.nbc", "k.nbi"]
    assert _numba_cache.seed_cache(str(shipped), path) == 0  # a second start copies nothing
