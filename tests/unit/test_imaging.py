"""Imaging: probing rejects what is unusable; normalising shrinks, makes 3 channels and measures."""

import cv2
import numpy as np
import pytest

from alumi_pipelines.lib.files import sha256_hex
from alumi_pipelines.lib.vision import imaging


def _jpeg(w, h, grey=False, value=128):
    img = np.full((h, w) if grey else (h, w, 3), value, np.uint8)
    cv2.rectangle(img, (w // 4, h // 4), (w // 2, h // 2), 255, -1)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _png(w, h):
    return cv2.imencode(".png", np.zeros((h, w, 3), np.uint8))[1].tobytes()


def test_probe_reports_size_channels_format():
    assert imaging.probe(_jpeg(300, 200)) == imaging.ImageInfo(300, 200, 3, "jpeg")
    assert imaging.probe(_jpeg(64, 64, grey=True)).channels == 1
    assert imaging.probe(_png(50, 40)) == imaging.ImageInfo(50, 40, 3, "png")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"hello, not an image", "not an image"),
        (_jpeg(200, 200)[:400], "truncated JPEG"),
        (_png(100, 100)[:60], "truncated PNG"),
        (b"\xff\xd8\xff" + b"\x00" * 500 + b"\xff\xd9", "corrupt jpeg"),
    ],
)
def test_probe_rejects_with_a_reason(data, reason):
    with pytest.raises(imaging.ImageRejected, match=reason):
        imaging.probe(data)


def test_normalise_shrinks_large_images_and_keeps_aspect():
    data = _jpeg(1600, 1200)
    out = imaging.normalise(data, imaging.probe(data), 640)
    assert (out.width, out.height) == (640, 480)
    decoded = cv2.imdecode(np.frombuffer(out.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (480, 640, 3)
    assert out.image_id == sha256_hex(data)


def test_normalise_never_enlarges_and_makes_grey_three_channel():
    data = _jpeg(100, 80, grey=True, value=60)
    out = imaging.normalise(data, imaging.probe(data), 640)
    assert (out.width, out.height) == (100, 80)
    assert cv2.imdecode(np.frombuffer(out.data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (80, 100, 3)
    assert out.features["saturation"] == pytest.approx(0, abs=1)


def test_features_track_brightness_and_sharpness():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(sharp, (9, 9), 3)
    dark = (sharp * 0.3).astype(np.uint8)
    f_sharp, f_blur, f_dark = (imaging.features(x) for x in (sharp, blurred, dark))
    assert f_blur["sharpness"] < f_sharp["sharpness"] / 10
    assert f_dark["brightness"] == pytest.approx(f_sharp["brightness"] * 0.3, rel=0.05)
    assert set(f_sharp) == set(imaging.FEATURE_COLUMNS)


def test_normalise_is_deterministic():
    data = _jpeg(900, 700)
    info = imaging.probe(data)
    assert imaging.normalise(data, info, 640).data == imaging.normalise(data, info, 640).data


def test_parallel_map_keeps_order():
    assert list(imaging.parallel_map(lambda x: x * 2, range(50), workers=2)) == [x * 2 for x in range(50)]
    assert list(imaging.parallel_map(lambda x: x + 1, iter(range(37)), workers=2, chunk=5)) == list(range(1, 38))
    assert list(imaging.parallel_map(str, [], workers=2)) == []


def test_conforming_jpeg_keeps_its_bytes_and_grey_jpeg_is_reencoded():
    colour = _jpeg(400, 300)
    out = imaging.normalise(colour, imaging.probe(colour), 640)
    assert out.data == colour and (out.width, out.height) == (400, 300)
    grey = _jpeg(400, 300, grey=True)
    out = imaging.normalise(grey, imaging.probe(grey), 640)
    assert out.data != grey
    assert cv2.imdecode(np.frombuffer(out.data, np.uint8), cv2.IMREAD_UNCHANGED).ndim == 3


def test_features_do_not_depend_on_resolution():
    rng = np.random.default_rng(1)
    small = cv2.resize(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), (256, 256), interpolation=cv2.INTER_CUBIC)
    big = cv2.resize(small, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    f_small, f_big = imaging.features(small), imaging.features(big)
    assert f_big["brightness"] == pytest.approx(f_small["brightness"], rel=0.02)
    assert f_big["sharpness"] == pytest.approx(f_small["sharpness"], rel=0.25)


def test_features_equal_a_plain_numpy_computation():
    rng = np.random.default_rng(2)
    image = cv2.GaussianBlur(rng.integers(0, 255, (300, 360, 3), dtype=np.uint8), (3, 3), 1)
    grey = imaging.thumbnail(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), imaging.FEATURE_SIDE)
    assert max(grey.shape) == imaging.FEATURE_SIDE
    g = grey.astype(np.float64)
    padded = np.pad(g, 1, mode="reflect")  # OpenCV's default border (BORDER_REFLECT_101)
    full = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * g  # 3x3 Laplacian
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)  # 360 px is below 2 x FEATURE_SIDE: colour is measured as is
    f = imaging.features(image)
    assert f["brightness"] == pytest.approx(g.mean(), abs=1e-3)
    assert f["contrast"] == pytest.approx(g.std(), abs=1e-3)
    assert f["sharpness"] == pytest.approx(full.var(), rel=1e-9, abs=1e-3)
    assert (f["mean_b"], f["mean_g"], f["mean_r"]) == pytest.approx(tuple(image.reshape(-1, 3).mean(0)), abs=1e-3)
    assert f["saturation"] == pytest.approx(hsv[:, :, 1].mean(), abs=1e-3)
