"""An image's size from its header, before any decoding: the bound every decoder in the project checks first.

A small file can declare a huge image (a PNG of 48 KB that declares 20,000 x 20,000 pixels decodes to 1.2 GB).
:func:`check_image_size` reads width, height, samples and bit depth from the first bytes of a JPEG, PNG, BMP,
TIFF or WebP file and refuses an image over a pixel limit or a decoded-size limit; only then may a decoder
run. A header that cannot be read is refused too: a decoder is never handed a size nobody checked.

Pure Python, no decoder: the edge server (``alumi_edge.imaging``) and the pipeline
(``alumi_pipelines.lib.vision.imaging``) both import it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_MAX_DECODED_BYTES = 1024**3  # decoded buffer (width x height x samples x bytes per sample)


class ImageHeaderError(ValueError):
    """The header does not give a usable size (truncated, damaged or an unsupported variant)."""


class ImageTooLarge(ValueError):
    """The header declares more pixels, or a larger decoded buffer, than allowed."""


@dataclass(frozen=True)
class ImageHeader:
    format: str  # jpeg | png | bmp | tiff | webp
    width: int
    height: int
    samples: int  # channels as stored (a palette counts as 3: it decodes to colour)
    bits: int  # bits per sample

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded buffer: at least 3 samples of 8 bits (decoders here produce BGR)."""
        return self.pixels * max(self.samples, 3) * max(1, (self.bits + 7) // 8)


def sniff_format(data: bytes) -> str | None:
    """The container format from its magic bytes, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _need(data: bytes, end: int, fmt: str, what: str) -> None:
    if len(data) < end:
        raise ImageHeaderError(f"truncated {fmt.upper()} header: {what} missing ({len(data)} bytes)")


def _png(data: bytes) -> ImageHeader:
    _need(data, 26, "png", "IHDR chunk")
    if data[12:16] != b"IHDR":
        raise ImageHeaderError("damaged PNG header: the first chunk is not IHDR")
    width, height, bits, colour = struct.unpack(">IIBB", data[16:26])
    samples = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour)
    if samples is None:
        raise ImageHeaderError(f"damaged PNG header: colour type {colour}")
    return ImageHeader("png", width, height, samples, 8 if colour == 3 else bits)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> ImageHeader:
    pos = 2
    while True:
        while pos < len(data) and data[pos] != 0xFF:  # stray bytes between segments
            pos += 1
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        _need(data, pos + 1, "jpeg", "frame header (SOF)")
        marker = data[pos]
        pos += 1
        if marker in (0x01, *range(0xD0, 0xD8)):
            continue
        if marker in (0xD9, 0xDA):
            raise ImageHeaderError("damaged JPEG header: no frame header (SOF) before the image data")
        _need(data, pos + 2, "jpeg", "segment length")
        (length,) = struct.unpack(">H", data[pos : pos + 2])
        if length < 2:
            raise ImageHeaderError(f"damaged JPEG header: segment length {length}")
        if marker in _SOF:
            _need(data, pos + 8, "jpeg", "frame header (SOF)")
            bits, height, width, components = struct.unpack(">BHHB", data[pos + 2 : pos + 8])
            if height == 0:
                raise ImageHeaderError("JPEG declares its height later in the data (DNL): not supported")
            return ImageHeader("jpeg", width, height, components, bits)
        pos += length


def _bmp(data: bytes) -> ImageHeader:
    _need(data, 18, "bmp", "DIB header size")
    (dib,) = struct.unpack("<I", data[14:18])
    if dib == 12:
        _need(data, 26, "bmp", "core header")
        width, height, _, bpp = struct.unpack("<HHHH", data[18:26])
    else:
        _need(data, 30, "bmp", "info header")
        width, height, _, bpp = struct.unpack("<iiHH", data[18:30])
    return ImageHeader("bmp", abs(width), abs(height), 4 if bpp == 32 else 3, 8)


_TIFF_TYPES = {3: ("H", 2), 4: ("I", 4)}  # SHORT, LONG


def _tiff(data: bytes) -> ImageHeader:
    order = "<" if data[:2] == b"II" else ">"
    _need(data, 8, "tiff", "first directory offset")
    (offset,) = struct.unpack(order + "I", data[4:8])
    _need(data, offset + 2, "tiff", "first directory")
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    tags: dict[int, int] = {}
    for i in range(count):
        at = offset + 2 + 12 * i
        _need(data, at + 12, "tiff", "directory entry")
        tag, kind, n = struct.unpack(order + "HHI", data[at : at + 8])
        if tag not in (256, 257, 258, 277) or kind not in _TIFF_TYPES:
            continue
        code, size = _TIFF_TYPES[kind]
        where = at + 8 if n * size <= 4 else struct.unpack(order + "I", data[at + 8 : at + 12])[0]
        _need(data, where + size, "tiff", f"value of tag {tag}")
        (tags[tag],) = struct.unpack(order + code, data[where : where + size])  # first value (bits: per sample)
    if 256 not in tags or 257 not in tags:
        raise ImageHeaderError("damaged TIFF header: no ImageWidth/ImageLength in the first directory")
    return ImageHeader("tiff", tags[256], tags[257], tags.get(277, 1), tags.get(258, 1))


def _webp(data: bytes) -> ImageHeader:
    _need(data, 30, "webp", "frame header")
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return ImageHeader("webp", width, height, 4 if data[20] & 0x10 else 3, 8)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise ImageHeaderError("damaged WebP header: bad lossless signature")
        (bits,) = struct.unpack("<I", data[21:25])
        return ImageHeader("webp", 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF), 4, 8)
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageHeaderError("damaged WebP header: bad frame start code")
        width, height = struct.unpack("<HH", data[26:30])
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF, 3, 8)
    raise ImageHeaderError(f"damaged WebP header: unknown chunk {chunk!r}")


_READERS = {"png": _png, "jpeg": _jpeg, "bmp": _bmp, "tiff": _tiff, "webp": _webp}


def read_header(data: bytes) -> ImageHeader:
    """Size, samples and depth from the header; ImageHeaderError when it cannot be read (never a decode)."""
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageHeaderError(f"not an image: the first bytes {data[:8]!r} match no supported format")
    try:
        header = _READERS[fmt](data)
    except struct.error as exc:  # pragma: no cover - every read is length-checked first
        raise ImageHeaderError(f"damaged {fmt.upper()} header: {exc}") from exc
    if header.width <= 0 or header.height <= 0:
        raise ImageHeaderError(f"{fmt.upper()} header declares {header.width}x{header.height} pixels")
    return header


def check_image_size(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> ImageHeader:
    """The header, after checking it against both limits; ImageTooLarge names the size and the limit."""
    header = read_header(data)
    if header.pixels > max_pixels:
        raise ImageTooLarge(
            f"{header.format.upper()} header declares {header.width}x{header.height} pixels "
            f"({header.pixels:,}), over the limit of {max_pixels:,} pixels; refused before decoding"
        )
    if header.decoded_bytes > max_decoded_bytes:
        raise ImageTooLarge(
            f"{header.format.upper()} header declares {header.width}x{header.height}x{header.samples} samples of "
            f"{header.bits} bits ({header.decoded_bytes:,} bytes decoded), over the limit of {max_decoded_bytes:,} "
            "bytes; refused before decoding"
        )
    return header
