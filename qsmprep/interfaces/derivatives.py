"""The BIDS derivatives gateway: one sink that names, places and describes every output."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

#: Entity order of qsmprep derivative names (BIDS specification, appendix "entity table").
#: ``from``/``to``/``mode`` name transforms, as in sMRIPrep and fMRIPrep.
ENTITY_ORDER = (("subject", "sub"), ("session", "ses"), ("acquisition", "acq"), ("run", "run"),
                ("from", "from"), ("to", "to"), ("mode", "mode"), ("echo", "echo"),
                ("part", "part"), ("space", "space"), ("seg", "seg"),
                ("desc", "desc"))  # fmt: skip


def derivative_path(entities: dict, *, suffix: str, extension: str = ".nii.gz") -> str:
    """Relative BIDS path ``sub-X/[ses-Y/]anat/sub-X[_ses-Y]..._<suffix><extension>``."""
    if not entities.get("subject"):
        raise ValueError("a derivative needs a subject entity")
    parts = [f"{key}-{entities[name]}" for name, key in ENTITY_ORDER if entities.get(name)]
    folder = [f"sub-{entities['subject']}"]
    if entities.get("session"):
        folder.append(f"ses-{entities['session']}")
    folder.append("anat")
    return os.path.join(*folder, "_".join(parts) + f"_{suffix}{extension}")


def bids_uri(path: str, bids_dir: str) -> str:
    """``bids:raw:<relative path>`` for a file of the input dataset (else the plain path)."""
    try:
        rel = Path(path).resolve().relative_to(Path(bids_dir).resolve())
    except ValueError:
        return str(path)
    return f"bids:raw:{rel.as_posix()}"


class _SinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    output_dir = traits.Directory(mandatory=True)
    entities = traits.Dict(traits.Str, traits.Any, mandatory=True, desc="subject, session, ...")
    suffix = traits.Str(mandatory=True)
    desc = traits.Str(desc="desc entity")
    space = traits.Str(desc="space entity")
    extension = traits.Str(".nii.gz", usedefault=True)
    metadata = traits.Dict(traits.Str, traits.Any, {}, usedefault=True, desc="sidecar fields")
    source_files = InputMultiObject(traits.Str, desc="raw inputs (paths or BIDS URIs)")
    bids_dir = traits.Str(desc="input dataset, to write Sources as BIDS URIs")
    sidecar = traits.Bool(True, usedefault=True, desc="write the JSON sidecar")


class _SinkOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    out_meta = File(desc="JSON sidecar (when written)")


class DerivativesSink(SimpleInterface):
    """Copy a result into the derivatives tree under its BIDS name, with a JSON sidecar.

    The file and sidecar are written to temporary names and renamed into place, so an
    interrupted run never leaves a truncated file under a final name.
    """

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    def _run_interface(self, runtime):
        ents = dict(self.inputs.entities)
        for name in ("desc", "space"):
            value = getattr(self.inputs, name)
            if isdefined(value) and value:
                ents[name] = value
        rel = derivative_path(ents, suffix=self.inputs.suffix, extension=self.inputs.extension)
        out = Path(self.inputs.output_dir) / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.copyfile(self.inputs.in_file, tmp)
        meta = dict(self.inputs.metadata)
        if isdefined(self.inputs.source_files):
            bids_dir = self.inputs.bids_dir if isdefined(self.inputs.bids_dir) else ""
            meta["Sources"] = [
                bids_uri(s, bids_dir) if bids_dir else s for s in self.inputs.source_files
            ]
        os.replace(tmp, out)
        self._results["out_file"] = str(out)
        if self.inputs.sidecar:
            sidecar = out.with_name(out.name.removesuffix(self.inputs.extension) + ".json")
            tmp_json = sidecar.with_name(f".{sidecar.name}.tmp")
            tmp_json.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
            os.replace(tmp_json, sidecar)
            self._results["out_meta"] = str(sidecar)
        return runtime
