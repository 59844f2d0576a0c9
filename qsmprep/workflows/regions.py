"""Template registration, atlas labels in native space, and the regional susceptibility table.

Two factories, because the susceptibility reference may be an atlas region: registration
(which needs only the magnitude) runs beside the field and QSM stages and feeds the labels to
referencing; the statistics then read the referenced Chimap.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.interfaces.regions import RegionalStatistics
from qsmprep.interfaces.registration import ApplyTransform, RegisterToTemplate

#: Transform files of the registration stage (outputnode fields, sinks of ``regional_outputs``).
TRANSFORM_FIELDS = ("template_forward", "template_inverse", "rigid_forward", "rigid_inverse")


def init_registration_wf(
    *,
    template: str,
    atlas_path: str,
    t1w: str | None = None,
    mem_gb: float = 1.0,
    name: str = "registration_wf",
) -> pe.Workflow:
    """Register the native magnitude to the template and bring the atlas to native space.

    With ``t1w`` (the session's T1w), magnitude -> T1w is rigid and the T1w (masked by the
    magnitude brain mask brought onto it, unless the field of view cuts that mask: a slab's
    mask would cut the T1w to the slab too) -> template is nonlinear.

    Inputs: ``moving`` (first-echo magnitude), ``mask`` (native brain mask; also the grid of
    the labels). Outputs: ``forward_transforms``, ``inverse_transforms`` (ANTs order),
    :data:`TRANSFORM_FIELDS` (files) and ``labels`` (int16 atlas labels on the native grid,
    nearest neighbour).
    """
    workflow = pe.Workflow(name=name)
    via = (
        "rigidly registered to the session's T1w image, which (masked by the magnitude brain "
        "mask brought onto it, or whole when the field of view cut that mask) was registered "
        "to the MNI152NLin2009cAsym template"
        if t1w else "registered to the MNI152NLin2009cAsym template"
    )  # fmt: skip
    workflow.__desc__ = (
        f"The brain-masked first-echo magnitude was {via} with ANTs (rigid, affine and SyN "
        "stages, Mattes mutual information; Avants et al. 2008), and atlas labels were "
        "brought to the native grid through the inverse transforms by nearest-neighbour "
        "interpolation."
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["moving", "mask"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["forward_transforms", "inverse_transforms", "labels",
                                      *TRANSFORM_FIELDS]),
        name="outputnode",
    )  # fmt: skip
    register = pe.Node(RegisterToTemplate(template=template), name="register", mem_gb=mem_gb)
    if t1w:
        register.inputs.t1w = t1w
    atlas_to_native = pe.Node(
        ApplyTransform(in_file=atlas_path, interpolation="nearestNeighbor", dtype="int16"),
        name="atlas_to_native", mem_gb=mem_gb,
    )  # fmt: skip
    workflow.connect([
        (inputnode, register, [("moving", "moving"), ("mask", "mask")]),
        (inputnode, atlas_to_native, [("mask", "reference")]),
        (register, atlas_to_native, [("inverse_transforms", "transform")]),
        (register, outputnode, [("forward_transforms", "forward_transforms"),
                                ("inverse_transforms", "inverse_transforms"),
                                *[(f, f) for f in TRANSFORM_FIELDS
                                  if t1w or not f.startswith("rigid")]]),
        (atlas_to_native, outputnode, [("out_file", "labels")]),
    ])  # fmt: skip
    return workflow


def init_regional_stats_wf(
    *,
    template: str,
    label_names: dict[int, str],
    reference: str = "brain",
    mem_gb: float = 1.0,
    name: str = "regional_stats_wf",
) -> pe.Workflow:
    """Regional statistics in native space and the Chimap resampled to the template.

    Inputs: ``chimap`` (referenced, ppm), ``qsm_mask``, ``labels`` (native),
    ``forward_transforms`` (ANTs order). Outputs: ``regions_stats`` (TSV), ``dseg_tsv``
    (label table), ``chimap_std`` (template space, linear interpolation; never used for statistics).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["chimap", "qsm_mask", "labels", "forward_transforms"]),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["regions_stats", "dseg_tsv", "chimap_std"]),
        name="outputnode",
    )
    stats = pe.Node(
        RegionalStatistics(label_names={int(k): v for k, v in label_names.items()},
                           reference=reference),
        name="regional_stats", mem_gb=mem_gb,
    )  # fmt: skip
    to_template = pe.Node(ApplyTransform(reference=template, interpolation="linear"),
                          name="chimap_to_template", mem_gb=mem_gb)  # fmt: skip
    workflow.connect([
        (inputnode, stats, [("chimap", "chimap"), ("labels", "labels"), ("qsm_mask", "mask")]),
        (inputnode, to_template, [("chimap", "in_file"), ("forward_transforms", "transform")]),
        (stats, outputnode, [("out_table", "regions_stats"), ("out_labels", "dseg_tsv")]),
        (to_template, outputnode, [("out_file", "chimap_std")]),
    ])  # fmt: skip
    return workflow
