"""The embedded dataset: segmentation scenes composed from scikit-learn's handwritten digits.

No download: ``sklearn.datasets.load_digits`` ships 1,797 8x8 digits. Each scene is a
smooth two-colour background with sensor noise and one to three digits pasted at
random scale and position. Class 0 is background, class k+1 is digit k. A digit's
colour is random (never tied to its class) but keeps a minimum contrast against the
background under it, so that digit-vs-background is visible and the hard part is
which digit. The source digits are split into disjoint pools (pretrain, train, val,
test), so that val and test measure generalisation to unseen handwriting.

Everything is deterministic from a seed. Rendering is batched: each digit is placed
with one ``affine_grid``/``grid_sample`` over the whole set of scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer.classes import DIGITS_CLASSES

NUM_CLASSES = 11  # background + ten digits
CLASS_NAMES = DIGITS_CLASSES  # background, then the digits "0" to "9"
SCENES_VERSION = 1  # bump when scene composition changes, so cached scenes are remade
POOL_FRACTIONS = {"pretrain": 0.40, "train": 0.30, "val": 0.15, "test": 0.15}


@dataclass(frozen=True)
class SceneStyle:
    """How scenes look; the values were measured with prototypes (see ../shared/FINDINGS.md)."""

    scale_min: float = 2.5     # an 8-pixel digit becomes 20 to 28 pixels
    scale_max: float = 3.5
    min_contrast: float = 0.35  # mean |digit colour - background colour| over RGB
    noise: float = 0.03         # std of the background's pixel noise
    ink: float = 0.35           # a digit pixel is labeled where its ink exceeds this
    max_overlap: float = 0.2    # placement retries while boxes overlap more than this


def load_pools(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split the 1,797 source digits into disjoint pools: name -> (images [n,8,8] in [0,1], digits [n])."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    targets = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    pools, start = {}, 0
    for i, (name, fraction) in enumerate(POOL_FRACTIONS.items()):
        stop = len(order) if i == len(POOL_FRACTIONS) - 1 else start + round(fraction * len(order))
        pick = order[start:stop]
        pools[name] = (images[pick], targets[pick])
        start = stop
    return pools


def _backgrounds(n: int, size: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Linear gradients between two random colours, plus pixel noise: [n, 3, size, size]."""
    c0, c1 = rng.random((n, 3, 1, 1)), rng.random((n, 3, 1, 1))
    angle = rng.uniform(0, 2 * np.pi, n)
    axis = np.linspace(-0.5, 0.5, size)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    t = (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy) + 0.5
    t = np.clip(t, 0, 1)[:, None]
    out = c0 + (c1 - c0) * t + rng.normal(0, noise, (n, 3, size, size))
    return out.astype(np.float32)


def _contrasting_colour(under: np.ndarray, rng: np.random.Generator, min_contrast: float) -> np.ndarray:
    for _ in range(100):
        colour = rng.random(3)
        if np.abs(colour - under).mean() >= min_contrast:
            return colour
    return np.where(under > 0.5, 0.0, 1.0)  # the far corner of the colour cube always contrasts


def _paste(canvas: torch.Tensor, labels: torch.Tensor, glyphs: torch.Tensor, classes: torch.Tensor,
           scale: torch.Tensor, centre: torch.Tensor, colour: torch.Tensor, ink: float) -> None:
    """Paste one glyph into each canvas (in place): alpha-blend its colour, label its ink.

    glyphs [n,8,8] in [0,1]; scale [n] (glyph pixels -> canvas pixels); centre [n,2] as (x, y)
    in canvas pixels; colour [n,3]. Samples with scale 0 are skipped.
    """
    n, _, size, _ = canvas.shape
    active = scale > 0
    if not bool(active.any()):
        return
    zoom = size / (8.0 * scale.clamp_min(1e-6))
    # affine_grid maps output coords in [-1, 1] to input coords; centre in output-normalised units.
    cx = (2 * centre[:, 0] + 1) / size - 1
    cy = (2 * centre[:, 1] + 1) / size - 1
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = zoom, -cx * zoom
    theta[:, 1, 1], theta[:, 1, 2] = zoom, -cy * zoom
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    alpha = F.grid_sample(glyphs[:, None], grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False).clamp(0, 1)
    alpha = alpha * active[:, None, None, None]
    canvas.mul_(1 - alpha).add_(alpha * colour[:, :, None, None])
    ink_mask = alpha[:, 0] > ink
    labels[ink_mask] = classes[:, None, None].expand_as(labels)[ink_mask]


def make_scenes(pool: tuple[np.ndarray, np.ndarray], count: int, size: int, digits_min: int,
                digits_max: int, seed: int, style: SceneStyle = SceneStyle()) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose ``count`` scenes from a pool: images [count,3,size,size] float, labels [count,size,size] uint8."""
    glyphs_all, digits_all = pool
    rng = np.random.default_rng(seed)
    background = _backgrounds(count, size, rng, style.noise)
    canvas = torch.from_numpy(background.copy())
    labels = torch.zeros(count, size, size, dtype=torch.uint8)
    n_digits = rng.integers(digits_min, digits_max + 1, count)
    slots = []
    for k in range(digits_max):
        pick = rng.integers(0, len(glyphs_all), count)
        scale = rng.uniform(style.scale_min, style.scale_max, count)
        scale[n_digits <= k] = 0.0
        slots.append((pick, scale))
    # Placement and colour need a little per-scene logic (overlap and contrast checks).
    centres = np.zeros((digits_max, count, 2))
    colours = np.zeros((digits_max, count, 3))
    for i in range(count):
        boxes: list[tuple[float, float, float]] = []
        for k in range(n_digits[i]):
            half = 8 * slots[k][1][i] / 2
            for _attempt in range(20):
                c = rng.uniform(half * 0.8, size - half * 0.8, 2)
                if all(_overlap(c, half, b) <= style.max_overlap for b in boxes):
                    break
            boxes.append((c[0], c[1], half))
            centres[k, i] = c
            x, y = int(np.clip(c[0], 0, size - 1)), int(np.clip(c[1], 0, size - 1))
            colours[k, i] = _contrasting_colour(background[i, :, y, x], rng, style.min_contrast)
    for k, (pick, scale) in enumerate(slots):
        _paste(canvas, labels, torch.from_numpy(glyphs_all[pick]), torch.from_numpy(digits_all[pick] + 1).to(torch.uint8),
               torch.from_numpy(scale).float(), torch.from_numpy(centres[k]).float(),
               torch.from_numpy(colours[k]).float(), style.ink)
    return canvas.clamp_(0, 1), labels


def make_crops(pool: tuple[np.ndarray, np.ndarray], count: int, size: int, generator: np.random.Generator,
               style: SceneStyle = SceneStyle()) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-digit crops for the classifier pretraining: images [count,3,size,size], digit [count]."""
    glyphs_all, digits_all = pool
    pick = generator.integers(0, len(glyphs_all), count)
    scale = generator.uniform(style.scale_min, style.scale_max, count)
    centre = size / 2 + generator.uniform(-0.15, 0.15, (count, 2)) * size
    background = _backgrounds(count, size, generator, style.noise)
    colours = np.stack([_contrasting_colour(background[i, :, size // 2, size // 2], generator, style.min_contrast)
                        for i in range(count)])
    canvas = torch.from_numpy(background.copy())
    labels = torch.zeros(count, size, size, dtype=torch.uint8)
    _paste(canvas, labels, torch.from_numpy(glyphs_all[pick]), torch.from_numpy(digits_all[pick]).to(torch.uint8),
           torch.from_numpy(scale).float(), torch.from_numpy(centre).float(), torch.from_numpy(colours).float(),
           style.ink)
    return canvas.clamp_(0, 1), torch.from_numpy(digits_all[pick])


def _overlap(centre: np.ndarray, half: float, box: tuple[float, float, float]) -> float:
    """Intersection of two square boxes over the smaller box's area."""
    bx, by, bh = box
    w = max(0.0, min(centre[0] + half, bx + bh) - max(centre[0] - half, bx - bh))
    h = max(0.0, min(centre[1] + half, by + bh) - max(centre[1] - half, by - bh))
    return w * h / (4 * min(half, bh) ** 2)
