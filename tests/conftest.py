"""Shared test fixtures: tiny synthetic BIDS datasets.

``make_bids(**options)`` writes a small raw BIDS dataset of MEGRE (or T2starw) phase and magnitude
NIfTIs into the test's ``tmp_path`` and returns its root. The images follow the signal model of
``docs/conventions.md``: ``S(TE) = M0 exp(-TE / T2*) exp(i (phi0 + 2 pi df_hz TE))`` with a
linear field offset, so the phase is really wrapped at the later echoes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

DEFAULT_MEGRE_TES_S = (0.004, 0.008, 0.012)
DEFAULT_T2STARW_TE_S = (0.02,)


def _entity_prefix(subject: str, session: str | None, acq: str | None, run: str | None) -> str:
    parts = [f"sub-{subject}"]
    parts += [f"ses-{session}"] if session else []
    parts += [f"acq-{acq}"] if acq else []
    parts += [f"run-{run}"] if run else []
    return "_".join(parts)


def _signal(shape: Sequence[int], te_s: float, rng: np.random.Generator) -> np.ndarray:
    """Complex signal of a centred ellipsoid with a linear 40 Hz/FOV field along x."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[:3]], indexing="ij")
    inside = sum(g**2 for g in grids) <= 0.8
    m0 = np.where(inside, 1000.0, 20.0)
    df_hz = 40.0 * grids[0]
    phi0 = 0.3
    noise = rng.normal(scale=2.0, size=inside.shape) + 1j * rng.normal(scale=2.0, size=inside.shape)
    return m0 * np.exp(-te_s / 0.03) * np.exp(1j * (phi0 + 2 * np.pi * df_hz * te_s)) + noise


def _phase_array(phase: np.ndarray, dtype: Any, int_range: tuple[int, int]) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return phase.astype(dtype)
    low, high = int_range
    scaled = low + (phase + np.pi) / (2 * np.pi) * (high - low)
    return np.clip(np.round(scaled), low, high).astype(dtype)


def _write_json(path: Path, content: Mapping[str, Any] | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else json.dumps(content, indent=2)
    path.write_text(text, encoding="utf-8")


def write_bids_dataset(
    root: Path,
    *,
    subjects: Sequence[str] = ("01",),
    sessions: Sequence[str] = (),
    runs: Sequence[str | None] = (None,),
    acquisitions: Sequence[str | None] = (None,),
    echo_times_s: Sequence[float] | None = None,
    echoes: int | None = None,
    suffix: str = "MEGRE",
    shape: Sequence[int] = (8, 8, 4),
    affine: np.ndarray | None = None,
    b0: float | None = 3.0,
    phase_dtype: Any = np.float32,
    phase_int_range: tuple[int, int] = (-4096, 4095),
    phase_units: str | None = None,
    phase_only: bool = False,
    extension: str = ".nii.gz",
    sidecar_extra: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, Mapping[str, Any] | str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a small raw BIDS dataset of phase (and magnitude) images.

    Parameters
    ----------
    root : Path
        Dataset folder (created).
    subjects, sessions, runs, acquisitions : sequence
        Labels without prefixes; an empty ``sessions`` means no session level, ``None`` in
        ``runs``/``acquisitions`` means the entity is absent.
    echo_times_s : sequence of float, optional
        Echo times in seconds (default 4, 8, 12 ms for MEGRE; 20 ms for T2starw).
    echoes : int, optional
        Shortcut for ``echo_times_s = 4 ms * (1, ..., echoes)``.
    suffix : {'MEGRE', 'T2starw'}
        T2starw data are single echo and carry no ``echo`` entity.
    shape, affine
        Image grid (default 8x8x4 and 1 mm isotropic identity).
    b0 : float or None
        ``MagneticFieldStrength`` in the sidecars (None: omitted).
    phase_dtype, phase_int_range
        Float phases are stored in radians (-pi..pi); integer phases are mapped linearly from
        [-pi, pi) onto ``phase_int_range`` (Siemens-like -4096..4095 by default).
    phase_units : str, optional
        Sidecar ``Units`` of the phase (default 'rad' for float, 'arbitrary' for integers).
    phase_only : bool
        Write no magnitude images.
    extension : {'.nii.gz', '.nii'}
    sidecar_extra : mapping, optional
        Extra keys merged into every image sidecar.
    extra_files : mapping, optional
        More files relative to ``root``: a mapping is written as JSON, a string as text
        (e.g. top-level sidecars ``{"MEGRE.json": {"MagneticFieldStrength": 7}}``).
    seed : int
        Seed of the noise.

    Returns
    -------
    Path
        ``root``.
    """
    if echoes is not None:
        echo_times_s = tuple(0.004 * (i + 1) for i in range(echoes))
    if echo_times_s is None:
        echo_times_s = DEFAULT_T2STARW_TE_S if suffix == "T2starw" else DEFAULT_MEGRE_TES_S
    if suffix == "T2starw" and len(echo_times_s) != 1:
        raise ValueError("T2starw data are single echo")
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    float_phase = np.dtype(phase_dtype).kind == "f"
    units = phase_units or ("rad" if float_phase else "arbitrary")
    rng = np.random.default_rng(seed)

    root = Path(root)
    _write_json(
        root / "dataset_description.json",
        {"Name": "qsmprep test data", "BIDSVersion": "1.10.0", "DatasetType": "raw"},
    )
    for subject in subjects:
        for session in sessions or (None,):
            anat = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            for acq in acquisitions:
                for run in runs:
                    prefix = _entity_prefix(subject, session, acq, run)
                    for index, te_s in enumerate(echo_times_s, start=1):
                        echo = "" if suffix == "T2starw" else f"_echo-{index}"
                        signal = _signal(shape, te_s, rng)
                        meta = {"EchoTime": te_s, **(sidecar_extra or {})}
                        if b0 is not None:
                            meta["MagneticFieldStrength"] = b0
                        stem = anat / f"{prefix}{echo}_part-phase_{suffix}"
                        phase = _phase_array(np.angle(signal), phase_dtype, phase_int_range)
                        nib.save(nib.Nifti1Image(phase, affine), f"{stem}{extension}")
                        _write_json(stem.with_suffix(".json"), {**meta, "Units": units})
                        if phase_only:
                            continue
                        stem = anat / f"{prefix}{echo}_part-mag_{suffix}"
                        magnitude = np.abs(signal).astype(np.float32)
                        nib.save(nib.Nifti1Image(magnitude, affine), f"{stem}{extension}")
                        _write_json(stem.with_suffix(".json"), meta)
    for relpath, content in (extra_files or {}).items():
        _write_json(root / relpath, content)
    return root


@pytest.fixture
def make_bids(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a tiny BIDS dataset under ``tmp_path``; see :func:`write_bids_dataset`.

    Call it as ``make_bids(subjects=("01", "02"), echoes=4, ...)``; ``name`` (default 'bids')
    picks the folder so that one test can make several datasets.
    """

    def _make(*, name: str = "bids", **options: Any) -> Path:
        return write_bids_dataset(tmp_path / name, **options)

    return _make


def real_crop_dir() -> Path:
    """``shared/data/real-megre-crop``: beside the checkout (as CI lays it out) or the
    workspace's; the returned path may not exist (tests then skip)."""
    candidates = (
        Path(__file__).resolve().parents[2] / "shared" / "data" / "real-megre-crop",
        Path("/work/shared/data/real-megre-crop"),
    )
    return next((p for p in candidates if (p / "phase.nii.gz").exists()), candidates[0])


@pytest.fixture(scope="session")
def real_crop():
    """Real 3-echo crop (ROMEO.jl test data): phase (rad), magnitude, voxel size, mask.

    The stored floats are radians; the header's scl_slope (~1e-3) is spurious (its README).
    """
    from qsmprep.algorithms.masking import mask_from_magnitude

    folder = real_crop_dir()
    if not (folder / "phase.nii.gz").exists():
        pytest.skip(f"real data not found at {folder}")
    img = nib.load(folder / "phase.nii.gz")
    phase = np.asarray(img.dataobj.get_unscaled(), dtype=np.float32)
    assert np.abs(phase).max() <= np.pi * 1.001
    mag = nib.load(folder / "mag.nii.gz").get_fdata(dtype=np.float32)
    vox = tuple(float(v) for v in img.header.get_zooms()[:3])
    return phase, mag, vox, mask_from_magnitude(mag)


def noisy_local_field(phantom, *, voxel_size_mm, b0_direction=(0.0, 0.0, 1.0),
                      noise_ppm: float = 1e-3, seed: int = 0, chi=None):  # fmt: skip
    """``(chi, local_field_ppm)``: the field of ``chi`` (default: the phantom's
    brain-referenced truth) restricted to the brain, plus seeded Gaussian noise, zero
    outside the brain."""
    from qsmprep.algorithms.kernels import forward_field

    chi = phantom.true_chi() if chi is None else chi
    brain = phantom.brain_mask
    f = forward_field(np.where(brain, chi, 0), voxel_size_mm=voxel_size_mm,
                      b0_direction=b0_direction)  # fmt: skip
    f = f + np.random.default_rng(seed).normal(0, noise_ppm, f.shape).astype(np.float32)
    return chi, np.where(brain, f, 0).astype(np.float32)


@pytest.fixture(params=["numba", "numpy"])
def engine(request, monkeypatch):
    """Run a test with the fused numba kernels of the inversions and again with their numpy
    fallback (``qsmprep.algorithms.inversion._common._nb``, the one handle every inversion
    module uses); the numba run is skipped where numba is not installed."""
    from qsmprep.algorithms.inversion import _common

    if request.param == "numpy":
        monkeypatch.setattr(_common, "_nb", None)
    elif _common._nb is None:
        pytest.skip("numba is not installed")
    return request.param


@pytest.fixture(scope="session", autouse=True)
def qsmprep_cache(tmp_path_factory):
    """A private qsmprep cache for the session (the default atlas is built once into it),
    unless ``QSMPREP_CACHE`` already points at one (developers keep theirs between runs)."""
    import os

    if os.environ.get("QSMPREP_CACHE"):
        yield Path(os.environ["QSMPREP_CACHE"])
        return
    path = tmp_path_factory.mktemp("qsmprep-cache")
    os.environ["QSMPREP_CACHE"] = str(path)
    yield path
    os.environ.pop("QSMPREP_CACHE", None)


class _Collector(HTMLParser):
    """Collects image sources, link targets and the open/close balance of the page."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.src, self.href, self.stack, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.src.append(attrs["src"])
        if tag == "a":
            self.href.append(attrs["href"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_report(path: Path) -> _Collector:
    """Parse a report; every tag must close in order."""
    collector = _Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    assert collector.stack == []
    return collector
