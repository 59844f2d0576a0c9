"""``qsmprep-tools``: single stages on plain NIfTI files, checked against a phantom's truth.

The phantom lives on an oblique grid (voxel axes rotated 20 degrees about x in the world), so
B0 (world +z) is not along a voxel axis: a tool that ignored the affine would score badly.
"""

from __future__ import annotations

import numpy as np
import pytest

from qsmprep.algorithms import constants, kernels, metrics
from qsmprep.algorithms.simulate import make_head_phantom, simulate_gre
from qsmprep.cli.tools import b0_direction_voxel, main
from qsmprep.interfaces import nifti

SHAPE = (48, 48, 48)
VOX = (3.0, 3.0, 3.0)
B0_T = 3.0
TES_S = (0.004, 0.008, 0.012)
# Measured on this phantom: TV 15.0 % with the affine's B0 direction, 68.1 % without.
MAX_NRMSE_TV = 20.0
MIN_NRMSE_NO_AFFINE = 50.0


def _oblique_affine(angle_deg: float = 20.0) -> np.ndarray:
    t = np.deg2rad(angle_deg)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    affine = np.eye(4)
    affine[:3, :3] = rot * np.asarray(VOX)
    affine[:3, 3] = (-70.0, -60.0, -50.0)
    return affine


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Phantom, affine, and NIfTIs of its local field (ppm), total field (ppm) and masks."""
    d = tmp_path_factory.mktemp("tools")
    ph = make_head_phantom(SHAPE, voxel_size_mm=VOX)
    affine = _oblique_affine()
    b0 = kernels.b0_direction_from_affine(affine)
    brain = ph.brain_mask
    local = kernels.forward_field(np.where(brain, ph.chi_ppm, 0), voxel_size_mm=VOX,
                                  b0_direction=b0)  # fmt: skip
    total = kernels.forward_field(ph.chi_ppm, voxel_size_mm=VOX, b0_direction=b0)
    files = {
        "local": nifti.save(np.where(brain, local, 0), affine, d / "local_ppm.nii.gz"),
        "local_hz": nifti.save(np.where(brain, constants.ppm_to_hz(local, b0_tesla=B0_T), 0),
                               affine, d / "local_hz.nii.gz"),
        "total": nifti.save(np.where(ph.head_mask | brain, total, 0), affine,
                            d / "total_ppm.nii.gz"),
        "mask": nifti.save(brain, affine, d / "brain_mask.nii.gz"),
        "small_mask": nifti.save(brain[:-1], affine, d / "small_mask.nii.gz"),
    }  # fmt: skip
    return {"ph": ph, "affine": affine, "b0": b0, "local_true": local, "dir": d, **files}


@pytest.fixture(scope="module")
def chi_tv(case):
    out = case["dir"] / "chi_tv.nii.gz"
    assert main(["invert", "--field", case["local"], "--mask", case["mask"], "-o", str(out)]) == 0
    return nifti.load(out)


def test_invert_single_step_from_the_total_field(case, tmp_path):
    """--algorithm single-step-tv takes the total field (skull, air and all) and writes its
    valid mask; measured 29.9 % there, against 1,370 % for TV on the same total field."""
    from qsmprep.algorithms.background import erode_mask

    out, valid_out = tmp_path / "chi_ss.nii.gz", tmp_path / "valid.nii.gz"
    argv = ["invert", "--field", case["total"], "--mask", case["mask"], "-o", str(out)]
    assert main([*argv, "--algorithm", "single-step-tv", "--mask-out", str(valid_out)]) == 0
    chi, affine = nifti.load(out)
    valid = nifti.load(valid_out)[0] > 0
    np.testing.assert_allclose(affine, case["affine"], atol=1e-5)
    assert np.array_equal(valid, erode_mask(case["ph"].brain_mask, voxel_size_mm=VOX,
                                            radius_mm=6.0))  # fmt: skip
    score = metrics.nrmse(chi - chi[valid].mean(), case["ph"].true_chi(), valid)
    assert score < 35.0
    # TV (a two-step method) on the same total field: background left in; its mask is the input
    tv_out, tv_valid = tmp_path / "chi_tv_total.nii.gz", tmp_path / "tv_valid.nii.gz"
    argv = ["invert", "--field", case["total"], "--mask", case["mask"], "-o", str(tv_out)]
    assert main([*argv, "--mask-out", str(tv_valid)]) == 0
    assert np.array_equal(nifti.load(tv_valid)[0] > 0, case["ph"].brain_mask)
    tv_chi = nifti.load(tv_out)[0]
    assert metrics.nrmse(tv_chi - tv_chi[valid].mean(), case["ph"].true_chi(), valid) > 3 * score


def _score(chi, ph) -> float:
    return metrics.nrmse(chi, ph.true_chi(), ph.brain_mask)


def test_invert_keeps_grid_and_recovers_chi_on_oblique_affine(case, chi_tv):
    chi, affine = chi_tv
    assert chi.shape == SHAPE and chi.dtype == np.float32
    np.testing.assert_allclose(affine, case["affine"], atol=1e-5)
    assert np.all(chi[~case["ph"].brain_mask] == 0)
    assert _score(chi, case["ph"]) < MAX_NRMSE_TV


def test_b0_dir_is_a_world_vector(case, chi_tv, tmp_path):
    affine = case["affine"]
    np.testing.assert_allclose(b0_direction_voxel(affine, (0, 0, 5)), case["b0"], atol=1e-12)
    # world +z given explicitly == the default from the affine
    out = tmp_path / "chi_z.nii.gz"
    argv = ["invert", "--field", case["local"], "--mask", case["mask"], "-o", str(out)]
    assert main([*argv, "--b0-dir", "0", "0", "1"]) == 0
    np.testing.assert_allclose(nifti.load(out)[0], chi_tv[0], atol=1e-6)
    # the world vector of the voxel z axis, i.e. B0 along voxel z: the affine ignored
    voxel_z_world = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    np.testing.assert_allclose(b0_direction_voxel(affine, voxel_z_world), [0, 0, 1], atol=1e-12)
    assert main([*argv, "--b0-dir", *map(str, voxel_z_world)]) == 0
    assert _score(nifti.load(out)[0], case["ph"]) > MIN_NRMSE_NO_AFFINE


@pytest.mark.parametrize("units", ["hz", "rad"])
def test_field_units_give_the_same_chi(case, tmp_path, units):
    te = 0.01
    src = case["local_hz"]
    if units == "rad":  # the phase of one echo: 2 pi f TE (unwrapped: |f| TE << 1/2 here)
        hz, affine = nifti.load(src)
        src = nifti.save(2 * np.pi * hz * te, affine, tmp_path / "phase.nii.gz")
    ref, out = tmp_path / "chi_ppm.nii.gz", tmp_path / f"chi_{units}.nii.gz"
    common = ["--mask", case["mask"], "--algorithm", "tkd"]
    assert main(["invert", "--field", case["local"], *common, "-o", str(ref)]) == 0
    assert main(["invert", "--field", src, *common, "-o", str(out), "--field-units", units,
                 "--b0-tesla", str(B0_T), "--te-s", str(te)]) == 0  # fmt: skip
    chi_ref = nifti.load(ref)[0]
    np.testing.assert_allclose(nifti.load(out)[0], chi_ref, atol=1e-4 * np.abs(chi_ref).max())


def test_a_sidecars_units_are_read_and_a_hz_field_read_as_ppm_is_flagged(case, tmp_path,
                                                                           capsys):  # fmt: skip
    """qsmprep writes its field maps in Hz with a sidecar saying so: without --field-units
    the tool reads it in Hz at the sidecar's field strength (and says so). Without a sidecar
    the documented default, ppm, stands, and a note flags an amplitude no field in ppm has."""
    import json
    import shutil

    common = ["--mask", case["mask"], "--algorithm", "tkd"]
    ref = tmp_path / "chi_ref.nii.gz"
    assert main(["invert", "--field", case["local"], *common, "-o", str(ref)]) == 0
    assert capsys.readouterr().err == ""  # a plausible ppm field: no note
    field = tmp_path / "sub-01_desc-local_fieldmap.nii.gz"
    shutil.copy(case["local_hz"], field)
    no_sidecar = tmp_path / "chi_as_ppm.nii.gz"
    assert main(["invert", "--field", str(field), *common, "-o", str(no_sidecar)]) == 0
    assert "read as ppm" in capsys.readouterr().err
    chi_ref = nifti.load(ref)[0]
    assert np.abs(nifti.load(no_sidecar)[0]).max() > 50 * np.abs(chi_ref).max()  # 127.7x
    field.with_name(field.name.replace(".nii.gz", ".json")).write_text(
        json.dumps({"Units": "Hz", "MagneticFieldStrength": B0_T}))  # fmt: skip
    out = tmp_path / "chi_sidecar.nii.gz"
    assert main(["invert", "--field", str(field), *common, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "in Hz at 3 T, from sub-01_desc-local_fieldmap.json" in err and "read as ppm" not in err
    np.testing.assert_allclose(nifti.load(out)[0], chi_ref, atol=1e-4 * np.abs(chi_ref).max())
    # an explicit --field-units wins over the sidecar
    assert main(["invert", "--field", str(field), *common, "-o", str(out),
                 "--field-units", "ppm"]) == 0  # fmt: skip
    np.testing.assert_allclose(nifti.load(out)[0], nifti.load(no_sidecar)[0], rtol=1e-6)
    assert "read as ppm" in capsys.readouterr().err
    field.with_name(field.name.replace(".nii.gz", ".json")).write_text('{"Units": "ppb"}')
    assert main(["invert", "--field", str(field), *common, "-o", str(out)]) == 2
    assert "Units 'ppb' is not ppm, Hz or rad" in _one_error_line(capsys)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("qsmprep-tools: error: ")
    return err[0]


def test_hz_without_b0_tesla_is_a_usage_error(case, tmp_path, capsys):
    out = tmp_path / "chi.nii.gz"
    rc = main(["invert", "--field", case["local_hz"], "--mask", case["mask"], "-o", str(out),
               "--field-units", "hz"])  # fmt: skip
    assert rc == 2
    assert "--b0-tesla" in _one_error_line(capsys)
    assert not out.exists()


def test_shape_mismatch_fails_and_leaves_no_file(case, tmp_path, capsys):
    out = tmp_path / "chi.nii.gz"
    rc = main(["invert", "--field", case["local"], "--mask", case["small_mask"], "-o", str(out)])
    assert rc == 1
    assert "small_mask.nii.gz" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["invert", "--field", "missing.nii.gz", "--mask", "M", "-o", "o.nii.gz"], "missing.nii"),
        (["invert", "--field", "F", "--mask", "M", "-o", "o.nii.gz", "--algorithm", "x"], "x"),
        (["bgremove", "--field", "F", "--mask", "M"], "-o"),
        (["nosuchtool"], "nosuchtool"),
        (["invert", "--field", "F", "--mask", "M", "-o", "o.nii.gz", "--param", "lambda=1"],
         "regularization (default None)"),
        (["bgremove", "--field", "F", "--mask", "M", "-o", "o.nii.gz", "--param", "radius_mm"],
         "KEY=VALUE"),
        (["bgremove", "--field", "F", "--mask", "M", "-o", "o.nii.gz", "--algorithm", "lbv",
          "--param", "peel=1.5"], "peel must be an integer"),
    ],
)
def test_usage_errors_are_one_line_exit_2(case, tmp_path, capsys, argv, needle):
    argv = [{"F": case["local"], "M": case["mask"]}.get(a, a) for a in argv]
    argv = [str(tmp_path / a) if a.endswith(".nii.gz") else a for a in argv]
    assert main(argv) == 2
    assert needle in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_nifti_is_a_runtime_error(case, tmp_path, capsys):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    out = tmp_path / "chi.nii.gz"
    assert main(["invert", "--field", str(bad), "--mask", case["mask"], "-o", str(out)]) == 1
    assert "bad.nii.gz" in _one_error_line(capsys)
    assert not out.exists()


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("qsmprep-tools ")


def test_bgremove_total_to_local(case, tmp_path):
    out, mask_out = tmp_path / "local.nii.gz", tmp_path / "valid.nii.gz"
    rc = main(["bgremove", "--field", case["total"], "--mask", case["mask"], "-o", str(out),
               "--mask-out", str(mask_out)])  # fmt: skip
    assert rc == 0
    local, affine = nifti.load(out)
    valid = nifti.load(mask_out)[0] > 0
    np.testing.assert_allclose(affine, case["affine"], atol=1e-5)
    assert local.shape == SHAPE and valid.shape == SHAPE
    brain = case["ph"].brain_mask
    assert valid.sum() > 0.5 * brain.sum() and not np.any(valid & ~brain)
    total = nifti.load(case["total"])[0]
    # the background (air, skull) field dominates the total field (measured 1220 %); RESHARP
    # recovers the local one (measured 39.2 %)
    assert metrics.nrmse(total, case["local_true"], valid) > 500
    assert metrics.nrmse(local, case["local_true"], valid) < 45


@pytest.fixture(scope="module")
def gre(case):
    """Three-echo magnitude/phase NIfTIs simulated from the whole head (incl. air) at 3 T."""
    ph, d, affine = case["ph"], case["dir"], case["affine"]
    sig = simulate_gre(ph.chi_ppm, voxel_size_mm=VOX, echo_times_s=TES_S, b0_tesla=B0_T,
                       b0_direction=case["b0"], m0=ph.m0, r2star_hz=ph.r2star_3t,
                       snr=100)  # fmt: skip
    mags = [nifti.save(sig.magnitude[..., e], affine, d / f"mag{e}.nii.gz") for e in range(3)]
    phases = [nifti.save(sig.phase_rad[..., e], affine, d / f"ph{e}.nii.gz") for e in range(3)]
    return {"sig": sig, "mag": mags, "phase": phases}


def _dice(a, b) -> float:
    return 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def test_mask_from_magnitude_and_from_phase(case, gre, tmp_path):
    brain = case["ph"].brain_mask
    out = tmp_path / "mask_mag.nii.gz"
    assert main(["mask", "--magnitude", *gre["mag"], "-o", str(out)]) == 0
    mask, affine = nifti.load(out)
    np.testing.assert_allclose(affine, case["affine"], atol=1e-5)
    assert _dice(mask > 0, brain) > 0.88  # measured 0.93 (brain + CSF; the dark skull is out)
    out = tmp_path / "mask_phase.nii.gz"
    assert main(["mask", "--phase", *gre["phase"], "--te-s", *map(str, TES_S), "-o", str(out),
                 "--erosions", "1"]) == 0  # fmt: skip
    assert _dice(nifti.load(out)[0] > 0, brain) > 0.9  # measured 0.96


def test_combine_gives_total_field_hz_and_unwrap_gives_radians(case, gre, tmp_path):
    out = tmp_path / "field_hz.nii.gz"
    rc = main(["combine", "--phase", *gre["phase"], "--magnitude", *gre["mag"],
               "--te-s", *map(str, TES_S), "--mask", case["mask"], "-o", str(out)])  # fmt: skip
    assert rc == 0
    field_hz, affine = nifti.load(out)
    np.testing.assert_allclose(affine, case["affine"], atol=1e-5)
    brain = case["ph"].brain_mask
    truth_hz = constants.ppm_to_hz(gre["sig"].total_field_ppm, b0_tesla=B0_T)
    err = np.abs(field_hz - truth_hz)[brain]
    # exact up to noise: no 1/dTE = 250 Hz aliasing left, and the right sign and unit
    # measured: median 0.29 Hz, max 2.3 Hz
    assert np.median(err) < 0.5 and err.max() < 5.0
    out = tmp_path / "unwrapped.nii.gz"
    assert main(["unwrap", "--phase", gre["phase"][2], "--mask", case["mask"], "-o", str(out)]) == 0
    unwrapped = nifti.load(out)[0]
    wrapped = nifti.load(gre["phase"][2])[0]
    turns = (unwrapped - wrapped)[brain] / (2 * np.pi)
    np.testing.assert_allclose(turns, np.round(turns), atol=1e-3)  # congruent with the input
    assert np.all(unwrapped[~brain] == 0)


def test_polar_turns_chopped_complex_parts_into_what_combine_reads(case, gre, tmp_path, capsys):
    """Real/imaginary parts (the sign alternating along the third voxel axis, as some GE
    reconstructions leave it) -> 4-D phase and magnitude -> combine gives the field that
    the phase/magnitude files give."""
    affine, sig = case["affine"], gre["sig"]
    chop = (-1.0) ** np.arange(SHAPE[2])
    signal = sig.magnitude * np.exp(1j * sig.phase_rad) * chop[None, None, :, None]
    parts = {part: [nifti.save(getattr(signal[..., e], part), affine,
                               tmp_path / f"{part}{e}.nii.gz") for e in range(3)]
             for part in ("real", "imag")}  # fmt: skip
    phase_out, mag_out = tmp_path / "phase4d.nii.gz", tmp_path / "mag4d.nii.gz"
    assert main(["polar", "--real", *parts["real"], "--imag", *parts["imag"],
                 "-o", str(phase_out), "--magnitude-out", str(mag_out)]) == 0  # fmt: skip
    assert "along voxel axis 3" in capsys.readouterr().err
    phase = nifti.load(phase_out)[0]
    assert phase.shape == (*SHAPE, 3)
    assert np.abs(np.angle(np.exp(1j * (phase - sig.phase_rad)))).max() < 1e-4
    np.testing.assert_allclose(nifti.load(mag_out)[0], sig.magnitude, rtol=1e-4, atol=1e-4)
    fields = []
    for phase_in, mag_in in (([str(phase_out)], [str(mag_out)]), (gre["phase"], gre["mag"])):
        out = tmp_path / f"field{len(fields)}.nii.gz"
        assert main(["combine", "--phase", *phase_in, "--magnitude", *mag_in, "--te-s",
                     *map(str, TES_S), "--mask", case["mask"], "-o", str(out)]) == 0  # fmt: skip
        fields.append(nifti.load(out)[0])
    np.testing.assert_allclose(fields[0], fields[1], atol=1e-2)  # Hz
    assert main(["polar", "--real", *parts["real"], "--imag", *parts["imag"][:2],
                 "-o", str(phase_out)]) == 2  # fmt: skip
    assert "3 --real file(s) but 2 --imag file(s)" in _one_error_line(capsys)


def test_echo_times_that_do_not_match_the_echoes_are_a_usage_error(case, gre, tmp_path,
                                                                   capsys):  # fmt: skip
    out = tmp_path / "field_hz.nii.gz"
    rc = main(["combine", "--phase", *gre["phase"], "--te-s", *map(str, TES_S[:2]),
               "--mask", case["mask"], "-o", str(out)])  # fmt: skip
    assert rc == 2 and "3 echo(es) but 2 --te-s value(s)" in _one_error_line(capsys)
    assert not out.exists()


def test_stage_tools_undo_a_spurious_phase_scaling(case, gre, tmp_path, capsys):
    """Radian phase stored with an scl_slope of 1/855 (seen in real files: +-pi -> +-0.0037).
    The tools, like the pipeline, use the stored values with a note; without that the field
    came out 855x too small."""
    import nibabel as nb

    shrunk = []
    for e, path in enumerate(gre["phase"]):
        img = nb.Nifti1Image(np.asarray(nb.load(path).dataobj, np.float32), case["affine"])
        img.header.set_slope_inter(1 / 855, 0)
        shrunk.append(str(tmp_path / f"shrunk{e}.nii.gz"))
        nb.save(img, shrunk[-1])
    assert np.ptp(nifti.load(shrunk[0])[0]) < 0.01  # what nibabel gives
    fields = {}
    for name, phases in (("plain", gre["phase"]), ("shrunk", shrunk)):
        out = tmp_path / f"field_{name}.nii.gz"
        assert main(["combine", "--phase", *phases, "--magnitude", *gre["mag"], "--te-s",
                     *map(str, TES_S), "--mask", case["mask"], "-o", str(out)]) == 0  # fmt: skip
        fields[name] = nifti.load(out)[0]
    assert "note:" in capsys.readouterr().err
    np.testing.assert_allclose(fields["shrunk"], fields["plain"], atol=1e-3)
    out = tmp_path / "unwrapped_shrunk.nii.gz"
    assert main(["unwrap", "--phase", shrunk[2], "--mask", case["mask"], "-o", str(out)]) == 0
    assert np.ptp(nifti.load(out)[0]) > 1.0  # radians, not 1/855 of them
    swis = {}
    for name, phase in (("plain", gre["phase"][2]), ("shrunk", shrunk[2])):
        out = tmp_path / f"swi_{name}.nii.gz"
        assert main(["swi", "--magnitude", gre["mag"][2], "--phase", phase, "-o", str(out)]) == 0
        swis[name] = nifti.load(out)[0]
    np.testing.assert_allclose(swis["shrunk"], swis["plain"], rtol=1e-4, atol=1e-4)


R2S_VOX = (4.0, 4.0, 4.0)
R2S_TES_S = (0.005, 0.010, 0.015, 0.020)


@pytest.fixture(scope="module")
def r2s_case(tmp_path_factory):
    """Four-echo magnitude of the head (air dark) as one 4-D NIfTI and as 3-D files."""
    d = tmp_path_factory.mktemp("r2star")
    ph = make_head_phantom((32, 32, 32), voxel_size_mm=R2S_VOX)
    sig = simulate_gre(ph.chi_ppm, voxel_size_mm=R2S_VOX, echo_times_s=R2S_TES_S,
                       m0=ph.m0 * ph.head_mask, r2star_hz=ph.r2star_3t)  # fmt: skip
    affine = np.diag([*R2S_VOX, 1.0])
    mag4d = nifti.save(sig.magnitude, affine, d / "mag4d.nii.gz")
    mags = [nifti.save(sig.magnitude[..., e], affine, d / f"mag{e}.nii.gz") for e in range(4)]
    return {"ph": ph, "affine": affine, "mag4d": mag4d, "mags": mags,
            "mask": nifti.save(ph.brain_mask, affine, d / "brain.nii.gz")}  # fmt: skip


def test_r2star_recovers_white_matter_and_t2star(r2s_case, tmp_path):
    ph = r2s_case["ph"]
    wm_label = next(k for k, v in ph.label_names.items() if v == "white_matter")
    wm = ph.labels == wm_label
    true_wm = float(np.median(ph.r2star_3t[wm]))
    tes = [str(t) for t in R2S_TES_S]
    out, t2s_out = tmp_path / "r2s.nii.gz", tmp_path / "t2s.nii.gz"
    assert main(["r2star", "--magnitude", r2s_case["mag4d"], "--te-s", *tes, "-o", str(out),
                 "--t2star-out", str(t2s_out)]) == 0  # fmt: skip
    r2s, affine = nifti.load(out)
    np.testing.assert_allclose(affine, r2s_case["affine"], atol=1e-5)
    assert r2s.shape == (32, 32, 32) and r2s.dtype == np.float32
    assert abs(np.median(r2s[wm]) - true_wm) < 0.15 * true_wm
    t2s = nifti.load(t2s_out)[0]
    pos = r2s > 0
    np.testing.assert_allclose(t2s[pos], 1.0 / r2s[pos], rtol=1e-5)
    assert np.all(t2s[~pos] == 0)
    # per-echo 3-D files, log-linear fit, with a mask: 0 outside it
    out = tmp_path / "r2s_ll.nii.gz"
    assert main(["r2star", "--magnitude", *r2s_case["mags"], "--te-s", *tes, "-o", str(out),
                 "--mask", r2s_case["mask"], "--method", "loglinear"]) == 0  # fmt: skip
    r2s = nifti.load(out)[0]
    assert abs(np.median(r2s[wm]) - true_wm) < 0.15 * true_wm
    assert np.all(r2s[~ph.brain_mask] == 0)


@pytest.mark.parametrize(
    ("tes", "code", "needle"),
    [(("5", "10", "15", "20"), 2, "seconds"), (("0.005", "0.010"), 2, "--te-s")],
)
def test_r2star_bad_echo_times_one_line(r2s_case, tmp_path, capsys, tes, code, needle):
    out = tmp_path / "r2s.nii.gz"
    assert main(["r2star", "--magnitude", r2s_case["mag4d"], "--te-s", *tes,
                 "-o", str(out)]) == code  # fmt: skip
    assert needle in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def swi_case(tmp_path_factory):
    """Uniform magnitude 100; phase +1 rad in a small (paramagnetic) cube, 0 elsewhere."""
    d = tmp_path_factory.mktemp("swi")
    shape = (32, 32, 24)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    mag = np.full(shape, 100.0, np.float32)
    phase = np.zeros(shape, np.float32)
    vein = np.zeros(shape, bool)
    vein[14:18, 14:18, 10:14] = True
    phase[vein] = 1.0
    # a 4-D two-echo phase whose first echo is flat: only the last echo shows the vein
    phase4d = np.stack([np.zeros(shape, np.float32), phase], axis=-1)
    return {"shape": shape, "affine": affine, "vein": vein, "dir": d,
            "mag": nifti.save(mag, affine, d / "mag.nii.gz"),
            "phase": nifti.save(phase, affine, d / "phase.nii.gz"),
            "phase4d": nifti.save(phase4d, affine, d / "phase4d.nii.gz")}  # fmt: skip


def test_swi_darkens_positive_phase_and_minip_below_swi(swi_case, tmp_path):
    out, minip_out = tmp_path / "swi.nii.gz", tmp_path / "minip.nii.gz"
    assert main(["swi", "--magnitude", swi_case["mag"], "--phase", swi_case["phase4d"],
                 "-o", str(out), "--minip-out", str(minip_out), "--slab-mm", "8"]) == 0  # fmt: skip
    image, affine = nifti.load(out)
    np.testing.assert_allclose(affine, swi_case["affine"], atol=1e-5)
    assert image.shape == swi_case["shape"] and image.dtype == np.float32
    vein = swi_case["vein"]
    assert np.all(image <= 100.0 + 1e-3)
    assert image[vein].max() < 70.0  # paramagnetic (positive) phase is darkened
    far = np.zeros_like(vein)
    far[:4] = True
    np.testing.assert_allclose(image[far], 100.0, rtol=1e-3)
    minip = nifti.load(minip_out)[0]
    assert minip.shape == image.shape and np.all(minip <= image + 1e-6)
    # an 8 mm slab on 2 mm slices is 5 slices: the vein (z 10..13) reaches z 8, not z 7
    assert minip[15, 15, 8] < 70.0 and minip[15, 15, 7] > 99.0
    # --suppress diamagnetic leaves positive phase bright; --phase-sign -1 darkens it again
    argv = ["swi", "--magnitude", swi_case["mag"], "--phase", swi_case["phase"], "-o", str(out)]
    assert main([*argv, "--suppress", "diamagnetic"]) == 0
    assert nifti.load(out)[0][vein].min() > 99.0
    assert main([*argv, "--suppress", "diamagnetic", "--phase-sign", "-1"]) == 0
    assert nifti.load(out)[0][vein].max() < 70.0
    # --echo 1 picks the flat first echo: nothing darkened
    assert main(["swi", "--magnitude", swi_case["mag"], "--phase", swi_case["phase4d"],
                 "-o", str(out), "--echo", "1"]) == 0  # fmt: skip
    np.testing.assert_allclose(nifti.load(out)[0], 100.0, rtol=1e-5)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--phase", "missing.nii.gz"], "missing.nii.gz"),
        (["--phase", "P", "--slab-mm", "8"], "--minip-out"),
        (["--phase", "P", "--power", "0"], "--power"),
        (["--phase", "P", "--suppress", "veins"], "veins"),
    ],
)
def test_swi_usage_errors_are_one_line_exit_2(swi_case, tmp_path, capsys, extra, needle):
    extra = [swi_case["phase"] if a == "P" else a for a in extra]
    out = tmp_path / "swi.nii.gz"
    assert main(["swi", "--magnitude", swi_case["mag"], *extra, "-o", str(out)]) == 2
    assert needle in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_param_reaches_the_method(case, tmp_path, capsys):
    """--param sets the method's own argument: a 9 mm RESHARP sphere erodes more than the
    6 mm default, and a TV regularisation 25x the default smooths chi (lower HFEN detail)."""
    masks = {}
    for radius in ("6", "9"):
        out, mask_out = tmp_path / f"local{radius}.nii.gz", tmp_path / f"valid{radius}.nii.gz"
        assert main(["bgremove", "--field", case["total"], "--mask", case["mask"], "-o",
                     str(out), "--mask-out", str(mask_out), "--param", f"radius_mm={radius}"]) == 0
        masks[radius] = nifti.load(mask_out)[0] > 0
    assert masks["9"].sum() < 0.9 * masks["6"].sum() and not np.any(masks["9"] & ~masks["6"])
    # a radius below one voxel is rejected by the method, in one line, with no output left
    out = tmp_path / "bad.nii.gz"
    assert main(["bgremove", "--field", case["total"], "--mask", case["mask"], "-o", str(out),
                 "--param", "radius_mm=1"]) == 1
    assert "radius_mm must be >=" in _one_error_line(capsys) and not out.exists()
    chis = {}
    for lam in ("4e-4", "1e-2"):
        out = tmp_path / f"chi{lam}.nii.gz"
        assert main(["invert", "--field", case["local"], "--mask", case["mask"], "-o", str(out),
                     "--param", f"regularization={lam}"]) == 0
        chis[lam] = nifti.load(out)[0]
    brain = case["ph"].brain_mask
    rough = {k: float(np.abs(np.diff(v, axis=0))[brain[1:] & brain[:-1]].mean())
             for k, v in chis.items()}  # fmt: skip
    assert rough["1e-2"] < 0.7 * rough["4e-4"]


def test_invert_medi_takes_a_magnitude_and_a_noise_map(case, tmp_path):
    # MEDI's data weight is 1 / noise (normalised): a noise map proportional to 1 / magnitude
    # gives the magnitude's weighting, in any unit; the magnitude also sets the edge mask.
    ph, affine = case["ph"], case["affine"]
    mag = ph.m0 * np.exp(-ph.r2star_3t * 0.02) + 0.05
    mag_file = nifti.save(mag, affine, tmp_path / "mag.nii.gz")
    sd_file = nifti.save(2e-3 / mag, affine, tmp_path / "sd_ppm.nii.gz")
    common = ["--field", case["local"], "--mask", case["mask"], "--algorithm", "medi",
              "--param", "max_iterations=2", "--param", "cg_max_iterations=10"]  # fmt: skip
    outs = {k: tmp_path / f"chi_{k}.nii.gz" for k in ("mag", "noise", "plain")}
    assert main(["invert", *common, "--magnitude", mag_file, "-o", str(outs["mag"])]) == 0
    assert main(["invert", *common, "--magnitude", mag_file, "--noise-std", sd_file,
                 "-o", str(outs["noise"])]) == 0  # fmt: skip
    assert main(["invert", *common, "-o", str(outs["plain"])]) == 0
    chi = {k: nifti.load(v)[0] for k, v in outs.items()}
    np.testing.assert_allclose(chi["noise"], chi["mag"], rtol=1e-4, atol=1e-5)
    assert np.abs(chi["plain"] - chi["mag"]).max() > 1e-3 * np.abs(chi["mag"]).max()


@pytest.mark.parametrize(("flag", "algorithm"), [("--noise-std", "tv"), ("--noise-std", "nltv"),
                                                 ("--magnitude", "tv")])  # fmt: skip
def test_weights_for_a_method_that_ignores_them_are_a_usage_error(case, tmp_path, capsys, flag,
                                                                   algorithm):  # fmt: skip
    out = tmp_path / "chi.nii.gz"
    rc = main(["invert", "--field", case["local"], "--mask", case["mask"], "-o", str(out),
               "--algorithm", algorithm, flag, case["local"]])  # fmt: skip
    assert rc == 2
    assert f"{flag} is used by --algorithm" in _one_error_line(capsys)
    assert not out.exists()


def test_noise_map_on_another_grid_fails_naming_the_file(case, tmp_path, capsys):
    out = tmp_path / "chi.nii.gz"
    rc = main(["invert", "--field", case["local"], "--mask", case["mask"], "-o", str(out),
               "--algorithm", "medi", "--noise-std", case["small_mask"]])  # fmt: skip
    assert rc == 1
    line = _one_error_line(capsys)
    assert "small_mask.nii.gz" in line and "noise map shape" in line
    assert not out.exists()


def test_invert_nonlinear_phase_scale_from_b0_and_te(case, tmp_path):
    # --b0-tesla and --te-s set the nonlinear data term's phase scale 2 pi gamma B0 TE, as the
    # pipeline does: 7 T x 10 ms and 3.5 T x 20 ms give the same scale, hence the same map;
    # it differs from the 3 T / 20 ms default.
    base = ["invert", "--field", case["local"], "--mask", case["mask"], "--algorithm", "ndi",
            "--param", "max_iterations=20"]  # fmt: skip
    outs = [tmp_path / f"chi{i}.nii.gz" for i in range(3)]
    assert main([*base, "--b0-tesla", "7", "--te-s", "0.01", "-o", str(outs[0])]) == 0
    assert main([*base, "--b0-tesla", "3.5", "--te-s", "0.02", "-o", str(outs[1])]) == 0
    assert main([*base, "-o", str(outs[2])]) == 0
    a, b, default = (nifti.load(o)[0] for o in outs)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(a, default, rtol=1e-3, atol=1e-5)


def test_sheared_affine_gets_a_note(case, tmp_path, capsys):
    sheared = case["affine"].copy()
    sheared[:3, 2] += 0.3 * sheared[:3, 0]  # axis 3 leans to axis 1: atan(0.3) = 16.7 deg
    field, _ = nifti.load(case["local"])
    mask, _ = nifti.load(case["mask"])
    f = nifti.save(field, sheared, tmp_path / "f.nii.gz")
    m = nifti.save(mask, sheared, tmp_path / "m.nii.gz")
    out = tmp_path / "chi.nii.gz"
    capsys.readouterr()
    assert main(["invert", "--field", f, "--mask", m, "-o", str(out), "--algorithm", "tkd"]) == 0
    err = capsys.readouterr().err
    assert "sheared" in err and "16.7 degrees" in err
    assert main(["invert", "--field", case["local"], "--mask", case["mask"], "-o", str(out),
                 "--algorithm", "tkd"]) == 0  # fmt: skip
    assert "sheared" not in capsys.readouterr().err


def test_files_as_other_software_writes_them_give_the_same_chi(case, tmp_path, capsys):
    """A 5-D field with singleton axes (X, Y, Z, 1, 1), a 0/255 mask and a probability map
    of the brain give the Chimap of the plain files; a complex field is refused in one line."""
    import nibabel as nb

    field, affine = nifti.load(case["local"])
    brain = case["ph"].brain_mask
    files = {
        "field5d": str(tmp_path / "field5d.nii.gz"),
        "mask255": nifti.save(brain * 255, affine, tmp_path / "mask255.nii.gz", dtype=np.uint8),
        "prob": nifti.save(np.where(brain, 0.9, 0.1), affine, tmp_path / "prob.nii.gz"),
        "complex": str(tmp_path / "complex.nii.gz"),
    }
    nb.save(nb.Nifti1Image(field[..., None, None], affine), files["field5d"])
    nb.save(nb.Nifti1Image(field.astype(np.complex64), affine), files["complex"])
    ref = tmp_path / "ref.nii.gz"
    tkd = ["--algorithm", "tkd"]
    assert main(["invert", "--field", case["local"], "--mask", case["mask"], "-o", str(ref),
                 *tkd]) == 0  # fmt: skip
    for name, fld, msk in (("5d", files["field5d"], case["mask"]),
                           ("255", case["local"], files["mask255"]),
                           ("prob", case["local"], files["prob"])):  # fmt: skip
        out = tmp_path / f"chi_{name}.nii.gz"
        assert main(["invert", "--field", fld, "--mask", msk, "-o", str(out), *tkd]) == 0, name
        np.testing.assert_array_equal(nifti.load(out)[0], nifti.load(ref)[0])
    assert "prob.nii.gz: the mask has fractional values" in capsys.readouterr().err
    rc = main(["invert", "--field", files["complex"], "--mask", case["mask"], "-o",
               str(tmp_path / "c.nii.gz"), *tkd])  # fmt: skip
    assert rc == 1 and "complex.nii.gz: complex-valued" in _one_error_line(capsys)
