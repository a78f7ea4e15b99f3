"""Synthetic cardiac cine-MRI short-axis phantom: the embedded default data set.

:func:`load_phantom` (registered as ``"phantom"``) draws, deterministically from a
seed, a stack of short-axis slices per "patient" that looks like a cropped
bSSFP cine MRI at end-diastole, with ACDC's label convention (0 background,
1 right ventricle, 2 myocardium, 3 left ventricle) and simulated scribbles.
It needs no download and is fast enough to be generated on every run.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from weakseg.annotate.scribbles import simulate_scribbles
from weakseg.data.base import DATASETS, Volume, VolumeSet
from weakseg.errors import WeaksegError

__all__ = ["CLASS_NAMES", "load_phantom", "make_phantom_volume"]

#: Class names in ACDC's order.
CLASS_NAMES = ["background", "RV", "Myo", "LV"]

#: Field of view (mm) of the in-plane grid, whatever the number of pixels.
_FOV_MM = 250.0
#: Slice thickness (mm), as in ACDC.
_SLICE_MM = 10.0
#: In-plane 8-neighbourhood for 3D morphology on (Z, H, W) stacks.
_IN_PLANE = np.pad(np.ones((1, 3, 3), dtype=bool), ((1, 1), (0, 0), (0, 0)))


@DATASETS.register("phantom", help="synthetic cardiac short-axis MRI phantom (no download)")
def load_phantom(
    *,
    num_volumes: int = 12,
    size: int = 64,
    slices: int = 8,
    seed: int = 0,
    noise: float = 0.08,
) -> VolumeSet:
    """Generate a synthetic cardiac cine-MRI short-axis data set.

    Every volume is one "patient" (key and group ``phantom_{i:03d}``) of
    ``slices`` slices of ``size x size`` pixels from the base (slice 0) to the
    apex of the heart: a bright left-ventricle blood pool (with papillary
    muscles) inside a dark myocardium ring, a bright right-ventricle crescent on
    one side, a thin RV wall, and a thorax of textured soft tissue, dark lungs,
    bright fat (subcutaneous and epicardial), the descending aorta (as bright as
    the ventricles) and the liver, so intensity alone does not segment the heart.
    Position, size, ellipticity, rotation, wall thickness and contrasts vary per
    volume; the heart shrinks toward the apex, where the RV may vanish. The image
    is blurred slightly, multiplied by a smooth bias field, corrupted by Rician
    noise of standard deviation ``noise`` and scaled to ``[0, 1]`` (float32).

    ``annotations["scribble"]`` holds scribbles simulated by
    :func:`weakseg.annotate.scribbles.simulate_scribbles` with seed
    ``seed * 1000 + i``. Volume ``i`` depends only on ``(seed, i)`` and the
    shape arguments, not on ``num_volumes``.

    Args:
        num_volumes: number of volumes (patients).
        size: in-plane size in pixels (the field of view is always 250 mm).
        slices: number of slices per volume, base to apex.
        seed: non-negative random seed.
        noise: standard deviation of the Rician noise relative to blood signal.

    Returns:
        A :class:`~weakseg.data.base.VolumeSet` with four classes.
    """
    _check_int("num_volumes", num_volumes, 1)
    _check_int("size", size, 24)
    _check_int("slices", slices, 1)
    _check_int("seed", seed, 0)
    if (
        isinstance(noise, bool)
        or not isinstance(noise, (int, float, np.number))
        or not 0.0 <= float(noise) <= 1.0
    ):
        raise WeaksegError(f"phantom: noise must be in [0, 1], got {noise!r}")
    spacing = (_SLICE_MM, _FOV_MM / size, _FOV_MM / size)
    volumes = []
    for i in range(num_volumes):
        image, label = make_phantom_volume(
            np.random.default_rng([seed, i]), size=size, slices=slices, noise=float(noise)
        )
        scribble = simulate_scribbles(label, num_classes=len(CLASS_NAMES), seed=seed * 1000 + i)
        key = f"phantom_{i:03d}"
        volumes.append(
            Volume(
                key=key,
                group=key,
                image=image,
                label=label,
                annotations={"scribble": scribble},
                spacing=spacing,
                meta={"source": "phantom", "seed": seed, "index": i},
            )
        )
    return VolumeSet(volumes=volumes, class_names=list(CLASS_NAMES), in_channels=1)


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise WeaksegError(f"phantom: {name} must be an integer >= {minimum}, got {value!r}")


def make_phantom_volume(
    rng: np.random.Generator, *, size: int = 64, slices: int = 8, noise: float = 0.08
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one phantom volume; return ``(image float32, label int64)``, both ``(Z, H, W)``.

    All geometry is in units of ``size`` so the anatomy is the same at any
    resolution. See :func:`load_phantom` for what is drawn.
    """
    n, z = size, slices
    shape = (z, n, n)
    # Base (u = 0) to apex (u = 1), per slice, broadcast over (Z, H, W).
    u = (np.arange(z, dtype=np.float64) / max(z - 1, 1))[:, None, None]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    yy, xx = yy[None], xx[None]

    # --- per-volume parameters -----------------------------------------------------
    cx = n * (0.52 + rng.uniform(-0.06, 0.06)) + n * rng.uniform(-0.03, 0.03) * u
    cy = n * (0.47 + rng.uniform(-0.06, 0.06)) + n * rng.uniform(-0.03, 0.03) * u
    r_endo0 = n * rng.uniform(0.085, 0.115)  # LV cavity radius at the base
    wall0 = n * rng.uniform(0.045, 0.065)  # myocardium thickness
    ellip = rng.uniform(0.0, 0.12)  # LV axis ratio (1 + e) / (1 - e)
    phi = rng.uniform(0.0, np.pi)  # LV ellipse orientation
    theta = np.pi + 0.3 + rng.uniform(-0.35, 0.35)  # direction LV -> RV (image left, up)
    rv_end = rng.uniform(0.8, 1.3)  # RV vanishes at u >= rv_end (maybe never)
    rv_thick0 = rng.uniform(0.55, 0.95)  # RV depth / LV epicardial radius, at the base
    rv_wrap = rng.uniform(1.15, 1.45)  # RV half-length / LV epicardial radius
    blood = rng.uniform(0.75, 0.95)
    rv_blood = blood * rng.uniform(0.85, 1.0)
    myo = rng.uniform(0.15, 0.3)
    tissue = rng.uniform(0.3, 0.45)
    fat = rng.uniform(0.75, 0.95)
    lung = rng.uniform(0.02, 0.08)
    liver = rng.uniform(0.3, 0.4)

    # --- left ventricle: elliptic, slightly irregular cavity inside a ring -----------
    dx, dy = xx - cx, yy - cy
    a_lv = dx * np.cos(phi) + dy * np.sin(phi)
    b_lv = -dx * np.sin(phi) + dy * np.cos(phi)
    rho = np.hypot(a_lv / (1.0 + ellip), b_lv / (1.0 - ellip))
    angle = np.arctan2(dy, dx)
    harmonics = sum(
        rng.uniform(0.0, 0.05) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3)
    )
    r_endo = r_endo0 * (1.0 - 0.6 * u**1.4)
    wall = wall0 * (1.0 - 0.2 * u)
    endo = rho < r_endo * (1.0 + harmonics)
    r_epi = r_endo + wall
    epi = rho < r_epi * (1.0 + 0.5 * harmonics)

    # --- right ventricle: crescent between an ellipse and the LV epicardium ----------
    s_rv = np.clip(1.0 - (u / rv_end) ** 1.5, 0.0, 1.0)
    p = dx * np.cos(theta) + dy * np.sin(theta)  # along LV -> RV
    q = -dx * np.sin(theta) + dy * np.cos(theta)
    r_epi0 = r_endo0 + wall0
    half_len = r_epi0 * rv_wrap * (0.55 + 0.45 * s_rv)
    depth = r_epi0 * rv_thick0 * s_rv
    semi_p = np.maximum(0.8 * half_len, 1e-3)
    centre_p = r_epi + depth - semi_p
    rv_rho = np.hypot((p - centre_p) / semi_p, q / half_len)
    rv_outer = (rv_rho < 1.0) & (depth > 0.5)
    rv = rv_outer & ~epi
    rv_wall = ndimage.binary_dilation(rv, structure=_IN_PLANE, iterations=max(1, round(n / 96)))
    rv_wall &= ~rv & ~epi

    label = np.zeros(shape, dtype=np.int64)
    label[rv] = 1
    label[epi] = 2
    label[endo] = 3

    # --- thorax background ------------------------------------------------------------
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(0.7, 0.025 * n, 0.025 * n))
    texture /= max(float(texture.std()), 1e-6)
    image = np.zeros(shape, dtype=np.float64)
    bx, by = n * (0.5 + rng.uniform(-0.03, 0.03)), n * (0.56 + rng.uniform(-0.03, 0.03))
    body_rho = np.hypot((xx - bx) / (0.62 * n), (yy - by) / (0.46 * n))
    body = body_rho < 1.0
    image[np.broadcast_to(body, shape)] = tissue
    image = np.where(body & (body_rho > 0.9), fat, image)  # subcutaneous fat
    for side in (-1.0, 1.0):  # lungs, wrapping the heart laterally
        lx = cx + side * n * rng.uniform(0.25, 0.3)
        ly = cy + n * rng.uniform(0.02, 0.08)
        lung_rho = np.hypot((xx - lx) / (n * rng.uniform(0.14, 0.18)), (yy - ly) / (n * 0.28))
        image = np.where((lung_rho < 1.0) & body, lung, image)
    # Liver: grows toward the apex, below-left in the image (patient right, inferior).
    liver_r = n * (0.08 + 0.2 * u)
    liver_mask = np.hypot((xx - (cx - 0.22 * n)) / 1.3, yy - (cy + 0.38 * n)) < liver_r
    image = np.where(liver_mask & body, liver, image)
    # Descending aorta (bright blood) behind the heart, and a spine-like blob.
    ax, ay = cx + n * rng.uniform(0.08, 0.16), cy + n * rng.uniform(0.25, 0.3)
    image = np.where(np.hypot(xx - ax, yy - ay) < n * 0.045, blood, image)
    image = np.where(np.hypot(xx - (ax - 0.12 * n), yy - (ay + 0.1 * n)) < n * 0.07, 0.5, image)
    image *= 1.0 + 0.12 * texture * body
    # Fat: bright arcs hugging the epicardium (AV groove) and a few loose blobs.
    heart = epi | rv | rv_wall
    for _ in range(int(rng.integers(1, 4))):
        centre = rng.uniform(0.0, 2.0 * np.pi)
        half = rng.uniform(0.3, 0.8)
        thick = n * rng.uniform(0.02, 0.045)
        off = np.abs(np.angle(np.exp(1j * (angle - centre))))
        arc = (off < half) & (rho < r_epi * (1.0 + 0.5 * harmonics) + thick) & ~heart
        image = np.where(arc, fat, image)
    for _ in range(int(rng.integers(1, 4))):
        ang = rng.uniform(0.0, 2.0 * np.pi)
        dist = r_epi0 * rng.uniform(1.2, 1.8)
        fx, fy = cx + dist * np.cos(ang), cy + dist * np.sin(ang)
        radius = n * rng.uniform(0.02, 0.04)
        image = np.where((np.hypot(xx - fx, yy - fy) < radius) & body, fat, image)

    # --- heart ---------------------------------------------------------------------------
    image = np.where(rv_wall, myo * 1.2, image)
    image = np.where(rv, rv_blood, image)
    image = np.where(epi, myo, image)
    image = np.where(endo, blood, image)
    # Papillary muscles: dark spots in the cavity (labelled LV, as in ACDC).
    for k in range(2):
        ang = theta + np.pi + (0.7 if k else -0.7) + rng.uniform(-0.2, 0.2)
        px, py = cx + 0.55 * r_endo * np.cos(ang), cy + 0.55 * r_endo * np.sin(ang)
        pap = (np.hypot(xx - px, yy - py) < 0.2 * r_endo) & endo & (u < 0.85)
        image = np.where(pap, myo * 1.3, image)

    # --- acquisition: partial volume, bias field, Rician noise, scaling ----------------------
    image = ndimage.gaussian_filter(image, sigma=(0.0, 0.45, 0.45))
    bias = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma=0.25 * n, mode="wrap")
    bias /= max(float(np.abs(bias).max()), 1e-6)
    ramp = rng.uniform(-0.2, 0.2) * (xx - n / 2) / n + rng.uniform(-0.2, 0.2) * (yy - n / 2) / n
    image *= np.exp(rng.uniform(0.1, 0.3) * bias[None] + ramp)
    real = image + noise * rng.standard_normal(shape)
    imag = noise * rng.standard_normal(shape)
    image = np.hypot(real, imag)
    image /= max(float(np.percentile(image, 99.5)), 1e-6)
    return np.clip(image, 0.0, 1.0).astype(np.float32), label
