"""Field estimation: phase scaling -> brain mask -> echo combination -> unwrapping."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from qsmprep.algorithms.combine import uniform_spacing
from qsmprep.interfaces.field import (
    BrainMask,
    EchoCombination,
    PhaseScaling,
    PhaseUnwrapping,
    StackEchoes,
    UserMask,
)

MASKING_DESC = {
    "magnitude": "a robust (Otsu) threshold of the root-sum-of-squares magnitude over echoes, "
    "keeping the largest connected component and filling holes except enclosed regions over "
    "1 ml without signal at the first echo",
    "phase-quality": "thresholding a local phase-coherence quality map of the multi-echo phase",
    "bet": "BET-class surface-model brain extraction [Smith 2002] of the first-echo magnitude "
    "(brainextractor)",
    "consensus": "BET-class brain extraction [Smith 2002] intersected with a phase-quality mask "
    "(local phase coherence > 0.5), as the 2024 QSM consensus recommends",
}
COMBINATION_DESC = {
    "linear-fit": "a weighted least-squares fit of the temporally unwrapped phase over echo "
    "time (weights: squared magnitude), estimating the receive phase offset",
}
COMBINATION_DESC["nonlinear-fit"] = (
    "a nonlinear (Gauss-Newton) fit of the complex multi-echo signal [Liu 2013]"
)
UNWRAPPING_DESC = {
    "romeo": "ROMEO-class quality-guided region growing [Dymerska 2021]",
    "path": "reliability-sorted path following [Abdul-Rahman 2007]",
    "laplacian": "Laplacian-based unwrapping [Schofield & Zhu 2003] refined by preconditioned "
    "conjugate gradients [Ghiglia & Romero 1994], made congruent with the wrapped phase",
}


def init_field_wf(
    *,
    echo_times_s: list[float],
    has_magnitude: bool,
    phase_units: str | None = None,
    phase_sign: int = 1,
    masking: str = "magnitude",
    mask_erosions: int = 0,
    combination: str = "linear-fit",
    unwrapping: str = "laplacian",
    mem_gb: float = 1.0,
    user_mask: str | None = None,
    phase_offset_correction: str = "none",
    bipolar_correction: bool = False,
    name: str = "field_wf",
) -> pe.Workflow:
    """Estimate the total field (Hz) and a brain mask from multi-echo phase (+ magnitude).

    Inputs: ``phase_files``, ``magnitude_files`` (echo order = ``echo_times_s``).
    Outputs: ``phase_rad`` (4-D), ``magnitude`` (4-D, if any), ``mask``, ``total_field_hz``,
    ``fit_residual``. ``user_mask``: a mask file used instead of computing one.
    """
    workflow = pe.Workflow(name=name)
    mask_method = masking if has_magnitude else "phase-quality"
    mask_desc = (
        f"the user-supplied mask {user_mask}" if user_mask else MASKING_DESC[mask_method]
    )
    if mask_erosions:
        mask_desc += f", then eroded by {mask_erosions} voxel(s) (6-connected)"
    workflow.__desc__ = (
        f"Phase images ({len(echo_times_s)} echo(es), TE = "
        f"{', '.join(f'{t * 1e3:.2f}' for t in echo_times_s)} ms) were scaled to radians from "
        f"their stored range. A brain mask was obtained by {mask_desc}. "
        + (
            f"Echoes were combined into a frequency map by {COMBINATION_DESC[combination]}, "
            if len(echo_times_s) > 1
            else "The single-echo phase was divided by 2 pi TE, "
        )
        + f"which was spatially unwrapped by {UNWRAPPING_DESC[unwrapping]}."
        + (
            " As the echoes were unevenly spaced, the field of the two closest echoes, "
            "spatially unwrapped the same way, guided the temporal unwrapping of every echo "
            "before the fit (the template approach of multi-echo ROMEO [Dymerska 2021])."
            if not uniform_spacing(echo_times_s)
            else ""
        )
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["phase_files", "magnitude_files"]),
                        name="inputnode")  # fmt: skip
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=["phase_rad", "magnitude", "mask", "total_field_hz", "fit_residual",
                    "field_noise_std_hz"]
        ),
        name="outputnode",
    )
    phase_scaling = pe.Node(PhaseScaling(units=phase_units, sign=phase_sign),
                            name="phase_scaling", mem_gb=mem_gb)  # fmt: skip
    if user_mask:
        brain_mask = pe.Node(UserMask(in_file=user_mask, erosions=mask_erosions),
                             name="brain_mask", mem_gb=mem_gb)  # fmt: skip
    else:
        brain_mask = pe.Node(
            BrainMask(echo_times_s=list(echo_times_s), method=mask_method,
                      erosions=mask_erosions),
            name="brain_mask", mem_gb=mem_gb,
        )  # fmt: skip
    combine = pe.Node(
        EchoCombination(echo_times_s=list(echo_times_s), method=combination,
                        phase_offset_correction=phase_offset_correction,
                        bipolar_correction=bipolar_correction, unwrapping=unwrapping),
        name="echo_combination", mem_gb=mem_gb,
    )  # fmt: skip
    unwrap = pe.Node(PhaseUnwrapping(method=unwrapping), name="unwrap", mem_gb=mem_gb)
    workflow.connect([
        (inputnode, phase_scaling, [("phase_files", "in_files")]),
        (phase_scaling, combine, [("out_file", "phase")]),
        (brain_mask, combine, [("out_file", "mask")]),
        (combine, unwrap, [("field_hz", "field_hz"), ("wrap_period_hz", "wrap_period_hz")]),
        (brain_mask, unwrap, [("out_file", "mask")]),
        (phase_scaling, outputnode, [("out_file", "phase_rad")]),
        (brain_mask, outputnode, [("out_file", "mask")]),
        (combine, outputnode, [("residual", "fit_residual")]),
        (unwrap, outputnode, [("out_file", "total_field_hz")]),
    ])  # fmt: skip
    if not user_mask:  # the user's mask needs neither phase nor magnitude
        workflow.connect(phase_scaling, "out_file", brain_mask, "phase")
    if has_magnitude:
        stack = pe.Node(StackEchoes(), name="magnitude_stack", mem_gb=mem_gb)
        if not user_mask:
            workflow.connect(stack, "out_file", brain_mask, "magnitude")
        workflow.connect([
            (inputnode, stack, [("magnitude_files", "in_files")]),
            (stack, combine, [("out_file", "magnitude")]),
            (stack, unwrap, [("out_file", "magnitude")]),
            (stack, outputnode, [("out_file", "magnitude")]),
            (combine, outputnode, [("field_noise_std_hz", "field_noise_std_hz")]),
        ])  # fmt: skip
    return workflow
