"""Vectorised chest phantoms: anatomy, per-label findings and acquisition, rendered in batches.

Radiograph convention: attenuation is bright (bone, heart, fluid), air is dark (lungs, outside).
Images are displayed as if facing the patient, so the heart sits on the image's right.
Every label has its own trace, with a per-image strength so that some cases are subtle:

Cardiomegaly enlarged heart; Effusion fluid filling the lung base with a meniscus; Nodule small
round opacities; Mass one larger irregular opacity; Pneumothorax a lucent rim without lung
markings and a thin pleural line; Edema bilateral perihilar haze; Emphysema large hyperlucent lungs
with low flat diaphragms; Fibrosis peripheral reticular lines; Pleural_Thickening a bright band
along the lateral chest wall; Infiltration several faint patches; Pneumonia one soft lower-zone
patch; Consolidation a dense sharply bounded patch; Atelectasis a linear opacity with volume loss;
Hernia a retrocardiac air bubble with a fluid level.
AP views magnify the heart and are blurrier and noisier than PA views.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from hospitalnet.labels import LABEL_INDEX, NUM_LABELS


def _soft_inside(r: np.ndarray, width: float) -> np.ndarray:
    """~1 where r < 0, ~0 where r > 0, a smooth edge of ``width``."""
    return np.clip(0.5 - r / (2.0 * width), 0.0, 1.0)


def _ellipse_r(x, y, cx, cy, a, b):
    return np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2) - 1.0


def _blob(x, y, cx, cy, radius):
    return np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2.0 * radius**2)))


def _upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of (B, c, c) noise to (B, size, size): smooth random texture."""
    t = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def _smooth_noise(rng: np.random.Generator, b: int, size: int, cells: int) -> np.ndarray:
    return _upsample(rng.standard_normal((b, cells, cells)), size)


def _col(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)[:, None, None]


def _sel(cond: np.ndarray, a: float, b: float) -> np.ndarray:
    """Per-image choice as a float32 (B, 1, 1) column (np.where alone would upcast to float64)."""
    return _col(np.where(cond, a, b))


def render_batch(
    findings: np.ndarray,
    views: np.ndarray,
    anatomy_seeds: np.ndarray,
    rng: np.random.Generator,
    size: int,
) -> np.ndarray:
    """Render ``len(findings)`` phantoms of ``size`` px as uint8 (B, size, size).

    ``findings`` is a (B, 14) bool array of TRUE findings (the recorded labels carry noise),
    ``views`` "PA"/"AP" per image, ``anatomy_seeds`` one per image (a patient's follow-ups share
    it, so they share anatomy); ``rng`` drives everything that varies per image.
    """
    b = findings.shape[0]
    f = {name: findings[:, j] for name, j in LABEL_INDEX.items()}
    assert findings.shape[1] == NUM_LABELS

    # --- patient anatomy (shared across a patient's follow-ups) -------------------------------
    anat = np.array(
        [np.random.default_rng(int(s)).normal(0.0, 1.0, size=8) for s in anatomy_seeds],
        dtype=np.float32,
    ).reshape(b, 8)
    body_w = 0.82 + 0.05 * anat[:, 0]
    lung_w = 1.0 + 0.05 * anat[:, 1]
    lung_h = 1.0 + 0.06 * anat[:, 2]
    heart_scale = 1.0 + 0.06 * anat[:, 3]
    dia_level = 0.42 + 0.04 * anat[:, 4]
    rib_freq = 5.5 + 0.4 * anat[:, 5]

    ap = views == "AP"
    heart_scale = heart_scale * np.where(ap, 1.12, 1.0)
    heart_scale = heart_scale * np.where(f["Cardiomegaly"], rng.uniform(1.2, 1.45, b), 1.0)
    emph = f["Emphysema"]
    lung_w = lung_w * np.where(emph, rng.uniform(1.04, 1.12, b), 1.0)
    lung_h = lung_h * np.where(emph, rng.uniform(1.05, 1.15, b), 1.0)
    dia_level = dia_level + np.where(emph, rng.uniform(0.04, 0.1, b), 0.0)
    atel_side = rng.integers(0, 2, b)  # 0 = image-left lung, 1 = image-right lung

    # --- geometry: a small rotation and shift per image ---------------------------------------
    lin = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    gy, gx = np.meshgrid(lin, lin, indexing="ij")
    angle = _col(np.deg2rad(rng.normal(0.0, 2.0, b)))
    sx, sy = _col(rng.normal(0, 0.03, b)), _col(rng.normal(0, 0.03, b))
    x = np.cos(angle) * gx[None] - np.sin(angle) * gy[None] + sx
    y = np.sin(angle) * gx[None] + np.cos(angle) * gy[None] + sy

    body = _soft_inside(_ellipse_r(x, y, 0.0, 0.1, _col(body_w), 1.15), 0.03)
    img = 0.08 + 0.47 * body

    # Lungs: two ellipses, cut by the diaphragm domes.
    lw, lh = _col(lung_w), _col(lung_h)
    dia = _col(dia_level)
    lungs = []
    for side, cx in ((0, -0.36), (1, 0.36)):
        h = lh * (0.5 if side == 0 else 0.48)
        h = h * _sel(f["Atelectasis"] & (atel_side == side), 0.9, 1.0)
        r = _ellipse_r(x, y, cx * lw, -0.02, 0.25 * lw, h)
        dome = dia + 0.35 * (x - cx * lw) ** 2 * _sel(emph, 0.3, 1.0)
        dome = dome - _sel(f["Atelectasis"] & (atel_side == side), 0.06, 0.0)
        lungs.append(_soft_inside(r, 0.04) * _soft_inside(y - dome, 0.02))
    lung = np.maximum(lungs[0], lungs[1])
    texture = _smooth_noise(rng, b, size, 24)
    lucency = 0.36 + _sel(emph, 0.08, 0.0)
    img = img - lung * (lucency - 0.03 * texture)

    # Bones: spine and ribs (brighter over lungs), mediastinum.
    img = img + 0.16 * _soft_inside(np.abs(x) - 0.07, 0.02) * body
    phase = _col(rng.uniform(0, 2 * np.pi, b))
    ribs = np.clip(np.sin(2 * np.pi * (_col(rib_freq) * y * 0.5 - 0.9 * x**2) + phase), 0, 1) ** 6
    img = img + 0.1 * ribs * _soft_inside(np.abs(x) - 0.75 * _col(body_w), 0.05) * body
    img = img + 0.18 * _soft_inside(np.abs(x) - 0.1, 0.03) * _soft_inside(y - 0.35, 0.05) * body

    # Heart (image right), drawn over the lungs.
    hs = _col(heart_scale)
    heart = _soft_inside(_ellipse_r(x, y, 0.1 * hs, 0.27, 0.27 * hs, 0.2 * hs), 0.04)
    img = np.maximum(img, heart * 0.52 + (1 - heart) * img)

    def strength(lo: float, hi: float) -> np.ndarray:
        return _col(rng.uniform(lo, hi, b))

    def add(label: str, layer_fn) -> None:
        """Draw ``label``'s trace only on the images that carry it (most do not)."""
        idx = np.flatnonzero(f[label])
        if idx.size:
            img[idx] += layer_fn(idx, x[idx], y[idx]).astype(np.float32)

    # --- findings: every random parameter is drawn for the whole batch first, so the streams do
    # not depend on which images carry which label -------------------------------------------
    eff_side = rng.integers(0, 3, b)  # 0 left, 1 right, 2 both
    fluid_h = strength(0.08, 0.28)

    def effusion(i, x, y):
        out = np.zeros_like(x)
        for side, cx in ((0, -0.36), (1, 0.36)):
            on = _col((eff_side[i] == side) | (eff_side[i] == 2))
            level = dia[i] - fluid_h[i] - 0.15 * (x - cx * lw[i]) ** 2
            out += on * _soft_inside(level - y, 0.03) * lungs[side][i] * 0.3
        return out

    add("Effusion", effusion)

    lung_cx = _col(np.where(rng.integers(0, 2, b) == 0, -0.36, 0.36)) * lw
    nod_params = [
        (
            lung_cx + _col(rng.uniform(-0.12, 0.12, b)),
            _col(rng.uniform(-0.3, 0.25, b)),
            _col(rng.uniform(0.03, 0.045, b)),  # 1-1.5 px at the 64 px training size
            strength(0.12, 0.3),
        )
        for _ in range(2)
    ]
    add(
        "Nodule",
        lambda i, x, y: (
            sum(_blob(x, y, cx[i], cy[i], r[i]) * s[i] for cx, cy, r, s in nod_params) * lung[i]
        ),
    )

    m_cx, m_cy = lung_cx + _col(rng.uniform(-0.08, 0.08, b)), _col(rng.uniform(-0.25, 0.15, b))
    m_r, m_s = _col(rng.uniform(0.06, 0.12, b)), strength(0.12, 0.3)
    wobble_coarse = rng.standard_normal((b, 8, 8))

    def mass(i, x, y):
        wobble = 1 + 0.15 * _upsample(wobble_coarse[i], size)
        d = np.sqrt((x - m_cx[i]) ** 2 + (y - m_cy[i]) ** 2) * wobble - m_r[i]
        return _soft_inside(d, 0.015) * m_s[i] * np.maximum(lung[i], 0.3)

    add("Mass", mass)

    ptx_side = rng.integers(0, 2, b)
    shrink = strength(0.68, 0.88)

    def pneumothorax(i, x, y):
        side_lung = np.where(_col(ptx_side[i] == 0), lungs[0][i], lungs[1][i])
        cx = _col(np.where(ptx_side[i] == 0, -0.36, 0.36)) * lw[i]
        inner = _ellipse_r(x, y, cx, 0.05, 0.25 * lw[i] * shrink[i], 0.5 * lh[i] * shrink[i])
        rim = side_lung * (1 - _soft_inside(inner, 0.02))
        line = np.exp(-((inner / 0.02) ** 2)) * side_lung
        return -rim * (0.08 + 0.04 * np.clip(texture[i], -1, 1)) + 0.08 * line

    add("Pneumothorax", pneumothorax)

    edema_s = strength(0.1, 0.25)
    add(
        "Edema",
        lambda i, x, y: (
            (_blob(x, y, -0.2, 0.02, 0.18) + _blob(x, y, 0.2, 0.02, 0.18)) * lung[i] * edema_s[i]
        ),
    )

    # Coarse enough (14 cells across, thick lines) that the reticulation survives the 64 px
    # training size; finer versions were learned at chance there.
    fib_s = strength(0.14, 0.28)
    reticular_coarse = rng.standard_normal((b, 14, 14))
    add(
        "Fibrosis",
        lambda i, x, y: (
            (np.abs(_upsample(reticular_coarse[i], size)) < 0.35)
            * np.clip((np.abs(x) - 0.3 * lw[i]) / 0.3, 0, 1)
            * lung[i]
            * fib_s[i]
        ),
    )

    pt_s = strength(0.08, 0.2)
    add(
        "Pleural_Thickening",
        lambda i, x, y: (
            np.exp(-((np.abs(x) - 0.6 * lw[i]) ** 2) / (2 * 0.025**2))
            * _soft_inside(np.abs(y) - 0.45, 0.05)
            * body[i]
            * pt_s[i]
        ),
    )

    inf_params = [
        (
            _col(rng.choice([-0.36, 0.36], b)) * lw + _col(rng.uniform(-0.12, 0.12, b)),
            _col(rng.uniform(-0.3, 0.3, b)),
            _col(rng.uniform(0.04, 0.08, b)),
        )
        for _ in range(4)
    ]
    inf_s = strength(0.05, 0.13)
    add(
        "Infiltration",
        lambda i, x, y: (
            np.clip(sum(_blob(x, y, cx[i], cy[i], r[i]) for cx, cy, r in inf_params), 0, 1)
            * lung[i]
            * inf_s[i]
        ),
    )

    pn_cy, pn_r, pn_s = (
        _col(rng.uniform(0.1, 0.3, b)),
        _col(rng.uniform(0.09, 0.14, b)),
        strength(0.1, 0.22),
    )
    add("Pneumonia", lambda i, x, y: _blob(x, y, lung_cx[i], pn_cy[i], pn_r[i]) * lung[i] * pn_s[i])

    c_cx, c_cy = lung_cx + _col(rng.uniform(-0.05, 0.05, b)), _col(rng.uniform(-0.2, 0.25, b))
    c_r, c_s = _col(rng.uniform(0.08, 0.13, b)), strength(0.18, 0.32)
    add(
        "Consolidation",
        lambda i, x, y: (
            _soft_inside(np.sqrt((x - c_cx[i]) ** 2 + (y - c_cy[i]) ** 2) - c_r[i], 0.008)
            * lung[i]
            * c_s[i]
        ),
    )

    atel_cx = _col(np.where(atel_side == 0, -0.36, 0.36)) * lw
    tilt, at_s = _col(rng.uniform(-0.3, 0.3, b)), strength(0.1, 0.25)
    add(
        "Atelectasis",
        lambda i, x, y: (
            np.exp(-(((y - 0.2 - tilt[i] * (x - atel_cx[i])) / 0.015) ** 2))
            * _soft_inside(np.abs(x - atel_cx[i]) - 0.18, 0.03)
            * lung[i]
            * at_s[i]
        ),
    )

    h_r, h_s = _col(rng.uniform(0.09, 0.13, b)), strength(0.8, 1.4)

    def hernia(i, x, y):
        bubble = _soft_inside(np.sqrt((x - 0.05) ** 2 + (y - 0.33) ** 2) - h_r[i], 0.01)
        fluid = _soft_inside(0.35 - y, 0.005)
        return bubble * (-0.22 * fluid + 0.05 * (1 - fluid)) * h_s[i]

    add("Hernia", hernia)

    # --- acquisition: blur, exposure, gamma, noise --------------------------------------------
    for is_ap, sigma in ((False, 0.6), (True, 1.1)):
        sel = ap == is_ap
        if sel.any():
            img[sel] = ndimage.gaussian_filter(
                img[sel], sigma=(0, sigma * size / 128, sigma * size / 128)
            )
    gain = _col(rng.uniform(0.85, 1.15, b))
    offset = _col(rng.normal(0.0, 0.03, b))
    gamma = _col(rng.uniform(0.8, 1.25, b))
    img = np.clip(img * gain + offset, 0.0, 1.0) ** gamma
    noise_sd = _col(np.where(ap, rng.uniform(0.02, 0.045, b), rng.uniform(0.01, 0.03, b)))
    img = img + noise_sd * rng.standard_normal(img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
