"""Decode uploaded image bytes into a BGR array, refusing non-images and truncated files clearly."""

from __future__ import annotations

import cv2
import numpy as np

# Magic numbers of the formats OpenCV decodes here.
_SIGNATURES: tuple[tuple[str, bytes], ...] = (
    ("jpeg", b"\xff\xd8\xff"),
    ("png", b"\x89PNG\r\n\x1a\n"),
    ("bmp", b"BM"),
    ("tiff", b"II*\x00"),
    ("tiff", b"MM\x00*"),
)


class UnsupportedImageType(ValueError):
    """The bytes are not an image in a supported format (HTTP 415)."""


class CorruptImage(ValueError):
    """The bytes start like a supported image but cannot be decoded (truncated or damaged; HTTP 400)."""


class ImageTooLarge(ValueError):
    """The decoded image has more pixels than the server accepts (HTTP 413)."""


def sniff_format(data: bytes) -> str | None:
    """Image format named by the leading bytes, or None."""
    for name, magic in _SIGNATURES:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _jpeg_is_complete(data: bytes) -> bool:
    """A JPEG whose last scan is followed by an end-of-image marker (older OpenCV decodes truncated scans)."""
    last_scan = data.rfind(b"\xff\xda")
    return last_scan != -1 and data.find(b"\xff\xd9", last_scan) != -1


def decode_image(data: bytes, max_pixels: int = 100_000_000) -> np.ndarray:
    """BGR uint8 array (H, W, 3) of an encoded image; raises UnsupportedImageType or CorruptImage."""
    if not data:
        raise UnsupportedImageType("empty body: expected an image file (JPEG, PNG, BMP, TIFF or WebP)")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImageType(
            f"not an image: the first bytes {data[:8]!r} match no supported format (JPEG, PNG, BMP, TIFF, WebP)"
        )
    if fmt == "jpeg" and not _jpeg_is_complete(data):
        raise CorruptImage("truncated JPEG: no end-of-image marker after the last scan")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise CorruptImage(f"damaged or truncated {fmt.upper()}: the decoder could not read it ({len(data)} bytes)")
    height, width = image.shape[:2]
    if height * width > max_pixels:
        raise ImageTooLarge(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    return image
