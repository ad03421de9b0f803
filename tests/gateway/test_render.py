"""Heatmap rendering: colour map, resizing back to the upload, the three styles."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.render import (
    ALPHA_MIN,
    ALPHA_SPAN,
    TURBO_LUT,
    heatmap_from_bytes,
    overlay,
    render,
    resize_map,
    turbo,
)


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_turbo_runs_dark_blue_cyan_green_yellow_red_dark() -> None:
    """The shape of Turbo: dark ends, blue -> green -> red in between."""
    colours = turbo(np.array([0.0, 0.15, 0.5, 0.85, 1.0]))
    assert colours.shape == (5, 3)
    assert colours[0].max() < 0.2 and colours[-1].max() < 0.6  # dark ends
    assert [int(np.argmax(c)) for c in colours[1:4]] == [2, 1, 0]  # blue, green, red
    luminance = colours @ np.array([0.2126, 0.7152, 0.0722])
    assert luminance[2] > 0.8 > 0.2 > luminance[0]  # bright middle
    assert TURBO_LUT.shape == (256, 3) and TURBO_LUT.dtype == np.uint8
    np.testing.assert_array_equal(TURBO_LUT[0], np.rint(turbo(np.array(0.0)) * 255))


def test_resize_keeps_constants_and_the_layout() -> None:
    np.testing.assert_allclose(resize_map(np.full((7, 7), 0.3, np.float32), 50, 20), 0.3, atol=1e-6)
    split = np.zeros((8, 8), np.float32)
    split[:, :4] = 1
    wide = resize_map(split, 64, 16)
    assert wide.shape == (16, 64)
    assert (wide[:, :24] == 1).all() and (wide[:, 40:] == 0).all()
    assert (np.diff(wide[0]) <= 1e-6).all()  # monotone across the edge
    assert resize_map(np.array([[np.nan, 2.0]], np.float32), 2, 1).tolist() == [[0.0, 1.0]]


def test_gray_is_the_values_as_gray_levels() -> None:
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    gray = png_array(render(values, "gray", size=(4, 3)))
    np.testing.assert_array_equal(gray, np.rint(values * 255).astype(np.uint8))


def test_heatmap_style_is_the_colour_table() -> None:
    values = np.array([[0.0, 1.0]], np.float32)
    colours = png_array(render(values, "heatmap", size=(2, 1)))
    np.testing.assert_array_equal(colours[0], TURBO_LUT[[0, 255]])


def test_overlay_blends_with_an_opacity_growing_with_the_value() -> None:
    image = np.full((1, 2, 3), 100, np.uint8)
    values = np.array([[0.0, 1.0]], np.float32)
    blended = overlay(values, image)
    for x, value in enumerate((0.0, 1.0)):
        alpha = ALPHA_MIN + ALPHA_SPAN * value
        colour = TURBO_LUT[int(value * 255)]
        expected = np.rint(100 * (1 - alpha) + colour * alpha)
        np.testing.assert_array_equal(blended[0, x], expected)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    rendered = png_array(render(values, "overlay", size=(2, 1), image_png=buffer.getvalue()))
    np.testing.assert_array_equal(rendered, blended)
    with pytest.raises(ValueError, match="needs the uploaded image"):
        render(values, "overlay", size=(2, 1))


def test_stored_heatmap_bytes_are_float32_little_endian() -> None:
    values = np.arange(6, dtype="<f4") / 5
    np.testing.assert_array_equal(heatmap_from_bytes(values.tobytes(), 2, 3), values.reshape(2, 3))
    with pytest.raises(ValueError, match="expected 3x3"):
        heatmap_from_bytes(values.tobytes(), 3, 3)
