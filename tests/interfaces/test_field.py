"""The echo-combination interface writes the field noise that MEDI weights its data by."""

from __future__ import annotations

import numpy as np
import pytest
from nipype.interfaces.base import isdefined

from qsmprep.algorithms.combine import field_noise_std_hz
from qsmprep.interfaces import nifti
from qsmprep.interfaces.field import EchoCombination

TES = [0.005, 0.01, 0.015]


@pytest.fixture
def echoes(tmp_path):
    rng = np.random.default_rng(0)
    shape = (6, 5, 4, len(TES))
    mag = rng.uniform(0.5, 2.0, shape[:3])[..., None] * np.exp(-np.array(TES) / 0.03)
    phase = np.angle(np.exp(1j * (0.2 + 2 * np.pi * 7.0 * np.array(TES)))) * np.ones(shape)
    mask = np.ones(shape[:3], bool)
    mask[0] = False
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    files = {name: nifti.save(data, affine, tmp_path / f"{name}.nii.gz")
             for name, data in (("phase", phase), ("mag", mag), ("mask", mask))}  # fmt: skip
    return files, mag, mask


@pytest.mark.parametrize("method", ["linear-fit", "nonlinear-fit"])
def test_echo_combination_writes_the_field_noise(tmp_path, echoes, method, monkeypatch):
    files, mag, mask = echoes
    monkeypatch.chdir(tmp_path)
    res = EchoCombination(phase=files["phase"], magnitude=files["mag"], mask=files["mask"],
                          echo_times_s=TES, method=method).run()  # fmt: skip
    sd = nifti.load(res.outputs.field_noise_std_hz)[0]
    assert np.all(sd[~mask] == 0) and np.all(sd[mask] > 0)
    # the weights' shape is the propagation formula's; the complex fit also estimates sigma
    # (noise-free data here: a tiny sigma), so compare up to one factor
    expected = field_noise_std_hz(mag, echo_times_s=TES, mask=mask)
    ratio = sd[mask] / expected[mask]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    if method == "linear-fit":
        assert ratio[0] == pytest.approx(1.0, rel=1e-5)  # relative map (sigma = 1)
    assert nifti.load(res.outputs.field_hz)[0][mask] == pytest.approx(7.0, abs=1e-3)


def test_echo_combination_without_magnitude_has_no_field_noise(tmp_path, echoes, monkeypatch):
    files, _, _ = echoes
    monkeypatch.chdir(tmp_path)
    res = EchoCombination(phase=files["phase"], mask=files["mask"], echo_times_s=TES).run()
    assert not isdefined(res.outputs.field_noise_std_hz)


def test_compute_mask_honours_erosions_for_every_method_and_phase_only_data():
    """--mask-erosions applies to the phase-quality mask too (it was ignored there), and
    phase-only data get the phase-quality mask whatever --masking says."""
    from qsmprep.interfaces.field import compute_mask

    rng = np.random.default_rng(0)
    shape, tes = (32, 32, 32), (0.005, 0.010, 0.015)
    grid = np.indices(shape) - 15.5
    head = (grid**2).sum(0) < 12**2
    field_rad_s = 2 * np.pi * 20.0 * grid[0] / 16  # a smooth field inside the head
    phase = np.stack([np.where(head, field_rad_s * te, rng.uniform(-np.pi, np.pi, shape))
                      for te in tes], -1)  # fmt: skip
    mag = np.stack([np.where(head, 1000.0, rng.rayleigh(30.0, shape)) for _ in tes], -1)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for method, magnitude in (("magnitude", mag), ("phase-quality", mag),
                              ("magnitude", None)):  # fmt: skip
        masks = [compute_mask(method, phase, magnitude, affine, echo_times_s=tes, erosions=n)
                 for n in (0, 1)]  # fmt: skip
        dice = 2 * (masks[0] & head).sum() / (masks[0].sum() + head.sum())
        assert dice > 0.95, (method, dice)
        assert not (masks[1] & ~masks[0]).any() and masks[1].sum() < 0.9 * masks[0].sum()
    with pytest.raises(ValueError, match="needs magnitude"):
        compute_mask("bet", phase, None, affine, echo_times_s=tes)


@pytest.mark.parametrize("method", ["linear-fit", "nonlinear-fit"])
def test_unevenly_spaced_echoes_give_the_field_through_the_nodes(tmp_path, method, monkeypatch):
    """EchoCombination then PhaseUnwrapping, as the pipeline wires them, on echoes at
    3 / 7.5 / 15 / 25 ms and a smooth field of -150..150 Hz (1.5 of the 10 ms gap's periods
    either way): the field to 0.5 Hz (the plain fit, without the closest pair's unwrapped
    field to guide it, was off by up to 177 Hz)."""
    from qsmprep.interfaces.field import PhaseUnwrapping

    monkeypatch.chdir(tmp_path)
    tes = [0.003, 0.0075, 0.015, 0.025]
    x = np.linspace(-1, 1, 24)
    field = 150.0 * x[:, None, None] * np.ones((24, 20, 16))
    phase = np.angle(np.exp(1j * (0.3 + 2 * np.pi * field[..., None] * np.array(tes))))
    mag = np.ones(phase.shape)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    files = {name: nifti.save(data, affine, tmp_path / f"{name}.nii.gz")
             for name, data in (("phase", phase), ("mag", mag),
                                ("mask", np.ones(field.shape, bool)))}  # fmt: skip
    comb = EchoCombination(phase=files["phase"], magnitude=files["mag"], mask=files["mask"],
                           echo_times_s=tes, method=method).run()  # fmt: skip
    unwrapped = PhaseUnwrapping(field_hz=comb.outputs.field_hz, mask=files["mask"],
                                wrap_period_hz=comb.outputs.wrap_period_hz).run()  # fmt: skip
    out = nifti.load(unwrapped.outputs.out_file)[0]
    out = out - np.round(np.median(out - field) * 0.0045) / 0.0045  # one global period
    assert np.abs(out - field).max() < 0.5
