"""A tiny synthetic gold dataset (textured plates with bright/dark defects) written through the Lake.

Follows the gold contract: ``gold/datasets/<hash>/`` with YOLO images/labels per split, ``data.yaml``,
``labels.parquet`` (the canonical label table), ``manifest.parquet``, and the ``gold/current.json`` pointer.
Benchmarks reuse it for their data.
"""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import polars as pl
import yaml

TINY_CLASSES = ("scratch", "dent", "pit")


def _plate(rng: np.random.Generator, size: int) -> np.ndarray:
    """A brushed-metal grey background: horizontal streaks plus noise."""
    base = rng.integers(95, 135)
    streaks = rng.normal(0, 6, size=(size, 1)).repeat(size, axis=1)
    noise = rng.normal(0, 5, size=(size, size))
    grey = np.clip(base + streaks + noise, 0, 255).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


def _draw(img: np.ndarray, class_id: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Draw one defect of a class; returns its YOLO box (normalised centre x, y, width, height)."""
    size = img.shape[0]
    if class_id == 0:  # scratch: long thin bright bar
        w, h = int(rng.integers(size // 3, size // 2)), int(rng.integers(4, 7))
        if rng.random() < 0.5:
            w, h = h, w
        x0, y0 = int(rng.integers(2, size - w - 2)), int(rng.integers(2, size - h - 2))
        cv2.rectangle(img, (x0, y0), (x0 + w - 1, y0 + h - 1), (235, 235, 235), -1)
    elif class_id == 1:  # dent: large dark ellipse
        w, h = int(rng.integers(size // 5, size // 3)), int(rng.integers(size // 5, size // 3))
        x0, y0 = int(rng.integers(2, size - w - 2)), int(rng.integers(2, size - h - 2))
        cv2.ellipse(img, (x0 + w // 2, y0 + h // 2), (w // 2, h // 2), 0, 0, 360, (30, 30, 30), -1)
    else:  # pit: small bright disc with a dark rim
        r = int(rng.integers(size // 14, size // 9))
        w = h = 2 * r + 1
        x0, y0 = int(rng.integers(2, size - w - 2)), int(rng.integers(2, size - h - 2))
        cv2.circle(img, (x0 + r, y0 + r), r, (20, 20, 20), -1)
        cv2.circle(img, (x0 + r, y0 + r), max(1, r - 2), (250, 250, 250), -1)
    return (x0 + w / 2) / size, (y0 + h / 2) / size, w / size, h / size


def draw_tiny_images(n_images: int, size: int, classes: tuple[str, ...], seed: int) -> list[tuple[bytes, str]]:
    """(PNG bytes, YOLO label text) per image; classes rotate so each appears in every stretch of images."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_images):
        img = _plate(rng, size)
        lines = []
        for k in range(1 + i % 2):
            class_id = (i + k) % len(classes)
            x, y, w, h = _draw(img, class_id, rng)
            lines.append(f"{class_id} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n")
        ok, png = cv2.imencode(".png", img)
        assert ok
        out.append((png.tobytes(), "".join(lines)))
    return out


def write_tiny_gold(
    lake,
    *,
    n_images: int = 24,
    size: int = 96,
    classes: tuple[str, ...] = TINY_CLASSES,
    split_sizes: tuple[int, int, int] | None = None,
    seed: int = 0,
    layout: str = "copies",
) -> dict:
    """Write a synthetic gold dataset and its pointer into the lake; returns the pointer.

    ``layout="copies"``: images and label files copied into the version's folder (versions written before
    manifests); ``"manifest"``: images in processed/ and a manifest naming them with their sha256, laid out as
    ``gold_dataset`` wrote such versions before it left out what is derivable (paths and image keys in the
    manifest, labels keyed by image_id, list files in the folder): versions every reader still reads."""
    from alumi_pipelines.lib.vision import gold
    from alumi_pipelines.resources import lake_keys

    n_test = max(len(classes), n_images // 6)
    n_val = max(len(classes), n_images // 6)
    split_sizes = split_sizes or (n_images - n_val - n_test, n_val, n_test)
    assert sum(split_sizes) == n_images, "split sizes must add up to n_images"
    images = draw_tiny_images(n_images, size, classes, seed)
    splits = ["train"] * split_sizes[0] + ["val"] * split_sizes[1] + ["test"] * split_sizes[2]
    digest = hashlib.sha256()
    for (png, label), split in zip(images, splits):
        digest.update(png + label.encode() + split.encode())
    dataset_hash = digest.hexdigest()[:16]
    prefix = f"gold/datasets/{dataset_hash}"
    rows, label_rows = [], []
    class_counts = {s: {c: 0 for c in classes} for s in ("train", "val", "test")}
    for (png, label), split in zip(images, splits):
        image_id = hashlib.sha256(png).hexdigest()
        if layout == "copies":
            lake.write_bytes(f"{prefix}/images/{split}/{image_id}.png", png)
            lake.write_bytes(f"{prefix}/labels/{split}/{image_id}.txt", label.encode())
        else:
            lake.write_bytes(lake_keys.processed_image_key(image_id), png)
        for line in label.splitlines():
            class_id, x, y, w, h = line.split()
            class_counts[split][classes[int(class_id)]] += 1
            label_rows.append(
                {
                    "image_id": image_id,
                    "split": split,
                    "class_id": int(class_id),
                    "class_name": classes[int(class_id)],
                    "x_center": float(x),
                    "y_center": float(y),
                    "width": float(w),
                    "height": float(h),
                }
            )
        rows.append(
            {
                "image_id": image_id,
                "split": split,
                "file": f"images/{split}/{image_id}.png",
                "label_file": f"labels/{split}/{image_id}.txt",
                "width": size,
                "height": size,
                "n_boxes": len(label.splitlines()),
                "classes": ",".join(sorted({classes[int(line.split()[0])] for line in label.splitlines()})),
                **(
                    {"image_key": lake_keys.processed_image_key(image_id), "sha256": image_id, "bytes": len(png)}
                    if layout == "manifest"
                    else {}
                ),
            }
        )
    data_yaml = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": dict(enumerate(classes)),
    }
    if layout == "manifest":
        data_yaml = gold.data_yaml_doc(list(classes))
        for split, name in gold.LIST_FILES.items():
            lake.write_bytes(f"{prefix}/{name}", gold.list_file_text(pl.DataFrame(rows), split).encode())
    lake.write_bytes(f"{prefix}/data.yaml", yaml.safe_dump(data_yaml, sort_keys=False).encode())
    label_schema = {"image_id": pl.Utf8, "split": pl.Utf8, "class_id": pl.Int32, "class_name": pl.Utf8}
    label_schema.update({c: pl.Float64 for c in ("x_center", "y_center", "width", "height")})
    lake.write_table(f"{prefix}/labels.parquet", pl.DataFrame(label_rows, schema=label_schema, orient="row"))
    lake.write_table(f"{prefix}/manifest.parquet", pl.DataFrame(rows))
    pointer = {
        "dataset_hash": dataset_hash,
        "prefix": prefix,
        "classes": list(classes),
        "counts": dict(zip(("train", "val", "test"), split_sizes)),
        "class_counts": class_counts,
    }
    lake.write_bytes("gold/current.json", json.dumps(pointer, indent=2).encode())
    return pointer
