"""Image bytes in, facts and normalised images out: probing, normalising, per-image features.

cv2 releases the GIL while decoding, resizing and encoding, so a thread pool uses every core without
copying image bytes between processes.

Every decode is bounded: the size the header declares is checked against :class:`Limits` (pixels and decoded
bytes, ``ALUMI_MAX_IMAGE_PIXELS`` / ``ALUMI_MAX_DECODED_BYTES``) before the decoder runs, with the header reader
the edge server uses (``alumi_edge.image_header``); an image over a limit is rejected with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

import cv2
import numpy as np

from alumi_edge.image_header import (
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageHeader,
    ImageHeaderError,
    ImageTooLarge,
    check_image_size,
    sniff_format,
)
from alumi_pipelines.lib.files import sha256_hex

cv2.setNumThreads(1)  # parallelism comes from our pool; nested cv2 threads only contend

FEATURE_COLUMNS = (
    "brightness",  # mean grey level, 0..255
    "contrast",  # standard deviation of grey levels
    "sharpness",  # variance of the Laplacian of the grey image
    "mean_b",
    "mean_g",
    "mean_r",
    "saturation",  # mean HSV saturation, 0..255
)

PROCESSED_EXT = ".jpg"
_JPEG_QUALITY = 95
FEATURE_SIDE = 192  # features are measured on a thumbnail of this longest side, whatever the image size


class ImageRejected(ValueError):
    """The bytes are not a usable image; the message is the quarantine reason."""


@dataclass(frozen=True)
class Limits:
    """The largest image any decode here accepts, judged from its header."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES


def check_size(data: bytes, limits: Limits | None = None) -> ImageHeader:
    """The header's facts after checking them against ``limits``; ImageRejected (the reason) otherwise."""
    limits = limits or Limits()
    try:
        return check_image_size(data, limits.max_pixels, limits.max_decoded_bytes)
    except ImageHeaderError as exc:
        raise ImageRejected(f"corrupt {sniff_format(data) or 'image'}: {exc}") from None
    except ImageTooLarge as exc:
        raise ImageRejected(str(exc)) from None


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    channels: int
    format: str  # jpeg | png | bmp | tiff | webp


@dataclass(frozen=True)
class ProcessedImage:
    image_id: str
    data: bytes  # normalised image (JPEG, 3-channel, longest side <= max_side)
    width: int
    height: int
    features: dict[str, float]


__all__ = ["ImageInfo", "ImageRejected", "Limits", "ProcessedImage", "check_size", "decode", "probe", "sniff_format"]


def _check_complete(data: bytes, fmt: str) -> None:
    # cv2 decodes truncated JPEG/PNG files into partly grey images without an error: check the end markers.
    if fmt == "jpeg" and b"\xff\xd9" not in data[-1024:]:
        raise ImageRejected("truncated JPEG: no end-of-image marker")
    if fmt == "png" and b"IEND" not in data[-64:]:
        raise ImageRejected("truncated PNG: no IEND chunk")


def decode(data: bytes, *, reduce: int = 1, limits: Limits | None = None) -> np.ndarray:
    """Decode to a BGR uint8 array (greyscale and alpha become 3 channels); ImageRejected if unusable or too large."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected("not an image: unknown file signature")
    _check_complete(data, fmt)
    check_size(data, limits)
    flags = {
        1: cv2.IMREAD_COLOR,
        2: cv2.IMREAD_REDUCED_COLOR_2,
        4: cv2.IMREAD_REDUCED_COLOR_4,
        8: cv2.IMREAD_REDUCED_COLOR_8,
    }
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags[reduce])
    if image is None:
        raise ImageRejected(f"corrupt {fmt}: decoder failed")
    return image


def probe(data: bytes, limits: Limits | None = None) -> ImageInfo:
    """Check the header's size against ``limits``, then decode fully (the only reliable decodability test) and
    report size, channels and format."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected("not an image: unknown file signature")
    _check_complete(data, fmt)
    check_size(data, limits)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageRejected(f"corrupt {fmt}: decoder failed")
    channels = 1 if image.ndim == 2 else image.shape[2]
    return ImageInfo(width=int(image.shape[1]), height=int(image.shape[0]), channels=int(channels), format=fmt)


def _reduction(width: int, height: int, max_side: int, fmt: str) -> int:
    """The largest JPEG DCT-domain reduction that still leaves the longest side >= max_side."""
    if fmt != "jpeg":
        return 1
    longest = max(width, height)
    for factor in (8, 4, 2):
        if longest // factor >= max_side:
            return factor
    return 1


def resize_longest(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so the longest side is max_side (never enlarge)."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def halve(image: np.ndarray, side: int) -> np.ndarray:
    """Halve with pyrDown (anti-aliased, cheap) while the longest side is at least ``2 * side``."""
    while max(image.shape[:2]) >= 2 * side:
        image = cv2.pyrDown(image)
    return image


def thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    """Fast anti-aliased shrink: halve with pyrDown while possible, then bilinear to the exact side."""
    image = halve(image, side)
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_LINEAR)


def features(image: np.ndarray) -> dict[str, float]:
    """Per-image features used by data checks and drift reports.

    Grey-level features (brightness, contrast, sharpness) are measured on a grey thumbnail of exactly
    FEATURE_SIDE, so they do not depend on the image's size; colour means and saturation, which do not
    depend on scale, on the image halved to less than twice that side (no exact resize of 3 channels).
    """
    small = halve(image, FEATURE_SIDE)
    grey = thumbnail(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), FEATURE_SIDE)
    mean, std = cv2.meanStdDev(grey)
    lap = cv2.Laplacian(grey, cv2.CV_16S)  # exact: the 3x3 integer kernel on uint8 stays within int16
    n = lap.size
    lap_mean = cv2.sumElems(lap)[0] / n
    sharpness = max(0.0, cv2.norm(lap, cv2.NORM_L2SQR) / n - lap_mean * lap_mean)  # variance of the Laplacian
    bgr_mean = cv2.mean(small)
    saturation = cv2.mean(cv2.cvtColor(small, cv2.COLOR_BGR2HSV))[1]
    return {
        "brightness": round(float(mean[0, 0]), 4),
        "contrast": round(float(std[0, 0]), 4),
        "sharpness": round(sharpness, 4),
        "mean_b": round(float(bgr_mean[0]), 4),
        "mean_g": round(float(bgr_mean[1]), 4),
        "mean_r": round(float(bgr_mean[2]), 4),
        "saturation": round(float(saturation), 4),
    }


def conforms(info: ImageInfo, max_side: int) -> bool:
    """Already a 3-channel JPEG within max_side: the processed zone keeps its bytes as they are."""
    return info.format == "jpeg" and info.channels == 3 and max(info.width, info.height) <= max_side


def normalise(
    data: bytes, info: ImageInfo, max_side: int, image_id: str | None = None, limits: Limits | None = None
) -> ProcessedImage:
    """Decode (reduced in the DCT domain where possible), shrink, make 3-channel, encode JPEG, measure.

    A conforming image keeps its bytes; only a DCT-reduced decode is made, to measure its features. The header is
    checked against ``limits`` first (ImageRejected), whatever the manifest says about the image.
    """
    if conforms(info, max_side):
        thumb = decode(data, reduce=_reduction(info.width, info.height, FEATURE_SIDE, info.format), limits=limits)
        return ProcessedImage(image_id or sha256_hex(data), data, info.width, info.height, features(thumb))
    image = decode(data, reduce=_reduction(info.width, info.height, max_side, info.format), limits=limits)
    image = resize_longest(image, max_side)
    ok, encoded = cv2.imencode(PROCESSED_EXT, image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:  # pragma: no cover - cv2 encodes any uint8 BGR array
        raise ImageRejected("could not encode the normalised image")
    return ProcessedImage(
        image_id=image_id or sha256_hex(data),
        data=encoded.tobytes(),
        width=int(image.shape[1]),
        height=int(image.shape[0]),
        features=features(image),
    )


T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 0, chunk: int = 16) -> Iterator[R]:
    """Ordered map over a thread pool (``workers`` 0 = every core); for GIL-releasing cv2 work.

    Items go to the pool ``chunk`` at a time: one task per image costs a future, a lock and a queue
    round trip, which is a measurable share of a sub-millisecond image.
    """
    import os

    n = workers or os.cpu_count() or 1
    if n == 1:
        yield from map(fn, items)
        return
    source = iter(items)
    chunks = iter(lambda: list(islice(source, chunk)), [])
    with ThreadPoolExecutor(max_workers=n) as pool:
        for results in pool.map(lambda part: [fn(x) for x in part], chunks):
            yield from results
