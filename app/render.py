"""Heatmap PNGs at the upload's size: ``overlay``, ``heatmap`` (colour) and ``gray``.

The stored heatmap is at the model's input resolution and covers the whole upload (the worker
resizes without cropping), so it maps back onto the upload by a plain bilinear resize.

Colours come from Turbo (Mikhailov, Google AI blog 2019), an improved rainbow map, through its
published 5th-degree polynomial approximation per channel, evaluated once into a 256-entry table.
The overlay blends the colour map over the image with an opacity that grows with the value,
``alpha = 0.2 + 0.5 * s``, so that unimportant regions stay readable.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image

Style = Literal["overlay", "heatmap", "gray"]
STYLES: tuple[Style, ...] = ("overlay", "heatmap", "gray")

ALPHA_MIN = 0.2
ALPHA_SPAN = 0.5

_TURBO_COEFFS = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)
"""Turbo polynomial coefficients, one row per channel (R, G, B), constant term first."""


def turbo(x: np.ndarray) -> np.ndarray:
    """Turbo colours in [0, 1] for values ``x`` in [0, 1]: shape ``x.shape + (3,)``."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    powers = np.stack([x**k for k in range(6)], axis=-1)
    return np.clip(powers @ _TURBO_COEFFS.T, 0.0, 1.0)


TURBO_LUT: np.ndarray = np.rint(turbo(np.linspace(0.0, 1.0, 256)) * 255.0).astype(np.uint8)
"""(256, 3) uint8 colour table."""


def heatmap_from_bytes(data: bytes, height: int, width: int) -> np.ndarray:
    """The stored float32 little-endian heatmap as a (height, width) array."""
    values = np.frombuffer(data, dtype="<f4")
    if values.size != height * width:
        raise ValueError(
            f"heatmap holds {values.size} floats, expected {height}x{width} = {height * width}"
        )
    return values.reshape(height, width).astype(np.float32)


def resize_map(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a (h, w) map to (height, width), values kept in [0, 1]."""
    field = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    if field.shape == (height, width):
        resized = field
    else:
        image = Image.fromarray(field).resize((width, height), Image.Resampling.BILINEAR)
        resized = np.asarray(image, dtype=np.float32)
    return np.clip(resized, 0.0, 1.0)


def colorize(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 Turbo colours."""
    return TURBO_LUT[np.rint(values * 255.0).astype(np.intp)]


def render(
    heatmap: np.ndarray,
    style: Style,
    *,
    size: tuple[int, int],
    image_png: bytes | None = None,
) -> bytes:
    """The heatmap as a PNG of ``size`` (width, height) in ``style``.

    ``image_png`` (the RGB upload) is needed for ``overlay`` only.
    """
    width, height = size
    values = resize_map(heatmap, width, height)
    if style == "gray":
        pixels = np.rint(values * 255.0).astype(np.uint8)
        out = Image.fromarray(pixels)
    elif style == "heatmap":
        out = Image.fromarray(colorize(values))
    elif style == "overlay":
        if image_png is None:
            raise ValueError("the overlay style needs the uploaded image")
        out = Image.fromarray(overlay(values, _decode_rgb(image_png, width, height)))
    else:
        raise ValueError(f"unknown style {style!r}")
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def overlay(values: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Blend Turbo colours of ``values`` (H, W) over ``rgb`` (H, W, 3) uint8."""
    alpha = (ALPHA_MIN + ALPHA_SPAN * values)[..., None]
    blended = rgb.astype(np.float32) * (1.0 - alpha) + colorize(values).astype(np.float32) * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _decode_rgb(png: bytes, width: int, height: int) -> np.ndarray:
    with Image.open(io.BytesIO(png), formats=("PNG",)) as image:
        rgb = image.convert("RGB")
        if rgb.size != (width, height):
            rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)
