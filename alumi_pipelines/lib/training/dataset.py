"""The YOLO dataset a training run reads: checked before training starts, linked into the run's folder."""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

SPLITS = ("train", "val", "test")


IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}


class DatasetError(ValueError):
    """A YOLO dataset that cannot be trained on (missing/empty split, class without examples, bad label)."""


class WeightsError(ValueError):
    """Base weights that are missing or not a YOLO checkpoint."""


@dataclass(frozen=True)
class DatasetSummary:
    root: Path
    data_yaml: Path
    classes: list[str]
    images: dict[str, int]  # split -> image count
    boxes: dict[str, dict[str, int]]  # split -> class -> boxes


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def read_names(data_yaml: Path) -> list[str]:
    try:
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"{data_yaml}: cannot read data.yaml ({exc})") from exc
    names = data.get("names")
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{data_yaml}: 'names' keys must be class ids 0..n-1") from exc
        if ids != list(range(len(ids))):
            raise DatasetError(f"{data_yaml}: 'names' ids must be 0..{len(ids) - 1}, got {ids}")
        names = [str(names[k] if k in names else names[str(k)]) for k in ids]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{data_yaml}: 'names' must list at least one class")
    return [str(n) for n in names]


def check_yolo_dataset(root: Path) -> DatasetSummary:
    """Check a YOLO folder (data.yaml, images/ and labels/ per split) can be trained and tested on.

    Fails naming the problem: a missing or empty split, a class with no box in train, a malformed label line.
    """
    root = Path(root)
    data_yaml = root / "data.yaml"
    if not data_yaml.is_file():
        raise DatasetError(f"{data_yaml}: missing (the gold dataset has no data.yaml)")
    classes = read_names(data_yaml)
    images: dict[str, int] = {}
    boxes: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        folder = root / "images" / split
        files = image_files(folder)
        if not folder.is_dir():
            raise DatasetError(f"split {split!r}: folder {folder} is missing")
        if not files:
            raise DatasetError(f"split {split!r}: no images in {folder}")
        images[split] = len(files)
        counts = {c: 0 for c in classes}
        for image in files:
            label = root / "labels" / split / image.relative_to(folder).with_suffix(".txt")
            if not label.is_file():
                continue  # an image without a label file is a background image
            for lineno, line in enumerate(label.read_text(encoding="utf-8").splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 5:
                    raise DatasetError(f"{label}:{lineno}: expected 'class x y w h', got {line!r}")
                try:
                    class_id = int(parts[0])
                    coords = [float(v) for v in parts[1:]]
                except ValueError as exc:
                    raise DatasetError(f"{label}:{lineno}: not numbers: {line!r}") from exc
                if not 0 <= class_id < len(classes):
                    raise DatasetError(
                        f"{label}:{lineno}: class id {class_id} is not in data.yaml names (0..{len(classes) - 1})"
                    )
                if not all(0.0 <= v <= 1.0 for v in coords):
                    raise DatasetError(f"{label}:{lineno}: coordinates must be normalised to [0, 1]: {line!r}")
                counts[classes[class_id]] += 1
        boxes[split] = counts
    missing = [c for c in classes if boxes["train"][c] == 0]
    if missing:
        raise DatasetError(
            f"class(es) {', '.join(repr(c) for c in missing)} have no examples in the train split "
            f"of {root}: the model cannot learn them"
        )
    return DatasetSummary(root=root, data_yaml=data_yaml, classes=classes, images=images, boxes=boxes)


def link_yolo_dataset(source: Path, dest: Path) -> Path:
    """Mirror a YOLO folder into ``dest`` (hard links, else symlinks, else copies) with an absolute data.yaml.

    Training writes label caches next to the labels; linking per file keeps those writes in ``dest``
    and the source (e.g. the lake's gold folder) untouched. Returns the new data.yaml.
    """
    source, dest = Path(source).resolve(), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for kind in ("images", "labels"):
        for split in SPLITS:
            folder = source / kind / split
            if not folder.is_dir():
                continue
            (dest / kind / split).mkdir(parents=True, exist_ok=True)
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if path.suffix == ".cache":
                    continue
                target = dest / kind / split / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists() or target.is_symlink():
                    target.unlink()
                try:
                    os.link(path, target)  # a hard link: the file outlives the source folder (a cache evicting it)
                except OSError:
                    try:
                        target.symlink_to(path)
                    except OSError:
                        shutil.copyfile(path, target)
    data = (
        yaml.safe_load((source / "data.yaml").read_text(encoding="utf-8")) if (source / "data.yaml").is_file() else {}
    )
    data = dict(data or {})
    data["path"] = str(dest.resolve())
    for split in SPLITS:
        data[split] = f"images/{split}"
    data_yaml = dest / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return data_yaml


def check_base_weights(path: str | Path) -> Path:
    """The path of a YOLO checkpoint, or WeightsError saying why it is not one (without unpickling it)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"base weights {path}: file does not exist")
    if not path.is_file():
        raise WeightsError(f"base weights {path}: is not a file")
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"base weights {path}: not a YOLO checkpoint (not a PyTorch .pt archive)")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if not pickles:
            raise WeightsError(f"base weights {path}: not a YOLO checkpoint (no pickled model in the archive)")
        payload = archive.read(pickles[0])
    if b"ultralytics.nn.tasks" not in payload:
        raise WeightsError(
            f"base weights {path}: a PyTorch file, but not a YOLO checkpoint (no ultralytics model inside)"
        )
    return path.resolve()
