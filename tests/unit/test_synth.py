"""The synthetic aluminium generator: determinism, exact boxes, conditions and the landing batch writer."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from collections import Counter

import cv2
import numpy as np
import pytest

from alumi_pipelines.lib.vision.synth import (
    CONDITIONS,
    SYNTH_CLASSES,
    encode_image,
    image_seed,
    render_image,
    write_landing_batch,
)
from alumi_pipelines.settings import DEFAULT_CLASSES

SIZE = 160


def _box_pixels(box: dict, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) pixel bounds (exclusive end) of a normalised box."""
    x0 = round((box["x_center"] - box["width"] / 2) * width)
    y0 = round((box["y_center"] - box["height"] / 2) * height)
    return x0, y0, x0 + round(box["width"] * width), y0 + round(box["height"] * height)


def _defect_diff(seed: int, augment: bool, size: int = SIZE):
    """The render of ``seed``, and per pixel its largest channel difference from the defect-free render."""
    with_defects = render_image(seed, size, size, augment=augment)
    clean = render_image(seed, size, size, augment=augment, with_defects=False)
    diff = np.abs(with_defects.image.astype(np.int16) - clean.image.astype(np.int16)).max(axis=2)
    return with_defects, diff


def _sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def test_classes_match_settings_and_conditions_are_fixed():
    assert SYNTH_CLASSES == DEFAULT_CLASSES == ("scratch", "dent", "pit", "crack", "stain")
    assert CONDITIONS == ("nominal", "dark", "blurred")


@pytest.mark.parametrize("condition", CONDITIONS)
def test_same_seed_gives_identical_bytes_and_other_seeds_differ(condition):
    first = render_image(11, SIZE, 128, condition=condition)
    again = render_image(11, SIZE, 128, condition=condition)
    other = render_image(12, SIZE, 128, condition=condition)
    assert first.image.shape == (128, SIZE, 3) and first.image.dtype == np.uint8
    assert encode_image(first.image) == encode_image(again.image)
    assert encode_image(first.image, "jpg") == encode_image(again.image, "jpg")
    assert first.boxes == again.boxes
    assert encode_image(first.image) != encode_image(other.image)
    assert np.abs(first.image.astype(int) - other.image.astype(int)).mean() > 3


def test_boxes_are_normalised_and_every_class_appears_over_fifty_images():
    counts: Counter = Counter()
    per_image = []
    for seed in range(50):
        boxes = render_image(seed, 128, 128).boxes
        per_image.append(len(boxes))
        for box in boxes:
            assert set(box) == {"class_name", "x_center", "y_center", "width", "height"}
            assert box["width"] > 0 and box["height"] > 0
            assert 0 <= box["x_center"] - box["width"] / 2 and box["x_center"] + box["width"] / 2 <= 1
            assert 0 <= box["y_center"] - box["height"] / 2 and box["y_center"] + box["height"] / 2 <= 1
            counts[box["class_name"]] += 1
    assert set(counts) == set(SYNTH_CLASSES), counts
    assert min(counts.values()) >= 5, counts
    assert max(per_image) <= 4
    assert 3 <= per_image.count(0) <= 20  # some defect-free images, not mostly empty ones
    assert sum(per_image) >= 60


def test_boxes_are_tight_around_the_pixels_each_defect_changed():
    """Without augmentation: every strongly changed pixel lies in a box and every box edge touches one."""
    checked = 0
    for seed in range(30):
        rendered, diff = _defect_diff(seed, augment=False)
        covered = np.zeros_like(diff, dtype=bool)
        for box in rendered.boxes:
            x0, y0, x1, y1 = _box_pixels(box, SIZE, SIZE)
            covered[y0:y1, x0:x1] = True
            inside = diff[y0:y1, x0:x1] >= 2
            assert inside[0, :].any() and inside[-1, :].any(), (seed, box)  # top and bottom rows
            assert inside[:, 0].any() and inside[:, -1].any(), (seed, box)  # left and right columns
            checked += 1
        # Outside every box the image is the defect-free render up to faint anti-aliasing/shading tails.
        assert diff[~covered].max(initial=0) < 12, seed
        strong = diff >= 8
        if strong.any():
            assert strong[covered].sum() >= 0.98 * strong.sum(), seed
    assert checked >= 30


def test_augmented_boxes_sit_on_the_defects_and_shifted_boxes_would_not():
    """With rotation/zoom: the defect-vs-clean difference is concentrated inside boxes, not beside them."""
    ratios, shifted_ratios = [], []
    for seed in range(40):
        rendered, diff = _defect_diff(seed, augment=True)
        if not rendered.boxes:
            assert diff.mean() < 0.05, seed  # identical surface, noise and augmentation without defects
            continue
        covered = np.zeros_like(diff, dtype=bool)
        for box in rendered.boxes:
            x0, y0, x1, y1 = _box_pixels(box, SIZE, SIZE)
            covered[y0:y1, x0:x1] = True
        inside, outside = diff[covered].mean(), diff[~covered].mean()
        ratios.append(inside / max(outside, 0.05))
        # The same boxes moved by one box size to the right/down (wrapping) must not pass the same test.
        shifted = np.zeros_like(covered)
        for box in rendered.boxes:
            x0, y0, x1, y1 = _box_pixels(box, SIZE, SIZE)
            dx, dy = max(x1 - x0, 8), max(y1 - y0, 8)
            shifted[np.ix_(np.arange(y0 + dy, y1 + dy) % SIZE, np.arange(x0 + dx, x1 + dx) % SIZE)] = True
        shifted &= ~covered
        if shifted.any():
            shifted_ratios.append(diff[shifted].mean() / max(diff[~shifted].mean(), 0.05))
    assert len(ratios) >= 25
    assert min(ratios) > 8, sorted(ratios)[:5]
    assert np.median(shifted_ratios) < 1.5, sorted(shifted_ratios)


def test_dark_and_blurred_conditions_change_brightness_and_sharpness():
    sharpness_ratios = []
    for seed in range(8):
        nominal = render_image(seed, SIZE, SIZE).image
        dark = render_image(seed, SIZE, SIZE, condition="dark")
        blurred = render_image(seed, SIZE, SIZE, condition="blurred").image
        assert 90 < nominal.mean() < 220
        assert dark.image.mean() < 0.35 * nominal.mean(), seed
        assert abs(blurred.mean() - nominal.mean()) < 10, seed
        sharpness_ratios.append(_sharpness(blurred) / _sharpness(nominal))
        # Conditions change the camera, not the scene: the boxes are the same.
        assert dark.boxes == render_image(seed, SIZE, SIZE).boxes
    # Sensor noise after the defocus keeps some Laplacian energy; the surface detail is gone.
    assert max(sharpness_ratios) < 0.6, sharpness_ratios
    assert np.median(sharpness_ratios) < 0.35, sharpness_ratios


def test_classes_restrict_the_defects_drawn():
    names = {b["class_name"] for s in range(20) for b in render_image(s, 128, 128, classes=("pit", "stain")).boxes}
    assert names == {"pit", "stain"}
    assert all(not render_image(s, 64, 64, classes=()).boxes for s in range(5))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"width": 8}, "width"),
        ({"condition": "foggy"}, "condition"),
        ({"classes": ("scratch", "rust")}, "rust"),
        ({"classes": "scratch"}, "classes"),
    ],
)
def test_render_rejects_bad_arguments_naming_them(kwargs, field):
    args = {"seed": 1, "width": 64, "height": 64, **kwargs}
    seed = args.pop("seed")
    with pytest.raises(ValueError, match=field):
        render_image(seed, **args)


class RecordingWriter:
    def __init__(self):
        self.keys: list[str] = []
        self.files: dict[str, bytes] = {}

    def __call__(self, key: str, data: bytes) -> None:
        assert key not in self.files, f"{key} written twice"
        self.keys.append(key)
        self.files[key] = data


def test_write_landing_batch_writes_images_sidecars_and_batch_json_last():
    day = datetime.date(2026, 11, 20)
    created = datetime.datetime(2026, 11, 21, 1, 2, 3, tzinfo=datetime.UTC)
    writer = RecordingWriter()
    summary = write_landing_batch(writer, "day-2026-11-20", 6, day=day, seed=5, size=96, created_at=created)

    assert writer.keys[-1] == "_batch.json"
    assert len(writer.keys) == 6 * 2 + 1
    stations = ["L1/cam-a", "L1/cam-b", "L2/cam-a", "L2/cam-b", "L1/cam-a", "L1/cam-b"]
    expected = []
    for index, station in enumerate(stations):
        line, camera = station.split("/")
        stem = f"{station}/{line}-{camera}-20261120-{index + 1:06d}"
        expected += [f"{stem}.png", f"{stem}.json"]
    assert writer.keys[:-1] == expected

    manifest = json.loads(writer.files["_batch.json"])
    assert manifest == {
        "batch_id": "day-2026-11-20",
        "format": "alumi",
        "created_at": "2026-11-21T01:02:03.000Z",
        "source": "synthetic seed=5 condition=nominal",
        "classes": list(SYNTH_CLASSES),
    }

    captured, n_boxes, counts = [], 0, Counter()
    for index, key in enumerate(k for k in expected if k.endswith(".json")):
        sidecar = json.loads(writer.files[key])
        image_key = key[: -len(".json")] + ".png"
        assert sidecar["image"] == image_key.rsplit("/", 1)[1]
        assert (sidecar["line_id"], sidecar["camera_id"]) == tuple(image_key.split("/")[:2])
        assert (sidecar["width"], sidecar["height"]) == (96, 96)
        decoded = cv2.imdecode(np.frombuffer(writer.files[image_key], np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape == (96, 96, 3)
        # The image and its boxes are exactly the render of the derived per-image seed.
        rendered = render_image(image_seed(5, "day-2026-11-20", index), 96, 96)
        assert np.array_equal(decoded, rendered.image)
        assert sidecar["boxes"] == rendered.boxes
        moment = datetime.datetime.fromisoformat(sidecar["captured_at"])
        assert moment.tzinfo is not None and moment.utcoffset() == datetime.timedelta(0)
        assert moment.date() == day
        captured.append(moment)
        n_boxes += len(sidecar["boxes"])
        counts.update(b["class_name"] for b in sidecar["boxes"])
    assert captured == sorted(captured) and len(set(captured)) == len(captured)
    assert summary == {
        "batch_id": "day-2026-11-20",
        "images": 6,
        "boxes": n_boxes,
        "class_counts": {name: counts.get(name, 0) for name in SYNTH_CLASSES},
    }


def test_landing_batch_reruns_are_identical_and_days_differ():
    day = datetime.date(2026, 11, 20)
    created = datetime.datetime(2026, 11, 21, tzinfo=datetime.UTC)
    first, again, other = RecordingWriter(), RecordingWriter(), RecordingWriter()
    kwargs = dict(day=day, seed=3, size=64, lines=("L7",), cameras=("top",), image_format="jpg", created_at=created)
    write_landing_batch(first, "day-a", 3, **kwargs)
    write_landing_batch(again, "day-a", 3, **kwargs)
    write_landing_batch(other, "day-b", 3, **kwargs)
    assert first.files == again.files
    assert first.keys[0] == "L7/top/L7-top-20261120-000001.jpg"
    first_images = [v for k, v in first.files.items() if k.endswith(".jpg")]
    other_images = [v for k, v in other.files.items() if k.endswith(".jpg")]
    assert len(first_images) == 3 and not set(first_images) & set(other_images)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_id": "../up"}, "batch_id"),
        ({"batch_id": "a b"}, "batch_id"),
        ({"lines": ("L1", "x/y")}, "lines"),
        ({"cameras": ()}, "cameras"),
        ({"image_format": "tiff"}, "image_format"),
        ({"n_images": -2}, "n_images"),
        ({"condition": "foggy"}, "condition"),
    ],
)
def test_write_landing_batch_rejects_bad_arguments_before_writing(kwargs, field):
    writer = RecordingWriter()
    args = {"batch_id": "b1", "n_images": 2, **kwargs}
    with pytest.raises(ValueError, match=field):
        write_landing_batch(
            writer, args.pop("batch_id"), args.pop("n_images"), day=datetime.date(2026, 1, 1), seed=1, **args
        )
    assert writer.keys == []


def test_rendering_with_augmentation_makes_no_network_lookup():
    """albumentations checks PyPI for updates on import unless told not to; the generator tells it."""
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise SystemExit('network attempted: %r' % (a,))\n"
        "socket.getaddrinfo = refuse\n"
        "socket.socket.connect = refuse\n"
        "from alumi_pipelines.lib.vision.synth import render_image\n"
        "print(len(render_image(1, 64, 64).boxes) >= 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"
