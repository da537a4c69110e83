"""A numpy-only generator of fundus-like 2D images with thin, branching, vessel-like trees.

It stands in for DRIVE (retinal vessel segmentation) where no real data can be downloaded: an RGB
image with a circular field of view (FOV), an orange-red background with smooth illumination, a
bright optic disc, a darker macula, and a vessel tree grown from the optic disc by curved random
walks that branch and thin out. Vessels are drawn with anti-aliased edges, darker than the
background (most in the green channel, as in real fundus photographs).

``difficulty`` in ``[0, 1]`` makes the task harder for later benchmarks: thinner vessels, lower
contrast (especially of thin vessels), more noise, stronger uneven illumination, and more
capillary-like branches near the resolution limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["create_vessel_image_2d"]

# background colour of a fundus photograph (R, G, B in [0, 1]) and how strongly each channel
# darkens under a vessel (haemoglobin absorbs green most)
_BACKGROUND = np.array([0.78, 0.40, 0.20])
_VESSEL_ABSORPTION = np.array([0.35, 1.0, 0.75])


def _draw_segment(cov: np.ndarray, depth: np.ndarray, p0, p1, radius: float, contrast: float) -> None:
    """Rasterize one thick line segment with anti-aliased edges into ``cov`` and ``depth`` (in place).

    Coverage of a pixel centre at distance ``d`` from the segment is ``clip(radius - d + 0.5, 0, 1)``
    (a box-filtered edge); ``depth`` keeps the vessel contrast of the most covering segment.
    """
    h, w = cov.shape
    (y0, x0), (y1, x1) = p0, p1
    pad = radius + 1.0
    r0, r1 = max(int(math.floor(min(y0, y1) - pad)), 0), min(int(math.ceil(max(y0, y1) + pad)) + 1, h)
    c0, c1 = max(int(math.floor(min(x0, x1) - pad)), 0), min(int(math.ceil(max(x0, x1) + pad)) + 1, w)
    if r0 >= r1 or c0 >= c1:
        return
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    dy, dx = y1 - y0, x1 - x0
    seg2 = dy * dy + dx * dx
    t = np.zeros_like(yy) if seg2 == 0 else np.clip(((yy - y0) * dy + (xx - x0) * dx) / seg2, 0.0, 1.0)
    dist = np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))
    c = np.clip(radius - dist + 0.5, 0.0, 1.0)
    sub_cov, sub_depth = cov[r0:r1, c0:c1], depth[r0:r1, c0:c1]
    np.maximum(sub_depth, np.where(c > 0, contrast, 0.0), out=sub_depth)
    np.maximum(sub_cov, c, out=sub_cov)


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, n_waves: int = 4) -> np.ndarray:
    """Low-frequency texture in about ``[-1, 1]``: a sum of a few random plane waves."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    field = np.zeros(shape)
    for _ in range(n_waves):
        theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(0.5, 2.5) / max(h, w), rng.uniform(0, 2 * np.pi)
        field += np.cos(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    return field / n_waves


def create_vessel_image_2d(
    size: int | Sequence[int] = 128,
    difficulty: float = 0.0,
    random_state: np.random.Generator | int | None = None,
    fov_radius: float = 0.47,
    max_segments: int = 6000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one fundus-like image, its vessel label and its field-of-view mask.

    Args:
        size: image size, ``int`` for square or ``(height, width)`` (e.g. ``(584, 565)`` as DRIVE).
        difficulty: ``0`` (clear, wide, high-contrast vessels) to ``1`` (thin, faint, noisy).
        random_state: a ``numpy.random.Generator`` or a seed; the output is a pure function of it.
        fov_radius: radius of the circular FOV as a fraction of ``min(height, width)``.
        max_segments: cap on the number of drawn segments (keeps generation time bounded).

    Returns:
        ``(image, label, fov)``, all indexed ``(row, column)`` like a PNG: ``image`` is ``uint8``
        ``(H, W, 3)`` RGB, ``label`` and ``fov`` are ``uint8`` ``(H, W)`` with values ``{0, 1}``;
        the label is zero outside the FOV.
    """
    rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))  # type: ignore[index]
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}.")
    d = float(difficulty)
    scale = min(h, w)
    cy, cx, fov_r = (h - 1) / 2, (w - 1) / 2, fov_radius * scale
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rr = np.hypot(yy - cy, xx - cx)
    fov_cov = np.clip(fov_r - rr + 0.5, 0.0, 1.0)

    # optic disc on the nasal side (left or right eye), macula on the temporal side
    side = 1.0 if rng.random() < 0.5 else -1.0
    od = (cy + rng.normal(0, 0.03) * scale, cx + side * rng.uniform(0.20, 0.26) * scale)
    macula = (cy + rng.normal(0, 0.02) * scale, cx - side * rng.uniform(0.05, 0.10) * scale)
    temporal = math.pi if side > 0 else 0.0  # direction from the disc toward the macula

    # vessel geometry in pixels; a DRIVE-size (565 px) image gets ~9 px main vessels
    w_main = max(1.6, 0.017 * scale * (1.0 - 0.4 * d))
    w_min = max(0.45, (0.9 - 0.4 * d) * max(1.0, scale / 256))
    step = max(1.0, 0.012 * scale)
    contrast = 0.55 * (1.0 - 0.6 * d)
    branch_prob = 0.07 + 0.05 * d

    cov, depth = np.zeros((h, w)), np.zeros((h, w))
    # four arcades leave the disc: upper/lower temporal (sweeping around the macula) and upper/lower nasal
    stack = []
    for vertical in (-1.0, 1.0):
        # vertical = -1 is up (rows grow downward); the sign flips with the side of the disc
        stack.append((od, temporal - side * vertical * rng.uniform(0.5, 0.8), w_main, temporal, 0))
        stack.append((od, temporal + math.pi + side * vertical * rng.uniform(0.6, 1.0), w_main * 0.85, None, 0))
    n_segments = 0
    while stack and n_segments < max_segments:
        pos, angle, width, pull, level = stack.pop()
        while width >= w_min and n_segments < max_segments:
            # arcades bend back toward the temporal horizon, others wander
            angle += rng.normal(0.0, 0.14 + 0.04 * level)
            if pull is not None:
                angle += 0.04 * math.sin(pull - angle)
            new = (pos[0] + step * math.sin(angle), pos[1] + step * math.cos(angle))
            if math.hypot(new[0] - cy, new[1] - cx) > fov_r - 0.5 * width:
                break
            # thin vessels are also fainter: their contrast is scaled down
            c = contrast * (0.45 + 0.55 * min(1.0, width / w_main)) * (1.0 - 0.35 * d * (width < 1.5))
            _draw_segment(cov, depth, pos, new, 0.5 * width, c)
            n_segments += 1
            pos = new
            width *= 0.994
            if rng.random() < branch_prob and width > 1.3 * w_min:
                child_w = width * rng.uniform(0.55, 0.8)
                turn = rng.choice((-1.0, 1.0)) * rng.uniform(0.45, 1.1)
                stack.append((pos, angle + turn, child_w, None, level + 1))
                width *= 0.92  # the parent thins after giving off a branch

    # background: colour x illumination (gradient + vignetting + texture), optic disc, macula
    grad_dir = rng.uniform(0, 2 * np.pi)
    illum_amp = 0.12 + 0.25 * d
    illum = (
        1.0
        + illum_amp * ((xx - cx) * np.cos(grad_dir) + (yy - cy) * np.sin(grad_dir)) / scale
        - 0.35 * (rr / fov_r) ** 2
        + (0.04 + 0.06 * d) * _smooth_field((h, w), rng)
    )
    color = _BACKGROUND * rng.uniform(0.9, 1.1, size=3)
    image = color[None, None, :] * illum[..., None]
    od_r, mac_r = 0.07 * scale, 0.09 * scale
    disc = np.exp(-(((yy - od[0]) ** 2 + (xx - od[1]) ** 2) / (2 * od_r**2)))
    mac = np.exp(-(((yy - macula[0]) ** 2 + (xx - macula[1]) ** 2) / (2 * mac_r**2)))
    image += disc[..., None] * np.array([0.25, 0.35, 0.25])
    image *= 1.0 - 0.25 * mac[..., None]
    # vessels darken the background multiplicatively, with the anti-aliased coverage as alpha
    image *= 1.0 - (cov * depth)[..., None] * _VESSEL_ABSORPTION[None, None, :]
    image += rng.normal(0.0, 0.008 + 0.05 * d, size=image.shape)
    # outside the FOV: (nearly) black, as in fundus cameras
    image = image * fov_cov[..., None] + 0.01 * (1 - fov_cov[..., None])
    image = np.clip(image, 0.0, 1.0)

    fov = (fov_cov >= 0.5).astype(np.uint8)
    label = ((cov >= 0.5) & (fov > 0)).astype(np.uint8)
    return np.rint(image * 255).astype(np.uint8), label, fov
