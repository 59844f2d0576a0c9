"""Top-level workflow: one sub-workflow per acquisition (subject/session/acq/run)."""

from __future__ import annotations

import re
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.__about__ import __version__
from qsmprep.algorithms.constants import phase_rad_per_ppm
from qsmprep.algorithms.inversion import SINGLE_STEP_METHODS, USES_MAGNITUDE
from qsmprep.config import method_parameters
from qsmprep.interfaces.field import R2starMapping, SWIMapping
from qsmprep.workflows.field import init_field_wf
from qsmprep.workflows.outputs import OUTPUTS, init_derivatives_wf, regional_outputs
from qsmprep.workflows.qsm import METHOD_DOIS, init_qsm_wf
from qsmprep.workflows.regions import (
    TRANSFORM_FIELDS,
    init_regional_stats_wf,
    init_registration_wf,
)

#: Image-size model for node memory: bytes per voxel per echo held by the heaviest stage.
_BYTES_PER_VOXEL_ECHO = 4 * 12


def estimate_mem_gb(n_voxels: int, n_echoes: int) -> float:
    """Memory (GB) a stage node may need for an image of ``n_voxels`` x ``n_echoes``."""
    return max(0.25, n_voxels * max(n_echoes, 4) * _BYTES_PER_VOXEL_ECHO / 1e9)


def _inversion_record(inversion: str, params: dict | None, voxel_size_mm) -> dict:
    """The inversion's parameters for the sidecars: defaults, then the given ones; a default
    that depends on the voxel size (TV's, nltv's and single-step TV's lambda) or on another
    parameter (TV's padding, single-step TV's support penalty), None in the signatures, is
    recorded as its value."""
    from qsmprep.algorithms.inversion._common import default_admm_penalty, per_jump_regularization

    record = {**method_parameters("inversion", inversion), **(params or {})}
    if "regularization" in record and record["regularization"] is None and voxel_size_mm:
        record["regularization"] = float(f"{per_jump_regularization(voxel_size_mm):.4g}")
    lam = record.get("regularization")
    if inversion == "single-step-tv" and record.get("support_penalty") is None and lam:
        record["support_penalty"] = float(f"{default_admm_penalty(lam):.4g}")  # ADMM's rho_3
    if inversion == "tv" and record.get("pad_factor") is None:  # set by the data term
        from qsmprep.algorithms.inversion.total_variation import default_pad_factor

        record["pad_factor"] = default_pad_factor(record["masked"])
    return record


def stage_parameters(settings) -> tuple[dict, dict]:
    """(background-removal params, inversion params) from the settings, plain dicts."""
    bfr_params: dict = {}
    if settings.bfr == "vsharp":
        bfr_params["max_radius_mm"] = settings.vsharp_max_radius_mm
        if settings.vsharp_min_radius_mm is not None:
            bfr_params["min_radius_mm"] = settings.vsharp_min_radius_mm
    inv_params: dict = {}
    if settings.inversion == "tkd":
        inv_params["threshold"] = settings.tkd_threshold
    # --bfr-param / --inversion-param name the methods' own arguments and take precedence
    bfr_params.update(settings.bfr_params)
    inv_params.update(settings.inversion_params)
    return bfr_params, inv_params


def resolve_regions(settings, atlas=None) -> dict | None:
    """Template, atlas and reference-label indices of the regional stage (None when off).

    Raises ``ValueError`` (one line) for an unknown atlas, or a reference region the atlas
    does not have.
    """
    if not settings.regions:
        return None
    from qsmprep.data.atlases import resolve_atlas
    from qsmprep.data.templates import TEMPLATE, get_template

    if atlas is None:
        atlas = resolve_atlas(settings.atlas, settings.atlas_labels)
    reference_labels = None
    if settings.reference not in ("brain", "none"):
        reference_labels = atlas.region_indices(settings.reference)
        if not reference_labels:
            raise ValueError(
                f"--reference {settings.reference}: not a region of the {atlas.name} atlas "
                f"(its regions: {', '.join(_region_names(atlas.labels))})"
            )
    return {"template": str(get_template(TEMPLATE).path), "template_name": TEMPLATE,
            "atlas_name": atlas.name, "atlas_path": str(atlas.path),
            "label_names": dict(atlas.labels), "reference_labels": reference_labels,
            "atlas_source": atlas.source}  # fmt: skip


def _region_names(labels: dict[int, str]) -> list[str]:
    from qsmprep.algorithms.regions import split_hemisphere

    names = dict.fromkeys(split_hemisphere(n)[0] for n in labels.values())
    listed = list(names)
    return listed[:20] + (["..."] if len(listed) > 20 else [])


def init_qsmprep_wf(
    settings, acquisitions, *, work_dir: str | Path, regions: dict | None = None
) -> pe.Workflow:
    """Build the whole run: reads ``settings`` here and passes plain values below.

    ``regions`` is :func:`resolve_regions`'s result (resolved here when None and
    ``settings.regions`` is on).
    """
    workflow = pe.Workflow(name=f"qsmprep_{__version__.replace('.', '_')}_wf",
                           base_dir=str(work_dir))  # fmt: skip
    if regions is None:
        regions = resolve_regions(settings)
    bfr_params, inv_params = stage_parameters(settings)
    user_masks = {}
    if settings.brain_mask_dir:
        from qsmprep.interfaces.bids import find_user_mask

        user_masks = {a.name: find_user_mask(settings.brain_mask_dir, a) for a in acquisitions}
    for acq in acquisitions:
        wf = init_single_acquisition_wf(
            acq,
            output_dir=str(settings.output_dir),
            bids_dir=str(settings.bids_dir),
            phase_sign=settings.phase_sign,
            masking=settings.masking,
            mask_erosions=settings.mask_erosions,
            combination=settings.combination,
            unwrapping=settings.unwrapping,
            bfr=settings.bfr,
            bfr_params=bfr_params,
            inversion=settings.inversion,
            inversion_params=inv_params,
            reference=settings.reference,
            omp_nthreads=settings.omp_nthreads,
            user_mask=user_masks.get(acq.name),
            phase_offset_correction=settings.phase_offset_correction,
            bipolar_correction=settings.bipolar_correction,
            write_swi=settings.write_swi,
            regions=regions,
            use_t1w=settings.use_t1w,
        )
        log_dir = Path(settings.output_dir) / f"sub-{acq.subject}" / "log"
        _set_crashdump_dir(wf, log_dir)
        workflow.add_nodes([wf])
    return workflow


def _set_crashdump_dir(workflow: pe.Workflow, log_dir: Path) -> None:
    """Crash files of every node of ``workflow`` go to the subject's ``log`` folder."""
    for node in workflow._get_all_nodes():
        node.config = {"execution": {"crashdump_dir": str(log_dir), "crashfile_format": "txt"}}


def acquisition_workflow_name(acq) -> str:
    """The name of an acquisition's sub-workflow (and of its folder in the work dir)."""
    return re.sub(r"[^0-9a-zA-Z]", "_", acq.name) + "_wf"


def init_single_acquisition_wf(
    acq,
    *,
    output_dir: str,
    bids_dir: str,
    phase_sign: int = 1,
    masking: str = "magnitude",
    mask_erosions: int = 0,
    combination: str = "linear-fit",
    unwrapping: str = "laplacian",
    bfr: str = "resharp",
    bfr_params: dict | None = None,
    inversion: str = "single-step-tv",
    inversion_params: dict | None = None,
    reference: str = "brain",
    omp_nthreads: int = 1,
    n_voxels: int = 256**3,
    user_mask: str | None = None,
    phase_offset_correction: str = "none",
    bipolar_correction: bool = False,
    write_swi: bool = True,
    regions: dict | None = None,
    use_t1w: bool = True,
    name: str | None = None,
) -> pe.Workflow:
    """Raw MEGRE phase (+ magnitude) of one acquisition -> derivatives.

    ``regions`` (from :func:`resolve_regions`) adds template registration, native-space atlas
    labels and the regional table; it needs magnitude images and is skipped without them.
    """
    workflow = pe.Workflow(name=name or acquisition_workflow_name(acq))
    echo_times = list(acq.echo_times_s)
    mem_gb = estimate_mem_gb(n_voxels, len(echo_times))
    has_mag = bool(acq.magnitude_files)
    inputnode = pe.Node(niu.IdentityInterface(fields=["phase_files", "magnitude_files"]),
                        name="inputnode")  # fmt: skip
    inputnode.inputs.phase_files = list(acq.phase_files)
    inputnode.inputs.magnitude_files = list(acq.magnitude_files)
    field_wf = init_field_wf(
        echo_times_s=echo_times, has_magnitude=has_mag, phase_units=acq.phase_units,
        phase_sign=phase_sign, masking=masking, mask_erosions=mask_erosions,
        combination=combination, unwrapping=unwrapping, mem_gb=mem_gb, user_mask=user_mask,
        phase_offset_correction=phase_offset_correction, bipolar_correction=bipolar_correction,
    )  # fmt: skip
    if inversion in USES_MAGNITUDE:  # nonlinear data terms: phase (rad) per ppm at mean TE
        scale = phase_rad_per_ppm(b0_tesla=acq.b0_tesla,
                                  echo_time_s=sum(echo_times) / len(echo_times))  # fmt: skip
        inversion_params = {"phase_scale_rad_per_ppm": scale, **(inversion_params or {})}
    if regions is not None and not has_mag:
        regions = None  # registration needs the magnitude; the runner warns
    t1w_file = acq.t1w_file if (regions and use_t1w) else None
    if regions is None and reference not in ("brain", "none"):
        raise ValueError(f"{acq.name}: reference {reference!r} needs atlas labels, which need "
                         "magnitude images for the registration")  # fmt: skip
    qsm_wf = init_qsm_wf(
        b0_tesla=acq.b0_tesla, bfr=bfr, bfr_params=bfr_params, inversion=inversion,
        inversion_params=inversion_params, reference=reference, mem_gb=mem_gb,
        n_procs=omp_nthreads,
        reference_labels=regions["reference_labels"] if regions else None,
    )  # fmt: skip
    single_step = inversion in SINGLE_STEP_METHODS  # background removal is part of the fit
    stages = (f"{inversion} (background removal and dipole inversion in one fit; local field "
              f"map by {bfr})" if single_step
              else f"{bfr} background removal, {inversion} dipole inversion")  # fmt: skip
    metadata = {
        "EchoTime": echo_times,
        "MagneticFieldStrength": acq.b0_tesla,
        "PhaseSign": phase_sign,
        "EstimationAlgorithm": f"{'user' if user_mask else masking} mask, {combination} echo "
        f"combination, {unwrapping} unwrapping, {stages}",
        "ReferenceRegion": reference,
        **({"Atlas": regions["atlas_name"], "AtlasSource": regions["atlas_source"],
            "Template": regions["template_name"]} if regions else {}),
        "EstimationReference": [METHOD_DOIS[m] for m in (bfr, inversion) if m in METHOD_DOIS],
        "Parameters": {
            "bfr": {**method_parameters("bfr", bfr), **(bfr_params or {})},
            "inversion": _inversion_record(inversion, inversion_params, acq.voxel_size_mm),
        },  # fmt: skip
        "GeneratedBy": [{"Name": "qsmprep", "Version": __version__}],
    }
    with_r2star = has_mag and len(echo_times) >= 2
    with_swi = has_mag and write_swi
    ds_wf = init_derivatives_wf(
        output_dir=output_dir, bids_dir=bids_dir, entities=acq.entities,
        source_files=list(acq.raw_files), metadata=metadata,
        outputs=tuple(o[0] for o in OUTPUTS
                      if (with_r2star or o[0] not in ("r2starmap", "t2starmap"))
                      and (with_swi or o[0] not in ("swi", "minip"))),
        extra_outputs=(regional_outputs(regions["atlas_name"], regions["template_name"],
                                        t1w=bool(t1w_file)) if regions else ()),
    )  # fmt: skip
    if regions:
        reg_wf = init_registration_wf(template=regions["template"], t1w=t1w_file,
                                      atlas_path=regions["atlas_path"], mem_gb=mem_gb)  # fmt: skip
        reg_wf.inputs.inputnode.moving = acq.magnitude_files[0]
        stats_wf = init_regional_stats_wf(
            template=regions["template"], label_names=regions["label_names"],
            reference=reference, mem_gb=mem_gb,
        )  # fmt: skip
        workflow.connect([
            (field_wf, reg_wf, [("outputnode.mask", "inputnode.mask")]),
            (qsm_wf, stats_wf, [("outputnode.chimap", "inputnode.chimap"),
                                ("outputnode.qsm_mask", "inputnode.qsm_mask")]),
            (reg_wf, stats_wf, [("outputnode.labels", "inputnode.labels"),
                                ("outputnode.forward_transforms",
                                 "inputnode.forward_transforms")]),
            (reg_wf, ds_wf, [("outputnode.labels", "inputnode.dseg")] +
                            [(f"outputnode.{f}", f"inputnode.{f}") for f in TRANSFORM_FIELDS
                             if t1w_file or not f.startswith("rigid")]),
            (stats_wf, ds_wf, [("outputnode.regions_stats", "inputnode.regions_stats"),
                               ("outputnode.dseg_tsv", "inputnode.dseg_tsv"),
                               ("outputnode.chimap_std", "inputnode.chimap_std")]),
        ])  # fmt: skip
        if regions["reference_labels"]:
            workflow.connect(reg_wf, "outputnode.labels", qsm_wf, "inputnode.labels")
    if with_swi:
        swi = pe.Node(SWIMapping(echo_times_s=echo_times, b0_tesla=acq.b0_tesla),
                      name="swi", mem_gb=mem_gb)  # fmt: skip
        workflow.connect([
            (field_wf, swi, [("outputnode.magnitude", "magnitude"),
                             ("outputnode.phase_rad", "phase"), ("outputnode.mask", "mask")]),
            (swi, ds_wf, [("swi", "inputnode.swi"), ("minip", "inputnode.minip")]),
        ])  # fmt: skip
    if with_r2star:
        r2star = pe.Node(R2starMapping(echo_times_s=echo_times), name="r2star", mem_gb=mem_gb)
        workflow.connect([
            (field_wf, r2star, [("outputnode.magnitude", "magnitude"),
                                ("outputnode.mask", "mask")]),
            (r2star, ds_wf, [("r2star", "inputnode.r2starmap"),
                             ("t2star", "inputnode.t2starmap")]),
        ])  # fmt: skip
    workflow.connect([
        (inputnode, field_wf, [("phase_files", "inputnode.phase_files"),
                               ("magnitude_files", "inputnode.magnitude_files")]),
        (field_wf, qsm_wf, [("outputnode.total_field_hz", "inputnode.total_field_hz"),
                            ("outputnode.mask", "inputnode.mask"),
                            ("outputnode.magnitude", "inputnode.magnitude"),
                            ("outputnode.field_noise_std_hz",
                             "inputnode.field_noise_std_hz")] if has_mag else
                           [("outputnode.total_field_hz", "inputnode.total_field_hz"),
                            ("outputnode.mask", "inputnode.mask")]),
        (field_wf, ds_wf, [("outputnode.mask", "inputnode.mask"),
                           ("outputnode.total_field_hz", "inputnode.total_field_hz")]),
        (qsm_wf, ds_wf, [("outputnode.chimap", "inputnode.chimap"),
                         ("outputnode.qsm_mask", "inputnode.qsm_mask"),
                         ("outputnode.local_field_hz", "inputnode.local_field_hz")]),
    ])  # fmt: skip
    return workflow
