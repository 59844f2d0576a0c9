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


def init_derivatives_wf(
    *,
    output_dir: str,
    bids_dir: str,
    entities: dict,
    source_files: list[str],
    metadata: dict | None = None,
    outputs: tuple[str, ...] | None = None,
    name: str = "derivatives_wf",
) -> pe.Workflow:
    """Write the per-acquisition derivatives; ``metadata`` is merged into every sidecar.

    ``outputs`` selects fields of :data:`OUTPUTS` (default: all).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[o[0] for o in OUTPUTS]), name="inputnode")
    for field, desc, suffix, static in OUTPUTS:
        if outputs is not None and field not in outputs:
            continue
        sink = pe.Node(
            DerivativesSink(
                output_dir=str(output_dir), bids_dir=str(bids_dir), entities=dict(entities),
                suffix=suffix, metadata={**(metadata or {}), **static},
                source_files=list(source_files),
            ),
            name=f"ds_{field}", run_without_submitting=True, mem_gb=0.1,
        )  # fmt: skip
        if desc:
            sink.inputs.desc = desc
        workflow.connect(inputnode, field, sink, "in_file")
    return workflow
