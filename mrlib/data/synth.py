"""Synthetic knee MRI in the real file formats, with lesions whose masks are known.

One analytic 3D knee (signed-distance primitives in millimetres) is sampled on planes:

* coronal slices (fixed z; rows = y, superior at the top; columns = x) for the fastMRI
  cohort, rendered on the full oversampled (2N, PE) grid, given a smooth phase (emulated
  single coil) or coil sensitivities (multi-coil), Fourier transformed with
  ``fastmri.fft2c``, made noisy and stored with padded (zeroed) phase-encode columns;
* sagittal slices (fixed x; rows = y; columns = z, anterior on the left) for the kneeMRI
  cohort, stored as 12-bit ``uint16`` volumes indexed [slice, row, column];
* all three planes (axial: fixed y; rows = z, anterior at the top; columns = x) for the
  MRNet-v1.0 cohort, stored as ``uint8`` (S, 256, 256) series, each subject's meniscal or
  ACL tear drawn once in 3D and so seen in every plane.

Model coordinates: x left-right (the lateral compartment at negative x, i.e. on the
image's left for a coronal slice), y superior (+) / inferior (-) with the joint line at
y = 0, z anterior (+) / posterior (-). Each subject gets its own size, position, small
in-plane rotation, contrast and texture, all drawn from one ``numpy.random.Generator``.
:func:`generate` gives every subject its own child generator (seed, cohort, split,
index), so a subject never depends on how many subjects the other cohorts hold.

Lesions (meniscal tear, ACL tear, bone marrow edema, cartilage defect) are painted into
the fully sampled image with a weight field ``w``; their mask is ``w > 0.5`` in the
target geometry, so each fastMRI+ style box is known exactly.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import fastmri
import numpy as np
import torch
from fastmri.data.transforms import complex_center_crop, tensor_to_complex_np

from ..artifacts import write_json
from ..errors import ParameterError
from ..runtime import parallel_map, progress_bar
from . import twins, writers
from .annotations import flip_y

__all__ = [
    "ACQUISITIONS",
    "LABELS",
    "LESION_KINDS",
    "LesionKind",
    "Lesion",
    "SynthConfig",
    "SynthVolume",
    "boxes_from_masks",
    "generate",
    "kspace_shape",
    "make_fastmri_volume",
    "make_kneemri_exam",
    "make_mrnet_exam",
    "MRNetExam",
    "padding_columns",
    "subject_rng",
]

ACQUISITIONS = ("CORPD_FBK", "CORPDFS_FBK")


FOV_MM = 140.0  # fastMRI coronal reconstruction field of view (N x N target)
KNEEMRI_FOV_MM = 150.0  # kneeMRI sagittal field of view
SLICE_SPAN_MM = (-36.0, 32.0)  # coronal slices, posterior -> anterior (model z)
SAGITTAL_SPAN_MM = 96.0  # sagittal slices across the knee, left-right
MRNET_SIZE = 256  # MRNet-v1.0 slices are 256 x 256
MRNET_FOV_MM = 150.0  # field of view of every MRNet-v1.0 series
MIN_AREA, MAX_AREA = 0.002, 0.02  # a lesion's mask on a slice, fraction of N x N
CHUNK_POINTS = 250_000  # grid points rendered at once: a block's float32 arrays (1 MB) stay in cache

# Relative signal of each tissue: proton density (PD) and PD fat-suppressed (PDFS).
_SIGNAL = {
    "PD": dict(skin=0.55, fat=1.0, muscle=0.36, fluid=0.78, cartilage=0.5, dark=0.06,
               cortex=0.04, marrow=0.86, edema=0.42, degenerate=0.4),
    "PDFS": dict(skin=0.3, fat=0.15, muscle=0.32, fluid=1.0, cartilage=0.52, dark=0.04,
                 cortex=0.02, marrow=0.17, edema=0.8, degenerate=0.5),
}


# --------------------------------------------------------------------------- API types
@dataclass
class SynthConfig:
    """Geometry and size of the synthetic cohorts (the ``synth`` part of a preset).

    Args:
        image_size: N, the fastMRI target is N x N, k-space (2N, PE).
        n_slices: coronal slices per fastMRI volume.
        n_train, n_val, n_test: fastMRI volumes per split.
        kneemri_exams: kneeMRI exams (sagittal volumes).
        kneemri_slices, kneemri_size: kneeMRI volume shape (slices, size, size).
        n_coils: receive coils of the multi-coil data.
        noise: complex Gaussian k-space noise, relative to the image's maximum; each
            subject's noise is this times a log-normal factor (sd 0.25), 1.3 times higher
            in PDFS, whose fat suppression costs signal.
        slice_thickness_mm: spacing of the coronal slices (contiguous, no gap, as fastMRI's
            knee protocol); the stack is centred on the knee.
        lesion_free_fraction: share of fastMRI subjects drawn without a lesion (the
            negatives of an in-domain classifier).
        lesion_contrast: ``(low, high)``: each lesion changes the tissue by a fraction drawn
            uniformly from this range of its full signal change (1 = fluid-bright tear).
        kneemri_contrast: the same for the kneeMRI cohort's ACL tears and edema.
        mrnet_train, mrnet_valid: MRNet-v1.0 exams in its ``train`` and ``valid`` splits
            (both 0: no ``MRNet-v1.0/`` tree); each split's ``meniscus`` labels are half
            positive, its ``acl`` labels a third.
        mrnet_slices: ``(low, high)``: each MRNet series' slice count is drawn from this
            range, per exam and plane (the real series hold about 20 to 50 slices).
    """

    image_size: int = 128
    n_slices: int = 10
    n_train: int = 12
    n_val: int = 4
    n_test: int = 4
    kneemri_exams: int = 40
    kneemri_slices: int = 16
    kneemri_size: int = 128
    n_coils: int = 8
    noise: float = 0.015
    slice_thickness_mm: float = 6.8
    lesion_free_fraction: float = 0.3
    lesion_contrast: tuple = (0.4, 0.9)
    kneemri_contrast: tuple = (0.1, 0.3)
    mrnet_train: int = 0
    mrnet_valid: int = 0
    mrnet_slices: tuple = (20, 50)

    def __post_init__(self) -> None:
        minimum = dict(image_size=32, n_slices=1, n_train=0, n_val=0, n_test=0,
                       kneemri_exams=0, kneemri_slices=1, kneemri_size=32, n_coils=1,
                       mrnet_train=0, mrnet_valid=0)
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ParameterError(name, f"must be an integer, got {value!r}")
            if value < low:
                raise ParameterError(name, f"must be at least {low}, got {value}")
        for name in ("image_size", "kneemri_size"):
            if getattr(self, name) % 2:
                raise ParameterError(name, f"must be even, got {getattr(self, name)}")
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) \
                or not (0.0 <= float(self.noise) < 1.0) or math.isnan(float(self.noise)):
            raise ParameterError("noise", f"must be a number in [0, 1), got {self.noise!r}")
        self.noise = float(self.noise)
        for name, low, high in (("slice_thickness_mm", 0.5, 20.0), ("lesion_free_fraction", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
                raise ParameterError(name, f"must be a number in [{low}, {high}], got {value!r}")
            setattr(self, name, float(value))
        for name in ("lesion_contrast", "kneemri_contrast"):
            lc = getattr(self, name)
            if not (isinstance(lc, (list, tuple)) and len(lc) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lc)
                    and 0.0 < float(lc[0]) <= float(lc[1]) <= 1.0):
                raise ParameterError(name, f"must be (low, high) with 0 < low <= high <= 1, got {lc!r}")
            setattr(self, name, (float(lc[0]), float(lc[1])))
        if (self.mrnet_train == 0) != (self.mrnet_valid == 0) or 0 < min(self.mrnet_train, self.mrnet_valid) < 2:
            raise ParameterError("mrnet_train", "mrnet_train and mrnet_valid must both be 0 (no MRNet-v1.0 tree) or "
                                                f"both at least 2, got {self.mrnet_train} and {self.mrnet_valid}")
        ms = self.mrnet_slices
        if not (isinstance(ms, (list, tuple)) and len(ms) == 2
                and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ms)
                and 1 <= ms[0] <= ms[1]):
            raise ParameterError("mrnet_slices", f"must be (low, high) integers with 1 <= low <= high, got {ms!r}")
        self.mrnet_slices = (int(ms[0]), int(ms[1]))


class Lesion(NamedTuple):
    """A lesion: its fastMRI+ label, boolean mask (slices, N, N) in target geometry, and the
    fraction of its full signal change it was painted with."""

    label: str
    mask: np.ndarray
    contrast: float = 1.0


class SynthVolume(NamedTuple):
    """One fastMRI volume, ready for :func:`writers.write_fastmri_h5`.

    kspace: complex64 (slices, 2N, PE) or (slices, coils, 2N, PE);
    target: float32 (slices, N, N) (``reconstruction_esc`` or ``reconstruction_rss``);
    twin: float32 (slices, N, N), the same subject, noise and all, without its lesions
    (``None`` unless asked for); noise_sigma: the image noise's standard deviation (per
    real component, in the target's units); twin_kspace: the twin's k-space, shaped as
    ``kspace`` (with ``twin``).
    """

    kspace: np.ndarray
    target: np.ndarray
    acquisition: str
    lesions: list[Lesion]
    header: bytes
    attrs: dict
    twin: np.ndarray | None = None
    noise_sigma: float = 0.0
    twin_kspace: np.ndarray | None = None


def kspace_shape(image_size: int) -> tuple[int, int]:
    """(2N, PE) of the k-space for target size N: PE = 2 * round(1.15 N / 2)."""
    n = int(image_size)
    return 2 * n, 2 * int(math.floor(1.15 * n / 2 + 0.5))


def padding_columns(pe: int) -> int:
    """Zeroed (not acquired) phase-encode columns on each side, about 5 % of PE."""
    return max(1, int(round(0.05 * pe)))


def subject_rng(seed: int, cohort: int, split: int, index: int) -> np.random.Generator:
    """The child generator of one subject; independent of every other subject."""
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(cohort), int(split), int(index)))
    return np.random.default_rng(ss)


# ------------------------------------------------------------------- SDF primitives
def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume occupancy of the region d < 0, a linear ramp ``width`` wide."""
    return np.clip(0.5 - d * (1.0 / width), 0.0, 1.0)


def _ellipsoid(x, y, z, c, r):
    """Approximate signed distance to an ellipsoid (centre c, semi-axes r)."""
    px, py, pz = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
    k0 = np.sqrt(px * px + py * py + pz * pz)
    k1 = np.sqrt((px / r[0]) ** 2 + (py / r[1]) ** 2 + (pz / r[2]) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _capsule(x, y, z, a, b, r0, r1=None):
    """Signed distance to a (possibly tapered) capsule from a (radius r0) to b (r1)."""
    bax, bay, baz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    pax, pay, paz = x - a[0], y - a[1], z - a[2]
    h = np.clip((pax * bax + pay * bay + paz * baz) / (bax * bax + bay * bay + baz * baz), 0.0, 1.0)
    dx, dy, dz = pax - bax * h, pay - bay * h, paz - baz * h
    d = np.sqrt(dx * dx + dy * dy + dz * dz)
    return d - (r0 if r1 is None else r0 + (r1 - r0) * h)


def _smin(a, b, k):
    """Smooth union (polynomial smooth minimum, blend width k)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


# -------------------------------------------------------------------- the knee model
def _draw_knee(rng: np.random.Generator) -> dict[str, Any]:
    """Anatomical parameters of one subject (mm, model coordinates, before scaling)."""

    def j(s):
        return float(rng.normal(0.0, s))

    L = -1.0  # lateral side
    k: dict[str, Any] = dict(L=L, M=-L)
    k["cond_dx"] = 21.0 + j(1.0)
    k["cond_c"] = (23.0 + j(0.8), -5.0 + j(1.0))  # (y, z) of both condyle centres
    k["cond_r"] = (19.0 + j(0.8), 20.0 + j(1.0), 27.0 + j(1.2))
    k["lat_scale"] = 0.95 + j(0.02)
    k["notch"] = (4.5 + j(0.6), 8.5 + j(0.6))  # (y, radius) of the intercondylar notch
    k["meta_r"] = (35.0 + j(1.5), 22.0 + j(1.2), 26.0 + j(1.0))
    k["shaft_r"] = 13.5 + j(0.7)
    k["tib_top"] = -3.0 + j(0.25)
    k["tib_ab"] = (38.0 + j(1.3), 29.0 + j(1.0))
    k["tib_shaft_r"] = 14.5 + j(0.7)
    k["pat_c"] = (0.0, 29.0 + j(2.0), 40.0 + j(1.0))
    k["pat_r"] = (21.0 + j(1.0), 19.0 + j(1.0), 9.0 + j(0.5))
    k["fib_c"] = (L * (39.0 + j(1.0)), -33.0 + j(1.5), -19.0 + j(1.5))
    k["cortex"] = 1.4 + j(0.15)
    k["cart"] = max(1.8, 2.6 + j(0.25))
    k["men_w"] = 10.0 + j(0.7)
    k["men_h"] = 7.5 + j(0.5)
    k["acl_r"] = 4.2 + j(0.3)
    k["pcl_r"] = 5.0 + j(0.3)
    k["body"] = (54.0 + j(3.0), 50.0 + j(3.0))
    k["fat"] = max(3.0, 8.0 + j(2.0))
    k["skin"] = 1.6
    k["effusion"] = float(rng.gamma(2.0, 0.5))
    k["tissue_gain"] = {t: float(np.exp(rng.normal(0.0, 0.07))) for t in _SIGNAL["PD"]}
    cy, cz = k["cond_c"]
    M, T = k["M"], k["tib_top"]
    k["acl"] = ((L * (7.0 + j(0.5)), cy - 8.0 + j(1.0), cz - 12.0 + j(1.0)),
                (L * (1.5 + j(0.4)), T + 0.5, cz + 13.0 + j(1.0)))
    k["pcl"] = ((M * (7.0 + j(0.5)), cy - 9.0 + j(1.0), cz + 6.0 + j(1.0)),
                (M * (1.0 + j(0.4)), T - 8.0, -26.0 + j(1.0)))
    return k


def _muscles(k):
    L, M, cz = k["L"], k["M"], k["cond_c"][1]
    return [  # (a, b, r0, r1)
        ((M * 30, 38, 8), (M * 18, 260, 10), 18.0, 26.0),  # vastus medialis
        ((L * 33, 55, 0), (L * 28, 260, 2), 14.0, 24.0),  # vastus lateralis
        ((0, 62, 22), (0, 260, 20), 14.0, 22.0),  # vastus intermedius / rectus
        ((M * 24, 26, -34), (M * 20, 260, -30), 12.0, 17.0),  # semimembranosus
        ((L * 27, 24, -34), (L * 24, 260, -30), 11.0, 16.0),  # biceps femoris
        ((M * 18, 22, -37), (M * 14, -200, -40), 12.0, 17.0),  # gastrocnemius medial
        ((L * 18, 20, -37), (L * 14, -200, -40), 10.0, 15.0),  # gastrocnemius lateral
        ((L * 26, -14, cz - 26), (M * 14, -46, cz - 24), 5.0, 6.5),  # popliteus
        ((L * 24, -42, 18), (L * 18, -260, 16), 11.0, 14.0),  # tibialis anterior
        ((L * 34, -48, -4), (L * 28, -260, -6), 9.0, 12.0),  # peronei
        ((0, -58, -30), (0, -260, -34), 15.0, 22.0),  # soleus
    ]


class _Fields(NamedTuple):
    image: np.ndarray  # real, lesion-free
    sdf: dict  # signed distances the lesions need


def _render_anatomy(k, x, y, z, sig, edge, tex):
    """Real image (signal) of the lesion-free knee at model coordinates x, y, z.

    ``tex`` holds unit-variance texture fields (marrow, muscle, fat) of the grid shape,
    ``edge`` the partial-volume ramp width (model mm).
    """
    L, M = k["L"], k["M"]
    cy, cz = k["cond_c"]
    rx, ry, rz = k["cond_r"]
    ls = k["lat_scale"]
    dx = k["cond_dx"]
    T = k["tib_top"]
    g = k["tissue_gain"]
    s = {t: sig[t] * g[t] for t in sig}

    # bones -----------------------------------------------------------------------
    d_cm = _ellipsoid(x, y, z, (M * dx, cy, cz), (rx, ry, rz))
    d_cl = _ellipsoid(x, y, z, (L * dx * ls, cy + 1.0, cz), (rx * ls, ry * ls, rz * ls))
    d_cond = np.minimum(d_cm, d_cl)
    mr = k["meta_r"]
    d_meta = _ellipsoid(x, y, z, (0.0, cy + 4.0, cz), (mr[0], 0.7 * mr[1], mr[2]))
    d_meta = _smin(d_meta, _capsule(x, y, z, (0.0, cy + 8.0, cz + 1.0), (0.0, cy + 75.0, cz + 6.0),
                                    0.8 * mr[2], k["shaft_r"]), 8.0)
    d_shaft = _capsule(x, y, z, (0.0, cy + 60.0, cz + 5.0), (0.0, 400.0, cz + 8.0), k["shaft_r"])
    notch_y, notch_r = k["notch"]
    d_notch = _capsule(x, y, z, (0.0, notch_y, -80.0), (0.0, notch_y, cz + 11.0), notch_r)
    d_fem = _smin(_smin(d_cond, d_meta, 6.0), d_shaft, 10.0)
    d_fem = np.maximum(d_fem, -d_notch)

    a, b = k["tib_ab"]
    zc = cz + 1.0
    zs_ = (z - zc) * (a / b)  # elliptical (x, z) cross-section, (a, b) at the top
    d_tib = _capsule(x, y, zs_, (0.0, T - 12.0, 0.0), (0.0, T - 30.0, 0.0), a - 1.0, 0.75 * a)
    d_tib = _smin(d_tib, _capsule(x, y, zs_ * 0.85, (0.0, T - 30.0, 0.0), (0.0, T - 62.0, 0.0),
                                  0.6 * a, k["tib_shaft_r"]), 6.0)
    d_tib = -_smin(-d_tib, -(y - T), 2.0)  # flat plateau (smooth max)
    d_spine = np.minimum(_ellipsoid(x, y, z, (L * 4.5, T, zc + 1), (3.0, 3.5, 8.0)),
                         _ellipsoid(x, y, z, (M * 4.5, T, zc + 1), (3.0, 3.0, 8.0)))
    d_tib = _smin(d_tib, d_spine, 1.5)
    d_tib = _smin(d_tib, _capsule(x, y, z, (0.0, T - 70.0, zc - 4.0), (0.0, -400.0, zc - 6.0),
                                  k["tib_shaft_r"]), 8.0)
    d_tib = _smin(d_tib, _ellipsoid(x, y, z, (0.0, T - 30.0, zc + b - 4.0), (9.0, 12.0, 6.0)), 5.0)

    d_pat = _ellipsoid(x, y, z, k["pat_c"], k["pat_r"])
    fc = k["fib_c"]
    d_fib = _smin(_ellipsoid(x, y, z, fc, (9.0, 11.0, 9.0)),
                  _capsule(x, y, z, fc, (fc[0] * 0.9, -400.0, fc[2] - 2.0), 7.0), 6.0)
    d_bone = np.minimum(np.minimum(d_fem, d_tib), np.minimum(d_pat, d_fib))

    # soft tissue ----------------------------------------------------------------
    ba, bb = k["body"]
    t = np.tanh(y * (1.0 / 60.0))
    ea, eb = ba * (1.0 + 0.12 * t), bb * (1.0 + 0.1 * t)
    d_body = (np.sqrt((x / ea) ** 2 + ((z - 2.0) / eb) ** 2) - 1.0) * np.minimum(ea, eb)

    img = s["skin"] * _soft(d_body, edge)
    img += (s["fat"] * (1.0 + 0.05 * tex[2]) - img) * _soft(d_body + k["skin"], edge)
    d_mus = None
    for a_, b_, r0, r1 in _muscles(k):
        dm = _capsule(x, y, z, a_, b_, r0, r1)
        d_mus = dm if d_mus is None else np.minimum(d_mus, dm)
    d_mus = np.maximum(d_mus, d_body + k["fat"])
    img += (s["muscle"] * (1.0 + 0.14 * tex[1]) - img) * _soft(d_mus, edge)

    # joint fluid: a rim around the articular ends + the suprapatellar recess
    eff = k["effusion"]
    d_joint = np.minimum(d_fem, d_tib) - (k["cart"] + 0.3 + 0.5 * eff)
    d_joint = np.maximum(d_joint, np.maximum(np.abs(y - (T + 5.0)) - (4.0 + eff), np.abs(x) - 44.0))
    pc, pr = k["pat_c"], k["pat_r"]
    d_joint = np.minimum(d_joint, _ellipsoid(x, y, z, (0.0, pc[1] + pr[1] + 6.0, pc[2] - 11.0),
                                             (20.0, 14.0, 0.8 + eff)))  # suprapatellar recess
    d_joint = np.minimum(d_joint, np.maximum(d_pat - (k["cart"] + 0.3 + 0.5 * eff),
                                             z - (pc[2] - 2.0)))  # patellofemoral
    img += (s["fluid"] - img) * _soft(d_joint, edge)

    # ligaments and tendons (dark)
    d_lig = _capsule(x, y, z, (M * (dx + rx + 1.8), cy, cz + 3.0),
                     (M * (a + 1.8), T - 45.0, cz + 3.0), 1.8)  # MCL
    d_lig = np.minimum(d_lig, _capsule(x, y, z, (L * (dx * ls + rx * ls + 2.0), cy - 3.0, cz - 6.0),
                                       (fc[0] - L * 1.0, fc[1] + 9.0, fc[2]), 2.0))  # LCL
    d_lig = np.minimum(d_lig, _capsule(x, y, z, (0.0, pc[1] - pr[1] + 2.0, pc[2] + 3.0),
                                       (0.0, T - 28.0, zc + b + 1.0), 3.2))  # patellar tendon
    d_lig = np.minimum(d_lig, _capsule(x, y, z, (0.0, pc[1] + pr[1] - 4.0, pc[2] + 2.0),
                                       (0.0, pc[1] + 80.0, pc[2] - 6.0), 3.5, 5.0))  # quadriceps
    d_acl = _capsule(x, y, z, *k["acl"], k["acl_r"])
    d_pcl = _capsule(x, y, z, *k["pcl"], k["pcl_r"])
    d_lig = np.minimum(d_lig, np.minimum(d_acl, d_pcl))

    # menisci: C-shaped rings of wedge cross-section, apex inwards
    yb = T + 0.6 * k["cart"]
    d_men = None
    for side, (ax, bz, gap) in ((M, (rx + 0.5, 23.0, 55.0)), (L, (rx * ls + 0.5, 19.0, 30.0))):
        cx = side * dx * (ls if side == L else 1.0)
        dxm, dzm = x - cx, z - (cz + 1.0)
        rho = np.sqrt((dxm / ax) ** 2 + (dzm / bz) ** 2)
        u = (1.0 - rho) * (0.5 * (ax + bz))
        top = yb + k["men_h"] * (1.0 - u / k["men_w"])
        dm = np.maximum(np.maximum(-u, u - k["men_w"]), np.maximum(yb - y, (y - top) * 0.8))
        cosang = -side * dxm / np.sqrt(dxm * dxm + dzm * dzm + 1e-6)
        dm = np.maximum(dm, (cosang - math.cos(math.radians(gap))) * 12.0)
        d_men = dm if d_men is None else np.minimum(d_men, dm)
    img += (s["dark"] - img) * _soft(np.minimum(d_men, d_lig), edge)

    # articular cartilage
    c = k["cart"]
    d_fc = np.maximum(np.maximum(d_cond - c, y - (cy - 1.0)),
                      np.minimum(np.abs(x - M * dx) - 0.85 * rx, np.abs(x - L * dx * ls) - 0.85 * rx * ls))
    d_fc = np.maximum(d_fc, -d_notch + 0.8)
    d_tr = np.maximum(np.maximum(d_fem - c, (cz + rz - 8.0) - z), np.abs(y - (cy + 8.0)) - 14.0)
    d_tc = np.maximum(np.maximum(d_tib - 0.9 * c, (T - 2.0) - y), np.abs(x) - (a - 4.0))
    d_pc = np.maximum(d_pat - 0.9 * c, z - pc[2])
    d_cart = np.minimum(np.minimum(d_fc, d_tr), np.minimum(d_tc, d_pc))
    img += (s["cartilage"] - img) * _soft(d_cart, edge)

    # bone: cortex, then textured marrow
    img += (s["cortex"] - img) * _soft(d_bone, edge)
    img += (s["marrow"] * (1.0 + 0.07 * tex[0]) - img) * _soft(d_bone + k["cortex"], edge)
    sdf = dict(fem=d_fem, bone=d_bone, acl=d_acl, men=d_men, cart=d_cart, tib=d_tib)
    return _Fields(img, sdf)


# --------------------------------------------------------------------------- lesions
class _Spec(NamedTuple):
    kind: str
    centre: tuple
    radii: tuple
    extra: dict


#: name -> lesion kind (an instance), in the order they were defined.
LESION_KINDS: dict[str, "LesionKind"] = {}


class LesionKind:
    """One kind of synthetic lesion: where it may lie and how it changes the tissue.

    A subclass with a ``name`` registers itself; it gives the fastMRI+ ``label`` its boxes
    carry, its ``probability`` among the lesions of a volume, :meth:`place` (draw a lesion
    that crosses one slice plane, or ``None`` if none fits there) and :meth:`field` (its
    weight and signal on a grid of model coordinates).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    probability: ClassVar[float] = 0.0
    #: the smallest mask a slice keeps, as a fraction of N x N (thin tears are small)
    min_area: ClassVar[float] = MIN_AREA

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            LESION_KINDS[cls.name] = cls()

    def place(self, k: dict, rng: np.random.Generator, z0: float) -> "_Spec | None":
        raise NotImplementedError

    def field(self, spec: _Spec, k: dict, x, y, z, sdf: dict, s: dict, edge: float, e_soft):
        """``(weight, value)``: the image becomes ``image + weight * (value - image)``.

        ``s`` holds the subject's tissue signals, ``e_soft`` the soft ellipsoid of the
        lesion's centre and radii.
        """
        raise NotImplementedError


class MeniscalTear(LesionKind):
    """A thin linear cleft of fluid signal through the meniscus (horizontal or vertical),
    the meniscus around it untouched: on a slice, a bright line a pixel or two wide."""

    name, label, probability = "meniscus", "Meniscus Tear", 0.4
    min_area = 0.0004

    def place(self, k, rng, z0):
        L, M = k["L"], k["M"]
        cz = k["cond_c"][1]
        rx = k["cond_r"][0]
        dx, ls, T = k["cond_dx"], k["lat_scale"], k["tib_top"]
        side = M if rng.random() < 0.65 else L
        ax, bz = (rx + 0.5, 23.0) if side == M else (rx * ls + 0.5, 19.0)
        cx = side * dx * (ls if side == L else 1.0)
        q = (z0 - (cz + 1.0)) / bz
        if abs(q) > 0.85:
            return None
        rim = ax * math.sqrt(1.0 - q * q)
        xc = cx + side * (rim - 0.5 * k["men_w"] * ax / (0.5 * (ax + bz)))
        yc = T + 0.6 * k["cart"] + 0.3 * k["men_h"]
        tilt = rng.uniform(-0.6, 0.6)
        normal = np.array([side * tilt, 1.0, 0.0]) if rng.random() < 0.6 else np.array([1.0, side * 0.8, 0.0])
        normal /= np.linalg.norm(normal)
        return _Spec(self.name, (xc, yc, z0), (7.0, 5.5, 7.0),
                     dict(normal=tuple(normal), thick=float(rng.uniform(1.2, 1.8))))

    def field(self, spec, k, x, y, z, sdf, s, edge, e_soft):
        region = _soft(sdf["men"] - 0.3, edge)
        n = spec.extra["normal"]
        c = spec.centre
        plane = np.abs((x - c[0]) * n[0] + (y - c[1]) * n[1] + (z - c[2]) * n[2])
        cleft = _soft(plane - spec.extra["thick"] / 2, edge)
        return e_soft * region * cleft, np.full(e_soft.shape, s["fluid"], x.dtype)


class ACLTear(LesionKind):
    name, label, probability = "acl", "Ligament - ACL High Grade Sprain", 0.2

    def place(self, k, rng, z0):
        a, b = k["acl"]
        if not (min(a[2], b[2]) + 4 < z0 < max(a[2], b[2]) - 4):
            return None
        t = (z0 - a[2]) / (b[2] - a[2])
        p = tuple(a[i] + t * (b[i] - a[i]) for i in range(3))
        r = rng.uniform(6.0, 7.5)
        return _Spec(self.name, p, (r, r, r), dict(partial=bool(rng.random() < 0.4)))

    def field(self, spec, k, x, y, z, sdf, s, edge, e_soft):
        region = _soft(sdf["acl"] - spec.extra.get("halo", 3.0), edge)
        value = np.full(e_soft.shape, 0.9 * s["fluid"], x.dtype)
        if spec.extra.get("partial", False):
            core = _soft(sdf["acl"] + k["acl_r"] * 0.55, edge)
            value += (s["dark"] - value) * core
        else:  # interrupted: frayed fragments of intermediate signal
            c, f = spec.centre, 0.35
            frag = np.exp(-((x - c[0] - 1.5) ** 2 + (y - c[1] - 2.0) ** 2 + (z - c[2] + 2.5) ** 2) * f)
            value += (s["degenerate"] - value) * frag  # a retracted stump of intermediate signal
        return e_soft * region, value


class BoneMarrowEdema(LesionKind):
    name, label, probability = "edema", "Bone- Subchondral edema", 0.2

    def place(self, k, rng, z0):
        L = k["L"]
        cy, cz = k["cond_c"]
        dx, ls, T = k["cond_dx"], k["lat_scale"], k["tib_top"]
        if rng.random() < 0.7:  # lateral femoral condyle
            if not (cz - 20 < z0 < cz + 16):
                return None
            c = (L * dx * ls + rng.uniform(-4, 4), cy - 6.0 + rng.uniform(-3, 3), z0)
        else:  # posterior lateral tibial plateau
            if not (-28 < z0 < 2):
                return None
            c = (L * rng.uniform(14, 24), T - 10.0 + rng.uniform(-2, 2), z0)
        radii = (rng.uniform(7, 10), rng.uniform(5.5, 8), rng.uniform(6, 9))
        return _Spec(self.name, c, radii, dict(wobble=tuple(rng.uniform(0.15, 0.35, 3))))

    def field(self, spec, k, x, y, z, sdf, s, edge, e_soft):
        c, f = spec.centre, spec.extra["wobble"]
        d = _ellipsoid(x, y, z, c, spec.radii) + 1.6 * np.sin(f[0] * x + f[1] * y + f[2] * z) \
            + 1.2 * np.sin(f[1] * x - f[2] * y + f[0] * z)
        ill = _soft(d, 4.0)  # ill-defined border
        marrow = _soft(sdf["bone"] + k["cortex"] + 0.5, edge)
        return ill * marrow, np.full(e_soft.shape, s["edema"], x.dtype)


class CartilageDefect(LesionKind):
    name, label, probability = "cartilage", "Cartilage - Partial Thickness loss/defect", 0.2

    def place(self, k, rng, z0):
        L, M = k["L"], k["M"]
        cy, cz = k["cond_c"]
        rx, ry, rz = k["cond_r"]
        dx, ls, T = k["cond_dx"], k["lat_scale"], k["tib_top"]
        side = M if rng.random() < 0.6 else L
        if rng.random() < 0.7:  # femoral condyle, weight-bearing surface
            cx = side * dx * (ls if side == L else 1.0)
            rxs, rys, rzs = (rx, ry, rz) if side == M else (rx * ls, ry * ls, rz * ls)
            xx = cx + rng.uniform(-4, 4)
            q = ((xx - cx) / rxs) ** 2 + ((z0 - cz) / rzs) ** 2
            if q > 0.55:
                return None
            ys = (cy + (1.0 if side == L else 0.0)) - rys * math.sqrt(1.0 - q)
            centre = (xx, ys - 0.5 * k["cart"], z0)
            surface = "fem"
        else:  # tibial plateau
            if abs(z0 - cz) > 20:
                return None
            centre = (side * rng.uniform(16, 24), T + 0.5 * k["cart"], z0)
            surface = "tib"
        along = rng.uniform(10.0, 13.0)
        return _Spec(self.name, centre, (along, 4.0, 8.0), dict(surface=surface))

    def field(self, spec, k, x, y, z, sdf, s, edge, e_soft):
        d_c = sdf[spec.extra["surface"]]
        band = np.maximum(-d_c, d_c - (k["cart"] + 1.2))
        return e_soft * _soft(band, edge), np.full(e_soft.shape, s["fluid"], x.dtype)


#: fastMRI+ label of each lesion kind.
LABELS = {name: kind.label for name, kind in LESION_KINDS.items()}


def _lesion_field(spec, k, x, y, z, sdf, sig, edge):
    """(weight, value) of one lesion on a grid: image := image + w * (value - image)."""
    s = {t: sig[t] * k["tissue_gain"][t] for t in sig}
    e_soft = _soft(_ellipsoid(x, y, z, spec.centre, spec.radii), max(edge, 1.5))
    return LESION_KINDS[spec.kind].field(spec, k, x, y, z, sdf, s, edge, e_soft)


def _draw_lesion(kind, k, rng, slice_z):
    """Place a lesion of ``kind`` so that it crosses the model-plane ``slice_z`` (z)."""
    if kind not in LESION_KINDS:
        raise ValueError(kind)
    return LESION_KINDS[kind].place(k, rng, slice_z)


# ------------------------------------------------------------------------- rendering
def _texture(rng, shape, pix, sigma_mm, band=False):
    """Unit-variance Gaussian-filtered noise (S, H, W); sigma_mm = (rows, cols)."""
    s_, h, w = shape
    white = rng.standard_normal(shape, dtype=np.float32)
    f = np.fft.rfft2(white)
    fy = np.fft.fftfreq(h, d=pix)[:, None]
    fx = np.fft.rfftfreq(w, d=pix)[None, :]

    def gauss(sy, sx):
        sy, sx = max(sy, 0.4 * pix), max(sx, 0.4 * pix)
        return np.exp(-2.0 * math.pi ** 2 * ((fy * sy) ** 2 + (fx * sx) ** 2))

    g = gauss(*sigma_mm)
    if band:
        g = g - gauss(3.0 * sigma_mm[0], 3.0 * sigma_mm[1])
    out = np.fft.irfft2(f * g.astype(np.complex64), s=(h, w)).astype(np.float32, copy=False)
    out /= out.std() + 1e-12
    return out


class _Subject(NamedTuple):
    knee: dict
    scale: float
    angle: float  # in-plane rotation, radians
    shift: tuple  # world translation (x, y, z) mm
    contrast: str  # "PD" or "PDFS"


def _draw_subject(rng, contrast):
    return _Subject(
        knee=_draw_knee(rng),
        scale=float(rng.uniform(0.9, 1.1)),
        angle=float(np.radians(rng.normal(0.0, 3.0))),
        shift=(float(rng.normal(0, 4.0)), float(rng.normal(0, 5.0)), float(rng.normal(0, 2.0))),
        contrast=contrast,
    )


def _model_coords(subj, u, v, w, view):
    """World grid -> model coordinates. Coronal: (u, v, w) = (x, y, z) with the in-plane
    rotation in x-y; sagittal and axial: rotation in z-y (flexion). Returns float32 x, y, z."""
    c, s = math.cos(subj.angle), math.sin(subj.angle)
    tx, ty, tz = subj.shift
    if view == "coronal":
        xw, yw, zw = u - tx, v - ty, w - tz
        x, y, z = c * xw + s * yw, -s * xw + c * yw, zw
    else:
        xw, yw, zw = u - tx, v - ty, w - tz
        x, y, z = xw, c * yw + s * zw, -s * yw + c * zw
    inv = 1.0 / subj.scale
    return (np.asarray(x * inv, np.float32), np.asarray(y * inv, np.float32),
            np.asarray(z * inv, np.float32))


def _grid(view, n_slices, rows, cols, pix, plane_pos):
    """World coordinates ``(u, v, w)`` of a stack of planes, each of size 1 along the axes it
    does not vary on: rows ``(1, rows, 1)``, columns ``(1, 1, cols)``, planes ``(S, 1, 1)``.

    Arithmetic on them broadcasts, so what depends on the in-plane position alone is
    computed once per pixel, not once per pixel and slice; each value is the same number
    that the full ``(S, rows, cols)`` grid gives (elementwise arithmetic does not depend on
    the shape), so the generated files are the same byte for byte.
    """
    r = ((rows / 2 - np.arange(rows) - 0.5) * pix).astype(np.float32)[None, :, None]  # y, up
    c = ((np.arange(cols) - cols / 2 + 0.5) * pix).astype(np.float32)[None, None, :]
    p = np.asarray(plane_pos, np.float32)[:, None, None]
    if view == "coronal":  # columns x (left -> right), planes z
        return c, r, p
    if view == "axial":  # columns x (left -> right), rows z (anterior at the top), planes y
        return c, p, r
    return p, r, -c  # sagittal: columns z, anterior on the left


def _rows(a: np.ndarray, sl: slice) -> np.ndarray:
    """The rows ``sl`` of a grid array that varies along them; as it is if it does not."""
    return a[:, sl] if a.shape[1] > 1 else a


def _render(subj, view, plane_pos, rows, cols, pix, rng, specs):
    """Render the subject's magnitude image (S, rows, cols) and lesion (w, value) fields."""
    shape = (len(plane_pos), rows, cols)
    sig = _SIGNAL[subj.contrast]
    tex = [
        _texture(rng, shape, pix, (0.7, 0.7), band=True),  # trabecular marrow
        _texture(rng, shape, pix, (4.0, 0.45)),  # muscle fibres along the leg
        _texture(rng, shape, pix, (1.5, 1.5)),  # fat septa
    ]
    edge = max(pix, 0.6) / subj.scale
    img = np.empty(shape, np.float32)
    fields = [(np.zeros(shape, np.float32), np.zeros(shape, np.float32)) for _ in specs]
    u, v, w = _grid(view, shape[0], rows, cols, pix, plane_pos)
    # blocks of rows across every plane: what depends on the in-plane position alone is
    # computed once per block, and a block's arrays stay in the core's cache
    step = max(1, CHUNK_POINTS // (shape[0] * cols))
    for r0 in range(0, rows, step):
        rs = slice(r0, min(rows, r0 + step))
        x, y, z = _model_coords(subj, _rows(u, rs), _rows(v, rs), _rows(w, rs), view)
        f = _render_anatomy(subj.knee, x, y, z, sig, edge, [t[:, rs] for t in tex])
        img[:, rs] = f.image
        for spec, (wf, vf) in zip(specs, fields):
            wf[:, rs], vf[:, rs] = _lesion_field(spec, subj.knee, x, y, z, f.sdf, sig, edge)
    return img, fields


def _acl_mask(subj, view, plane_pos, rows, cols, pix):
    u, v, w = _grid(view, len(plane_pos), rows, cols, pix, plane_pos)
    x, y, z = _model_coords(subj, u, v, w, view)
    return _capsule(x, y, z, *subj.knee["acl"], subj.knee["acl_r"]) < 0


def _bias_field(rng, u, v, sigma=120.0):
    """Smooth coil intensity falloff (a broad Gaussian, off-centre)."""
    cx, cy = rng.normal(0, 20.0, 2)
    return np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2.0 * sigma ** 2)).astype(np.float32)


def _coil_maps(rng, n_coils, u, v, w):
    """Smooth complex coil sensitivities (coils, S, H, W) around the leg, max RSS ~ 1."""
    maps = []
    for c in range(n_coils):
        phi = 2 * math.pi * c / n_coils + rng.normal(0, 0.1)
        px, pz = 80.0 * math.cos(phi), 80.0 * math.sin(phi)
        py = 35.0 * (1 if c % 2 else -1) + rng.normal(0, 5)
        d2 = (u - px) ** 2 + (v - py) ** 2 + (w - pz) ** 2
        mag = 1.0 / (1.0 + d2 / 70.0 ** 2) ** 1.2
        phase = rng.uniform(0, 2 * math.pi) + 0.01 * rng.normal() * u + 0.01 * rng.normal() * v
        maps.append((mag * np.exp(1j * phase)).astype(np.complex64))
    maps = np.stack(maps)
    return maps / np.sqrt((np.abs(maps) ** 2).sum(0)).max()


def _smooth_phase(rng, u, v, w):
    a = rng.normal(0, [1.0, 0.012, 0.012, 0.004, 0.00006, 0.00006])
    return (a[0] + a[1] * u + a[2] * v + a[3] * w + a[4] * u * v + a[5] * (u * u - v * v)).astype(np.float32)


# ------------------------------------------------------------------ fastMRI volumes
def _centre_crop_slices(n_total, n):
    start = (n_total - n) // 2
    return slice(start, start + n)


def _as_real_tensor(array: np.ndarray) -> torch.Tensor:
    """complex64 (..., H, W) -> float32 tensor (..., H, W, 2), fastmri's layout, sharing the
    array's memory (``fastmri``'s ``to_tensor`` copies it into a stacked array; the values
    are the same)."""
    return torch.view_as_real(torch.from_numpy(np.ascontiguousarray(array, np.complex64)))


def _ifft_crop(kspace: np.ndarray, n: int) -> np.ndarray:
    """abs(centre crop(ifft2c(kspace))) (RSS over coils for 4D), float32, via fastmri."""
    with torch.no_grad():
        image = fastmri.ifft2c(_as_real_tensor(kspace))
        image = fastmri.complex_abs(complex_center_crop(image, (n, n)))
        if kspace.ndim == 4:
            image = fastmri.rss(image, dim=1)
    return image.numpy().astype(np.float32, copy=False)


def _fft2c(image: np.ndarray) -> np.ndarray:
    """fastmri's centred orthonormal 2-D FFT of complex64 (..., H, W), complex64."""
    with torch.no_grad():
        return tensor_to_complex_np(fastmri.fft2c(_as_real_tensor(image)))


def slice_positions(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """The coronal slices' positions (model z, mm): ``n_slices`` contiguous slices of
    ``slice_thickness_mm`` centred on the knee, the stack shifted by a draw from ``rng``."""
    centre = 0.5 * sum(SLICE_SPAN_MM)
    return centre + (np.arange(cfg.n_slices) - (cfg.n_slices - 1) / 2) * cfg.slice_thickness_mm + rng.normal(0, 1.0)


def make_fastmri_volume(cfg: SynthConfig, rng: np.random.Generator, multicoil: bool = False,
                        render_lesions: bool = True, patient_id: str | None = None,
                        pe: int | None = None, twin: bool = False) -> SynthVolume:
    """One coronal fastMRI volume with 0-3 lesions, deterministic given ``rng``.

    The arrays are stored upside down (inferior at the top), as the real fastMRI knee
    arrays are: ``np.flipud`` of a slice is the radiological view, the one fastMRI+'s boxes
    refer to. ``render_lesions=False`` draws exactly the same subject, noise and lesion
    masks but leaves the lesions out of the image (a lesion-free twin, for tests and
    figures). ``pe``: the k-space width (default :func:`kspace_shape`'s); real files of one
    split differ in it, with the same pixel size and so a different phase-encode field of view.
    ``twin=True`` also returns the lesion-free twin's target (same subject, bias, phase,
    coils and noise), whose difference from the target is the lesions alone.
    """
    n = cfg.image_size
    rows, pe_default = kspace_shape(n)
    pe = pe_default if pe is None else int(pe)
    if pe % 2 or pe < n:
        raise ParameterError("pe", f"k-space width must be even and at least the image size {n}, got {pe}")
    pix = FOV_MM / n
    acquisition = ACQUISITIONS[int(rng.integers(2))]
    subj = _draw_subject(rng, "PDFS" if acquisition == "CORPDFS_FBK" else "PD")
    zs = slice_positions(cfg, rng)
    drawn_id = "".join(rng.choice(list("0123456789abcdef"), 32))  # drawn always: the subject does not depend on it
    patient_id = drawn_id if patient_id is None else patient_id

    # lesions: none for a share of subjects, else 1-3 kinds (distinct), each placed to cross a chosen slice
    lesion_free = rng.random() < cfg.lesion_free_fraction
    noise_factor = float(np.exp(rng.normal(0.0, 0.25))) * (1.3 if subj.contrast == "PDFS" else 1.0)
    n_les = 0 if lesion_free else 1 + int(rng.choice(3, p=[0.3, 0.4, 0.3]))
    kinds = list(rng.choice(list(LESION_KINDS), size=n_les, replace=False,
                            p=[kind.probability for kind in LESION_KINDS.values()]))
    specs = []
    for kind in kinds:
        for _ in range(20):
            k_slice = int(rng.integers(cfg.n_slices))
            z_model = (zs[k_slice] - subj.shift[2]) / subj.scale
            spec = _draw_lesion(kind, subj.knee, rng, z_model)
            if spec is not None:
                specs.append(spec)
                break

    img, fields = _render(subj, "coronal", zs, rows, pe, pix, rng, specs)
    # stored upside down, as the real fastMRI knee arrays are (fastMRI+ flipped them to annotate)
    img = np.ascontiguousarray(img[:, ::-1])
    fields = [(np.ascontiguousarray(w[:, ::-1]), np.ascontiguousarray(v[:, ::-1])) for w, v in fields]
    crop_r, crop_c = _centre_crop_slices(rows, n), _centre_crop_slices(pe, n)
    contrasts = rng.uniform(*cfg.lesion_contrast, size=len(specs))
    lesions = []
    clean = img.copy() if twin else None
    for spec, (w, v), c in zip(specs, fields, contrasts):
        mask = w[:, crop_r, crop_c] > 0.5
        area = mask.mean(axis=(1, 2))
        keep = (area >= LESION_KINDS[spec.kind].min_area) & (area <= MAX_AREA)
        if not keep.any() or (area > MAX_AREA).any():
            continue
        w[~keep] = 0.0
        mask[~keep] = False
        if render_lesions:
            img += float(c) * w * (v - img)
        lesions.append(Lesion(LABELS[spec.kind], mask, float(c)))

    u, v, w_ = _grid("coronal", len(zs), rows, pe, pix, zs)
    u, v = np.asarray(u), np.asarray(v)
    gain = _bias_field(rng, u, v) if not multicoil else np.float32(1.0)
    gain = gain * (float(rng.uniform(0.7, 1.3)) * 2e-4)  # fastMRI-like magnitude scale
    carrier = np.exp(1j * _smooth_phase(rng, u, v, np.asarray(w_))).astype(np.complex64)
    if multicoil:
        carrier = carrier[:, None] * _coil_maps(rng, cfg.n_coils, u, v, np.asarray(w_)).transpose(1, 0, 2, 3)

    def coil_images(image):  # (S, H, W) real -> complex (S, H, W) or (S, coils, H, W)
        scaled = image * gain
        return (scaled[:, None] if multicoil else scaled) * carrier

    cimg = coil_images(img)
    sigma = cfg.noise * noise_factor * float(np.abs(cimg).max()) / math.sqrt(2.0)
    # the (real, imaginary) pairs read as complex64 in place: no complex128 temporary
    noise = (rng.standard_normal(cimg.shape + (2,), dtype=np.float32) * sigma).view(np.complex64)[..., 0]
    pad = padding_columns(pe)

    def acquire(image):
        kspace = _fft2c(image)
        kspace += noise
        kspace[..., :pad] = 0
        kspace[..., pe - pad:] = 0
        return np.ascontiguousarray(kspace, dtype=np.complex64)

    kspace = acquire(cimg)
    target = _ifft_crop(kspace, n)
    twin_kspace = twin_target = None
    if twin and render_lesions and lesions:
        twin_kspace = acquire(coil_images(clean))
        twin_target = _ifft_crop(twin_kspace, n)
    elif twin:  # no lesion in the image: the twin's acquisition is this one, to the bit
        twin_kspace, twin_target = kspace.copy(), target.copy()

    header = writers.ismrmrd_header(
        encoded=(rows, pe, 1), recon=(n, n, 1), fov_mm=FOV_MM,
        slice_thickness_mm=cfg.slice_thickness_mm, pe_limits=(0, pe - 2 * pad - 1, pe // 2 - pad),
        n_slices=cfg.n_slices, protocol=acquisition, n_coils=cfg.n_coils,
        field_strength=float(rng.choice([1.5, 2.89362])))
    attrs = dict(acquisition=acquisition, max=float(target.max()),
                 norm=float(np.linalg.norm(target)), patient_id=patient_id)
    # the noise of one real component of the image: the orthonormal FFT keeps sigma, the
    # zeroed padding columns remove their share of it
    noise_sigma = sigma * math.sqrt((pe - 2 * pad) / pe)
    return SynthVolume(kspace, target, acquisition, lesions, header, attrs, twin_target, noise_sigma, twin_kspace)


# ------------------------------------------------------------------------- kneeMRI
def make_kneemri_exam(cfg: SynthConfig, rng: np.random.Generator,
                      exam_id: int | None = None, n_slices: int | None = None) -> tuple[np.ndarray, dict]:
    """One sagittal PD fat-suppressed kneeMRI exam and its metadata.csv row.

    Returns ``(volume, row)``: volume uint16 [slice, row, column] with 12-bit values
    (``n_slices`` slices, default ``cfg.kneemri_slices``); row has the metadata.csv columns
    (ROI around the ACL, aclDiagnosis 0/1/2).
    """
    n, ns = cfg.kneemri_size, int(n_slices or cfg.kneemri_slices)
    pix = KNEEMRI_FOV_MM / n
    diag = int(rng.choice(3, p=[0.5, 0.25, 0.25]))
    knee_lr = int(rng.integers(2))
    subj = _draw_subject(rng, "PDFS")
    subj = subj._replace(shift=(subj.shift[0] * 0.5, subj.shift[1], subj.shift[2] * 2.0))
    k = subj.knee
    k["effusion"] += (0.0, 0.2, 0.4)[diag]  # a torn ACL bleeds into the joint (a little more fluid)
    acl_x = 0.5 * (k["acl"][0][0] + k["acl"][1][0])
    xs = acl_x + (np.arange(ns) - (ns - 1) / 2) * (SAGITTAL_SPAN_MM / ns) + rng.normal(0, 1.0)
    if knee_lr == 1:  # right knee: slices run the other way
        xs = xs[::-1].copy()
    xs_world = xs * subj.scale + subj.shift[0]

    specs = []
    a, b = k["acl"]
    if diag:
        t = rng.uniform(0.35, 0.65)
        p = tuple(a[i] + t * (b[i] - a[i]) for i in range(3))
        r = rng.uniform(8.0, 10.0) if diag == 2 else rng.uniform(6.0, 7.5)
        specs.append(_Spec("acl", p, (r, r, r), dict(partial=diag == 1, halo=4.0)))
    if rng.random() < (0.6 if diag else 0.1):
        for z_try in (k["cond_c"][1] + rng.uniform(-12, 8), rng.uniform(-25, -5)):
            spec = _draw_lesion("edema", k, rng, z_try)
            if spec is not None:
                specs.append(spec)
                break
    img, fields = _render(subj, "sagittal", xs_world, n, n, pix, rng, specs)
    for (w, v), c in zip(fields, rng.uniform(*cfg.kneemri_contrast, size=len(fields))):
        img += float(c) * w * (v - img)
    _, v_, w_ = _grid("sagittal", ns, n, n, pix, xs_world)
    img *= _bias_field(rng, np.asarray(w_), np.asarray(v_))
    sigma = cfg.noise * float(np.exp(rng.normal(0.0, 0.25))) * 1.3 * float(img.max())  # PDFS
    noise = rng.standard_normal(img.shape + (2,), dtype=np.float32) * sigma
    mag = np.sqrt((img + noise[..., 0]) ** 2 + noise[..., 1] ** 2)
    scale = rng.uniform(2600, 3800) / max(float(np.percentile(mag, 99.9)), 1e-12)
    vol = np.clip(np.rint(mag * scale), 0, 4095).astype(np.uint16)

    acl = _acl_mask(subj, "sagittal", xs_world, n, n, pix)
    zz, yy, xx = np.nonzero(acl)
    m = 2
    if len(zz):
        z0, z1 = int(zz.min()), int(zz.max())
        y0, y1 = max(0, int(yy.min()) - m), min(n - 1, int(yy.max()) + m)
        x0, x1 = max(0, int(xx.min()) - m), min(n - 1, int(xx.max()) + m)
    else:  # cannot happen for the drawn geometry; keep a central box
        z0 = z1 = ns // 2
        y0, y1, x0, x1 = n // 3, 2 * n // 3, n // 3, 2 * n // 3
    if exam_id is None:
        exam_id = int(rng.integers(100000, 1000000))
    series = int(rng.integers(5, 13))
    row = dict(examId=int(exam_id), seriesNo=series, aclDiagnosis=diag, kneeLR=knee_lr,
               roiX=x0, roiY=y0, roiZ=z0, roiHeight=y1 - y0 + 1, roiWidth=x1 - x0 + 1,
               roiDepth=z1 - z0 + 1, volumeFilename=f"{exam_id}-{series}.pck")
    return vol, row


# ------------------------------------------------------------------------- MRNet-v1.0
#: Each MRNet-v1.0 series: its contrast, the model axis (x 0, y 1, z 2) its slices step along
#: and the centre of its stack on that axis (mm). The real series are axial PD fat-suppressed,
#: coronal T1 and sagittal T2 fat-suppressed; of the two tissue models here the coronal one
#: is drawn PD, the contrast of fastMRI's coronal slices, on which its maps are used.
_MRNET_SERIES = {"axial": ("PDFS", 1, 10.0), "coronal": ("PD", 2, 0.5 * sum(SLICE_SPAN_MM)),
                 "sagittal": ("PDFS", 0, 0.0)}
#: share of MRNet exams given one more lesion (edema or a cartilage defect) besides their labels'
_MRNET_OTHER = 0.3


class MRNetExam(NamedTuple):
    """One MRNet-v1.0 exam: ``series`` ``{plane: uint8 (S, 256, 256)}`` (S differs between
    planes and exams), ``labels`` ``{"abnormal", "acl", "meniscus": 0 or 1}`` and the
    coronal series' ``lesions`` (:class:`Lesion`, masks bool ``(S, 256, 256)``)."""

    series: dict
    labels: dict
    lesions: list


def mrnet_render_size(cfg: SynthConfig) -> int:
    """The grid an MRNet series is drawn on before it is resampled to 256 x 256: the pixel
    size of the fastMRI targets (``image_size`` over 140 mm), even, from 64 (coarser, a
    meniscal tear fades below its mask's threshold) to 256."""
    return min(MRNET_SIZE, max(64, 2 * int(round(cfg.image_size * MRNET_FOV_MM / FOV_MM / 2))))


def _resample(volume: np.ndarray, size: int = MRNET_SIZE) -> np.ndarray:
    """(S, n, n) -> float32 (S, size, size), bilinear."""
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[:, None]
        return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def make_mrnet_exam(cfg: SynthConfig, rng: np.random.Generator, meniscus: bool, acl: bool) -> MRNetExam:
    """One MRNet-v1.0 exam (axial, coronal and sagittal series), deterministic given ``rng``.

    One subject is drawn in 3D: a meniscal tear where ``meniscus`` (placed through one of
    the coronal slices, as :class:`MeniscalTear` places a fastMRI one), an ACL tear where
    ``acl``, and for some exams an edema or cartilage defect; every series shows them at
    the lesion contrast of the fastMRI cohort (``cfg.lesion_contrast``). ``abnormal`` is 1
    when the exam has any lesion. Each series holds ``cfg.mrnet_slices`` slices across
    96 mm of the knee, drawn on :func:`mrnet_render_size`'s grid over 150 mm, with a bias
    field and Rician noise, resampled to 256 x 256 and scaled to ``uint8`` as MRNet's are;
    slices are stored as viewed (superior, or for axial anterior, at the top).
    """
    n = mrnet_render_size(cfg)
    pix = MRNET_FOV_MM / n
    subj = _draw_subject(rng, "PD")
    positions = {}
    for plane, (_, axis, centre) in _MRNET_SERIES.items():
        ns = int(rng.integers(cfg.mrnet_slices[0], cfg.mrnet_slices[1] + 1))
        model = centre + (np.arange(ns) - (ns - 1) / 2) * (SAGITTAL_SPAN_MM / ns)
        positions[plane] = model * subj.scale + subj.shift[axis]
    z_coronal = (positions["coronal"] - subj.shift[2]) / subj.scale  # model z of each coronal slice
    kinds = ["meniscus"] * bool(meniscus) + ["acl"] * bool(acl)
    if rng.random() < _MRNET_OTHER:
        kinds.append(str(rng.choice(["edema", "cartilage"])))
    specs = []
    for kind in kinds:
        for _ in range(100):
            spec = _draw_lesion(kind, subj.knee, rng, float(z_coronal[rng.integers(len(z_coronal))]))
            if spec is not None:
                if kind == "meniscus":  # a cleft at least a pixel of the coarse grid thick, which keeps it
                    spec = spec._replace(extra={**spec.extra, "thick": max(spec.extra["thick"], pix)})
                specs.append(spec)
                break
        else:
            raise RuntimeError(f"no coronal slice of this MRNet exam crosses a place for a {kind} lesion")
    contrasts = rng.uniform(*cfg.lesion_contrast, size=len(specs))
    r = ((n / 2 - np.arange(n) - 0.5) * pix).astype(np.float32)[:, None]
    c = ((np.arange(n) - n / 2 + 0.5) * pix).astype(np.float32)[None, :]
    series, lesions = {}, []
    for plane, (contrast, _, _) in _MRNET_SERIES.items():
        img, fields = _render(subj._replace(contrast=contrast), plane, positions[plane], n, n, pix, rng, specs)
        for (w, v), lc in zip(fields, contrasts):
            img += float(lc) * w * (v - img)
        img *= _bias_field(rng, c, r)
        sigma = cfg.noise * float(np.exp(rng.normal(0.0, 0.25))) * (1.3 if contrast == "PDFS" else 1.0) * float(img.max())
        noise = rng.standard_normal(img.shape + (2,), dtype=np.float32) * sigma
        mag = _resample(np.sqrt((img + noise[..., 0]) ** 2 + noise[..., 1] ** 2))
        scale = 255.0 / max(float(np.percentile(mag, 99.8)), 1e-12)
        series[plane] = np.clip(np.rint(mag * scale), 0, 255).astype(np.uint8)
        if plane == "coronal":
            lesions = [Lesion(LABELS[spec.kind], _resample(w) > 0.5, float(lc))
                       for spec, (w, _), lc in zip(specs, fields, contrasts)]
    labels = dict(abnormal=int(bool(specs)), acl=int(bool(acl)), meniscus=int(bool(meniscus)))
    return MRNetExam(series, labels, lesions)


class _MRNetJob(NamedTuple):
    """MRNet-v1.0 exam ``index`` of split ``split`` (0 train, 1 valid) and its labels."""

    split: int
    index: int
    meniscus: bool
    acl: bool


def _mrnet_jobs(cfg: SynthConfig, seed: int) -> list[_MRNetJob]:
    """Every MRNet exam to draw: in each split, half the exams (a draw from the seed) get a
    meniscal tear and a third an ACL tear, so that every split holds both labels."""
    jobs = []
    for split, n in enumerate((cfg.mrnet_train, cfg.mrnet_valid)):
        rng = subject_rng(seed, 4, split, 0)
        meniscus, acl = np.zeros(n, bool), np.zeros(n, bool)
        meniscus[rng.permutation(n)[: n // 2]] = True
        acl[rng.permutation(n)[: int(round(n / 3))]] = True
        jobs += [_MRNetJob(split, i, bool(meniscus[i]), bool(acl[i])) for i in range(n)]
    return jobs


def _draw_mrnet(cfg: SynthConfig, seed: int, job: _MRNetJob) -> MRNetExam:
    return make_mrnet_exam(cfg, subject_rng(seed, 3, job.split, job.index), job.meniscus, job.acl)


def _write_mrnet(out: Path, cfg: SynthConfig, jobs: list[_MRNetJob], exams, progress: bool) -> dict:
    """Write the MRNet-v1.0 tree of ``jobs`` (their ``exams`` in order) under ``out``; return
    the positives of each split and task. Exams are numbered as in the real download: the
    ``valid`` split's ids follow the ``train`` split's."""
    root = out / "MRNet-v1.0"
    labels: dict[str, dict[str, list]] = {split: {task: [] for task in ("abnormal", "acl", "meniscus")}
                                          for split in ("train", "valid")}
    with progress_bar(total=len(jobs), desc="synthetic MRNet-v1.0", progress=progress) as bar:
        for job, exam in zip(jobs, exams):
            split = ("train", "valid")[job.split]
            exam_id = f"{job.index + (cfg.mrnet_train if job.split else 0):04d}"
            for plane, volume in exam.series.items():
                writers.write_mrnet_exam(root / split / plane / f"{exam_id}.npy", volume)
            for task, label in exam.labels.items():
                labels[split][task].append((exam_id, label))
            bar.update(1)
    for split, tasks in labels.items():
        for task, rows in tasks.items():
            writers.write_mrnet_labels(root / f"{split}-{task}.csv", rows)
    return {split: {task: sum(label for _, label in rows) for task, rows in tasks.items()}
            for split, tasks in labels.items()}


# ------------------------------------------------------------------------- generate
_SPLITS = ("train", "val", "test")


def boxes_from_masks(fname: str, lesions: list[Lesion], image_height: int) -> list[dict]:
    """fastMRI+ rows (one per lesion per slice) with y stored up/down flipped."""
    rows = []
    for lesion in lesions:
        for s in np.nonzero(lesion.mask.any(axis=(1, 2)))[0]:
            rr, cc = np.nonzero(lesion.mask[s])
            y, x = int(rr.min()), int(cc.min())
            h, w = int(rr.max()) - y + 1, int(cc.max()) - x + 1
            rows.append(dict(file=fname, slice=int(s), study_level="No", x=x,
                             y=flip_y(y, h, image_height), width=w, height=h, label=lesion.label))
    return rows


LAYOUTS = ("synthetic", "real")
#: k-space width offsets of the real layout, in pairs of columns: real knee files of one
#: split have 368, 372, 356, ... phase encodes
_REAL_WIDTH_STEPS = (-3, -1, 0, 1, 2)


def _real_width(cfg: SynthConfig, index: int) -> int:
    """The k-space width of the ``index``-th file of a split in the real layout: the
    default's, moved by a few column pairs, so that any few consecutive files differ."""
    _, pe = kspace_shape(cfg.image_size)
    return max(cfg.image_size, pe + 2 * _REAL_WIDTH_STEPS[(3 * index) % len(_REAL_WIDTH_STEPS)])


def _undersample(vol: SynthVolume, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """As the real test split: k-space undersampled by a fastMRI mask, the mask, its attributes."""
    from fastmri.data.subsample import RandomMaskFunc  # lazy: only the real layout needs it

    acc = int(rng.choice([4, 8]))
    frac = {4: 0.08, 8: 0.04}[acc]
    cols = vol.kspace.shape[-1]
    mask = RandomMaskFunc([frac], [acc])((1, cols, 1), None, int(rng.integers(2**31)))[0].numpy().reshape(cols) > 0
    attrs = {k: v for k, v in vol.attrs.items() if k not in ("max", "norm")}  # the real test files carry neither
    attrs.update(acceleration=acc, num_low_frequency=int(round(cols * frac)))
    return (vol.kspace * mask).astype(np.complex64), mask, attrs


def _quirk_rows(files: dict[str, list[str]], image_size: int, box_rows: list[dict]) -> list[dict]:
    """fastMRI+'s quirks, written so that none changes what a lesion box is:

    labels in odd case and spacing on true boxes; study-level rows with empty box fields;
    a zero-height box; a box partly outside the image and a row for a file that is not in
    the data directory (both on the inference-only test split or nowhere).
    """
    for row in box_rows[::3]:
        row["label"] = f"  {row['label'].upper()} "
    rows = [dict(file=f, slice="", study_level="Yes", x="", y="", width="", height="", label="Artifact")
            for f in files["train"][:1] + files["val"][:1]]
    some = files["test"][0] if files["test"] else files["train"][0]
    n = image_size
    rows += [
        dict(file=some, slice=0, study_level="No", x=n // 3, y=n // 3, width=5, height=0, label="Meniscus Tear"),
        dict(file="file9999999", slice=1, study_level="No", x=10, y=10, width=8, height=8, label="Meniscus Tear"),
    ]
    if files["test"]:
        rows.append(dict(file=files["test"][0], slice=0, study_level="No", x=n - 6, y=2, width=12, height=8,
                         label="Bone- Subchondral edema"))
    return rows


class _KneeJob(NamedTuple):
    """kneeMRI exam ``index``."""

    index: int


def _draw_volume(cfg: SynthConfig, seed: int, multicoil: bool, real: bool,
                 job: tuple) -> SynthVolume | MRNetExam | tuple[np.ndarray, dict]:
    """Volume ``i`` of split ``split_id`` (``job = (split_id, split, i)``), an MRNet exam
    (``job`` an :class:`_MRNetJob`) or a kneeMRI exam (a :class:`_KneeJob`), from its own
    seed alone, so subjects may be drawn in any order and in any process."""
    if isinstance(job, _MRNetJob):
        return _draw_mrnet(cfg, seed, job)
    if isinstance(job, _KneeJob):
        return _draw_exam(cfg, seed, real, job.index)
    split_id, split, i = job
    vol = make_fastmri_volume(cfg, subject_rng(seed, 0, split_id, i), multicoil,
                              pe=_real_width(cfg, split_id + i) if real else None,
                              twin=not (real and split == "test"))
    # a training twin is written without its k-space: do not send it back from a worker
    return vol._replace(twin_kspace=None) if split == "train" else vol


#: Below this many grid points (:func:`grid_points`) :func:`generate` draws its cohorts in
#: its own process: a worker process takes about 3 s to start (it imports torch and
#: fastmri), in which this process renders several million points. The ``smoke`` cohorts
#: (4.0 million points) take 1.4 s here and 3.2 s in two workers on 2 cores; ``default``'s
#: (64 million) take 15 s in two workers.
POOL_MIN_POINTS = 10_000_000


def grid_points(cfg: SynthConfig) -> int:
    """The grid points :func:`generate` renders for ``cfg``'s cohorts (before twins and
    FFTs): a measure of its work. fastMRI volumes ``n_slices x 2N x PE``, kneeMRI exams
    ``slices x size^2``, MRNet exams three series of at most ``mrnet_slices[1]`` slices."""
    rows, pe = kspace_shape(cfg.image_size)
    volumes = (cfg.n_train + cfg.n_val + cfg.n_test) * cfg.n_slices * rows * pe
    exams = cfg.kneemri_exams * cfg.kneemri_slices * cfg.kneemri_size ** 2
    mrnet = (cfg.mrnet_train + cfg.mrnet_valid) * 3 * cfg.mrnet_slices[1] * mrnet_render_size(cfg) ** 2
    return int(volumes + exams + mrnet)


def _draw_exam(cfg: SynthConfig, seed: int, real: bool, i: int) -> tuple[np.ndarray, dict]:
    """kneeMRI exam ``i`` from its own seed alone (as :func:`_draw_volume`); the real layout
    varies the slice count from exam to exam."""
    n_slices = cfg.kneemri_slices + (i % 3) - 1 if real and cfg.kneemri_slices > 1 else None
    return make_kneemri_exam(cfg, subject_rng(seed, 1, 0, i), exam_id=300000 + 17 * i, n_slices=n_slices)


def generate(out_dir, cfg: SynthConfig, seed: int = 0, multicoil: bool = False,
             progress: bool = True, layout: str = "synthetic", workers: int = 0) -> dict:
    """Write both synthetic cohorts in their real formats under ``out_dir``.

    Layout: ``fastmri/{singlecoil|multicoil}_{train,val,test}/file*.h5``,
    ``annotations/knee.csv``, ``kneemri/*.pck`` + ``kneemri/metadata.csv``, ``synth.json``,
    and the lesion-free twin of every volume with a lesion and a target
    (``synth_twins/``, :mod:`mrlib.data.twins`).
    The fastMRI arrays are stored upside down, as the real ones (``display_flip_ud``).

    ``layout="real"`` writes the cohort exactly as the real downloads are laid out: k-space
    widths that differ from file to file; a test split without targets whose k-space is
    already undersampled, with its ``mask`` and ``acceleration`` / ``num_low_frequency``
    attributes; a ``knee.csv`` with fastMRI+'s quirks (study-level rows, a degenerate box,
    a box partly outside the image, a row for an absent file, labels in odd case and
    spacing) and the ``knee_file_list.csv`` of reviewed files (every file with a lesion and
    half of the others); two training files of one patient; kneeMRI volumes of differing
    slice counts. Runs on it with ``split_policy=fastmri``.

    With ``cfg.mrnet_train`` and ``cfg.mrnet_valid``, also an MRNet-v1.0 tree as the real
    download is laid out: ``MRNet-v1.0/{train,valid}/{axial,coronal,sagittal}/NNNN.npy``
    (uint8 (S, 256, 256), :func:`make_mrnet_exam`) and the header-less label files
    ``MRNet-v1.0/{train,valid}-{abnormal,acl,meniscus}.csv`` (lines ``0000,1``).

    One pool of ``workers`` processes draws the fastMRI volumes, the MRNet exams and the
    kneeMRI exams (0: one per available core, or this process alone when the cohorts are
    smaller than :data:`POOL_MIN_POINTS`; 1: this process only); every volume and exam
    comes from its own seed, so the files are byte-identical whatever the number of workers.

    Returns a summary (counts per split, boxes, kneeMRI labels, seconds).
    """
    if not isinstance(cfg, SynthConfig):
        raise ParameterError("cfg", f"must be a SynthConfig, got {type(cfg).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError("seed", f"must be a non-negative integer, got {seed!r}")
    if layout not in LAYOUTS:
        raise ParameterError("layout", f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    real = layout == "real"
    t0 = time.perf_counter()
    out = Path(out_dir)
    challenge = "multicoil" if multicoil else "singlecoil"
    counts = dict(zip(_SPLITS, (cfg.n_train, cfg.n_val, cfg.n_test)))
    box_rows: list[dict] = []
    lesion_counts: dict[str, int] = {}
    names: dict[str, list[str]] = {split: [] for split in _SPLITS}
    with_lesion: list[str] = []
    file_no = 1000000
    total = sum(counts.values())
    first_patient = None
    jobs = [(split_id, split, i) for split_id, split in enumerate(_SPLITS) for i in range(counts[split])]
    mrnet_jobs = _mrnet_jobs(cfg, seed)
    draw = functools.partial(_draw_volume, cfg, seed, multicoil, real)
    knee_jobs = [_KneeJob(i) for i in range(cfg.kneemri_exams)]
    mrnet_labels = {}
    meta_rows = []
    diag_counts = {0: 0, 1: 0, 2: 0}
    if workers == 0 and grid_points(cfg) < POOL_MIN_POINTS:
        workers = 1
    with parallel_map(draw, jobs + mrnet_jobs + knee_jobs, workers) as volumes, \
            progress_bar(total=total, desc=f"synthetic fastMRI ({challenge})", progress=progress) as bar:
        for (split_id, split, i), vol in zip(jobs, volumes):  # zip stops before taking an MRNet exam
            fname = f"file{file_no + 1000 * split_id + i}"
            layout_rng = subject_rng(seed, 2, split_id, i)
            if split == "train" and i == 0:
                first_patient = vol.attrs["patient_id"]
            elif real and split == "train" and i == counts[split] - 1:  # a second scan of the first patient
                vol.attrs["patient_id"] = first_patient
            path = out / "fastmri" / f"{challenge}_{split}" / f"{fname}.h5"
            if real and split == "test":
                kspace, mask, attrs = _undersample(vol, layout_rng)
                writers.write_fastmri_h5(path, kspace, None, attrs, vol.header, multicoil, mask=mask)
            else:
                writers.write_fastmri_h5(path, vol.kspace, vol.target, vol.attrs, vol.header, multicoil)
                box_rows += boxes_from_masks(fname, vol.lesions, cfg.image_size)
                if vol.lesions and vol.twin is not None:
                    twins.write_twin(twins.twin_dir(out, f"{challenge}_{split}") / f"{fname}.h5", vol.twin,
                                     [les.mask for les in vol.lesions], [les.label for les in vol.lesions],
                                     [les.contrast for les in vol.lesions], vol.noise_sigma,
                                     kspace=vol.twin_kspace if split != "train" else None)
            names[split].append(fname)
            if vol.lesions:
                with_lesion.append(fname)
            for lesion in vol.lesions:
                lesion_counts[lesion.label] = lesion_counts.get(lesion.label, 0) + 1
            bar.update(1)
        if mrnet_jobs:
            mrnet_labels = _write_mrnet(out, cfg, mrnet_jobs, volumes, progress)
        with progress_bar(total=cfg.kneemri_exams, desc="synthetic kneeMRI", progress=progress) as knee_bar:
            for _, (vol, row) in zip(knee_jobs, volumes):
                writers.write_pck(out / "kneemri" / row["volumeFilename"], vol)
                meta_rows.append(row)
                diag_counts[row["aclDiagnosis"]] += 1
                knee_bar.update(1)
    n_boxes = len(box_rows)
    if real:
        box_rows += _quirk_rows(names, cfg.image_size, box_rows)
        others = [f for split in ("train", "val") for f in names[split] if f not in with_lesion]
        reviewed = sorted(set(with_lesion) | set(others[::2]) | set(names["test"][:1]))
        writers.write_file_list(out / "annotations" / "knee_file_list.csv", reviewed)
    writers.write_boxes_csv(out / "annotations" / "knee.csv", box_rows)

    if meta_rows:  # no cohort, no kneemri/ (an empty metadata.csv is not a kneeMRI directory)
        writers.write_kneemri_metadata(out / "kneemri" / "metadata.csv", meta_rows)

    summary = dict(
        challenge=challenge, layout=layout, counts=counts, n_boxes=n_boxes, lesions=lesion_counts,
        kneemri_exams=cfg.kneemri_exams,
        kneemri_labels={str(k): v for k, v in diag_counts.items()},
        mrnet_exams={"train": cfg.mrnet_train, "valid": cfg.mrnet_valid}, mrnet_labels=mrnet_labels,
        seconds=round(time.perf_counter() - t0, 2),
    )
    write_json(out / "synth.json", dict(config=asdict(cfg), seed=int(seed), multicoil=bool(multicoil),
                                        display_flip_ud=True, **summary))
    return summary
