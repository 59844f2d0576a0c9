"""Nipype interfaces for the field-estimation stages: phase scaling, masking, echo
combination and spatial unwrapping. Each reads NIfTI, calls :mod:`qsmprep.algorithms`, writes
NIfTI on the input grid. No maths here."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from qsmprep.interfaces import nifti


def _out(runtime, name: str) -> str:
    return os.path.join(runtime.cwd, name)


class _PhaseScalingInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="phase per echo (TE order)")
    units = traits.Either(None, traits.Str, default=None, usedefault=True, desc="sidecar Units")
    sign = traits.Enum(1, -1, usedefault=True, desc="phase sign convention")


class _PhaseScalingOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="4-D phase in radians [-pi, pi), echoes last")


class PhaseScaling(SimpleInterface):
    """Detect the vendor phase range of the whole acquisition and scale it to radians."""

    input_spec = _PhaseScalingInputSpec
    output_spec = _PhaseScalingOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.algorithms.phase import scale_phase

        data, affine, notes = nifti.load_phase_stack(self.inputs.in_files)
        for note in notes:
            import logging

            logging.getLogger("qsmprep").warning(note)
        try:
            rad = scale_phase(data, units=self.inputs.units, sign=self.inputs.sign)
        except ValueError as exc:
            raise ValueError(f"{self.inputs.in_files[0]}: {exc}") from exc
        self._results["out_file"] = nifti.save(rad, affine, _out(runtime, "phase_rad.nii.gz"))
        return runtime


class _StackInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True)


class _StackOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class StackEchoes(SimpleInterface):
    """Stack per-echo 3-D magnitude images into one 4-D float32 file."""

    input_spec = _StackInputSpec
    output_spec = _StackOutputSpec

    def _run_interface(self, runtime):
        data, affine = nifti.load_stack(self.inputs.in_files)
        self._results["out_file"] = nifti.save(data, affine, _out(runtime, "magnitude.nii.gz"))
        return runtime


class _MaskInputSpec(BaseInterfaceInputSpec):
    phase = File(exists=True, mandatory=True, desc="4-D phase (rad)")
    magnitude = File(exists=True, desc="4-D magnitude (optional)")
    echo_times_s = traits.List(traits.Float, mandatory=True)
    method = traits.Str("magnitude", usedefault=True)
    erosions = traits.Int(0, usedefault=True)


class _MaskOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="brain mask (uint8)")


class BrainMask(SimpleInterface):
    """Brain mask from magnitude (threshold + holes filled) or from phase quality."""

    input_spec = _MaskInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        phase, affine = nifti.load(self.inputs.phase)
        mag = nifti.load(self.inputs.magnitude)[0] if isdefined(self.inputs.magnitude) else None
        try:
            mask = compute_mask(self.inputs.method, phase, mag, affine,
                                echo_times_s=self.inputs.echo_times_s,
                                erosions=self.inputs.erosions)  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"{self.inputs.phase}: {exc}") from exc
        if not mask.any():
            raise ValueError(f"{self.inputs.phase}: the brain mask is empty")
        self._results["out_file"] = nifti.save(mask, affine, _out(runtime, "mask.nii.gz"))
        return runtime


class _UserMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the user's mask (--brain-mask-dir)")
    erosions = traits.Int(0, usedefault=True, desc="--mask-erosions")


class UserMask(SimpleInterface):
    """A user-supplied mask read as booleans (0..1 maps at >= 0.5), eroded by
    ``erosions``, and written as uint8 on its own grid (checked against the data before
    the run)."""

    input_spec = _UserMaskInputSpec
    output_spec = _MaskOutputSpec

    def _run_interface(self, runtime):
        import logging

        from qsmprep.algorithms.masking import erode_voxels

        mask, affine, note = nifti.load_mask(self.inputs.in_file)
        if note:
            logging.getLogger("qsmprep").warning("%s: %s", self.inputs.in_file, note)
        try:
            mask = erode_voxels(mask, self.inputs.erosions)
        except ValueError as exc:
            raise ValueError(f"{self.inputs.in_file}: {exc}") from exc
        self._results["out_file"] = nifti.save(mask, affine, _out(runtime, "mask.nii.gz"))
        return runtime


def compute_mask(method: str, phase, magnitude, affine, *, echo_times_s, erosions: int = 0):
    """The brain mask of ``--masking method`` from phase (rad) and magnitude (None for
    phase-only data, which always gets the phase-quality mask)."""
    from qsmprep.algorithms import masking

    if method == "magnitude" and magnitude is None:
        method = "phase-quality"  # phase-only acquisition
    if method in ("bet", "consensus") and magnitude is None:
        raise ValueError(f"--masking {method} needs magnitude images")
    if method == "magnitude":
        return masking.mask_from_magnitude(magnitude, erosions=erosions,
                                           voxel_size_mm=nifti.geometry(affine)[0])  # fmt: skip
    if method == "phase-quality":
        return masking.mask_from_phase_quality(phase, magnitude, echo_times_s=echo_times_s,
                                               erosions=erosions)  # fmt: skip
    if method == "bet":
        return _bet(magnitude, affine, erosions=erosions)
    if method == "consensus":
        return masking.consensus_mask(_bet(magnitude, affine, erosions=0), phase, magnitude,
                                      echo_times_s=echo_times_s, erosions=erosions)  # fmt: skip
    raise ValueError(f"unknown masking method {method!r}")


def _bet(magnitude, affine, *, erosions: int = 0):
    """BET-class brain extraction (the ``brainextractor`` package) of the first echo."""
    import contextlib
    import io

    import numpy as np

    try:
        from brainextractor import BrainExtractor
    except ImportError as exc:
        raise ValueError(
            "--masking bet/consensus needs the optional extra: pip install 'qsmprep[bet]'"
        ) from exc
    import nibabel as nb

    from qsmprep.algorithms.masking import combined_magnitude

    first = magnitude[..., 0] if magnitude.ndim == 4 else combined_magnitude(magnitude)
    img = nb.Nifti1Image(np.asarray(first, dtype=np.float32), affine)
    with contextlib.redirect_stdout(io.StringIO()):
        extractor = BrainExtractor(img)
        extractor.run()
        mask = extractor.compute_mask() > 0
    if erosions:
        from scipy import ndimage

        mask = ndimage.binary_erosion(mask, iterations=int(erosions))
    return mask


class _CombineInputSpec(BaseInterfaceInputSpec):
    phase = File(exists=True, mandatory=True, desc="4-D phase (rad)")
    magnitude = File(exists=True, desc="4-D magnitude (weights)")
    mask = File(exists=True, mandatory=True)
    echo_times_s = traits.List(traits.Float, mandatory=True)
    method = traits.Enum("linear-fit", "nonlinear-fit", usedefault=True)
    phase_offset_correction = traits.Enum("none", "mcpc3ds", usedefault=True)
    bipolar_correction = traits.Bool(False, usedefault=True)
    unwrapping = traits.Str("laplacian", usedefault=True,
                            desc="spatial unwrapping of the closest echo pair's field, which "
                            "guides the temporal unwrapping of unevenly spaced echoes")  # fmt: skip


class _CombineOutputSpec(TraitedSpec):
    field_hz = File(exists=True, desc="combined field (Hz), possibly aliased by wrap_period_hz")
    phase_offset = File(exists=True, desc="receive phase offset (rad)")
    residual = File(exists=True, desc="fit residual (rad)")
    field_noise_std_hz = File(
        exists=True,
        desc="standard deviation of field_hz from the noise (Hz; relative for the linear fit; "
        "the largest float32 where the echoes leave the field undetermined); only with magnitude",
    )
    wrap_period_hz = traits.Float(desc="aliasing period of field_hz (Hz)")


class EchoCombination(SimpleInterface):
    """Combine echoes into one frequency map by a weighted fit of phase over TE."""

    input_spec = _CombineInputSpec
    output_spec = _CombineOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.algorithms import combine, combine_complex

        phase, affine = nifti.load(self.inputs.phase)
        mag = nifti.load(self.inputs.magnitude)[0] if isdefined(self.inputs.magnitude) else None
        mask = nifti.load(self.inputs.mask)[0] > 0
        tes = self.inputs.echo_times_s
        if self.inputs.bipolar_correction:
            phase = combine_complex.correct_bipolar(phase, mag, echo_times_s=tes, mask=mask)
        if self.inputs.phase_offset_correction == "mcpc3ds" and len(tes) > 1:
            voxel_size, _ = nifti.geometry(affine)
            phi0 = combine_complex.mcpc3ds_offset(
                phase, mag, echo_times_s=tes, voxel_size_mm=voxel_size, mask=mask
            )
            phase = combine_complex.remove_phase_offset(phase, phi0)
        # unevenly spaced echoes: a spatially unwrapped field of the closest pair guides the
        # temporal unwrapping (None for equal spacing)
        ref = combine.temporal_unwrap_guide(
            phase, mag, echo_times_s=tes, mask=mask, voxel_size_mm=nifti.geometry(affine)[0],
            unwrapping=self.inputs.unwrapping,
        )  # fmt: skip
        if self.inputs.method == "nonlinear-fit" and mag is not None and len(tes) > 1:
            fit = combine_complex.fit_field_nonlinear(phase, mag, echo_times_s=tes, mask=mask,
                                                      guide_field_hz=ref)  # fmt: skip
        else:  # the nonlinear fit needs magnitude and >= 2 echoes
            fit = combine.fit_field_linear(phase, mag, echo_times_s=tes, mask=mask,
                                           guide_field_hz=ref)  # fmt: skip
        self._results["field_hz"] = nifti.save(fit.field_hz, affine, _out(runtime, "fit_hz.nii.gz"))
        self._results["phase_offset"] = nifti.save(
            fit.phase_offset_rad, affine, _out(runtime, "phase_offset.nii.gz")
        )
        self._results["residual"] = nifti.save(
            fit.residual, affine, _out(runtime, "residual.nii.gz")
        )
        self._results["wrap_period_hz"] = float(fit.wrap_period_hz)
        if mag is not None:  # the complex fit has its own (sigma estimated); else relative
            sd = getattr(fit, "noise_std_hz", None)
            if sd is None:
                sd = combine.field_noise_std_hz(mag, echo_times_s=tes, mask=mask)
            out = _out(runtime, "field_noise_std_hz.nii.gz")
            self._results["field_noise_std_hz"] = nifti.save(sd, affine, out)
        return runtime


class _UnwrapInputSpec(BaseInterfaceInputSpec):
    field_hz = File(exists=True, mandatory=True)
    magnitude = File(exists=True, desc="4-D magnitude (ROMEO weights)")
    wrap_period_hz = traits.Float(mandatory=True)
    mask = File(exists=True, mandatory=True)
    method = traits.Str("laplacian", usedefault=True)


class _UnwrapOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="total field (Hz), 0 outside the mask")


class PhaseUnwrapping(SimpleInterface):
    """Spatially unwrap the combined field (as phase over one wrap period)."""

    input_spec = _UnwrapInputSpec
    output_spec = _UnwrapOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.algorithms.unwrap import unwrap_field_hz

        field, affine = nifti.load(self.inputs.field_hz)
        mask = nifti.load(self.inputs.mask)[0] > 0
        voxel_size, _ = nifti.geometry(affine)
        total = unwrap_field_hz(
            field,
            wrap_period_hz=self.inputs.wrap_period_hz,
            voxel_size_mm=voxel_size,
            mask=mask,
            method=self.inputs.method,
            magnitude=(
                nifti.load(self.inputs.magnitude)[0] if isdefined(self.inputs.magnitude) else None
            ),
        )
        total = total * mask
        self._results["out_file"] = nifti.save(total, affine, _out(runtime, "total_hz.nii.gz"))
        return runtime


class _R2sInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="4-D magnitude")
    mask = File(exists=True, mandatory=True)
    echo_times_s = traits.List(traits.Float, mandatory=True)
    method = traits.Str("auto", usedefault=True)


class _R2sOutputSpec(TraitedSpec):
    r2star = File(exists=True, desc="R2* (1/s)")
    t2star = File(exists=True, desc="T2* (s)")


class R2starMapping(SimpleInterface):
    """R2* and T2* maps from multi-echo magnitude (ARLO or weighted log-linear fit)."""

    input_spec = _R2sInputSpec
    output_spec = _R2sOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.algorithms.r2star import r2star_map, t2star_from_r2star

        mag, affine = nifti.load(self.inputs.magnitude)
        mask = nifti.load(self.inputs.mask)[0] > 0
        r2s = r2star_map(mag, echo_times_s=self.inputs.echo_times_s, mask=mask,
                         method=self.inputs.method)  # fmt: skip
        self._results["r2star"] = nifti.save(r2s, affine, _out(runtime, "r2star.nii.gz"))
        self._results["t2star"] = nifti.save(
            t2star_from_r2star(r2s), affine, _out(runtime, "t2star.nii.gz")
        )
        return runtime


class _SWIInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="4-D magnitude")
    phase = File(exists=True, mandatory=True, desc="4-D phase (rad)")
    mask = File(exists=True, mandatory=True)
    echo_times_s = traits.List(traits.Float, mandatory=True)
    b0_tesla = traits.Float(mandatory=True)
    slab_mm = traits.Float(16.0, usedefault=True, desc="minIP slab thickness (mm)")


class _SWIOutputSpec(TraitedSpec):
    swi = File(exists=True)
    minip = File(exists=True)
    echo_time_s = traits.Float(desc="echo used")


class SWIMapping(SimpleInterface):
    """Phase-mask SWI of the echo nearest the field-strength-appropriate TE, and its minIP."""

    input_spec = _SWIInputSpec
    output_spec = _SWIOutputSpec

    def _run_interface(self, runtime):
        import numpy as np

        from qsmprep.algorithms import swi

        mag, affine = nifti.load(self.inputs.magnitude)
        phase = nifti.load(self.inputs.phase)[0]
        mask = nifti.load(self.inputs.mask)[0] > 0
        voxel_size, _ = nifti.geometry(affine)
        tes = np.asarray(self.inputs.echo_times_s)
        echo = int(np.argmin(np.abs(tes - swi.default_swi_echo_time_s(self.inputs.b0_tesla))))
        image = swi.swi(mag[..., echo], phase[..., echo], kind="phase",
                        voxel_size_mm=voxel_size, mask=mask)  # fmt: skip
        minip = swi.minimum_intensity_projection(
            image, slab_mm=self.inputs.slab_mm, voxel_size_mm=voxel_size
        )
        self._results["swi"] = nifti.save(image, affine, _out(runtime, "swi.nii.gz"))
        self._results["minip"] = nifti.save(minip, affine, _out(runtime, "minip.nii.gz"))
        self._results["echo_time_s"] = float(tes[echo])
        return runtime
