"""Decode uploaded image bytes into a BGR array, refusing non-images, truncated files and pixel bombs clearly.

The size is checked from the header (:mod:`alumi_edge.image_header`) before the decoder runs, so an image
declaring more pixels than allowed costs a few bytes of parsing, not a full decode.
"""

from __future__ import annotations

import cv2
import numpy as np

from alumi_edge.image_header import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageHeaderError,
    ImageTooLarge,
    check_image_size,
    sniff_format,
)


class UnsupportedImageType(ValueError):
    """The bytes are not an image in a supported format (HTTP 415)."""


class CorruptImage(ValueError):
    """The bytes start like a supported image but cannot be decoded (truncated or damaged; HTTP 400)."""


__all__ = ["CorruptImage", "ImageTooLarge", "UnsupportedImageType", "decode_image", "sniff_format"]


def _jpeg_is_complete(data: bytes) -> bool:
    """A JPEG whose last scan is followed by an end-of-image marker (older OpenCV decodes truncated scans)."""
    last_scan = data.rfind(b"\xff\xda")
    return last_scan != -1 and data.find(b"\xff\xd9", last_scan) != -1


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> np.ndarray:
    """BGR uint8 array (H, W, 3) of an encoded image; raises UnsupportedImageType, CorruptImage or ImageTooLarge.

    ImageTooLarge comes from the header, before decoding (HTTP 413).
    """
    if not data:
        raise UnsupportedImageType("empty body: expected an image file (JPEG, PNG, BMP, TIFF or WebP)")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImageType(
            f"not an image: the first bytes {data[:8]!r} match no supported format (JPEG, PNG, BMP, TIFF, WebP)"
        )
    if fmt == "jpeg" and not _jpeg_is_complete(data):
        raise CorruptImage("truncated JPEG: no end-of-image marker after the last scan")
    try:
        check_image_size(data, max_pixels, max_decoded_bytes)
    except ImageHeaderError as exc:
        raise CorruptImage(str(exc)) from exc
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise CorruptImage(f"damaged or truncated {fmt.upper()}: the decoder could not read it ({len(data)} bytes)")
    height, width = image.shape[:2]
    if height * width > max_pixels:
        raise ImageTooLarge(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
    return image
