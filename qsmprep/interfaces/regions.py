"""Regional susceptibility table: native-space atlas labels + referenced chi -> TSV.

Thin wrapper around :func:`qsmprep.algorithms.regions.region_statistics`.
"""

from __future__ import annotations

import csv
import os

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from qsmprep.interfaces import nifti

#: Columns of the regional table, in order.
COLUMNS = ("region", "hemisphere", "label", "n_voxels", "mean_ppm", "median_ppm", "std_ppm",
           "iqr_ppm", "n_core_voxels", "core_mean_ppm", "core_median_ppm",
           "reference")  # fmt: skip


def write_table(rows: list[dict], path: str, columns=COLUMNS) -> str:
    """A BIDS TSV (``n/a`` for missing values, 6 significant digits for floats)."""

    def fmt(value):
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return "n/a"
        if isinstance(value, float):
            return f"{value:.6g}"
        return str(value) if value != "" else "n/a"

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([fmt(row.get(c)) for c in columns])
    return path


class _StatsInputSpec(BaseInterfaceInputSpec):
    chimap = File(exists=True, mandatory=True, desc="referenced chi (ppm), native space")
    labels = File(exists=True, mandatory=True, desc="atlas labels in native space")
    mask = File(exists=True, mandatory=True, desc="where chi is valid")
    label_names = traits.Dict(traits.Int, traits.Str, mandatory=True)
    reference = traits.Str("brain", usedefault=True, desc="recorded in every row")


class _StatsOutputSpec(TraitedSpec):
    out_table = File(exists=True, desc="regional statistics (TSV)")
    out_labels = File(exists=True, desc="label look-up table (BIDS dseg.tsv)")


class RegionalStatistics(SimpleInterface):
    """Per-region (and whole-brain) susceptibility statistics in native space."""

    input_spec = _StatsInputSpec
    output_spec = _StatsOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.algorithms.regions import core_labels, region_statistics

        chi, _ = nifti.load(self.inputs.chimap)
        labels, _ = nifti.load(self.inputs.labels, dtype=None)
        mask = nifti.load(self.inputs.mask)[0] > 0
        names = {int(k): v for k, v in self.inputs.label_names.items()}
        labels = np.rint(labels).astype(np.int32)
        rows = region_statistics(chi, labels, label_names=names, mask=mask)
        # the same statistics over each region's core (its boundary voxels left out)
        core_rows = region_statistics(chi, core_labels(labels), label_names=names, mask=mask)
        cores = {r["label"]: r for r in core_rows}
        for row in rows:
            core = cores[row["label"]] if row["label"] else {}
            row["n_core_voxels"] = core.get("n_voxels")
            row["core_mean_ppm"] = core.get("mean_ppm")
            row["core_median_ppm"] = core.get("median_ppm")
            row["reference"] = self.inputs.reference
        self._results["out_table"] = write_table(
            rows, os.path.join(runtime.cwd, "regions_stats.tsv")
        )
        lut = os.path.join(runtime.cwd, "dseg.tsv")
        with open(lut, "w") as fh:
            fh.write("index\tname\n" + "".join(f"{k}\t{names[k]}\n" for k in sorted(names)))
        self._results["out_labels"] = lut
        return runtime
