"""Synthetic scenes for the demo model: one shape on a cluttered background.

Each scene is drawn in one vectorised pass over the whole batch, from a ``torch.Generator``
seeded with ``seed`` (same ``n``, ``seed`` and ``size`` → the same scenes, bit for bit):

1. background: a linear gradient between two random colours in a random direction, plus a
   low-frequency colour field (a random 4×4 grid, upsampled);
2. clutter: three straight strokes (1.6–4 px wide, random colours and ends), which are not
   class shapes;
3. the object, drawn last so that its mask is exactly its visible pixels: a shape of
   :data:`CLASSES`, radius 11–26 px (at 112 px), random rotation and position, fully inside
   the image, with a colour on the other side of the background's local brightness and a
   slight shading;
4. Gaussian pixel noise (σ 0.01–0.06), then clipping to [0, 1].

Training uses seeds below 1_000_000; evaluation uses ``1_000_000 + i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "cross", "ring")
EVAL_SEED = 1_000_000
"""First seed of held-out scenes; training seeds are below it."""

N_STROKES = 3
STYLES = ("plain", "textured", "crowded")
RADIUS = {"plain": (11.0, 26.0), "textured": (7.0, 15.0), "crowded": (11.0, 20.0)}
"""Object radius range at 112 px, per style."""
DISTRACTORS = 3
DISTRACTOR_RADIUS = (5.0, 8.0)
"""``crowded`` scenes: shapes of the other classes, smaller than the object (at 112 px)."""
_LUMA = torch.tensor([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class Scenes:
    """A batch of scenes and what is known about their objects."""

    images: Tensor
    """``(n, 3, size, size)`` float32 in [0, 1]."""
    labels: Tensor
    """``(n,)`` long, indices into :data:`CLASSES`."""
    masks: Tensor
    """``(n, size, size)`` bool, the object's pixels."""
    boxes: Tensor
    """``(n, 4)`` long ``(x0, y0, x1, y1)``, exclusive ends: the masks' bounding boxes."""
    distractors: Tensor | None = None
    """``(n, size, size)`` bool, the visible pixels of the other classes' shapes
    (``crowded`` scenes only)."""


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates, x ``(1, 1, size)`` and y ``(1, size, 1)`` (they broadcast)."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    return coords.view(1, 1, size), coords.view(1, size, 1)


def _background(n: int, size: int, g: torch.Generator) -> Tensor:
    """Colour gradients plus a low-frequency colour field, ``(n, 3, size, size)``."""
    start, end = torch.rand((n, 3), generator=g), torch.rand((n, 3), generator=g)
    angle = _uniform(g, (n,), 0.0, 2 * math.pi)
    x, y = _grid(size)
    t = (x - size / 2) * angle.cos().view(-1, 1, 1) + (y - size / 2) * angle.sin().view(-1, 1, 1)
    t = (t / size + 0.5).clamp(0, 1).unsqueeze(1)  # (n, 1, S, S)
    gradient = start.view(n, 3, 1, 1) + (end - start).view(n, 3, 1, 1) * t
    field = _uniform(g, (n, 3, 4, 4), -0.15, 0.15)
    field = F.interpolate(field, size=(size, size), mode="bicubic", align_corners=False)
    return gradient + field


def _strokes(images: Tensor, g: torch.Generator) -> Tensor:
    """Paint :data:`N_STROKES` straight strokes on every image."""
    n, _, size, _ = images.shape
    ends = torch.rand((n, N_STROKES, 2, 2), generator=g) * size  # (n, k, end, xy)
    half_width = _uniform(g, (n, N_STROKES), 0.8, 2.0) * size / 112
    colours = torch.rand((n, N_STROKES, 3), generator=g)
    x, y = _grid(size)
    x, y = x.unsqueeze(0), y.unsqueeze(0)  # (1, 1, 1, S), (1, 1, S, 1)
    start, direction = ends[:, :, 0], ends[:, :, 1] - ends[:, :, 0]  # (n, k, 2)
    length = direction.norm(dim=-1).clamp_min(1e-3)
    ex, ey = (
        (direction[..., 0] / length)[..., None, None],
        (direction[..., 1] / length)[..., None, None],
    )
    sx, sy = start[..., 0, None, None], start[..., 1, None, None]
    # Coordinates along the stroke and across it: sums of a row and a column term.
    along = (x * ex - sx * ex) + (y * ey - sy * ey)  # (n, k, S, S)
    across = (x * ey - sx * ey) - (y * ex - sy * ex)
    width = half_width[..., None, None]
    on_stroke = (
        (across.abs() < width) & (along > -width) & (along < length[..., None, None] + width)
    )
    for k in range(N_STROKES):
        images = torch.where(on_stroke[:, k, None], colours[:, k, :, None, None], images)
    return images


def _shape_masks(
    labels: Tensor, size: int, g: torch.Generator, radii: tuple[float, float]
) -> Tensor:
    """Object masks ``(n, S, S)`` bool: every class evaluated, the label's one kept."""
    n = labels.shape[0]
    scale = size / 112
    radius = _uniform(g, (n,), *radii) * scale
    margin = 1.15 * radius + 1.0
    cx = margin + torch.rand((n,), generator=g) * (size - 2 * margin)
    cy = margin + torch.rand((n,), generator=g) * (size - 2 * margin)
    theta = _uniform(g, (n,), 0.0, 2 * math.pi)
    x, y = _grid(size)
    dx, dy = x - cx.view(-1, 1, 1), y - cy.view(-1, 1, 1)
    cos, sin = theta.cos().view(-1, 1, 1), theta.sin().view(-1, 1, 1)
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    r = radius.view(-1, 1, 1)
    masks = torch.empty((n, size, size), dtype=torch.bool)
    for index, shape in enumerate(_SHAPES):  # each image evaluates its own class only
        rows = (labels == index).nonzero()[:, 0]
        if rows.numel():
            masks[rows] = shape(u[rows], v[rows], r[rows])
    return masks


def _disc(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    return u**2 + v**2 < r**2


def _square(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) < 0.8 * r


def _triangle(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Equilateral: circumradius 1.1 r, inradius 0.55 r."""
    inside = v < 0.55 * r
    for k in (1, 2):
        a = math.pi / 2 + 2 * math.pi * k / 3
        inside &= u * math.cos(a) + v * math.sin(a) < 0.55 * r
    return inside


def _cross(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    u, v, arm = u.abs(), v.abs(), 0.3 * r
    return ((u < arm) & (v < r)) | ((v < arm) & (u < r))


def _ring(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    distance2 = u**2 + v**2
    return (distance2 < r**2) & (distance2 > (0.55 * r) ** 2)


_SHAPES = (_disc, _square, _triangle, _cross, _ring)


def _boxes(masks: Tensor) -> Tensor:
    """Bounding boxes ``(n, 4)`` ``(x0, y0, x1, y1)`` with exclusive ends."""
    size = masks.shape[-1]
    cols, rows = masks.any(dim=1), masks.any(dim=2)  # (n, W), (n, H)
    x0 = cols.int().argmax(dim=1)
    x1 = size - cols.flip(1).int().argmax(dim=1)
    y0 = rows.int().argmax(dim=1)
    y1 = size - rows.flip(1).int().argmax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1).long()


def _texture(n: int, size: int, g: torch.Generator) -> Tensor:
    """Two colour gratings per image (period 4–16 px at 112 px, any orientation), ±0.12."""
    x, y = _grid(size)
    texture = torch.zeros(n, 3, size, size)
    for _ in range(2):
        period = _uniform(g, (n,), 4.0, 16.0) * size / 112
        angle = _uniform(g, (n,), 0.0, math.pi)
        phase = _uniform(g, (n,), 0.0, 2 * math.pi)
        along = x * angle.cos().view(-1, 1, 1) + y * angle.sin().view(-1, 1, 1)
        wave = torch.sin(2 * math.pi * along / period.view(-1, 1, 1) + phase.view(-1, 1, 1))
        colour = _uniform(g, (n, 3), -0.12, 0.12)
        texture += colour.view(n, 3, 1, 1) * wave.unsqueeze(1)
    return texture


def make_scenes(n: int, seed: int, size: int = 112, style: str = "plain") -> Scenes:
    """``n`` scenes drawn from ``seed`` (see the module docstring).

    ``style="textured"`` (the second evaluation model's scenes): smaller objects (radius
    7–15 px at 112 px: 1–6 % of the image), the background overlaid with two colour gratings,
    and twice the strokes. ``style="crowded"``: before the object, :data:`DISTRACTORS` shapes
    of the other classes (radius 5–8 px) are painted anywhere, the object is larger (radius
    11–20 px) and its class is the label; only the object is in ``masks``.
    """
    if style not in STYLES:
        raise ValueError(f"style is one of {STYLES}, not {style!r}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    background = _background(n, size, g)
    if style == "textured":
        background = _strokes(background + _texture(n, size, g), g)
    images = _strokes(background, g)
    distractors = None
    if style == "crowded":
        distractors = torch.zeros(n, size, size, dtype=torch.bool)
        for _ in range(DISTRACTORS):
            other = (labels + torch.randint(1, len(CLASSES), (n,), generator=g)) % len(CLASSES)
            distractor = _shape_masks(other, size, g, DISTRACTOR_RADIUS)
            images, distractors = _paint(images, distractor, g), distractors | distractor
    masks = _shape_masks(labels, size, g, RADIUS[style])
    images = _paint(images, masks, g)
    sigma = _uniform(g, (n, 1, 1, 1), 0.01, 0.06)
    images = images + sigma * torch.randn(images.shape, generator=g)
    if distractors is not None:
        distractors &= ~masks
    return Scenes(images.clamp(0, 1), labels, masks, _boxes(masks), distractors)


def _paint(images: Tensor, masks: Tensor, g: torch.Generator) -> Tensor:
    """Fill ``masks`` with a shaded colour on the other side of the local background
    brightness."""
    n, _, size, _ = images.shape
    weights = masks.unsqueeze(1).float()
    local = (images * weights).sum((2, 3)) / weights.sum((2, 3)).clamp_min(1)  # (n, 3)
    dark_background = (local @ _LUMA < 0.5).float().view(n, 1)
    colour = torch.rand((n, 3), generator=g) * 0.55 + 0.45 * dark_background
    shade_angle = _uniform(g, (n,), 0.0, 2 * math.pi)
    x, y = _grid(size)
    shade = (x - size / 2) * shade_angle.cos().view(-1, 1, 1) + (
        y - size / 2
    ) * shade_angle.sin().view(-1, 1, 1)
    shade = (0.1 * shade / size).unsqueeze(1)
    return torch.where(masks.unsqueeze(1), colour.view(n, 3, 1, 1) + shade, images)
