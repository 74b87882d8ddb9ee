"""Pixel bombs are refused from their header, before decoding: in the header reader and in the real server."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from edge_support import color_image, encode

from alumi_edge.image_header import ImageHeaderError, ImageTooLarge, check_image_size, read_header
from alumi_edge.imaging import CorruptImage, decode_image

EDGE_SRC = Path(__file__).resolve().parents[2] / "edge_export"


def png_bomb(side: int) -> bytes:
    """A valid 1-bit greyscale PNG of side x side pixels, all black: a few KB that decode to side² bytes or more."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    compressed = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", compressed) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "ext, channels",
    [(ext, n) for ext in (".jpg", ".png", ".bmp", ".tiff", ".webp") for n in (1, 3, 4) if (ext, n) != (".jpg", 4)],
)
def test_the_header_gives_the_size_the_decoder_finds(ext, channels):
    shape = (37, 53) if channels == 1 else (37, 53, channels)
    data = cv2.imencode(ext, np.full(shape, 77, np.uint8))[1].tobytes()
    header = read_header(data)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (header.width, header.height) == (decoded.shape[1], decoded.shape[0]) == (53, 37)
    assert header.format == ("jpeg" if ext == ".jpg" else ext[1:])


def test_limits_name_the_size_and_the_limit():
    bomb = png_bomb(20_000)
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge, match=r"20000x20000 pixels \(400,000,000\), over the limit of 100,000,000"):
        check_image_size(bomb, max_pixels=100_000_000)
    with pytest.raises(ImageTooLarge, match="bytes decoded"):
        check_image_size(encode(color_image(100, 100)), max_pixels=10**9, max_decoded_bytes=29_999)
    assert check_image_size(encode(color_image(100, 100)), max_decoded_bytes=30_000).pixels == 10_000
    for damaged in (b"\x89PNG\r\n\x1a\n\x00\x00", b"\xff\xd8\xff\xe0\x00\x10JFIF", b"II*\x00\xff\xff\xff\x00"):
        with pytest.raises(ImageHeaderError):
            read_header(damaged)
    with pytest.raises(CorruptImage, match="truncated PNG header"):
        decode_image(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_pixel_bomb_upload_is_refused_from_its_header_with_the_server_growing_less_than_100_mb(tmp_path, color_onnx):
    bomb = png_bomb(30_000)  # 900 million pixels; OpenCV's own limit (2^30) would decode it
    assert len(bomb) < 200_000
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(EDGE_SRC),
        "ALUMI_EDGE_AUTH": "none",
        "ALUMI_EDGE_CAPTURE": "false",
        "ALUMI_EDGE_HOME": str(tmp_path / "device"),
        "ALUMI_EDGE_INFERENCE_WORKERS": "2",
    }
    cmd = [sys.executable, "-m", "alumi_edge", "serve", "--model", str(color_onnx), "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        good = httpx.post(f"{base}/v1/detect", files={"file": ("a.png", encode(color_image()), "image/png")})
        assert good.status_code == 200 and good.json()["boxes"]
        before = _peak_rss_mb(server.pid)

        def send(_):
            return httpx.post(f"{base}/v1/detect", content=bomb, headers={"content-type": "image/png"}, timeout=60)

        with ThreadPoolExecutor(2) as pool:  # both inference workers at once
            answers = list(pool.map(send, range(4)))
        grown = _peak_rss_mb(server.pid) - before
        for answer in answers:
            assert answer.status_code == 413, answer.text
            assert answer.json()["error"] == "image_too_large"
            assert "30000x30000" in answer.json()["detail"] and "before decoding" in answer.json()["detail"]
        print(json.dumps({"peak_rss_before_mb": round(before, 1), "growth_mb": round(grown, 1)}))
        assert grown < 100, f"the server's peak memory grew by {grown:.0f} MB"
        assert httpx.post(f"{base}/v1/detect", content=encode(color_image())).status_code == 200
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_multipart_image_under_another_field_name_is_refused(client):
    from edge_support import auth_header

    image = encode(color_image())
    wrong = client.post("/v1/detect", files={"image": ("a.png", image, "image/png")}, headers=auth_header())
    assert wrong.status_code == 400
    assert wrong.json()["detail"] == "multipart body has a file in field 'image': send the image as field 'file'"
    right = client.post("/v1/detect", files={"file": ("a.png", image, "image/png")}, headers=auth_header())
    assert right.status_code == 200
