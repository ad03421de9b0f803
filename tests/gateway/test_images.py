"""Upload decoding: every mode becomes 8-bit RGB with the right values; bad files are refused."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.images import DecodedImage, check_media_type, decode_upload
from app.problems import ProblemError
from tests.gateway.test_bad_input import bomb_png, noise_png

LIMIT = 40_000_000


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(data: bytes, content_type: str | None = "image/png") -> tuple[DecodedImage, np.ndarray]:
    decoded = decode_upload(data, content_type, max_pixels=LIMIT)
    with Image.open(io.BytesIO(decoded.png)) as stored:
        assert stored.format == "PNG" and stored.mode == "RGB"
        assert stored.size == (decoded.width, decoded.height)
        return decoded, np.asarray(stored)


def test_grayscale_and_bilevel_become_gray_rgb() -> None:
    _, gray = decode(encode(Image.new("L", (3, 2), 91)))
    assert (gray == 91).all()
    bits = Image.new("1", (3, 2), 0)
    bits.putpixel((1, 0), 1)
    _, rgb = decode(encode(bits))
    assert rgb[0, 1].tolist() == [255, 255, 255] and rgb[0, 0].tolist() == [0, 0, 0]


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    decoded, rgb = decode(encode(image))
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert decoded.source_mode.startswith("I")


def test_float_grayscale_in_unit_range_is_scaled() -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    _, rgb = decode(encode(Image.fromarray(values), "TIFF"), "image/tiff")
    assert rgb[0, :, 1].tolist() == [0, 128, 255]


def test_transparency_is_composited_over_white() -> None:
    rgba = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    rgba.putpixel((3, 0), (200, 10, 10, 255))
    _, rgb = decode(encode(rgba))
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [0, 0, 0]
    assert abs(int(rgb[0, 2, 0]) - 127) <= 1
    assert rgb[0, 3].tolist() == [200, 10, 10]
    _, gray_alpha = decode(encode(Image.new("LA", (2, 2), (30, 0))))
    assert (gray_alpha == 255).all()


def test_palette_keeps_its_colours_and_its_transparent_index() -> None:
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    for x in range(3):
        palette.putpixel((x, 0), x)
    _, rgb = decode(encode(palette))
    assert rgb[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    _, keyed = decode(encode(palette, transparency=1))
    assert keyed[0].tolist() == [[255, 0, 0], [255, 255, 255], [0, 0, 255]]


def test_cmyk_is_converted() -> None:
    cmyk = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (0, 0, 0, 255))
    _, rgb = decode(encode(cmyk, "TIFF"), "image/tiff")
    assert rgb[0].tolist() == [[255, 255, 255], [0, 0, 0]]


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (4, 2), (0, 0, 255))
    for y in range(2):
        image.putpixel((0, y), (255, 0, 0))  # the left column is red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    decoded, rgb = decode(encode(image, exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == (2, 4)
    assert rgb[0].tolist() == [[255, 0, 0], [255, 0, 0]]  # ...is now the top row
    assert (rgb[1:] == [0, 0, 255]).all()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_other_formats_decode(fmt: str) -> None:
    decoded, rgb = decode(encode(Image.new("RGB", (6, 5), (250, 250, 250)), fmt), None)
    assert (decoded.width, decoded.height) == (6, 5) and decoded.source_format == fmt
    assert (np.abs(rgb.astype(int) - 250) <= 3).all()


def test_refusals() -> None:
    cases = [
        (b"", 400, "empty"),
        (b"GIF89a but not really", 400, ""),
        (noise_png(32, 32)[:300], 400, "truncated"),
        (bomb_png(30_000, 30_000), 413, "pixels"),
        (bomb_png(8_000, 6_000), 413, "48,000,000 pixels"),
    ]
    for data, status, needle in cases:
        with pytest.raises(ProblemError) as caught:
            decode_upload(data, "image/png", max_pixels=LIMIT)
        assert caught.value.status == status and needle in caught.value.detail


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        (None, True),
        ("application/octet-stream", True),
        ("image/jpeg", True),
        ("IMAGE/PNG; charset=binary", True),
        ("text/plain", False),
        ("image/svg+xml", False),
        ("application/json", False),
    ],
)
def test_declared_media_types(content_type: str | None, ok: bool) -> None:
    if ok:
        check_media_type(content_type)
    else:
        with pytest.raises(ProblemError) as caught:
            check_media_type(content_type)
        assert caught.value.status == 415


def test_an_upright_rgb_png_is_stored_as_uploaded() -> None:
    rng = np.random.default_rng(5)
    data = encode(Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)))
    decoded, _ = decode(data)
    assert decoded.png == data  # no re-encode: the worker reads exactly what was sent
    rgba = encode(Image.new("RGBA", (3, 3), (10, 20, 30, 0)))
    assert decode(rgba)[0].png != rgba  # converted: composited over white
