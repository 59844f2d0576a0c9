"""Regional susceptibility end to end on an anatomical phantom with known regional chi.

The subject is the MNI152NLin2009cAsym template warped by a known motion and smooth
deformation, given known susceptibility per atlas region (bids_examples/make_examples.py),
simulated at 2 mm and 3 T with a T1w in another head position, and run through the
participant level with ``--reference csf`` (so the registration goes magnitude -> T1w -> MNI).
Full-resolution numbers (1 mm, two subjects) are in docs/benchmarks.md
(benchmarks/regional_accuracy.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from qsmprep.cli.run import main

REPO = Path(__file__).resolve().parents[2]
DEEP_GREY = ("caudate", "putamen", "GPe", "GPi", "thalamus", "substantia_nigra", "red_nucleus")


@pytest.fixture(scope="module")
def anatomical_run(tmp_path_factory):
    sys.path.insert(0, str(REPO / "bids_examples"))
    from make_examples import simulate_anatomical_subject, write_raw, write_t1w

    root = tmp_path_factory.mktemp("anat")
    bids, out = root / "bids", root / "out"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    cfg = dict(b0=3.0, tes=(0.005, 0.010, 0.015, 0.020), seed=11, rotation_deg=(6, -4, 3),
               translation_mm=(3, -4, 2), angles_deg=(10.0, 0.0), phase="rad",
               voxel=(2.0, 2.0, 2.0))  # fmt: skip
    affine, _, phantom, sig, atlas, t1w = simulate_anatomical_subject(cfg)
    write_raw(bids, "01", affine, sig, cfg)
    write_t1w(bids, "01", t1w, affine, (8.0, (4.0, -3.0, 5.0)))  # registration goes through it
    rc = main([str(bids), str(out), "participant", "-w", str(root / "work"), "--nprocs", "2",
               "--reference", "csf"])  # fmt: skip
    return rc, out / "sub-01" / "anat", phantom, atlas


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.slow
def test_native_atlas_matches_the_true_anatomy(anatomical_run):
    rc, anat, phantom, atlas = anatomical_run
    assert rc == 0
    for pair in ("from-MEGRE_to-T1w", "from-T1w_to-MEGRE", "from-T1w_to-MNI152NLin2009cAsym",
                 "from-MNI152NLin2009cAsym_to-T1w"):
        assert (anat / f"sub-01_{pair}_mode-image_xfm.h5").is_file(), pair
    dseg = np.asanyarray(nb.load(str(anat / "sub-01_seg-qsmprep_dseg.nii.gz")).dataobj)
    truth = np.where(phantom.brain_mask, phantom.labels, 0)
    idx = {v: k for k, v in atlas.labels.items()}
    dice = {name: _dice(dseg == k, truth == k) for name, k in idx.items()
            if name.rsplit("_", 1)[0] in DEEP_GREY}  # fmt: skip
    print({k: round(v, 2) for k, v in dice.items()})
    # measured 0.76 mean at 2 mm; a left/right swap, a wrong transform direction or a
    # shifted atlas scores below 0.3
    assert np.mean(list(dice.values())) > 0.6
    assert min(dice[f"putamen_{s}"] for s in "LR") > 0.75
    swapped = _dice(dseg == idx["putamen_L"], truth == idx["putamen_R"])
    assert swapped < 0.1


@pytest.mark.slow
def test_regional_means_follow_the_truth_with_a_csf_reference(anatomical_run):
    rc, anat, phantom, atlas = anatomical_run
    assert rc == 0
    table = pd.read_csv(anat / "sub-01_seg-qsmprep_desc-regions_stats.tsv", sep="\t")
    assert (table["reference"] == "csf").all()
    vent = table[table["region"] == "lateral_ventricle"]
    assert abs(np.average(vent["mean_ppm"], weights=vent["n_voxels"])) < 1e-6
    qsm_mask = np.asanyarray(nb.load(str(anat / "sub-01_desc-qsm_mask.nii.gz")).dataobj) > 0
    truth = np.where(phantom.brain_mask, phantom.labels, 0)
    true_means, est_means = [], []
    for _, row in table[table["label"] > 0].iterrows():
        sel = (truth == row["label"]) & qsm_mask
        if sel.sum() >= 10:
            true_means.append(phantom.chi_ppm[sel].mean())
            est_means.append(row["mean_ppm"])
    slope, _ = np.polyfit(true_means, est_means, 1)
    print(f"slope {slope:.3f} over {len(true_means)} regions")
    # measured 0.46 at 2 mm (0.58 at 1 mm; TV's own underestimation and the registration's
    # boundary voxels, see docs/benchmarks.md); a unit error (Hz taken as ppm, 2 pi) or a sign
    # flip moves it far outside, and labels that miss their region give ~0
    assert 0.3 < slope < 1.3
    gp = table[table["region"].isin(["GPe", "GPi"])]["mean_ppm"].mean()
    wm = table[table["region"] == "white_matter"]["mean_ppm"].mean()
    assert gp - wm > 0.06  # truth 0.18 ppm
