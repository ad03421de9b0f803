"""Upload decoding: check the declared type, refuse bombs before decoding, convert to RGB PNG.

The worker receives every image as an 8-bit RGB PNG (fast compression) at the upload's size,
after EXIF orientation; it resizes it to the model input itself. Conversions, so that no mode
reaches a worker in a form it must guess about:

* grayscale, bilevel, CMYK, YCbCr, LAB, HSV: Pillow's conversion to RGB;
* 16-bit and 32-bit integer grayscale: scaled by 255/65535 (Pillow would clip at 255);
* float grayscale: values taken as [0, 1] if they lie there, else clipped to [0, 255];
* transparency (RGBA, LA, palette with transparency, colour keys): composited over white, as
  a browser shows the image on a white page.

Pillow identifies the format from the bytes (restricted to the formats below: no plugin that
shells out, such as EPS). ``Image.open`` reads only the header, so the pixel count is checked
against the limit before any pixel is decoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from app.problems import ProblemError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "MPO")
"""Pillow formats the gateway decodes (those this Pillow build has)."""

MEDIA_TYPES = frozenset(
    {
        "image/png",
        "image/x-png",
        "image/apng",
        "image/jpeg",
        "image/jpg",
        "image/pjpeg",
        "image/webp",
        "image/gif",
        "image/bmp",
        "image/x-bmp",
        "image/x-ms-bmp",
        "image/tiff",
        "image/tif",
    }
)
"""Declared content types accepted for an upload (besides none and application/octet-stream)."""

_SUPPORTED = "PNG, JPEG, WebP, GIF, BMP or TIFF"
_TRANSPARENT_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})


@dataclass(frozen=True)
class DecodedImage:
    """An upload ready for the worker."""

    png: bytes
    """8-bit RGB PNG."""
    width: int
    height: int
    source_format: str
    source_mode: str


def check_media_type(content_type: str | None) -> None:
    """Refuse a declared content type that is not an image format we decode (415)."""
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("", "application/octet-stream") or media in MEDIA_TYPES:
        return
    if media.startswith("image/"):
        detail = f"image type {media!r} is not supported; send {_SUPPORTED}"
    else:
        detail = f"the upload must be an image ({_SUPPORTED}), not {media!r}"
    raise ProblemError(415, detail, kind="unsupported-media-type")


def decode_upload(data: bytes, content_type: str | None, *, max_pixels: int) -> DecodedImage:
    """Validate and convert an upload; raises ``ProblemError`` (400, 413, 415) for bad input.

    CPU-bound (decode + PNG encode): call it from a worker thread.
    """
    check_media_type(content_type)
    if not data:
        raise ProblemError(400, "the uploaded file is empty (0 bytes)", kind="invalid-image")
    image = _open(data)
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, max_pixels)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ProblemError(
            400, f"the {image.format} image is truncated or corrupt: {exc}", kind="invalid-image"
        ) from exc
    source_mode, source_format = image.mode, str(image.format or "")
    if _is_upright_rgb_png(image):  # already what the worker reads: skip the re-encode
        return DecodedImage(data, width, height, source_format, source_mode)
    image = _apply_orientation(image)
    rgb = to_rgb(image)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=1)
    return DecodedImage(
        png=buffer.getvalue(),
        width=rgb.width,
        height=rgb.height,
        source_format=source_format,
        source_mode=source_mode,
    )


def _formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin once (MPO, WebP, TIFF are not preloaded)
    return tuple(name for name in FORMATS if name in Image.OPEN)


def _open(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=_formats())
    except Image.DecompressionBombError as exc:
        raise ProblemError(
            413, f"the image declares too many pixels: {exc}", kind="payload-too-large"
        ) from exc
    except UnidentifiedImageError as exc:
        raise ProblemError(
            400,
            f"the upload is not an image in a supported format ({_SUPPORTED})",
            kind="invalid-image",
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ProblemError(
            400, f"the image header is corrupt: {exc}", kind="invalid-image"
        ) from exc
    if image.width <= 0 or image.height <= 0:
        raise ProblemError(400, f"the image has no pixels ({image.size})", kind="invalid-image")
    return image


def _too_many_pixels(width: int, height: int, max_pixels: int) -> ProblemError:
    return ProblemError(
        413,
        f"the image is {width}x{height} = {width * height:,} pixels, more than the "
        f"{max_pixels:,} accepted; scale it down",
        kind="payload-too-large",
    )


def _is_upright_rgb_png(image: Image.Image) -> bool:
    """An 8-bit RGB PNG without transparency or an EXIF rotation: stored as uploaded."""
    if image.format != "PNG" or image.mode != "RGB" or image.has_transparency_data:
        return False
    try:
        return image.getexif().get(ExifTags.Base.Orientation, 1) == 1
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        return False


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation says; a malformed EXIF block is ignored."""
    try:
        transposed = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, ZeroDivisionError):
        return image
    return transposed if transposed is not None else image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = image.mode
    if mode == "RGB" and not image.has_transparency_data:
        return image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_deep_gray_to_uint8(image)).convert("RGB")
    if mode in _TRANSPARENT_MODES or image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return image.convert("RGB")


def _deep_gray_to_uint8(image: Image.Image) -> np.ndarray:
    """16/32-bit integer or float grayscale to 8 bits."""
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            values = values * 255.0
        return np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)
    values = np.asarray(image).astype(np.float64)
    return np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
