"""Nipype interfaces for background field removal, dipole inversion and referencing.
Thin wrappers: NIfTI in, :mod:`qsmprep.algorithms` call, NIfTI out (input grid, float32)."""

from __future__ import annotations

import os

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from qsmprep.interfaces import nifti


class _BFRInputSpec(BaseInterfaceInputSpec):
    field_hz = File(exists=True, mandatory=True, desc="total field (Hz)")
    mask = File(exists=True, mandatory=True)
    method = traits.Str("resharp", usedefault=True)
    params = traits.Dict(traits.Str, traits.Any, {}, usedefault=True, desc="method parameters")


class _BFROutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="local field (Hz)")
    out_mask = File(exists=True, desc="mask where the local field is valid")


class BackgroundRemoval(SimpleInterface):
    """Remove the background field (sources outside the mask)."""

    input_spec = _BFRInputSpec
    output_spec = _BFROutputSpec

    def _run_interface(self, runtime):
        from qsmprep.algorithms.background import remove_background

        field, affine = nifti.load(self.inputs.field_hz)
        mask = nifti.load(self.inputs.mask)[0] > 0
        voxel_size, b0_dir = nifti.geometry(affine)
        local, eroded = remove_background(
            self.inputs.method, field, mask,
            voxel_size_mm=voxel_size, b0_direction=b0_dir, **self.inputs.params,
        )  # fmt: skip
        if not eroded.any():
            raise ValueError(
                f"{self.inputs.mask}: background removal eroded the whole mask "
                "(brain too small for the SMV radius?)"
            )
        cwd = runtime.cwd
        self._results["out_file"] = nifti.save(local, affine, os.path.join(cwd, "local_hz.nii.gz"))
        self._results["out_mask"] = nifti.save(eroded, affine, os.path.join(cwd, "mask.nii.gz"))
        return runtime


class _InvInputSpec(BaseInterfaceInputSpec):
    field_hz = File(exists=True, mandatory=True, desc="local field (Hz)")
    mask = File(exists=True, mandatory=True)
    b0_tesla = traits.Float(mandatory=True)
    method = traits.Str("tv", usedefault=True)
    params = traits.Dict(traits.Str, traits.Any, {}, usedefault=True)
    magnitude = File(exists=True, desc="4-D magnitude, for methods that use it")
    noise_std_hz = File(exists=True, desc="field noise (Hz), MEDI's data weight 1 / noise")


class _InvOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="susceptibility (ppm)")


class DipoleInversion(SimpleInterface):
    """Invert the dipole convolution: local field (Hz) -> chi (ppm)."""

    input_spec = _InvInputSpec
    output_spec = _InvOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.algorithms.constants import hz_to_ppm
        from qsmprep.algorithms.inversion import invert

        field, affine = nifti.load(self.inputs.field_hz)
        mask = nifti.load(self.inputs.mask)[0] > 0
        voxel_size, b0_dir = nifti.geometry(affine)
        params = dict(self.inputs.params)
        if isdefined(self.inputs.magnitude):
            params["magnitude"] = nifti.load(self.inputs.magnitude)[0]
        if isdefined(self.inputs.noise_std_hz):
            sd = nifti.load(self.inputs.noise_std_hz)[0]
            params["noise_std"] = hz_to_ppm(sd, b0_tesla=self.inputs.b0_tesla)
        chi = invert(
            self.inputs.method, hz_to_ppm(field, b0_tesla=self.inputs.b0_tesla), mask,
            voxel_size_mm=voxel_size, b0_direction=b0_dir, **params,
        )  # fmt: skip
        out = os.path.join(runtime.cwd, "chi_ppm.nii.gz")
        self._results["out_file"] = nifti.save(chi, affine, out)
        return runtime


class _SingleStepInputSpec(BaseInterfaceInputSpec):
    field_hz = File(exists=True, mandatory=True, desc="total field (Hz)")
    mask = File(exists=True, mandatory=True)
    b0_tesla = traits.Float(mandatory=True)
    method = traits.Str("single-step-tv", usedefault=True)
    params = traits.Dict(traits.Str, traits.Any, {}, usedefault=True)


class _SingleStepOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="susceptibility (ppm) on the whole mask")
    out_mask = File(exists=True, desc="where the data term holds (the mask eroded by the SMV)")


class SingleStepQSM(SimpleInterface):
    """Susceptibility straight from the total field (background removal and inversion in one
    fit): total field (Hz) -> chi (ppm)."""

    input_spec = _SingleStepInputSpec
    output_spec = _SingleStepOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.algorithms.constants import hz_to_ppm
        from qsmprep.algorithms.inversion import SINGLE_STEP_METHODS

        field, affine = nifti.load(self.inputs.field_hz)
        mask = nifti.load(self.inputs.mask)[0] > 0
        voxel_size, b0_dir = nifti.geometry(affine)
        chi, valid = SINGLE_STEP_METHODS[self.inputs.method](
            hz_to_ppm(field, b0_tesla=self.inputs.b0_tesla), mask,
            voxel_size_mm=voxel_size, b0_direction=b0_dir, **self.inputs.params,
        )  # fmt: skip
        cwd = runtime.cwd
        self._results["out_file"] = nifti.save(chi, affine, os.path.join(cwd, "chi_ppm.nii.gz"))
        self._results["out_mask"] = nifti.save(valid, affine, os.path.join(cwd, "mask.nii.gz"))
        return runtime


class _RefInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="chi (ppm)")
    mask = File(exists=True, mandatory=True)
    reference = traits.Str("brain", usedefault=True,
                           desc="'brain', 'none', or a region of the labels (csf, an atlas name)")
    labels = File(exists=True, desc="native-space atlas labels (for a region reference)")
    region_labels = traits.List(traits.Int, desc="label indices forming the reference region")


class _RefOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="referenced chi (ppm)")


class Referencing(SimpleInterface):
    """Reference chi to the mean of a region: ``brain`` (the whole mask), an atlas region
    (``labels`` + ``region_labels``: the union of those labels inside the mask), or ``none``."""

    input_spec = _RefInputSpec
    output_spec = _RefOutputSpec

    def _run_interface(self, runtime):
        import numpy as np

        from qsmprep.algorithms.referencing import reference_chi

        chi, affine = nifti.load(self.inputs.in_file)
        mask = nifti.load(self.inputs.mask)[0] > 0
        reference = self.inputs.reference
        if reference == "brain":
            chi = reference_chi(chi, mask)
        elif reference == "none":
            chi = chi * mask
        else:
            if not isdefined(self.inputs.labels) or not self.inputs.region_labels:
                raise ValueError(f"reference region {reference!r} needs atlas labels")
            labels = np.rint(nifti.load(self.inputs.labels)[0]).astype(np.int64)
            region = np.isin(labels, list(self.inputs.region_labels)) & mask
            if not region.any():
                raise ValueError(
                    f"reference region {reference!r} has no voxel inside the QSM mask "
                    f"(registration failed or the region lies outside the field of view)"
                )
            chi = reference_chi(chi, mask, region_mask=region)
        out = os.path.join(runtime.cwd, "chi_ref_ppm.nii.gz")
        self._results["out_file"] = nifti.save(chi, affine, out)
        return runtime
