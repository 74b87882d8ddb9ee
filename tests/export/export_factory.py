"""Test data of the export stage: a synthetic gold dataset written through the Lake, a champion with decisive scores."""

from __future__ import annotations

import hashlib
import json

CLASSES = ("scratch", "dent", "pit")
IMGSZ = 96
SPLITS = {"train": 14, "val": 5, "test": 5}
# Not square: letterboxed with 3-pixel bands, thinner than the distance to the first anchor (see sharpen_detect_head).
IMAGE_W, IMAGE_H = 128, 120
# Small runs for tests: fewer timed calls than the production defaults.
FAST_CONFIG = {"onnx_int8_model": {"config": {"latency_runs": 10}}}


def write_synth_gold(lake, seed: int = 7) -> dict:
    """A YOLO gold dataset of synthetic aluminium images (lib.synth) with its manifest and pointer."""
    import polars as pl
    import yaml

    from alumi_pipelines.lib.vision.synth import encode_image, render_image
    from alumi_pipelines.resources import lake_keys

    rows, digest, index = [], hashlib.sha256(), 0
    files: list[tuple[str, bytes, bytes]] = []
    for split, count in SPLITS.items():
        for _ in range(count):
            rendered = render_image(seed * 1000 + index, IMAGE_W, IMAGE_H, classes=CLASSES)
            index += 1
            png = encode_image(rendered.image, "png")
            label = "".join(
                f"{CLASSES.index(b['class_name'])} {b['x_center']:.6f} {b['y_center']:.6f} "
                f"{b['width']:.6f} {b['height']:.6f}\n"
                for b in rendered.boxes
            ).encode()
            image_id = hashlib.sha256(png).hexdigest()
            files.append((split, png, label))
            digest.update(png + label + split.encode())
            rows.append(
                {
                    "image_id": image_id,
                    "split": split,
                    "file": f"images/{split}/{image_id}.png",
                    "label_file": f"labels/{split}/{image_id}.txt",
                    "n_boxes": len(rendered.boxes),
                }
            )
    dataset_hash = digest.hexdigest()[:16]
    prefix = lake_keys.gold_prefix(dataset_hash)
    for (_split, png, label), row in zip(files, rows):
        lake.write_bytes(lake_keys.gold_file_key(prefix, row["file"]), png)
        lake.write_bytes(lake_keys.gold_file_key(prefix, row["label_file"]), label)
    data_yaml = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": dict(enumerate(CLASSES)),
    }
    lake.write_bytes(lake_keys.gold_data_yaml_key(prefix), yaml.safe_dump(data_yaml, sort_keys=False).encode())
    lake.write_table(lake_keys.gold_manifest_key(prefix), pl.DataFrame(rows))
    pointer = {"dataset_hash": dataset_hash, "prefix": prefix, "classes": list(CLASSES), "counts": dict(SPLITS)}
    lake.write_bytes(lake_keys.GOLD_POINTER, json.dumps(pointer, indent=2).encode())
    return pointer


def sharpen_detect_head(weights, out, seed: int = 0):
    """A copy of a YOLO checkpoint whose Detect head gives every anchor its own confident score and a small box.

    A detector trained for a few epochs on a couple of dozen images still outputs its prior: scores near
    0.001, equal for most anchors, and boxes that cover the image, so two runtimes' NMS results differ only
    by how they break ties. Seeded class weights (std 2, bias 0) give scores of about 0.5-0.9 that differ per
    anchor and class; box weights that favour the first DFL bin give boxes about 1.5 strides wide, which
    barely overlap, so NMS keeps each one and a box-by-box comparison tests the numbers, not tie-breaking.
    """
    import torch

    ckpt = torch.load(weights, weights_only=False)
    model = ckpt.get("ema") or ckpt["model"]
    head = model.model[-1]
    generator = torch.Generator().manual_seed(seed)

    def noise(shape, std):
        return torch.randn(shape, generator=generator, dtype=torch.float32) * std

    with torch.no_grad():
        for branch in head.cv3:
            conv = branch[-1]
            conv.weight.copy_(noise(conv.weight.shape, 2.0).to(conv.weight.dtype))
            conv.bias.fill_(0.0)
        for branch in head.cv2:
            conv = branch[-1]
            conv.weight.copy_(noise(conv.weight.shape, 0.05).to(conv.weight.dtype))
            bias = torch.zeros(conv.bias.shape)
            bias[:: head.reg_max] = 5.0  # the first of each side's reg_max bins
            conv.bias.copy_(bias.to(conv.bias.dtype))
    ckpt["model"], ckpt["ema"] = model, None
    torch.save(ckpt, out)
    return out
