"""The figure: a few scenes (rows) × every method's heatmap (columns), as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from benchmarks.quality.run import Row
from workers.explainers.postprocess import normalise

TILE = 112
LABEL = 30
GAP = 2

_ANCHORS = np.array(  # a perceptual dark-blue → teal → yellow → white ramp
    [
        [0.05, 0.03, 0.25],
        [0.15, 0.25, 0.65],
        [0.10, 0.60, 0.65],
        [0.55, 0.80, 0.30],
        [0.98, 0.90, 0.15],
        [1.00, 1.00, 0.85],
    ]
)


def colormap(values: np.ndarray) -> np.ndarray:
    """``(H, W)`` in [0, 1] -> ``(H, W, 3)`` colours in [0, 1]."""
    position = np.clip(values, 0, 1) * (len(_ANCHORS) - 1)
    low = np.floor(position).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (position - low)[..., None]
    return _ANCHORS[low] * (1 - frac) + _ANCHORS[low + 1] * frac


def outline(mask: Tensor) -> np.ndarray:
    """The object's boundary pixels ``(H, W)`` bool."""
    m = mask.float()[None, None]
    eroded = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return ((m - eroded)[0, 0] > 0).numpy()


def tile(image: Tensor, heat: Tensor | None, mask: Tensor) -> Image.Image:
    """The scene overlaid with the normalised map, the object's outline and the map's peak."""
    rgb = image.permute(1, 2, 0).clamp(0, 1).numpy()
    if heat is None:
        out = 0.25 * rgb + 0.75 * 0.5
    else:
        norm = normalise(heat.float()[None])[0].numpy()
        out = 0.35 * rgb + 0.65 * colormap(norm)
        peak = np.unravel_index(int(np.argmax(heat.numpy())), norm.shape)
    out[outline(mask)] = [1.0, 1.0, 1.0]
    picture = Image.fromarray((out * 255).astype(np.uint8)).resize((TILE, TILE), Image.NEAREST)
    if heat is not None:
        scale = TILE / norm.shape[0]
        y, x = (peak[0] + 0.5) * scale, (peak[1] + 0.5) * scale
        draw = ImageDraw.Draw(picture)
        draw.line([(x - 5, y), (x + 5, y)], fill=(255, 40, 200), width=2)
        draw.line([(x, y - 5), (x, y + 5)], fill=(255, 40, 200), width=2)
    return picture


def label_lines(name: str, width: int = 18) -> list[str]:
    """A method name on at most two lines, broken at an underscore."""
    if len(name) <= width or "_" not in name:
        return [name]
    cut = max((i for i, c in enumerate(name) if c == "_" and i < width), default=width - 1)
    return [name[: cut + 1], name[cut + 1 :]]


def draw_figure(path: Path, images: Tensor, masks: Tensor, rows: list[Row], count: int) -> None:
    """Rows = the first ``count`` scenes; columns = the scene, then each method in order."""
    columns = [("scene", None, "")] + [
        (r.name, r.maps, "" if r.maps is not None else r.status) for r in rows
    ]
    width = len(columns) * (TILE + GAP)
    sheet = Image.new("RGB", (width, LABEL + count * (TILE + GAP)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for col, (name, maps, status) in enumerate(columns):
        x = col * (TILE + GAP)
        for line, text in enumerate(label_lines(name)):
            draw.text((x + 2, 2 + 12 * line), text, fill=(0, 0, 0))
        for i in range(count):
            y = LABEL + i * (TILE + GAP)
            if name == "scene":
                rgb = (images[i].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
                picture = Image.fromarray(rgb).resize((TILE, TILE), Image.NEAREST)
            else:
                picture = tile(images[i], None if maps is None else maps[i], masks[i].cpu())
            sheet.paste(picture, (x, y))
            if status:
                draw.text((x + 30, y + TILE // 2 - 6), status, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def figure_rows(rows: list[Row], references: list[Row]) -> list[Row]:
    """Every method, then the oracle map for comparison."""
    oracle = [r for r in references if r.name.startswith("object mask")]
    return [*rows, Row("object mask", "reference", "reference", maps=oracle[0].maps)]
