"""All derivative sinks of qsmprep (names documented in ``docs/outputs.md``)."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.interfaces.derivatives import DerivativesSink

#: (input field, desc, suffix, static metadata) of every per-acquisition output.
OUTPUTS = (
    ("chimap", None, "Chimap", {"Units": "ppm"}),
    ("mask", "brain", "mask", {"Type": "Brain"}),
    ("qsm_mask", "qsm", "mask", {"Type": "ROI", "Description": "region where Chimap is valid"}),
    ("total_field_hz", "total", "fieldmap",
     {"Units": "Hz", "Description": "total (unwrapped, echo-combined) field offset"}),
    ("local_field_hz", "local", "fieldmap",
     {"Units": "Hz", "Description": "local field after background field removal"}),
    ("r2starmap", None, "R2starmap", {"Units": "1/s"}),
    ("t2starmap", None, "T2starmap", {"Units": "s"}),
    ("swi", None, "swi", {"Units": "arbitrary", "Description": "phase-mask SWI (power 4), "
                          "paramagnetic phase suppressed; not part of BIDS (.bidsignore)"}),
    ("minip", None, "minIP", {"Units": "arbitrary",
                              "Description": "minimum-intensity projection of the SWI over a "
                              "16 mm slab along the third voxel axis"}),
)  # fmt: skip


def regional_outputs(atlas: str, template: str, *, t1w: bool = False) -> tuple:
    """Outputs of the registration and regional stages, as
    ``(field, entities, suffix, static metadata, extension)``; with ``t1w`` the transforms
    are the pair native <-> T1w (rigid) and T1w <-> template."""
    from qsmprep.group import COLUMN_DESCRIPTIONS

    columns = {k: v for k, v in COLUMN_DESCRIPTIONS.items()
               if k in ("region", "hemisphere", "n_voxels", "mean_ppm", "median_ppm", "std_ppm",
                        "iqr_ppm", "n_core_voxels", "core_mean_ppm", "core_median_ppm",
                        "reference")}  # fmt: skip
    columns["label"] = {"Description": f"Index of the region in the {atlas} dseg image; 0 is the "
                        "whole brain (every voxel of the QSM mask)"}  # fmt: skip
    seg = {"seg": atlas}
    source = "T1w" if t1w else "MEGRE"
    return (
        ("dseg", seg, "dseg", {"Description": f"{atlas} atlas labels brought from {template} "
                               "to the native grid (nearest neighbour)"}, ".nii.gz"),
        ("dseg_tsv", seg, "dseg", None, ".tsv"),  # None: no sidecar (the image has it)
        ("regions_stats", {**seg, "desc": "regions"}, "stats",
         {**columns, "Description": "Regional susceptibility in native space; statistics over "
          "the voxels of each region inside the QSM mask"}, ".tsv"),
        ("chimap_std", {"space": template}, "Chimap",
         {"Units": "ppm", "Description": "Chimap resampled to the template (linear); for "
          "display and voxel-wise group analyses, not for regional statistics"}, ".nii.gz"),
        ("template_forward", {"from": source, "to": template, "mode": "image"}, "xfm",
         {"Description": f"ANTs composite transform (rigid + affine + SyN), {source} -> "
          "template"}, ".h5"),
        ("template_inverse", {"from": template, "to": source, "mode": "image"}, "xfm",
         {"Description": f"ANTs composite transform, template -> {source}"}, ".h5"),
    ) + ((
        ("rigid_forward", {"from": "MEGRE", "to": "T1w", "mode": "image"}, "xfm",
         {"Description": "ANTs composite transform (rigid), MEGRE -> the session's T1w"},
         ".h5"),
        ("rigid_inverse", {"from": "T1w", "to": "MEGRE", "mode": "image"}, "xfm",
         {"Description": "ANTs composite transform (rigid), T1w -> MEGRE"}, ".h5"),
    ) if t1w else ())  # fmt: skip


def init_derivatives_wf(
    *,
    output_dir: str,
    bids_dir: str,
    entities: dict,
    source_files: list[str],
    metadata: dict | None = None,
    outputs: tuple[str, ...] | None = None,
    extra_outputs: tuple = (),
    name: str = "derivatives_wf",
) -> pe.Workflow:
    """Write the per-acquisition derivatives; ``metadata`` is merged into every sidecar.

    ``outputs`` selects fields of :data:`OUTPUTS` (default: all); ``extra_outputs`` adds
    entries of :func:`regional_outputs`.
    """
    workflow = pe.Workflow(name=name)
    specs = [(f, {"desc": d} if d else {}, s, m, ".nii.gz") for f, d, s, m in OUTPUTS
             if outputs is None or f in outputs]  # fmt: skip
    specs += list(extra_outputs)
    inputnode = pe.Node(niu.IdentityInterface(fields=[o[0] for o in specs]), name="inputnode")
    for field, ents, suffix, static, extension in specs:
        sink = pe.Node(
            DerivativesSink(
                output_dir=str(output_dir), bids_dir=str(bids_dir),
                entities={**entities, **ents}, suffix=suffix, extension=extension,
                metadata={**(metadata or {}), **(static or {})},
                source_files=list(source_files), sidecar=static is not None,
            ),
            name=f"ds_{field}", run_without_submitting=True, mem_gb=0.1,
        )  # fmt: skip
        workflow.connect(inputnode, field, sink, "in_file")
    return workflow
