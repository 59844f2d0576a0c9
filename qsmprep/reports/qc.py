"""Quality-control figures and numbers of one acquisition, read from its derivatives.

Each figure shows one map in three rows of slices (axial, coronal, sagittal, in world
coordinates, drawn by nilearn) placed at the 12th to 88th percentiles of the brain mask's
extent, so the cuts land in the brain whatever the field of view. The numbers are computed in
the masks qsmprep wrote, so they describe exactly the maps a user will analyse.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Susceptibility display window (ppm): deep grey-matter nuclei and veins saturate, tissue
#: contrast stays visible.
CHI_WINDOW_PPM = 0.15
#: Number of slices per row of a figure.
N_CUTS = 7
#: |chi| above this (ppm) counts as an extreme value in the numbers table.
EXTREME_PPM = 0.5


@dataclass
class Figure:
    """One report figure: file written, title and caption."""

    path: Path
    title: str
    caption: str


@dataclass
class AcquisitionQC:
    """What the report shows of one acquisition."""

    files: dict[str, Path]
    figures: list[Figure] = field(default_factory=list)
    numbers: list[tuple[str, str]] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


def derivative_names() -> dict[str, str]:
    """Output field -> file name after ``<name>_``, from the sinks' own table
    (:data:`qsmprep.workflows.outputs.OUTPUTS`), so the report reads what the run writes."""
    from qsmprep.workflows.outputs import OUTPUTS

    return {field_: (f"desc-{desc}_" if desc else "") + f"{suffix}.nii.gz"
            for field_, desc, suffix, _ in OUTPUTS}  # fmt: skip


def find_derivatives(anat_dir: Path, name: str) -> dict[str, Path]:
    """The derivatives of acquisition ``name`` in ``anat_dir`` that exist, by output field
    (:func:`derivative_names`, plus ``dseg`` and ``regions`` for the regional stage)."""
    found = {key: anat_dir / f"{name}_{tail}" for key, tail in derivative_names().items()}
    found = {key: path for key, path in found.items() if path.exists()}
    for key, pattern in (("dseg", f"{name}_seg-*_dseg.nii.gz"),
                         ("regions", f"{name}_seg-*_desc-regions_stats.tsv")):  # fmt: skip
        matches = sorted(anat_dir.glob(pattern))
        if matches:
            found[key] = matches[0]
    return found


def _load(path):
    import nibabel as nb

    img = nb.load(str(path))
    if len(img.shape) > 3:  # a 4-D magnitude: its first volume
        img = img.slicer[..., 0]
    return img, np.asanyarray(img.dataobj, dtype=np.float32)


#: Value given to voxels outside the mask; below every display window, so drawn black.
_OUTSIDE = -1e6


def _masked_image(img, data, mask):
    """``img`` with :data:`_OUTSIDE` outside ``mask`` (nilearn would show NaN as 0)."""
    import nibabel as nb

    shown = nb.Nifti1Image(np.where(mask, data, _OUTSIDE).astype(np.float32), img.affine)
    rotation = img.affine[:3, :3]
    if np.abs(rotation - np.diag(np.diag(rotation))).max() < 1e-3 * np.abs(rotation).max():
        return shown
    # oblique: put it on a world-aligned grid here, so that the corners outside the field of
    # view are black too (nilearn would fill them with 0, mid-grey in a symmetric window)
    from nilearn import image

    zoom = float(min(img.header.get_zooms()[:3]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return image.resample_img(shown, target_affine=np.diag([zoom] * 3),
                                  interpolation="nearest", fill_value=_OUTSIDE)  # fmt: skip


def cut_coords(mask: np.ndarray, affine: np.ndarray, n_cuts: int = N_CUTS) -> dict[str, list]:
    """World coordinates (mm) of ``n_cuts`` slices per display axis spread over the mask.

    The slices sit at evenly spaced percentiles (12th to 88th) of the mask voxels' world
    coordinates along x, y and z, which keeps them in the brain for any affine.
    """
    idx = np.argwhere(mask)
    if idx.shape[0] == 0:
        raise ValueError("the brain mask is empty")
    step = max(1, idx.shape[0] // 200_000)
    world = idx[::step] @ affine[:3, :3].T + affine[:3, 3]
    quantiles = np.linspace(0.12, 0.88, n_cuts)
    return {axis: [float(c) for c in np.quantile(world[:, i], quantiles)]
            for i, axis in enumerate("xyz")}  # fmt: skip


def slices_figure(img, *, cuts, title, cmap="gray", vmin=None, vmax=None, contours=(),
                  roi=None, colorbar=True, modes="zyx"):  # fmt: skip
    """Axial, coronal and sagittal rows (``modes``: nilearn's z, y, x) of ``img`` at ``cuts``
    (:func:`cut_coords`).

    ``contours`` is a sequence of (mask image, colour) outlined on every slice; ``roi`` a label
    image (0: none) drawn over the map in colours. Values below ``vmin`` are black, and slices
    are drawn with nearest-neighbour resampling, so masked voxels stay black and each voxel
    shows its own value.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure
    from nilearn import plotting

    cmap = matplotlib.colormaps[cmap].with_extremes(under="black")
    fig = MplFigure(figsize=(11, 1.8 * len(modes)), facecolor="black")
    FigureCanvasAgg(fig)
    for row, mode in enumerate(modes):
        ax = fig.add_axes((0.0, 1.0 - (row + 1) / len(modes), 1.0, 1.0 / len(modes)))
        with warnings.catch_warnings():  # oblique affines: nilearn resamples and says so
            warnings.simplefilter("ignore")
            display = plotting.plot_img(
                img, display_mode=mode, cut_coords=cuts[mode], axes=ax, figure=fig, cmap=cmap,
                vmin=vmin, vmax=vmax, colorbar=colorbar and row == 0, black_bg=True,
                draw_cross=False, annotate=True, title=title if row == 0 else None,
                resampling_interpolation="nearest",
            )  # fmt: skip
            for mask_img, colour in contours:
                display.add_contours(mask_img, levels=[0.5], colors=[colour], linewidths=0.8)
            if roi is not None:
                display.add_overlay(roi, cmap="tab20", alpha=0.45, threshold=0.5,
                                    resampling_interpolation="nearest")  # fmt: skip
    return fig


def _percentile_window(values: np.ndarray, q: float = 99.0) -> float:
    values = values[np.isfinite(values)]
    return float(np.percentile(np.abs(values), q)) if values.size else 1.0


def _fmt(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}"


def format_ppm(value: float) -> str:
    """A susceptibility in ppm to 0.1 ppb, without a minus sign on zero."""
    return f"{round(float(value), 4) + 0.0:.4f}"


def small_labels(dseg: np.ndarray, brain: np.ndarray, fraction: float = 0.02) -> np.ndarray:
    """``dseg`` with only the labels smaller than ``fraction`` of the brain mask (the large
    tissue classes would hide the nuclei)."""
    labels, counts = np.unique(dseg[dseg > 0], return_counts=True)
    keep = labels[counts < fraction * max(int(brain.sum()), 1)]
    return np.where(np.isin(dseg, keep), dseg, 0).astype(np.float32)


def phase_scaling_note(phase_files, units: str | None) -> str:
    """How the stored phase was read: its range and the detected period (the same rules as
    the pipeline, :func:`qsmprep.algorithms.phase.detect_phase_period`, over every echo)."""
    from qsmprep.algorithms.phase import detect_phase_period
    from qsmprep.interfaces.nifti import load_phase_stack

    data, _, notes = load_phase_stack(list(phase_files))
    finite = data[np.isfinite(data)]
    period = detect_phase_period(data, units=units)
    if np.isclose(period, 2 * np.pi):
        read = "radians"
    elif np.isclose(period, 2000 * np.pi):
        read = "milliradians (2000 pi per turn)"
    else:
        read = f"integer codes, {period:g} per turn (2 pi)"
    text = f"stored {finite.min():g} .. {finite.max():g}, read as {read}"
    return text + ("; " + "; ".join(notes) if notes else "")


def geometry_numbers(img) -> list[tuple[str, str]]:
    """Matrix, voxel size and the B0 direction in voxel axes (from the affine) of ``img``."""
    from qsmprep.algorithms.kernels import b0_direction_from_affine

    b0_vox = b0_direction_from_affine(img.affine)
    tilt = float(np.degrees(np.arccos(min(1.0, float(np.abs(b0_vox).max())))))
    return [
        ("matrix (voxels)", " x ".join(str(n) for n in img.shape[:3])),
        ("voxel size (mm)", " x ".join(_fmt(float(z)) for z in img.header.get_zooms()[:3])),
        ("B0 direction in voxel axes (from the affine)",
         "(" + ", ".join(f"{c:+.3f}" for c in b0_vox) + f"), {tilt:.1f} degrees from the "
         "nearest voxel axis"),
    ]  # fmt: skip


def chimap_numbers(chi, brain, qsm_mask, *, voxel_ml: float) -> list[tuple[str, str]]:
    """Mask volumes and the Chimap's statistics (ppm) in the QSM mask."""
    values = chi[qsm_mask]
    if not values.size:
        return [("QSM mask", "empty")]
    kept = 100 * qsm_mask.sum() / max(brain.sum(), 1)
    return [
        ("brain mask volume (mL)", _fmt(brain.sum() * voxel_ml, 4)),
        ("QSM mask volume (mL, % of the brain mask)",
         f"{_fmt(qsm_mask.sum() * voxel_ml, 4)} ({kept:.0f} %)"),
        ("Chimap mean / median / SD in the QSM mask (ppm)",
         " / ".join(format_ppm(f(values)) for f in (np.mean, np.median, np.std))),
        ("Chimap 1st / 99th percentile (ppm)",
         " / ".join(format_ppm(v) for v in np.percentile(values, [1, 99]))),
        (f"voxels with |chi| > {EXTREME_PPM} ppm (% of the QSM mask)",
         f"{100 * np.mean(np.abs(values) > EXTREME_PPM):.2f}"),
    ]  # fmt: skip


#: (key, figure desc, label, what to look for) of the field-map figures.
_FIELDS = (
    ("total_field_hz", "totalfield", "Total field", "It should vary smoothly, with no 2 pi "
     "jumps (unwrapping errors) and no isolated dots inside the brain mask."),
    ("local_field_hz", "localfield", "Local field", "It should show tissue contrast (veins, "
     "deep grey matter) and no smooth background left near the mask edge."),
)  # fmt: skip


class _Drawer:
    """Draws one acquisition's figures at shared cuts and records them in ``qc``."""

    def __init__(self, qc: AcquisitionQC, *, cuts, fig_dir: Path, name: str):
        self.qc, self.cuts, self.fig_dir, self.name = qc, cuts, fig_dir, name
        fig_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, img, desc: str, title: str, caption: str, **options) -> None:
        fig = slices_figure(img, cuts=self.cuts, title=title, **options)
        path = self.fig_dir / f"{self.name}_desc-{desc}_qc.png"
        fig.savefig(path, format="png", dpi=90, facecolor="black")
        self.qc.figures.append(Figure(path=path, title=title, caption=caption))


def acquisition_qc(files: dict[str, Path], *, magnitude_file: str | None, fig_dir: Path,
                   name: str) -> AcquisitionQC:  # fmt: skip
    """Figures (PNG in ``fig_dir``) and numbers of one finished acquisition.

    ``files`` comes from :func:`find_derivatives`; ``magnitude_file`` is the raw first-echo
    magnitude (None for phase-only data: the masks are drawn on the total field).
    """
    import json

    import nibabel as nb

    qc = AcquisitionQC(files=files)
    sidecar = files["chimap"].with_name(files["chimap"].name.replace(".nii.gz", ".json"))
    if sidecar.exists():
        qc.metadata = json.loads(sidecar.read_text())
    chi_img, chi = _load(files["chimap"])
    brain_img, brain = _load(files["mask"])
    brain = brain > 0.5
    qsm_mask = _load(files["qsm_mask"])[1] > 0.5 if "qsm_mask" in files else brain
    draw = _Drawer(qc, cuts=cut_coords(brain, brain_img.affine), fig_dir=fig_dir, name=name)
    voxel_ml = float(np.prod(brain_img.header.get_zooms()[:3])) / 1000.0
    qc.numbers = geometry_numbers(chi_img) + chimap_numbers(chi, brain, qsm_mask,
                                                            voxel_ml=voxel_ml)  # fmt: skip

    outlines = [(nb.Nifti1Image(brain.astype(np.uint8), brain_img.affine), "#ff3b30")]
    if "qsm_mask" in files:
        outlines.append((nb.Nifti1Image(qsm_mask.astype(np.uint8), brain_img.affine), "#00c8ff"))
    bg = magnitude_file or files["total_field_hz"]
    bg_text = "first-echo magnitude" if magnitude_file else "total field (phase-only data)"
    draw(_load(bg)[0], "masks", "Brain mask and QSM mask",
         f"The {bg_text} with the brain mask (red) and the region where the susceptibility "
         "map is valid (blue) outlined. Check that the brain mask follows the brain, and "
         "that it leaves out the scalp, the sinuses and the noise outside the head.",
         contours=outlines, colorbar=False)  # fmt: skip
    for key, desc, label, what in _FIELDS:
        if key not in files:
            continue
        img, data = _load(files[key])
        region = brain if key == "total_field_hz" else qsm_mask & (data != 0)
        window = _percentile_window(data[region])
        draw(_masked_image(img, data, region), desc, f"{label} (Hz)",
             f"{label} offset in Hz, window +/-{_fmt(window)} Hz (99th percentile of its "
             f"magnitude). {what}", vmin=-window, vmax=window)  # fmt: skip
        lo, hi = np.percentile(data[region], [1, 99]) if region.any() else (np.nan, np.nan)
        qc.numbers.append((f"{label.lower()}, 1st / 99th percentile (Hz)",
                           f"{_fmt(lo)} / {_fmt(hi)}"))  # fmt: skip
    chi_shown = _masked_image(chi_img, chi, qsm_mask)
    window = {"vmin": -CHI_WINDOW_PPM, "vmax": CHI_WINDOW_PPM}
    draw(chi_shown, "chimap", "Susceptibility map (ppm)",
         f"Chimap in ppm, window +/-{CHI_WINDOW_PPM} ppm (white paramagnetic). Look for "
         "streaks through the slices, bright or dark rims at the mask edge, and uniform "
         "contrast from front to back; deep grey-matter nuclei and veins are bright, white "
         "matter slightly dark.", **window)  # fmt: skip
    if "r2starmap" in files:
        img, data = _load(files["r2starmap"])
        top = float(np.percentile(data[brain], 99)) if brain.any() else 1.0
        draw(_masked_image(img, data, brain), "r2star", "R2* (1/s)",
             f"R2* map, window 0-{_fmt(top)} 1/s (99th percentile). Iron-rich nuclei are "
             "bright; a bright rim at the sinuses is expected.", vmin=0.0, vmax=top)  # fmt: skip
        qc.numbers.append(("R2* median in the brain mask (1/s)",
                           _fmt(float(np.median(data[brain])))))  # fmt: skip
    if "minip" in files:
        img, data = _load(files["minip"])
        top = float(np.percentile(data[brain], 99)) if brain.any() else 1.0
        slab_axis = "xyz"[int(np.argmax(np.abs(img.affine[:3, 2])))]  # nearest to voxel k
        draw(_masked_image(img, data, brain), "minip", "SWI minimum-intensity projection",
             "Minimum-intensity projection of the SWI over 16 mm slabs along the third voxel "
             "axis, shown across that axis: veins are dark lines; dark patches away from "
             "veins and the sinuses point to signal loss.", vmin=0.0, vmax=top,
             modes=slab_axis)  # fmt: skip
    if "dseg" in files:
        dseg_img, dseg = _load(files["dseg"])
        draw(chi_shown, "dseg", "Atlas labels in native space",
             "The smaller atlas regions (each under 2 % of the brain mask: nuclei, "
             "ventricles) brought from the template, in colour over the Chimap. Check that "
             "the deep grey-matter labels sit on the bright nuclei (registration quality).",
             roi=nb.Nifti1Image(small_labels(dseg, brain), dseg_img.affine), colorbar=False,
             **window)  # fmt: skip
    return qc
