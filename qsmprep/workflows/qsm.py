"""Susceptibility from the total field: background removal -> dipole inversion -> reference."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.algorithms.inversion import (
    SINGLE_STEP_METHODS,
    USES_FIELD_NOISE,
    USES_MAGNITUDE,
)
from qsmprep.config import method_parameters
from qsmprep.interfaces.qsm import BackgroundRemoval, DipoleInversion, Referencing, SingleStepQSM

BFR_DESC = {
    "vsharp": "variable-radius sophisticated harmonic artifact reduction (V-SHARP) [Li 2011]",
    "sharp": "SHARP [Schweser 2011]",
    "resharp": "regularisation-enabled SHARP (RESHARP) [Sun & Wilman 2014]",
    "ismv": "iterative spherical mean value filtering (iSMV) [Wen 2014]",
    "pdf": "projection onto dipole fields (PDF) [Liu 2011]",
    "lbv": "Laplacian boundary value (LBV) filtering [Zhou 2014]",
}
INVERSION_DESC = {
    "tkd": "truncated k-space division (TKD) [Shmueli 2009]",
    "tsvd": "truncated singular value decomposition (TSVD)",
    "tikhonov": "closed-form Tikhonov regularisation with a gradient penalty",
    "rts": "rapid two-step dipole inversion (RTS) [Kames 2018]",
    "tv": "total-variation regularised inversion solved by ADMM [Bilgic 2014]",
    "isqsm": "incomplete-spectrum QSM [Fuchs & Shmueli 2023]",
    "isqsm-l1": "incomplete-spectrum QSM with an L1 wavelet prior solved by FISTA "
    "[Fuchs & Shmueli 2023]",
    "ilsqr": "iterative LSQR (iLSQR) [Li 2015]",
    "star": "streaking artifact reduction QSM (STAR-QSM) [Wei 2015]",
    "medi": "morphology-enabled dipole inversion (MEDI-L1, nonlinear data term weighted by the "
    "inverse field noise of the echo fit, magnitude edges) [Liu 2011, 2013]",
    "nltv": "nonlinear total-variation inversion (FANSI) [Milovic 2018]",
    "ndi": "nonlinear dipole inversion (NDI) [Polak 2020]",
    "single-step-tv": "single-step total-variation QSM, which fits susceptibility inside the "
    "brain mask to the spherical-mean-value high-pass ({radius_mm:g} mm) of the total field, "
    "with no "
    "separate background field removal [Chatnuntawech 2017]",
}
#: DOIs recorded as EstimationReference in the sidecars.
METHOD_DOIS = {
    "vsharp": "doi:10.1016/j.neuroimage.2011.07.019",
    "sharp": "doi:10.1016/j.neuroimage.2010.10.070",
    "resharp": "doi:10.1002/mrm.24765",
    "ismv": "doi:10.1002/mrm.24998",
    "pdf": "doi:10.1002/nbm.1670",
    "lbv": "doi:10.1002/nbm.3064",
    "tkd": "doi:10.1002/mrm.22135",
    "rts": "doi:10.1016/j.neuroimage.2017.11.018",
    "tv": "doi:10.1002/mrm.25029",
    "isqsm": "doi:10.3389/fnins.2023.1130524",
    "isqsm-l1": "doi:10.3389/fnins.2023.1130524",
    "ilsqr": "doi:10.1016/j.neuroimage.2014.11.038",
    "star": "doi:10.1002/nbm.3383",
    "medi": "doi:10.1002/mrm.22816",
    "nltv": "doi:10.1002/mrm.27073",
    "ndi": "doi:10.1002/nbm.4271",
    "single-step-tv": "doi:10.1002/nbm.3570",
}
REFERENCE_DESC = {
    "brain": "the mean susceptibility over the QSM mask (the brain mask where the map is "
    "valid)",
    "csf": "the mean susceptibility of the lateral ventricles (atlas labels in native space)",
    "none": "no region",
}


def init_qsm_wf(
    *,
    b0_tesla: float,
    bfr: str = "resharp",
    bfr_params: dict | None = None,
    inversion: str = "single-step-tv",
    inversion_params: dict | None = None,
    reference: str = "brain",
    reference_labels: list[int] | None = None,
    mem_gb: float = 1.0,
    n_procs: int = 1,
    name: str = "qsm_wf",
) -> pe.Workflow:
    """Local field and susceptibility map from a total field.

    Inputs: ``total_field_hz``, ``mask``, ``magnitude`` (optional), ``field_noise_std_hz``
    (the echo fit's field noise, optional; MEDI's data weight), ``labels`` (native atlas
    labels; needed when ``reference`` is a region, whose indices are ``reference_labels``).
    Outputs: ``local_field_hz``, ``qsm_mask`` (where chi is valid), ``chimap`` (ppm). With a
    single-step ``inversion`` chi comes from the total field, and ``bfr`` only makes the
    local field map.
    """
    workflow = pe.Workflow(name=name)
    if inversion in SINGLE_STEP_METHODS:
        return _init_single_step(workflow, b0_tesla=b0_tesla, inversion=inversion,
                                 params=inversion_params, bfr=bfr, bfr_params=bfr_params,
                                 reference=reference,
                                 reference_labels=reference_labels, mem_gb=mem_gb,
                                 n_procs=n_procs)  # fmt: skip
    inv_desc = INVERSION_DESC.get(inversion, inversion)
    if inversion == "tv":
        masked = {**method_parameters("inversion", "tv"), **(inversion_params or {})}["masked"]
        inv_desc += (", with the data term restricted to the mask" if masked
                     else ", with a k-space data term")  # fmt: skip
    workflow.__desc__ = (
        f"Background fields were removed by {BFR_DESC.get(bfr, bfr)}, and the local field "
        f"(converted to ppm with B0 = {b0_tesla:g} T) was inverted by "
        f"{inv_desc}. Susceptibility was referenced to "
        + REFERENCE_DESC.get(reference, f"the mean susceptibility of the atlas region "
                             f"'{reference}' (labels in native space)")
        + "."
    )
    inputnode, outputnode, bg_removal = _stage_nodes(workflow, bfr, bfr_params, mem_gb, n_procs)
    dipole_inversion = pe.Node(
        DipoleInversion(method=inversion, params=inversion_params or {}, b0_tesla=b0_tesla),
        name="dipole_inversion", mem_gb=mem_gb, n_procs=n_procs,
    )  # fmt: skip
    referencing = _referencing_node(workflow, inputnode, reference, reference_labels, mem_gb)
    if inversion in USES_MAGNITUDE:
        workflow.connect(inputnode, "magnitude", dipole_inversion, "magnitude")
    if inversion in USES_FIELD_NOISE:  # MEDI's data weight: 1 / the echo fit's field noise
        workflow.connect(inputnode, "field_noise_std_hz", dipole_inversion, "noise_std_hz")
    workflow.connect([
        (bg_removal, dipole_inversion, [("out_file", "field_hz"), ("out_mask", "mask")]),
        (dipole_inversion, referencing, [("out_file", "in_file")]),
        (bg_removal, referencing, [("out_mask", "mask")]),
        (bg_removal, outputnode, [("out_mask", "qsm_mask")]),
        (referencing, outputnode, [("out_file", "chimap")]),
    ])  # fmt: skip
    return workflow


def _stage_nodes(workflow, bfr, bfr_params, mem_gb, n_procs) -> tuple[pe.Node, pe.Node, pe.Node]:
    """The input and output nodes, and background removal from the total field to the
    ``local_field_hz`` output (both pipelines write it)."""
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["total_field_hz", "mask", "magnitude", "field_noise_std_hz", "labels"]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["local_field_hz", "qsm_mask", "chimap"]),
                         name="outputnode")  # fmt: skip
    bg_removal = pe.Node(BackgroundRemoval(method=bfr, params=bfr_params or {}),
                         name="bg_removal", mem_gb=mem_gb, n_procs=n_procs)  # fmt: skip
    workflow.connect([
        (inputnode, bg_removal, [("total_field_hz", "field_hz"), ("mask", "mask")]),
        (bg_removal, outputnode, [("out_file", "local_field_hz")]),
    ])  # fmt: skip
    return inputnode, outputnode, bg_removal


def _referencing_node(workflow, inputnode, reference, reference_labels, mem_gb) -> pe.Node:
    referencing = pe.Node(Referencing(reference=reference), name="referencing", mem_gb=mem_gb)
    if reference not in ("brain", "none"):
        if not reference_labels:
            raise ValueError(f"reference region {reference!r} needs its atlas label indices")
        referencing.inputs.region_labels = [int(k) for k in reference_labels]
        workflow.connect(inputnode, "labels", referencing, "labels")
    return referencing


def _init_single_step(workflow, *, b0_tesla, inversion, params, bfr, bfr_params, reference,
                      reference_labels, mem_gb, n_procs) -> pe.Workflow:
    """The QSM stage of a single-step method: total field -> chi; the local field map comes
    from ``bfr`` beside it (an output only: chi does not use it)."""
    radius = {**method_parameters("inversion", inversion), **(params or {})}["radius_mm"]
    desc = INVERSION_DESC.get(inversion, inversion).format(radius_mm=float(radius))
    workflow.__desc__ = (
        f"Susceptibility was estimated from the total field (converted to ppm with B0 = "
        f"{b0_tesla:g} T) by {desc}, and referenced to "
        + REFERENCE_DESC.get(reference, f"the mean susceptibility of the atlas region "
                             f"'{reference}' (labels in native space)")
        + f". The local field map was computed separately by {BFR_DESC.get(bfr, bfr)}; "
        "the susceptibility map does not depend on it."
    )  # fmt: skip
    inputnode, outputnode, bg_removal = _stage_nodes(workflow, bfr, bfr_params, mem_gb, n_procs)
    single_step = pe.Node(
        SingleStepQSM(method=inversion, params=params or {}, b0_tesla=b0_tesla),
        name="single_step", mem_gb=mem_gb, n_procs=n_procs,
    )  # fmt: skip
    referencing = _referencing_node(workflow, inputnode, reference, reference_labels, mem_gb)
    workflow.connect([
        (inputnode, single_step, [("total_field_hz", "field_hz"), ("mask", "mask")]),
        (single_step, referencing, [("out_file", "in_file"), ("out_mask", "mask")]),
        (single_step, outputnode, [("out_mask", "qsm_mask")]),
        (referencing, outputnode, [("out_file", "chimap")]),
    ])  # fmt: skip
    return workflow
