"""Forward simulation: susceptibility phantom -> field -> multi-echo complex GRE signal.

Used by the tests, the example dataset (``bids_examples/make_examples.py``) and benchmarks.
The head phantom is defined in millimetres relative to the field of view so that it works on
any grid (anisotropic voxels included); its regions carry typical 3 T susceptibility,
proton density and R2* values (Deistung et al. NeuroImage 2013; Li et al. 2014).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from qsmprep.algorithms.constants import GAMMA_BAR_HZ_PER_T, wrap_to_pi
from qsmprep.algorithms.kernels import forward_field

#: Susceptibility of air relative to tissue (ppm): chi_air - chi_water ~ 0.36 + 9.05.
CHI_AIR_PPM = 9.4

# name: (chi_ppm, proton density, R2* at 3 T in 1/s)
TISSUES: dict[str, tuple[float, float, float]] = {
    "scalp": (0.0, 0.8, 30.0),
    "skull": (-2.0, 0.05, 300.0),
    "csf": (0.0, 1.0, 4.0),
    "grey_matter": (0.02, 0.85, 18.0),
    "white_matter": (-0.03, 0.7, 22.0),
    "caudate": (0.06, 0.85, 25.0),
    "putamen": (0.05, 0.85, 28.0),
    "globus_pallidus": (0.15, 0.8, 45.0),
    "thalamus": (0.01, 0.8, 24.0),
    "substantia_nigra": (0.12, 0.8, 40.0),
    "red_nucleus": (0.10, 0.8, 35.0),
    "dentate_nucleus": (0.09, 0.8, 35.0),
    "vein": (0.40, 0.6, 50.0),
    "calcification": (-0.20, 0.3, 60.0),
}

# Ellipsoids: name, centre (fraction of brain semi-axes), semi-axes (fraction), mirrored.
_STRUCTURES: list[tuple[str, tuple[float, float, float], tuple[float, float, float], bool]] = [
    ("caudate", (0.16, 0.22, 0.15), (0.07, 0.14, 0.09), True),
    ("putamen", (0.33, 0.05, 0.0), (0.07, 0.17, 0.13), True),
    ("globus_pallidus", (0.24, 0.02, -0.02), (0.05, 0.09, 0.08), True),
    ("thalamus", (0.11, -0.18, 0.05), (0.09, 0.14, 0.11), True),
    ("substantia_nigra", (0.12, -0.22, -0.30), (0.04, 0.06, 0.04), True),
    ("red_nucleus", (0.05, -0.28, -0.22), (0.035, 0.035, 0.04), True),
    ("dentate_nucleus", (0.22, -0.62, -0.55), (0.07, 0.07, 0.06), True),
    ("calcification", (-0.45, 0.40, 0.35), (0.03, 0.03, 0.03), False),
]


@dataclass
class HeadPhantom:
    """A labelled susceptibility phantom on a voxel grid (all maps share ``shape``)."""

    chi_ppm: np.ndarray  #: susceptibility incl. air outside the head (ppm)
    brain_mask: np.ndarray  #: bool, the brain (where QSM is evaluated)
    head_mask: np.ndarray  #: bool, tissue (non-air)
    labels: np.ndarray  #: int16 label map, 0 = background
    label_names: dict[int, str] = field(default_factory=dict)
    m0: np.ndarray | None = None  #: proton density (a.u.)
    r2star_3t: np.ndarray | None = None  #: R2* at 3 T (1/s)

    def true_chi(self) -> np.ndarray:
        """Ground-truth brain chi, referenced to the whole-brain mean (ppm), 0 outside."""
        chi = np.where(self.brain_mask, self.chi_ppm, 0.0)
        chi[self.brain_mask] -= chi[self.brain_mask].mean()
        return chi.astype(np.float32)


def _world_grid(shape: Sequence[int], voxel_size_mm: Sequence[float]) -> list[np.ndarray]:
    out = []
    for i, (n, d) in enumerate(zip(shape, voxel_size_mm, strict=True)):
        c = (np.arange(n) - (n - 1) / 2.0) * float(d)
        view = [1, 1, 1]
        view[i] = n
        out.append(c.reshape(view))
    return out


def _ellipsoid(grid, centre, semi) -> np.ndarray:
    return sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, semi, strict=True)) <= 1.0


def make_head_phantom(
    shape: Sequence[int] = (64, 64, 64),
    *,
    voxel_size_mm: Sequence[float] = (3.0, 3.0, 3.0),
    vein_count: int = 4,
    rng: np.random.Generator | int | None = 0,
) -> HeadPhantom:
    """Build a brain-like ellipsoidal susceptibility phantom.

    The head fills ~90 % of the field of view, surrounded by air (chi +9.4 ppm relative
    to tissue) with an air-filled sinus below the frontal lobe, which produce a realistic,
    strongly varying background field. Scalp and brain are separated by a dark, diamagnetic
    skull (proton density 0.05, chi -2 ppm) and a thin CSF layer, as on GRE magnitude
    images. Inside the brain: cortex, white matter, ventricles, paired deep
    grey nuclei (caudate, putamen, pallidum, thalamus, substantia nigra, red nucleus,
    dentate), straight veins in random directions and a diamagnetic calcification.
    Axis 0 is left-right, axis 1 posterior-anterior, axis 2 inferior-superior (RAS).
    """
    rng = np.random.default_rng(rng)
    shape = tuple(int(s) for s in shape)
    grid = _world_grid(shape, voxel_size_mm)
    fov = np.array(shape) * np.asarray(voxel_size_mm, dtype=float)
    head_semi = 0.45 * fov
    brain_semi = head_semi * np.array([0.80, 0.82, 0.78])
    centre = (0, 0, 0.05 * brain_semi[2])
    head = _ellipsoid(grid, (0, 0, 0), head_semi)
    # the air sinus stays outside a bony wall around the inner skull (as in a real head)
    sinus = _ellipsoid(grid, (0, 0.55 * head_semi[1], -0.55 * head_semi[2]), 0.14 * head_semi)
    sinus &= ~_ellipsoid(grid, centre, brain_semi * 1.12)
    head &= ~sinus
    brain = _ellipsoid(grid, centre, brain_semi)
    wm = _ellipsoid(grid, centre, brain_semi * 0.82)
    names = list(TISSUES)
    labels = np.zeros(shape, dtype=np.int16)

    def put(region, name):
        labels[region] = names.index(name) + 1

    inner_skull = _ellipsoid(grid, centre, brain_semi * 1.05)
    put(head, "scalp")
    put(_ellipsoid(grid, (0, 0, 0), head_semi * 0.92) & head, "skull")
    put(inner_skull & head, "csf")
    put(brain, "grey_matter")
    put(wm, "white_matter")
    for side in (-1.0, 1.0):
        vent = _ellipsoid(
            grid,
            (side * 0.08 * brain_semi[0], 0.05 * brain_semi[1], 0.2 * brain_semi[2]),
            brain_semi * np.array([0.05, 0.25, 0.08]),
        )
        put(vent & brain, "csf")
    for name, c, s, mirrored in _STRUCTURES:
        for side in (-1.0, 1.0) if mirrored else (1.0,):
            centre = np.array(c) * brain_semi * np.array([side, 1.0, 1.0])
            put(_ellipsoid(grid, centre, np.array(s) * brain_semi) & brain, name)
    for _ in range(vein_count):
        put(_random_vein(grid, brain_semi, voxel_size_mm, rng) & brain, "vein")

    lut = np.array([(CHI_AIR_PPM, 0.0, 0.0)] + [TISSUES[n] for n in names], dtype=np.float64)
    chi = lut[labels, 0]
    # Partial volume of the background sources: a sampled step of 9.4 ppm makes the k-space
    # dipole field ring (non-harmonic Nyquist-scale ripples, worst for oblique B0) that a real
    # scanner, which averages the continuous field over each voxel, never sees. Smoothing the
    # susceptibility outside the brain by one voxel removes that simulation artefact (the
    # brain itself, where QSM is scored, keeps its sharp labels).
    outside = ndimage.gaussian_filter(np.where(brain, 0.0, chi), sigma=1.0)
    chi = np.where(brain, chi, outside)
    m0 = lut[labels, 1]
    r2s = lut[labels, 2]
    label_names = {i + 1: n for i, n in enumerate(names)}
    return HeadPhantom(
        chi_ppm=chi.astype(np.float32), brain_mask=brain, head_mask=head, labels=labels,
        label_names=label_names, m0=m0.astype(np.float32), r2star_3t=r2s.astype(np.float32),
    )  # fmt: skip


def _random_vein(grid, brain_semi, voxel_size_mm, rng) -> np.ndarray:
    """A straight cylinder through a random point with a random direction."""
    point = rng.uniform(-0.5, 0.5, 3) * brain_semi
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    radius = max(1.0, 0.8 * float(np.max(voxel_size_mm)))
    rel = [g - p for g, p in zip(grid, point, strict=True)]
    along = sum(r * d for r, d in zip(rel, direction, strict=True))
    dist2 = sum(r**2 for r in rel) - along**2
    return dist2 <= radius**2


def phase_offset_map(
    shape: Sequence[int], *, rng: np.random.Generator | int | None = 0
) -> np.ndarray:
    """A smooth receive-phase offset ``phi0`` (rad): a random low-order polynomial."""
    rng = np.random.default_rng(rng)
    grid = [
        np.linspace(-1, 1, n).reshape([-1 if i == j else 1 for j in range(3)])
        for i, n in enumerate(shape)
    ]
    c = rng.uniform(-1.2, 1.2, 7)
    phi = c[0] + c[1] * grid[0] + c[2] * grid[1] + c[3] * grid[2]
    phi = phi + 0.5 * (c[4] * grid[0] * grid[1] + c[5] * grid[1] * grid[2] + c[6] * grid[2] ** 2)
    return np.broadcast_to(phi, tuple(shape)).astype(np.float32)


@dataclass
class MultiEchoSignal:
    """Simulated GRE data: magnitude/phase with echoes on the last axis, and the truth."""

    magnitude: np.ndarray
    phase_rad: np.ndarray
    total_field_ppm: np.ndarray
    phase_offset_rad: np.ndarray
    echo_times_s: tuple[float, ...]
    b0_tesla: float


def simulate_gre(
    chi_ppm: np.ndarray,
    *,
    voxel_size_mm: Sequence[float],
    echo_times_s: Sequence[float],
    b0_tesla: float = 3.0,
    b0_direction: npt.ArrayLike = (0.0, 0.0, 1.0),
    m0: np.ndarray | None = None,
    r2star_hz: np.ndarray | None = None,
    phase_offset_rad: np.ndarray | None = None,
    snr: float | None = 100.0,
    phase_sign: int = 1,
    rng: np.random.Generator | int | None = 0,
) -> MultiEchoSignal:
    """Simulate multi-echo complex GRE signal from a susceptibility map.

    ``S(TE) = M0 exp(-R2* TE) exp(i (phi0 + sign * 2 pi df TE)) + noise`` with
    ``df = gamma_bar * B0 * field_ppm * 1e-6`` and ``field_ppm = IFFT(D FFT(chi))``.
    Complex Gaussian noise has standard deviation ``max(M0) / snr`` per channel.
    """
    rng = np.random.default_rng(rng)
    tes = np.asarray(echo_times_s, dtype=float)
    if tes.ndim != 1 or tes.size == 0 or np.any(tes <= 0):
        raise ValueError(f"echo_times_s must be positive seconds, got {echo_times_s!r}")
    field = forward_field(chi_ppm, voxel_size_mm=voxel_size_mm, b0_direction=b0_direction)
    m0 = np.ones(chi_ppm.shape, np.float32) if m0 is None else m0
    r2s = np.zeros(chi_ppm.shape, np.float32) if r2star_hz is None else r2star_hz
    phi0 = np.zeros(chi_ppm.shape, np.float32) if phase_offset_rad is None else phase_offset_rad
    df_hz = GAMMA_BAR_HZ_PER_T * float(b0_tesla) * 1e-6 * field.astype(np.float64)
    sig = np.empty(chi_ppm.shape + (tes.size,), dtype=np.complex64)
    for e, te in enumerate(tes):
        sig[..., e] = (
            m0 * np.exp(-r2s * te) * np.exp(1j * (phi0 + phase_sign * 2 * np.pi * df_hz * te))
        )
    if snr:
        sd = float(np.max(m0)) / float(snr)
        sig += (rng.normal(0, sd, sig.shape) + 1j * rng.normal(0, sd, sig.shape)).astype(
            np.complex64
        )
    return MultiEchoSignal(
        magnitude=np.abs(sig).astype(np.float32),
        phase_rad=wrap_to_pi(np.angle(sig)).astype(np.float32),
        total_field_ppm=field, phase_offset_rad=np.asarray(phi0, np.float32),
        echo_times_s=tuple(float(t) for t in tes), b0_tesla=float(b0_tesla),
    )  # fmt: skip


def r2star_at(r2star_3t: np.ndarray, b0_tesla: float) -> np.ndarray:
    """Scale 3 T R2* (1/s) to another field strength (approximately linear in B0)."""
    return (r2star_3t * (float(b0_tesla) / 3.0)).astype(np.float32)
