"""YOLO: one ``<stem>.txt`` per image (``class x_center y_center width height`` or polygons), class names
from the caller, classes.txt / *.names or an Ultralytics data.yaml."""

from __future__ import annotations

from pathlib import PurePosixPath

from alumi_pipelines.lib.vision.formats.model import SourceBox
from alumi_pipelines.lib.vision.formats.pairing import Batch, Record
from alumi_pipelines.lib.vision.formats.values import bounding, finite_number, size_problem

_YOLO_CLASS_FILES = ("classes.txt", "class.txt", "class_names.txt", "obj.names", "classes.names")
_YOLO_LIST_FILES = ("train.txt", "val.txt", "valid.txt", "test.txt", "trainval.txt")
_TEXT_FILES_IGNORED = ("readme", "license", "licence", "notes", "changelog")


def _yolo_class_names(batch: Batch, given: list[str] | None) -> tuple[list[str] | None, str]:
    """Class names by id: the caller's, else classes.txt / *.names / data.yaml (shallowest first)."""
    found: list[tuple[str, list[str]]] = []
    for path in sorted(batch.files, key=lambda p: (p.count("/"), p)):
        name = PurePosixPath(path).name.lower()
        names: list[str] | None = None
        if name in _YOLO_CLASS_FILES or name.endswith(".names"):
            batch.claim(path)
            text = batch.read_text(path)
            if text is None:
                continue
            names = [line.strip() for line in text.splitlines() if line.strip()]
        elif name.endswith((".yaml", ".yml")):
            batch.claim(path)
            names = _yaml_names(batch, path)
        if names:
            found.append((path, names))
    if given is not None:
        for path, names in found:
            if names != given:
                batch.notes.append(
                    f"{path}: class names differ from the batch's declared classes; using the declared ones"
                )
        return given, "the batch's classes"
    if not found:
        batch.notes.append(
            "no classes.txt or data.yaml: YOLO class ids are kept as numbers (map them with class aliases)"
        )
        return None, ""
    chosen_path, chosen = found[0]
    for path, names in found[1:]:
        if names != chosen:
            batch.notes.append(f"{path}: class names differ from {chosen_path}; using {chosen_path}")
    return chosen, PurePosixPath(chosen_path).name


def _yaml_names(batch: Batch, path: str) -> list[str] | None:
    """The ``names`` of an Ultralytics data.yaml (list or {id: name}), or None."""
    import yaml

    text = batch.read_text(path)
    if text is None:
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        batch.reject(path, f"not valid YAML: {str(exc).splitlines()[0]}")
        return None
    names = doc.get("names") if isinstance(doc, dict) else None
    if names is None:
        return None
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            batch.reject(path, "'names' keys must be class ids (integers)")
            return None
        if ids != list(range(len(ids))):
            batch.reject(path, f"'names' ids must be 0..{len(ids) - 1} without gaps, got {ids}")
            return None
        return [str(names[k] if k in names else names[str(k)]) for k in ids]
    if isinstance(names, list):
        return [str(n) for n in names]
    batch.reject(path, "'names' must be a list or a mapping of id to name")
    return None


def _is_yolo_label_file(batch: Batch, path: str) -> bool:
    pure = PurePosixPath(path)
    name = pure.name.lower()
    if name in _YOLO_CLASS_FILES:
        return False
    if pure.stem in batch.by_stem:
        return True
    return name not in _YOLO_LIST_FILES and not name.startswith(_TEXT_FILES_IGNORED)


def parse_yolo(batch: Batch, class_names: list[str] | None) -> None:
    names, names_source = _yolo_class_names(batch, class_names)
    batch.class_names = names
    for path in batch.with_suffix(".txt"):
        if not _is_yolo_label_file(batch, path):
            continue
        batch.claim(path)
        image, reason = batch.pair_by_stem(path)
        if image is None:
            batch.reject(path, f"label file has no image: {reason}")
            continue
        text = batch.read_text(path)
        if text is None:
            batch.hold_out_unreadable(path)
            continue
        boxes: list[SourceBox] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            box, problem = _yolo_line(fields, f"label line {lineno}", names, names_source)
            if problem:
                batch.reject(path, f"label line {lineno}: {problem}")
            else:
                boxes.append(box)
        batch.add(Record(path, image, boxes, origin=path))


def _yolo_line(
    fields: list[str], origin: str, names: list[str] | None, names_source: str
) -> tuple[SourceBox | None, str | None]:
    """A box from one YOLO line (box ``c x y w h`` or polygon ``c x1 y1 x2 y2 ...``), or the problem."""
    n = len(fields)
    if n != 5 and (n < 7 or n % 2 == 0):
        return None, (
            f"{n} fields; expected 5 (class x_center y_center width height) or a polygon (class x1 y1 x2 y2 x3 y3 ...)"
        )
    class_value = finite_number(fields[0])
    if class_value is None or class_value < 0 or not class_value.is_integer():
        return None, f"class id {fields[0]!r} is not a non-negative integer"
    class_id = int(class_value)
    if names is not None and class_id >= len(names):
        return None, f"class id {class_id} not in {names_source} ({len(names)} names)"
    values = []
    for token in fields[1:]:
        value = finite_number(token)
        if value is None:
            return None, f"{token!r} is not a finite number"
        values.append(value)
    if n == 5:
        xc, yc, w, h = values
        if w <= 0 or h <= 0:
            return None, f"zero or negative box size (width {w:g}, height {h:g})"
        x1, y1, x2, y2 = xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
    else:
        x1, y1, x2, y2 = bounding(list(zip(values[0::2], values[1::2])))
        problem = size_problem(x1, y1, x2, y2)
        if problem:
            return None, f"polygon has {problem}"
    if names is not None:
        origin = f"{origin} ({names[class_id]})"
    return SourceBox(str(class_id), x1, y1, x2, y2, True, origin), None
