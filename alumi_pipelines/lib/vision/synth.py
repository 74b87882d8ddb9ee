"""Synthetic brushed / extruded aluminium surface images with defects and exact bounding boxes.

An image is built in this order: surface luminance (brushed grain, die lines, illumination, sheen)
-> defects, each drawn as a luminance or colour change on its own small region -> colour -> camera
condition (exposure, defocus) -> sensor noise -> albumentations (geometry applied to image and defect
masks together, then photometric jitter). A defect's mask is the set of pixels its drawing changed by
at least ``VISIBLE_DELTA`` grey levels, so every box is the bounding box of pixels that really show the
defect, measured after the geometric transform.

Every random choice comes from streams derived from the seed, one per stage, so a render without
defects (``with_defects=False``) has the same surface, noise and augmentation as the render with them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

SYNTH_CLASSES: tuple[str, ...] = ("scratch", "dent", "pit", "crack", "stain")
CONDITIONS = ("nominal", "dark", "blurred")  # dark: much lower exposure; blurred: strong defocus
IMAGE_FORMATS = ("png", "jpg")

VISIBLE_DELTA = 6.0  # grey levels a drawn pixel must change by to belong to its defect's mask ...
VISIBLE_PEAK_SHARE = 0.12  # ... and at least this share of the defect's strongest change (soft dent edges)
MIN_DEFECT_PIXELS = 6  # a defect cropped away to fewer visible pixels than this gets no box
MIN_SIDE = 32
DEFECT_COUNT_WEIGHTS = (0.15, 0.30, 0.25, 0.18, 0.12)  # P(0..4 defects in an image)

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass
class SyntheticImage:
    image: np.ndarray  # HxWx3 uint8, BGR (cv2 order)
    boxes: list[dict]  # {"class_name", "x_center", "y_center", "width", "height"} normalised to [0,1]


@dataclass
class _Defect:
    """One drawn defect: where its region starts, its change to the image, and its visible pixels."""

    class_name: str
    y0: int
    x0: int
    delta: np.ndarray  # (h, w) luminance change, or (h, w, 3) BGR change
    mask: np.ndarray  # (h, w) bool


# -- public API ---------------------------------------------------------------------------------


def render_image(
    seed: int,
    width: int = 640,
    height: int = 640,
    *,
    condition: str = "nominal",
    classes: Sequence[str] = SYNTH_CLASSES,
    augment: bool = True,
    with_defects: bool = True,
) -> SyntheticImage:
    """Render one aluminium surface image with 0-4 defects of ``classes`` and their exact boxes.

    ``with_defects=False`` renders the same surface, noise and augmentation with no defect drawn.
    """
    import cv2

    _check_render_args(seed, width, height, condition, classes)
    surface_rng, defect_rng, sensor_rng, condition_rng, aug_seed = _streams(seed)
    scale = min(width, height)

    luminance = _surface(surface_rng, height, width)
    tint = np.array([1.0 + surface_rng.uniform(0.0, 0.05), 1.0, 1.0 - surface_rng.uniform(0.0, 0.05)], dtype=np.float32)
    defects = _draw_defects(defect_rng, height, width, scale, tuple(classes)) if with_defects else []

    colour_delta = None
    for d in defects:
        h, w = d.mask.shape
        if d.delta.ndim == 2:
            luminance[d.y0 : d.y0 + h, d.x0 : d.x0 + w] += d.delta
        else:
            if colour_delta is None:
                colour_delta = np.zeros((height, width, 3), dtype=np.float32)
            colour_delta[d.y0 : d.y0 + h, d.x0 : d.x0 + w] += d.delta
    image = luminance[:, :, None] * tint
    if colour_delta is not None:
        image += colour_delta

    image = _apply_condition(condition_rng, image, condition, scale)
    sigma = sensor_rng.uniform(0.6, 1.5) * (1.6 if condition == "dark" else 1.0)
    noise = sensor_rng.standard_normal((height, width), dtype=np.float32)
    noise *= np.float32(sigma)
    noise += np.float32(0.5)  # rounds on the cast below
    image += noise[:, :, None]
    image = np.clip(image, 0, 255, out=image).astype(np.uint8)

    mask_bits = np.zeros((height, width), dtype=np.uint8)  # bit i marks defect i (at most 4 of them)
    for bit, d in enumerate(defects):
        h, w = d.mask.shape
        region = mask_bits[d.y0 : d.y0 + h, d.x0 : d.x0 + w]
        region[d.mask] |= np.uint8(1 << bit)

    if augment:
        out = _augmenter(aug_seed)(image=image, mask=mask_bits)
        image, mask_bits = out["image"], out["mask"]

    boxes = []
    for bit, d in enumerate(defects):
        layer = ((mask_bits >> bit) & 1).astype(np.uint8)
        if cv2.countNonZero(layer) < MIN_DEFECT_PIXELS:
            continue
        x, y, w, h = cv2.boundingRect(layer)
        boxes.append(
            {
                "class_name": d.class_name,
                "x_center": (x + w / 2) / width,
                "y_center": (y + h / 2) / height,
                "width": w / width,
                "height": h / height,
            }
        )
    return SyntheticImage(image=np.ascontiguousarray(image), boxes=boxes)


def encode_image(image: np.ndarray, image_format: str = "png") -> bytes:
    """PNG (lossless, fast compression) or JPEG (quality 92) bytes of a BGR image; same image, same bytes."""
    import cv2

    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format {image_format!r}: must be one of {', '.join(IMAGE_FORMATS)}")
    if image_format == "png":
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    else:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {image.shape} image as {image_format}")
    return buf.tobytes()


def image_seed(seed: int, batch_id: str, index: int) -> int:
    """The render seed of image ``index`` of a batch: differs per batch and index, stable across runs."""
    digest = hashlib.sha256(f"{seed}\x00{batch_id}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def write_landing_batch(
    write: Callable[[str, bytes], None],
    batch_id: str,
    n_images: int,
    *,
    day: datetime.date,
    seed: int,
    size: int = 640,
    condition: str = "nominal",
    lines: Sequence[str] = ("L1", "L2"),
    cameras: Sequence[str] = ("cam-a", "cam-b"),
    image_format: str = "png",
    classes: Sequence[str] = SYNTH_CLASSES,
    created_at: datetime.datetime | None = None,
) -> dict:
    """Write a landing batch in the native "alumi" format through ``write(key_in_batch, bytes)``.

    Images go to ``<line>/<camera>/<stem>.<ext>`` with a JSON sidecar ``<stem>.json``, cycling over
    every (line, camera) pair; ``_batch.json`` is written last. Capture times spread over ``day``
    (UTC) and increase with the index. Returns {"batch_id", "images", "boxes", "class_counts"}.
    """
    if not isinstance(batch_id, str) or not _NAME_RE.match(batch_id):
        raise ValueError(f"batch_id {batch_id!r}: must match [A-Za-z0-9._-]+")
    if not isinstance(n_images, int) or n_images < 0:
        raise ValueError(f"n_images {n_images!r}: must be a non-negative integer")
    if n_images > 86_400_000:
        raise ValueError(f"n_images {n_images}: at most one image per millisecond of the day")
    if not isinstance(day, datetime.date) or isinstance(day, datetime.datetime):
        raise ValueError(f"day {day!r}: must be a datetime.date")
    for kind, names in (("lines", lines), ("cameras", cameras)):
        if isinstance(names, str) or not names:
            raise ValueError(f"{kind} {names!r}: must be a non-empty sequence of names")
        for name in names:
            if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
                raise ValueError(f"{kind}: name {name!r} must match [A-Za-z0-9._-]+")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format {image_format!r}: must be one of {', '.join(IMAGE_FORMATS)}")
    _check_render_args(seed, size, size, condition, classes)

    stations = [(line, camera) for line in lines for camera in cameras]
    day_start = datetime.datetime.combine(day, datetime.time(0), tzinfo=datetime.UTC)
    spacing_ms = 86_400_000 // max(n_images, 1)
    class_counts = {name: 0 for name in classes}
    n_boxes = 0
    for index in range(n_images):
        render_seed = image_seed(seed, batch_id, index)
        line, camera = stations[index % len(stations)]
        jitter_ms = render_seed % max(spacing_ms // 2, 1)
        captured_at = day_start + datetime.timedelta(milliseconds=index * spacing_ms + jitter_ms)
        stem = f"{line}-{camera}-{day:%Y%m%d}-{index + 1:06d}"
        rendered = render_image(render_seed, size, size, condition=condition, classes=classes)
        image_name = f"{stem}.{image_format}"
        write(f"{line}/{camera}/{image_name}", encode_image(rendered.image, image_format))
        sidecar = {
            "image": image_name,
            "line_id": line,
            "camera_id": camera,
            "captured_at": _iso_utc(captured_at),
            "width": size,
            "height": size,
            "boxes": rendered.boxes,
        }
        write(f"{line}/{camera}/{stem}.json", _json_bytes(sidecar))
        n_boxes += len(rendered.boxes)
        for box in rendered.boxes:
            class_counts[box["class_name"]] += 1

    created = created_at or datetime.datetime.now(datetime.UTC)
    manifest = {
        "batch_id": batch_id,
        "format": "alumi",
        "created_at": _iso_utc(created),
        "source": f"synthetic seed={seed} condition={condition}",
        "classes": list(classes),
    }
    write("_batch.json", _json_bytes(manifest))
    return {"batch_id": batch_id, "images": n_images, "boxes": n_boxes, "class_counts": class_counts}


# -- seeds, arguments, encoding -----------------------------------------------------------------


def _check_render_args(seed, width, height, condition, classes) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed {seed!r}: must be a non-negative integer")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < MIN_SIDE:
            raise ValueError(f"{name} {value!r}: must be an integer >= {MIN_SIDE}")
    if condition not in CONDITIONS:
        raise ValueError(f"condition {condition!r}: must be one of {', '.join(CONDITIONS)}")
    if isinstance(classes, str):
        raise ValueError(f"classes {classes!r}: must be a sequence of class names, not one string")
    unknown = [c for c in classes if c not in SYNTH_CLASSES]
    if unknown:
        raise ValueError(f"classes {unknown}: not synthetic defect classes; choose from {list(SYNTH_CLASSES)}")


def _streams(seed: int):
    """Independent generators for surface, defects, sensor noise and condition, plus the augmenter seed."""
    surface, defects, sensor, condition, augment = np.random.SeedSequence(int(seed)).spawn(5)
    rngs = [np.random.default_rng(s) for s in (surface, defects, sensor, condition)]
    return (*rngs, int(augment.generate_state(1)[0]))


def _iso_utc(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


# -- surface ------------------------------------------------------------------------------------


def _surface(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Float32 luminance of a bare brushed / extruded aluminium surface (about 0-255)."""
    import cv2

    vertical = bool(rng.random() < 0.5)  # grain along columns instead of rows
    gh, gw = (width, height) if vertical else (height, width)  # grain frame: grain runs along axis 1

    # Brushed grain: white noise smeared along the grain at two lengths (fine hairlines + longer streaks).
    noise = rng.standard_normal((gh, gw), dtype=np.float32)
    short_len = _odd(rng.uniform(0.03, 0.08) * gw)
    long_len = _odd(rng.uniform(0.15, 0.45) * gw)
    fine = cv2.blur(noise, (short_len, 1), borderType=cv2.BORDER_REFLECT) * np.float32(math.sqrt(short_len))
    streak = cv2.blur(noise, (long_len, 1), borderType=cv2.BORDER_REFLECT) * np.float32(math.sqrt(long_len))
    streak = cv2.GaussianBlur(streak, (1, 3), 0)
    grain = fine * np.float32(rng.uniform(3.0, 6.0)) + streak * np.float32(rng.uniform(3.0, 7.0))

    # Full-length row profile: slow banding plus sharp extrusion die lines.
    knots = rng.standard_normal((max(4, gh // 24), 1)).astype(np.float32)
    rows = cv2.resize(knots, (1, gh), interpolation=cv2.INTER_CUBIC)
    rows *= np.float32(rng.uniform(6.0, 14.0) / max(float(np.abs(rows).max()), 1e-6))
    idx = np.arange(gh, dtype=np.float32)[:, None]
    for _ in range(int(rng.integers(1, 7))):
        centre = rng.uniform(0, gh)
        half_width = rng.uniform(0.5, 1.8) * max(1.0, gh / 640)
        rows += np.float32(rng.choice([-1, 1]) * rng.uniform(8, 22)) * np.exp(-(((idx - centre) / half_width) ** 2))
    grain += rows

    tilt = rng.uniform(-6.0, 6.0)
    rot = cv2.getRotationMatrix2D((gw / 2, gh / 2), tilt, 1.0)
    grain = cv2.warpAffine(grain, rot, (gw, gh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if vertical:
        grain = np.ascontiguousarray(grain.T)

    # Illumination: linear gradient x vignetting, plus a specular band across the grain.
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    phi = rng.uniform(0, 2 * math.pi)
    gradient = 1 + np.float32(rng.uniform(0.04, 0.14)) * (
        xs * np.float32(math.cos(phi)) + ys * np.float32(math.sin(phi))
    )
    cx, cy = (float(v) for v in rng.uniform(-0.3, 0.3, size=2))
    vignette = 1 - np.float32(rng.uniform(0.06, 0.22)) * (((xs - cx) ** 2 + (ys - cy) ** 2) / 2)
    along = xs if not vertical else ys  # the band's profile varies along the grain
    band_pos, band_width = rng.uniform(-0.7, 0.7), rng.uniform(0.12, 0.4)
    sheen = np.float32(rng.uniform(12, 45)) * np.exp(-(((along - band_pos) / band_width) ** 2))

    base = np.float32(rng.uniform(115, 165))
    return (base * gradient) * vignette + sheen + grain


def _odd(value: float) -> int:
    n = max(3, int(value))
    return n if n % 2 else n + 1


def _apply_condition(rng: np.random.Generator, image: np.ndarray, condition: str, scale: int) -> np.ndarray:
    """Camera condition: "dark" cuts exposure to 15-28 %; "blurred" is a strong disk (defocus) blur."""
    import cv2

    if condition == "dark":
        image *= np.float32(rng.uniform(0.15, 0.28))
    elif condition == "blurred":
        radius = max(3, int(round(scale * rng.uniform(0.011, 0.016))))
        kernel = np.zeros((2 * radius + 1, 2 * radius + 1), np.float32)
        cv2.circle(kernel, (radius, radius), radius, 1.0, -1, cv2.LINE_AA)
        kernel /= kernel.sum()
        image = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return image


def _augmenter(seed: int):
    """Seeded albumentations pipeline: small rotation (zoomed so no border shows), lighting, blur, noise."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI version check at import
    import albumentations as A
    import cv2

    return A.Compose(
        [
            # cos 5° + sin 5° = 1.083: a zoom of at least 1.09 keeps the rotated image free of borders.
            A.Affine(
                rotate=(-5, 5),
                scale=(1.09, 1.12),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.7,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.15, p=0.8),
            A.RandomGamma(gamma_limit=(85, 115), p=0.5),
            A.OneOf([A.GaussianBlur(sigma_limit=(0.3, 0.7)), A.MotionBlur(blur_limit=(3, 3))], p=0.2),
            A.GaussNoise(std_range=(0.002, 0.008), per_channel=True, p=0.4),
        ],
        seed=seed,
    )


# -- defects ------------------------------------------------------------------------------------


def _draw_defects(rng, height: int, width: int, scale: int, classes: tuple[str, ...]) -> list[_Defect]:
    """0-4 defects at well separated places, each drawn by the drawer of its class."""
    if not classes:
        return []
    count = int(rng.choice(len(DEFECT_COUNT_WEIGHTS), p=DEFECT_COUNT_WEIGHTS))
    light = rng.uniform(0, 2 * math.pi)  # direction the light comes from (dent and pit shading)
    centres: list[tuple[float, float]] = []
    defects = []
    for _ in range(count):
        class_name = classes[int(rng.integers(len(classes)))]
        for _attempt in range(12):
            cx, cy = rng.uniform(0.14, 0.86) * width, rng.uniform(0.14, 0.86) * height
            if all(math.hypot(cx - x, cy - y) > 0.2 * scale for x, y in centres):
                break
        centres.append((cx, cy))
        defect = _DRAWERS[class_name](rng, scale, cx, cy, light, height, width)
        if defect is not None and defect.mask.any():
            defects.append(defect)
    return defects


def _region(x_min, y_min, x_max, y_max, pad, height, width) -> tuple[int, int, int, int] | None:
    """Integer region (y0, x0, h, w) around a float extent, clipped to the image; None if outside."""
    x0, y0 = max(0, int(math.floor(x_min - pad))), max(0, int(math.floor(y_min - pad)))
    x1, y1 = min(width, int(math.ceil(x_max + pad)) + 1), min(height, int(math.ceil(y_max + pad)) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return y0, x0, y1 - y0, x1 - x0


def _grid(region) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (ys as column, xs as row) of a region, in image coordinates."""
    y0, x0, h, w = region
    return np.arange(y0, y0 + h, dtype=np.float32)[:, None], np.arange(x0, x0 + w, dtype=np.float32)[None, :]


def _stroke_canvas(region, polylines: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Anti-aliased strokes (points in image coordinates, thickness) as float32 coverage 0-1."""
    import cv2

    y0, x0, h, w = region
    canvas = np.zeros((h, w), np.uint8)
    for points, thickness in polylines:
        local = np.round((points - [x0, y0]) * 16).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [local], False, 255, int(thickness), cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) * np.float32(1 / 255)


def _finish(class_name, region, delta) -> _Defect:
    """The defect with its mask: pixels changed by at least VISIBLE_DELTA and VISIBLE_PEAK_SHARE of its peak change."""
    magnitude = np.abs(delta) if delta.ndim == 2 else np.abs(delta).max(axis=2)
    threshold = max(VISIBLE_DELTA, VISIBLE_PEAK_SHARE * float(magnitude.max()))
    return _Defect(class_name, region[0], region[1], delta.astype(np.float32), magnitude >= threshold)


def _scratch(rng, scale, cx, cy, light, height, width) -> _Defect | None:
    """Thin long bright or dark line at any angle, straight or gently curved, fading at its ends."""
    length = rng.uniform(0.15, 0.5) * scale
    angle = rng.uniform(0, math.pi)
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    bow = rng.uniform(-0.12, 0.12) * length if rng.random() < 0.6 else 0.0
    t = np.linspace(0, 1, 32)[:, None]
    start = np.array([cx, cy]) - direction * length / 2
    end = np.array([cx, cy]) + direction * length / 2
    control = np.array([cx, cy]) + normal * bow * 2
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    thickness = max(1, int(round(rng.uniform(0.7, 2.2) * scale / 640)))
    offset = normal * (thickness + 0.8)
    pad = thickness + 3
    region = _region(*(points.min(0) - np.abs(offset)), *(points.max(0) + np.abs(offset)), pad, height, width)
    if region is None:
        return None
    core = _stroke_canvas(region, [(points, thickness)])
    edge = _stroke_canvas(region, [(points + offset, 1)])

    ys, xs = _grid(region)
    along = np.clip(((xs - start[0]) * direction[0] + (ys - start[1]) * direction[1]) / length, 0, 1)
    knots = rng.uniform(0.45, 1.0, 7).astype(np.float32)
    strength = np.interp(along, np.linspace(0, 1, 7), knots).astype(np.float32)
    strength *= np.clip(np.sin(np.pi * along) * 2.5, 0.2, 1.0)
    amplitude = rng.choice([-1.0, 1.0], p=[0.4, 0.6]) * rng.uniform(35, 70)
    delta = (core - 0.35 * edge * (1 - core)) * strength * np.float32(amplitude)
    return _finish("scratch", region, delta)


def _dent(rng, scale, cx, cy, light, height, width) -> _Defect | None:
    """Soft elliptical depression: the wall facing the light is bright, the opposite wall in shadow."""
    a = rng.uniform(0.03, 0.08) * scale
    b = a * rng.uniform(0.55, 1.0)
    theta = rng.uniform(0, math.pi)
    extent = 2.6 * a
    region = _region(cx - extent, cy - extent, cx + extent, cy + extent, 1, height, width)
    if region is None:
        return None
    ys, xs = _grid(region)
    c, s = math.cos(theta), math.sin(theta)
    u = ((xs - cx) * c + (ys - cy) * s) / a
    v = (-(xs - cx) * s + (ys - cy) * c) / b
    bowl = np.exp(-(u * u + v * v))
    # Slope of the depression (gradient of -bowl) in the dent frame, dotted with the light direction.
    lu, lv = math.cos(light - theta), math.sin(light - theta)
    shading = bowl * (u * lu + v * lv * (a / b))
    shading /= max(float(np.abs(shading).max()), 1e-6)
    amplitude = rng.uniform(25, 50)
    delta = np.float32(amplitude) * shading - np.float32(amplitude * 0.12) * bowl
    return _finish("dent", region, delta)


def _pit(rng, scale, cx, cy, light, height, width) -> _Defect | None:
    """Cluster of small dark round cavities, each with a bright rim on the side facing the light."""
    count = int(rng.integers(1, 9))
    spread = rng.uniform(0.008, 0.03) * scale
    centres = np.array([cx, cy]) + rng.normal(0, spread, size=(count, 2))
    radii = np.maximum(1.3, rng.uniform(0.003, 0.008, size=count) * scale)
    pad = float(radii.max()) * 1.6 + 3
    region = _region(*centres.min(0), *centres.max(0), pad, height, width)
    if region is None:
        return None
    ys, xs = _grid(region)
    delta = np.zeros((region[2], region[3]), np.float32)
    depth = rng.uniform(55, 95)
    for (px, py), r in zip(centres, radii):
        dx, dy = xs - np.float32(px), ys - np.float32(py)
        dist = np.sqrt(dx * dx + dy * dy)
        inside = np.clip(np.float32(r) - dist + 0.5, 0, 1)  # anti-aliased disk
        cavity = inside * (0.55 + 0.45 * np.clip(1 - dist / np.float32(r), 0, 1))
        facing = np.clip((dx * math.cos(light) + dy * math.sin(light)) / np.maximum(dist, 1e-3), 0, 1)
        rim = np.exp(-(((dist - np.float32(r * 1.15)) / np.float32(0.45 + 0.25 * r)) ** 2)) * facing
        delta = np.minimum(delta, -np.float32(depth) * cavity) + np.float32(depth * 0.55) * rim * (1 - inside)
    return _finish("pit", region, delta)


def _crack(rng, scale, cx, cy, light, height, width) -> _Defect | None:
    """Dark jagged line from a random walk, with a few side branches and a faint dark halo."""
    import cv2

    step = max(2.0, 0.007 * scale)
    length = rng.uniform(0.12, 0.35) * scale
    heading = rng.uniform(0, 2 * math.pi)
    main = _jagged_walk(rng, np.zeros(2), heading, max(4, int(length / step)), step)
    main += np.array([cx, cy]) - (main.min(0) + main.max(0)) / 2
    thickness = max(1, int(round(rng.uniform(0.8, 1.8) * scale / 640)))
    strokes = [(main, thickness)]
    for _ in range(int(rng.integers(0, 4))):
        at = int(rng.integers(1, len(main) - 1))
        branch_heading = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        branch_steps = max(2, int(rng.uniform(0.15, 0.45) * len(main)))
        strokes.append((_jagged_walk(rng, main[at], branch_heading, branch_steps, step), 1))
    every = np.concatenate([p for p, _ in strokes])
    region = _region(*every.min(0), *every.max(0), thickness + 4, height, width)
    if region is None:
        return None
    line = _stroke_canvas(region, strokes)
    halo = cv2.GaussianBlur(line, (0, 0), 1.2)
    depth = rng.uniform(60, 105)
    delta = -np.float32(depth) * np.maximum(line, 0.3 * halo)
    return _finish("crack", region, delta)


def _jagged_walk(rng, start: np.ndarray, heading: float, steps: int, step: float) -> np.ndarray:
    """Points of a walk that zig-zags around ``heading`` (points in image coordinates)."""
    turns = rng.normal(0, 0.45, size=steps)
    angles = heading + np.cumsum(turns) * 0.35 + turns  # slow drift plus sharp zig-zag
    lengths = step * rng.uniform(0.6, 1.4, size=steps)
    moves = np.stack([np.cos(angles) * lengths, np.sin(angles) * lengths], axis=1)
    return np.vstack([start, start + np.cumsum(moves, axis=0)])


def _stain(rng, scale, cx, cy, light, height, width) -> _Defect | None:
    """Irregular low-contrast blob: a water mark (darker ring at its edge) or an oily brownish film."""
    import cv2

    radius = rng.uniform(0.04, 0.12) * scale
    aspect = rng.uniform(0.6, 1.0)
    theta = rng.uniform(0, math.pi)
    region = _region(cx - 1.5 * radius, cy - 1.5 * radius, cx + 1.5 * radius, cy + 1.5 * radius, 1, height, width)
    if region is None:
        return None
    ys, xs = _grid(region)
    c, s = math.cos(theta), math.sin(theta)
    u = ((xs - cx) * c + (ys - cy) * s) / radius
    v = (-(xs - cx) * s + (ys - cy) * c) / (radius * aspect)
    wobble = cv2.resize(
        rng.standard_normal((6, 6)).astype(np.float32), (region[3], region[2]), interpolation=cv2.INTER_CUBIC
    )
    field = 1 - (u * u + v * v) + 0.3 * wobble
    body = np.clip((field - 0.25) / 0.3, 0, 1) * np.clip(0.8 + 0.25 * wobble[::-1, ::-1], 0.5, 1.0)
    amplitude = np.float32(rng.uniform(14, 30))
    if rng.random() < 0.5:  # water mark: faint grey body, darker rim where the drop dried
        ring = np.exp(-(((field - 0.27) / 0.07) ** 2)) * (field > 0.1)
        lum = -(0.6 * body + 0.8 * ring) * amplitude
        delta = lum[:, :, None] * np.array([1.05, 1.0, 0.95], np.float32)
    else:  # oily film: darker and warmer (blue drops most, red least)
        tone = np.array([-1.0, -0.65, -0.25], np.float32) * np.float32(rng.uniform(0.8, 1.2))
        delta = (body * amplitude)[:, :, None] * tone
    return _finish("stain", region, delta.astype(np.float32))


_DRAWERS = {"scratch": _scratch, "dent": _dent, "pit": _pit, "crack": _crack, "stain": _stain}
