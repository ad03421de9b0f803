"""Pixel sizes given at 224 px (the papers' input), scaled to another input's shorter side.

A method's pixel-sized default (a blur σ, a grid pitch, a jitter) is its paper's value at
224 px times ``short_side / 224``; a value the client gives is used as it is.
"""

from __future__ import annotations

REFERENCE_SIDE = 224
"""The input side at which the papers give their pixel sizes."""


def at_input(pixels_at_224: float, short_side: int) -> float:
    """``pixels_at_224`` scaled to an input whose shorter side is ``short_side``."""
    return pixels_at_224 * short_side / REFERENCE_SIDE


def at_input_int(pixels_at_224: int, short_side: int, minimum: int = 0) -> int:
    """:func:`at_input` rounded to whole pixels, at least ``minimum``."""
    return max(minimum, round(pixels_at_224 * short_side / REFERENCE_SIDE))
