"""Label-format importers: YOLO, Pascal VOC, COCO, LabelMe and the native "alumi" sidecars.

Every parser turns a landing batch (a listing of relative POSIX paths plus a byte reader) into one
intermediate form: an ``AnnotatedImage`` per image file with the boxes as the source wrote them, and
a ``Rejection`` per bad record. ``to_canonical_rows`` then resolves classes, normalises and checks
the boxes against the image's real size and emits rows of the canonical label table. No image is
decoded here: the caller supplies real sizes.

Pairing an annotation with its image: by the name the annotation gives (VOC ``<filename>``, COCO
``file_name``, LabelMe ``imagePath``, alumi ``image``), matched on relative path first and then on
base name, or by stem (YOLO, or when no name is given). Several candidates are told apart by folder
structure (``labels/x/a.txt`` belongs to ``images/x/a.jpg``); what stays ambiguous is rejected.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Callable, Iterable, Mapping, Sequence

from alumi_pipelines.lib.labels import ClassMap, UnknownClassError

FORMATS = ("alumi", "yolo", "voc", "coco", "labelme")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

BATCH_MANIFEST = "_batch.json"
EDGE_TOLERANCE = 0.02  # boxes may stick out of the image by this fraction of its side; they are clipped
SUBPIXEL = 0.5  # overshoot below this many pixels is coordinate rounding: clipped without a note
MATCH_IOU = 0.5  # two label sets of one image agree when every box has a same-class partner this close

_YOLO_CLASS_FILES = ("classes.txt", "class.txt", "class_names.txt", "obj.names", "classes.names")
_YOLO_LIST_FILES = ("train.txt", "val.txt", "valid.txt", "test.txt", "trainval.txt")
_TEXT_FILES_IGNORED = ("readme", "license", "licence", "notes", "changelog")
# Folder names that only say "this holds labels" or "this holds images": equal for pairing purposes.
_ROLE_DIRS = frozenset(
    "labels label annotations annotation anno annos ann xml xmls yolo voc coco labelme txt "
    "images image imgs img jpegimages pictures photos pics".split()
)
_DRIVE = re.compile(r"^[A-Za-z]:")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CLIMBS = "climbs out of its folder with '..'"


@dataclass(frozen=True)
class SourceBox:
    """One box as the source wrote it: corners, in pixels or as fractions of the image."""

    class_name: str  # name as written; for YOLO the numeric id as a string
    x1: float
    y1: float
    x2: float
    y2: float
    normalised: bool  # True: fractions of the image; False: pixels
    origin: str = ""  # where in the annotation file, e.g. "label line 3", "object 2", "annotation id 17"


@dataclass
class AnnotatedImage:
    image_path: str  # POSIX path of the image relative to the batch root
    annotation_path: str  # the annotation file the boxes came from ("" if none)
    labelled: bool  # False when no annotation exists for the image (not a background claim)
    boxes: list[SourceBox]
    declared_width: int | None = None
    declared_height: int | None = None
    declared_channels: int | None = None
    extra: dict = field(default_factory=dict)  # e.g. line_id, camera_id, captured_at (native format)


@dataclass(frozen=True)
class Rejection:
    path: str  # the offending file (relative)
    reason: str  # names the rule broken


@dataclass
class ParseResult:
    images: list[AnnotatedImage]
    rejections: list[Rejection]
    notes: list[str]
    class_names: list[str] | None = None  # YOLO: names by class id (classes.txt, data.yaml or the caller's)


# --------------------------------------------------------------------------------------------------
# Public entry points


def parse_batch(
    fmt: str,
    files: Sequence[str],
    read: Callable[[str], bytes],
    class_names: Sequence[str] | None = None,
) -> ParseResult:
    """Parse every annotation of a landing batch in ``fmt``; one AnnotatedImage per image file."""
    if fmt not in FORMATS:
        raise ValueError(f"label format {fmt!r} is not one of {', '.join(FORMATS)}")
    batch = _Batch(files, read)
    {
        "yolo": _parse_yolo,
        "voc": _parse_voc,
        "coco": _parse_coco,
        "labelme": _parse_labelme,
        "alumi": _parse_alumi,
    }[fmt](batch, list(class_names) if class_names is not None else None)
    return batch.result()


def source_class_map(class_map: ClassMap, class_names: Sequence[str] | None) -> ClassMap:
    """The class map to resolve a parse result's boxes with: YOLO ids aliased through its names."""
    return class_map.with_id_aliases(class_names) if class_names else class_map


def to_canonical_rows(
    image: AnnotatedImage,
    width: int,
    height: int,
    channels: int,
    class_map: ClassMap,
    *,
    image_id: str,
    source: str,
    batch: str,
) -> tuple[list[dict], list[Rejection], list[str]]:
    """Canonical label rows of one image, normalised by its real size; bad boxes become rejections."""
    if width <= 0 or height <= 0:
        raise ValueError(f"{image.image_path}: real image size must be positive, got {width}x{height}")
    rows: list[dict] = []
    rejections: list[Rejection] = []
    notes: list[str] = []
    where = image.annotation_path or image.image_path
    declared = (image.declared_width, image.declared_height)
    if None not in declared and declared != (width, height):
        swapped = " (width and height swapped: EXIF rotation?)" if declared == (height, width) else ""
        notes.append(
            f"{where}: declares {declared[0]}x{declared[1]} for {image.image_path}, the image is "
            f"{width}x{height}; boxes are normalised by the image's size{swapped}"
        )
    if image.declared_channels is not None and image.declared_channels != channels:
        notes.append(
            f"{where}: declares {image.declared_channels} channels for {image.image_path}, "
            f"the image has {channels}; using the image's"
        )
    seen: set[tuple] = set()
    for number, box in enumerate(image.boxes, 1):
        label = box.origin or f"box {number}"
        try:
            class_name, class_id = class_map.resolve(box.class_name)
        except UnknownClassError as exc:
            rejections.append(Rejection(where, f"{label}: {exc.args[0]}"))
            continue
        x1, y1, x2, y2 = box.x1, box.y1, box.x2, box.y2
        if not box.normalised:
            x1, x2, y1, y2 = x1 / width, x2 / width, y1 / height, y2 / height
        if not (x2 > x1 and y2 > y1):
            rejections.append(Rejection(where, f"{label}: zero or negative box size"))
            continue
        over_x = max(0.0, -x1, x2 - 1.0)
        over_y = max(0.0, -y1, y2 - 1.0)
        if max(over_x, over_y) > EDGE_TOLERANCE:
            hint = ""
            if box.normalised and max(abs(box.x1), abs(box.y1), abs(box.x2), abs(box.y2)) > 2:
                hint = "; coordinates must be fractions of the image, these look like pixels"
            rejections.append(
                Rejection(
                    where,
                    f"{label}: box extends {100 * max(over_x, over_y):.1f}% of the image outside it "
                    f"(limit {100 * EDGE_TOLERANCE:g}%){hint}",
                )
            )
            continue
        over_px = max(over_x * width, over_y * height)
        if over_px > 0:
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0)
            if not (x2 > x1 and y2 > y1):
                rejections.append(Rejection(where, f"{label}: box lies outside the image (nothing left after clipping)"))
                continue
            if over_px >= SUBPIXEL:
                notes.append(f"{where}: {label}: box clipped to the image (it extended {over_px:.1f} px outside)")
        key = (class_id, round(x1, 6), round(y1, 6), round(x2, 6), round(y2, 6))
        if key in seen:
            notes.append(f"{where}: {label}: exact duplicate of an earlier {class_name} box, dropped")
            continue
        seen.add(key)
        rows.append(
            {
                "image_id": image_id,
                "class_name": class_name,
                "class_id": class_id,
                "x_center": (x1 + x2) / 2,
                "y_center": (y1 + y2) / 2,
                "width": x2 - x1,
                "height": y2 - y1,
                "source": source,
                "source_file": image.annotation_path,
                "batch": batch,
            }
        )
    return rows, rejections, notes


def merge_identical_images(
    images: Sequence[AnnotatedImage], image_ids: Mapping[str, str]
) -> tuple[list[AnnotatedImage], list[Rejection], list[str]]:
    """Keep one AnnotatedImage per image_id (content hash) when several files hold the same bytes.

    Copies whose label sets agree (same classes, every box matched at IoU >= MATCH_IOU) keep the first
    copy's labels (by path) and are noted. Copies whose labels disagree are duplicate annotations of one
    image: each annotation is rejected and the image is kept unlabelled. Images missing from
    ``image_ids`` (e.g. rejected as unreadable) pass through unchanged.
    """
    groups: dict[str, list[AnnotatedImage]] = defaultdict(list)
    for image in images:
        groups[image_ids.get(image.image_path) or f"path:{image.image_path}"].append(image)
    kept: list[AnnotatedImage] = []
    rejections: list[Rejection] = []
    notes: list[str] = []
    for copies in groups.values():
        copies = sorted(copies, key=lambda im: im.image_path)
        first = copies[0]
        if len(copies) == 1:
            kept.append(first)
            continue
        labelled = [im for im in copies if im.labelled]
        others = ", ".join(im.image_path for im in copies[1:])
        if len(labelled) <= 1 or all(_labels_agree(labelled[0], im) for im in labelled[1:]):
            chosen = labelled[0] if labelled else first
            kept.append(chosen)
            rest = ", ".join(im.image_path for im in copies if im is not chosen)
            notes.append(
                f"{chosen.image_path}: byte-identical copies {rest} kept once"
                + (" (their labels agree; kept this copy's)" if len(labelled) > 1 else "")
            )
            continue
        names = [im.image_path for im in copies]
        for im in labelled:
            rejections.append(
                Rejection(
                    im.annotation_path,
                    f"duplicate annotations: {im.image_path} is byte-identical to "
                    f"{', '.join(n for n in names if n != im.image_path)} and their labels disagree",
                )
            )
        kept.append(AnnotatedImage(first.image_path, "", False, [], extra=dict(first.extra)))
        notes.append(f"{first.image_path}: byte-identical copies {others} with conflicting labels: kept unlabelled")
    kept.sort(key=lambda im: im.image_path)
    return kept, rejections, notes


def path_trick(name: str) -> str | None:
    """Why a file name written in an annotation is unsafe ("..", absolute, drive letter, NUL, URL), or None."""
    if "\x00" in name:
        return "contains a NUL character"
    if _URL.match(name):
        return "is a URL, not a file in the batch"
    if _DRIVE.match(name):
        return "is an absolute Windows path (drive letter)"
    posix = name.replace("\\", "/")
    if posix.startswith("/"):
        return "is an absolute path"
    if ".." in posix.split("/"):
        return _CLIMBS
    return None


# --------------------------------------------------------------------------------------------------
# The batch: file index, pairing and the records parsers produce


@dataclass
class _Record:
    annotation_path: str
    image_path: str
    boxes: list[SourceBox]
    origin: str  # names the record in messages ("images entry id 3 of a.json")
    declared_width: int | None = None
    declared_height: int | None = None
    declared_channels: int | None = None
    extra: dict = field(default_factory=dict)


class _Batch:
    """The listing of one batch, indexed for pairing, plus what the parser found so far."""

    def __init__(self, files: Iterable[str], read: Callable[[str], bytes]) -> None:
        self.read_bytes = read
        self.rejections: list[Rejection] = []
        self.notes: list[str] = []
        self.records: list[_Record] = []
        self.class_names: list[str] | None = None
        self.default_extra: Callable[[str], dict] = lambda path: {}
        self.files: list[str] = []
        junk = 0
        for raw in files:
            if not raw.strip("/"):
                continue
            path = str(PurePosixPath(raw.lstrip("/")))
            if path.startswith("__MACOSX/") or PurePosixPath(path).name.startswith("._"):
                junk += 1
                continue
            if path != BATCH_MANIFEST:
                self.files.append(path)
        self.files.sort()
        if junk:
            self.notes.append(f"ignored {junk} macOS resource-fork files (__MACOSX/, ._*)")
        self.images = [p for p in self.files if PurePosixPath(p).suffix.lower() in IMAGE_SUFFIXES]
        self.image_set = set(self.images)
        self.by_stem: dict[str, list[str]] = defaultdict(list)
        self.by_name: dict[str, list[str]] = defaultdict(list)
        self.by_name_lower: dict[str, list[str]] = defaultdict(list)
        for path in self.images:
            pure = PurePosixPath(path)
            self.by_stem[pure.stem].append(path)
            self.by_name[pure.name].append(path)
            self.by_name_lower[pure.name.lower()].append(path)
        self.used: set[str] = set(self.images)

    # -- files -------------------------------------------------------------------------------------

    def with_suffix(self, *suffixes: str) -> list[str]:
        return [p for p in self.files if PurePosixPath(p).suffix.lower() in suffixes]

    def claim(self, path: str) -> None:
        """Mark a non-image file as consumed (so it is not reported as ignored)."""
        self.used.add(path)

    def reject(self, path: str, reason: str) -> None:
        self.rejections.append(Rejection(path, reason))

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None after recording why it could not be read."""
        try:
            return self.read_bytes(path)
        except Exception as exc:  # any reader failure is this file's problem, not the batch's
            self.reject(path, f"could not read the file: {type(exc).__name__}: {exc}")
            return None

    def read_text(self, path: str) -> str | None:
        data = self.read(path)
        if data is None:
            return None
        if b"\x00" in data:
            self.reject(path, "not a text file (contains NUL bytes)")
            return None
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            self.reject(path, f"not UTF-8 text (invalid byte at offset {exc.start})")
            return None

    def read_json(self, path: str) -> object | None:
        text = self.read_text(path)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            self.reject(path, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
            return None
        except RecursionError:
            self.reject(path, "not valid JSON: nested too deeply to parse")
            return None

    # -- pairing -----------------------------------------------------------------------------------

    def _closest(self, annotation_path: str, candidates: list[str]) -> tuple[str | None, str | None]:
        """The one candidate whose folders mirror the annotation's best; (None, reason) on a tie."""
        if len(candidates) == 1:
            return candidates[0], None
        scored = sorted(((_affinity(annotation_path, c), c) for c in candidates), reverse=True)
        if scored[0][0] > scored[1][0]:
            return scored[0][1], None
        tied = sorted(c for s, c in scored if s == scored[0][0])
        return None, f"ambiguous: matches {len(tied)} images equally well ({', '.join(tied)})"

    def pair_by_stem(self, annotation_path: str) -> tuple[str | None, str | None]:
        """The image with the annotation file's stem; (None, reason) if none or ambiguous."""
        stem = PurePosixPath(annotation_path).stem
        candidates = self.by_stem.get(stem, [])
        if not candidates:
            return None, f"no image named {stem}.* in the batch"
        return self._closest(annotation_path, candidates)

    def pair_by_name(
        self, name: str, annotation_path: str, *, relative_to_annotation: bool, fallback: bool = True
    ) -> tuple[str | None, str | None, str | None]:
        """(image, reason, note) for an image name an annotation gives.

        ``relative_to_annotation``: the name is a path from the annotation's folder (LabelMe, alumi), so
        '..' is allowed while it stays inside the batch; otherwise any '..' is rejected. Without an exact
        hit the name is matched on its trailing path, then base name, then stem (unless not ``fallback``).
        """
        shown = repr(name)
        trick = path_trick(name)
        if relative_to_annotation and trick == _CLIMBS:
            trick = None
        if trick:
            return None, f"image name {shown} {trick}", None
        parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
        tail = parts[max((i for i, p in enumerate(parts) if p == ".."), default=-1) + 1 :]
        if not tail:
            return None, f"image name {shown} names no file", None
        if relative_to_annotation:
            exact = _join_inside(PurePosixPath(annotation_path).parent.parts, parts)
            if exact is None:
                return None, f"image name {shown} climbs out of the batch with '..'", None
        else:
            exact = "/".join(parts)
        if exact in self.image_set:
            return exact, None, None
        if not fallback:
            folder = PurePosixPath(annotation_path).parent.as_posix()
            return None, f"names image {shown}, which is not in its folder {folder}", None
        basename = tail[-1]
        by_suffix = [c for c in self.by_name.get(basename, []) if PurePosixPath(c).parts[-len(tail) :] == tuple(tail)]
        for candidates in (by_suffix, self.by_name.get(basename, []), self.by_name_lower.get(basename.lower(), [])):
            if candidates:
                image, reason = self._closest(annotation_path, candidates)
                return image, (f"image name {shown} is {reason}" if reason else None), None
        stem = PurePosixPath(basename).stem
        if self.by_stem.get(stem):
            image, reason = self._closest(annotation_path, self.by_stem[stem])
            if reason:
                return None, f"image name {shown} is not in the batch, and its stem is {reason}", None
            return image, None, f"{annotation_path}: names image {shown}, paired with {image} (same stem)"
        return None, f"names image {shown}, which is not in the batch", None

    # -- result ------------------------------------------------------------------------------------

    def add(self, record: _Record) -> None:
        self.records.append(record)

    def result(self) -> ParseResult:
        """One AnnotatedImage per image; images claimed by several annotations lose all of them."""
        by_image: dict[str, list[_Record]] = defaultdict(list)
        for record in self.records:
            by_image[record.image_path].append(record)
        images: list[AnnotatedImage] = []
        for path in self.images:
            records = by_image.get(path, [])
            if len(records) > 1:
                for record in records:
                    others = "; ".join(r.origin for r in records if r is not record)
                    self.reject(
                        record.annotation_path,
                        f"duplicate annotation: {record.origin} annotates {path}, which {others} also annotates",
                    )
                self.notes.append(f"{path}: {len(records)} annotations claim it; kept unlabelled")
                records = []
            if records:
                r = records[0]
                images.append(
                    AnnotatedImage(
                        path,
                        r.annotation_path,
                        True,
                        r.boxes,
                        r.declared_width,
                        r.declared_height,
                        r.declared_channels,
                        {**self.default_extra(path), **r.extra},
                    )
                )
            else:
                images.append(AnnotatedImage(path, "", False, [], extra=self.default_extra(path)))
        ignored = [p for p in self.files if p not in self.used]
        if ignored:
            shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
            self.notes.append(f"ignored {len(ignored)} files that are neither images nor annotations: {shown}")
        labelled = sum(im.labelled for im in images)
        self.notes.append(f"{len(images)} images, {labelled} labelled, {len(self.rejections)} rejections")
        return ParseResult(images, self.rejections, self.notes, self.class_names)


def _join_inside(folder: Sequence[str], parts: Sequence[str]) -> str | None:
    """``parts`` (which may hold '..') resolved from ``folder``; None if it leaves the batch root."""
    joined = list(folder)
    for part in parts:
        if part != "..":
            joined.append(part)
        elif joined:
            joined.pop()
        else:
            return None
    return "/".join(joined)


def _role(folder: str) -> str:
    """A folder name, with names that only say "labels" or "images" made equal."""
    return "" if folder.lower() in _ROLE_DIRS else folder


def _affinity(annotation_path: str, image_path: str) -> tuple[int, int, int]:
    """How well an image's folders mirror an annotation's (labels/x/a.txt ~ images/x/a.jpg)."""
    a = PurePosixPath(annotation_path).parent.parts
    b = PurePosixPath(image_path).parent.parts
    mirror = 0
    for pa, pb in zip(reversed(a), reversed(b)):
        if _role(pa) != _role(pb):
            break
        mirror += 1
    prefix = 0
    for pa, pb in zip(a, b):
        if pa != pb:
            break
        prefix += 1
    return mirror, prefix, -abs(len(a) - len(b))


# --------------------------------------------------------------------------------------------------
# Small value readers


def _number(value: object) -> float | None:
    """A finite float from a JSON/XML/text value, or None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _hashable(value: object) -> bool:
    """JSON ids must be scalars to be looked up (a list id would crash a dict lookup)."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _positive_int(value: object) -> int | None:
    number = _number(value)
    if number is None or number <= 0 or not number.is_integer():
        return None
    return int(number)


def _bounding(points: Sequence[tuple[float, float]]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _size_problem(x1: float, y1: float, x2: float, y2: float) -> str | None:
    if x2 > x1 and y2 > y1:
        return None
    return f"zero or negative box size (width {x2 - x1:g}, height {y2 - y1:g})"


# --------------------------------------------------------------------------------------------------
# YOLO


def _yolo_class_names(batch: _Batch, given: list[str] | None) -> tuple[list[str] | None, str]:
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
                batch.notes.append(f"{path}: class names differ from the batch's declared classes; using the declared ones")
        return given, "the batch's classes"
    if not found:
        batch.notes.append("no classes.txt or data.yaml: YOLO class ids are kept as numbers (map them with class aliases)")
        return None, ""
    chosen_path, chosen = found[0]
    for path, names in found[1:]:
        if names != chosen:
            batch.notes.append(f"{path}: class names differ from {chosen_path}; using {chosen_path}")
    return chosen, PurePosixPath(chosen_path).name


def _yaml_names(batch: _Batch, path: str) -> list[str] | None:
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


def _is_yolo_label_file(batch: _Batch, path: str) -> bool:
    pure = PurePosixPath(path)
    name = pure.name.lower()
    if name in _YOLO_CLASS_FILES:
        return False
    if pure.stem in batch.by_stem:
        return True
    return name not in _YOLO_LIST_FILES and not name.startswith(_TEXT_FILES_IGNORED)


def _parse_yolo(batch: _Batch, class_names: list[str] | None) -> None:
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
        batch.add(_Record(path, image, boxes, origin=path))


def _yolo_line(
    fields: list[str], origin: str, names: list[str] | None, names_source: str
) -> tuple[SourceBox | None, str | None]:
    """A box from one YOLO line (box ``c x y w h`` or polygon ``c x1 y1 x2 y2 ...``), or the problem."""
    n = len(fields)
    if n != 5 and (n < 7 or n % 2 == 0):
        return None, (
            f"{n} fields; expected 5 (class x_center y_center width height) "
            "or a polygon (class x1 y1 x2 y2 x3 y3 ...)"
        )
    class_value = _number(fields[0])
    if class_value is None or class_value < 0 or not class_value.is_integer():
        return None, f"class id {fields[0]!r} is not a non-negative integer"
    class_id = int(class_value)
    if names is not None and class_id >= len(names):
        return None, f"class id {class_id} not in {names_source} ({len(names)} names)"
    values = []
    for token in fields[1:]:
        value = _number(token)
        if value is None:
            return None, f"{token!r} is not a finite number"
        values.append(value)
    if n == 5:
        xc, yc, w, h = values
        if w <= 0 or h <= 0:
            return None, f"zero or negative box size (width {w:g}, height {h:g})"
        x1, y1, x2, y2 = xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
    else:
        x1, y1, x2, y2 = _bounding(list(zip(values[0::2], values[1::2])))
        problem = _size_problem(x1, y1, x2, y2)
        if problem:
            return None, f"polygon has {problem}"
    if names is not None:
        origin = f"{origin} ({names[class_id]})"
    return SourceBox(str(class_id), x1, y1, x2, y2, True, origin), None


# --------------------------------------------------------------------------------------------------
# Pascal VOC


def _parse_voc(batch: _Batch, class_names: list[str] | None) -> None:
    import xml.etree.ElementTree as ElementTree

    for path in batch.with_suffix(".xml"):
        batch.claim(path)
        data = batch.read(path)
        if data is None:
            continue
        try:
            root = ElementTree.fromstring(data)
        except ElementTree.ParseError as exc:
            batch.reject(path, f"not well-formed XML: {exc}")
            continue
        if root.tag != "annotation":
            batch.reject(path, f"root element is <{root.tag}>, expected <annotation> (Pascal VOC)")
            continue
        filename = (root.findtext("filename") or "").strip()
        if filename:
            image, reason, note = batch.pair_by_name(filename, path, relative_to_annotation=False)
        else:
            (image, reason), note = batch.pair_by_stem(path), None
        if image is None:
            batch.reject(path, reason or "no image")
            continue
        if note:
            batch.notes.append(note)
        width, height, depth = None, None, None
        size = root.find("size")
        if size is not None:
            width = _positive_int(size.findtext("width"))
            height = _positive_int(size.findtext("height"))
            depth = _positive_int(size.findtext("depth"))
        boxes: list[SourceBox] = []
        for number, obj in enumerate(root.findall("object"), 1):
            box, problem = _voc_object(obj, f"object {number}")
            if problem:
                batch.reject(path, problem)
            else:
                boxes.append(box)
        batch.add(_Record(path, image, boxes, path, width, height, depth))


def _voc_object(obj, origin: str) -> tuple[SourceBox | None, str | None]:
    name = (obj.findtext("name") or "").strip()
    if not name:
        return None, f"{origin}: missing <name>"
    origin = f"{origin} ({name})"
    bndbox = obj.find("bndbox")
    if bndbox is None:
        return None, f"{origin}: missing <bndbox>"
    corners = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = bndbox.findtext(tag)
        value = _number(text.strip()) if text is not None else None
        if value is None:
            return None, f"{origin}: <{tag}> is {'missing' if text is None else repr(text)}, not a finite number"
        corners.append(value)
    problem = _size_problem(*corners)
    if problem:
        return None, f"{origin}: {problem}"
    return SourceBox(name, *corners, False, origin), None


# --------------------------------------------------------------------------------------------------
# COCO


def _parse_coco(batch: _Batch, class_names: list[str] | None) -> None:
    for path in batch.with_suffix(".json"):
        batch.claim(path)
        doc = batch.read_json(path)
        if doc is None:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            batch.reject(path, "not a COCO file: no 'images' list")
            continue
        _parse_coco_file(batch, path, doc)


def _parse_coco_file(batch: _Batch, path: str, doc: dict) -> None:
    categories: dict[object, str] = {}
    if not isinstance(doc.get("categories", []), list):
        batch.reject(path, "'categories' is not a list")
        return
    for entry in doc.get("categories") or []:
        if isinstance(entry, dict) and _hashable(entry.get("id")) and isinstance(entry.get("name"), str) and entry["name"].strip():
            categories[entry["id"]] = entry["name"].strip()
        else:
            batch.reject(path, f"category entry {entry!r}: needs an 'id' and a non-empty 'name'")
    by_id: dict[object, list[dict]] = defaultdict(list)
    for entry in doc["images"]:
        if not isinstance(entry, dict) or not _hashable(entry.get("id")) or not isinstance(entry.get("file_name"), str):
            batch.reject(path, f"images entry {str(entry)[:80]}: needs an 'id' and a 'file_name' string")
            continue
        by_id[entry["id"]].append(entry)
    entries = {image_id: same[0] for image_id, same in by_id.items() if len(same) == 1}
    annotations = doc.get("annotations")
    for image_id, same in by_id.items():
        if len(same) > 1:
            used = sum(isinstance(a, dict) and a.get("image_id") == image_id for a in annotations or [])
            names = ", ".join(repr(e["file_name"]) for e in same)
            batch.reject(
                path,
                f"images entries id {image_id!r} ({names}): id used {len(same)} times in 'images', so its "
                f"annotations cannot be attributed ({used} not used)",
            )
    if annotations is None:
        batch.notes.append(f"{path}: no 'annotations' list; its {len(entries)} images are treated as unlabelled")
        return
    if not isinstance(annotations, list):
        batch.reject(path, "'annotations' is not a list")
        return
    boxes_of: dict[object, list[SourceBox]] = defaultdict(list)
    duplicate_ids = {image_id for image_id, same in by_id.items() if len(same) > 1}
    for entry in annotations:
        if isinstance(entry, dict) and _hashable(entry.get("image_id")) and entry["image_id"] in duplicate_ids:
            continue  # counted in the duplicate-id rejection
        image_id, box, problem = _coco_annotation(entry, categories, entries)
        if problem:
            batch.reject(path, problem)
        else:
            boxes_of[image_id].append(box)
    for image_id, entry in entries.items():
        origin = f"images entry id {image_id!r} of {path}"
        image, reason, note = batch.pair_by_name(entry["file_name"], path, relative_to_annotation=False)
        if image is None:
            lost = len(boxes_of.get(image_id, []))
            batch.reject(path, f"images entry id {image_id!r}: {reason}" + (f" ({lost} boxes not used)" if lost else ""))
            continue
        if note:
            batch.notes.append(note)
        boxes = [
            SourceBox(b.class_name, b.x1, b.y1, b.x2, b.y2, False, f"{b.origin} ({image})")
            for b in boxes_of.get(image_id, [])
        ]
        batch.add(
            _Record(
                path,
                image,
                boxes,
                origin,
                _positive_int(entry.get("width")),
                _positive_int(entry.get("height")),
            )
        )


def _coco_annotation(
    entry: object, categories: Mapping[object, str], images: Mapping[object, dict]
) -> tuple[object, SourceBox | None, str | None]:
    """(image id, box, problem) for one COCO annotation."""
    if not isinstance(entry, dict):
        return None, None, f"annotation {str(entry)[:80]}: not an object"
    origin = f"annotation id {entry.get('id', '?')!r}"
    image_id = entry.get("image_id")
    if not _hashable(image_id) or image_id not in images:
        return None, None, f"{origin}: image_id {image_id!r} is not in 'images'"
    if not _hashable(entry.get("category_id")) or entry["category_id"] not in categories:
        return None, None, f"{origin}: category_id {entry.get('category_id')!r} is not in 'categories'"
    if entry.get("iscrowd") in (1, True):
        return None, None, f"{origin}: iscrowd=1 (a crowd region, not one object)"
    bbox = entry.get("bbox")
    if bbox is None and isinstance(entry.get("segmentation"), list) and entry["segmentation"]:
        points = []
        for polygon in entry["segmentation"]:
            values = [_number(v) for v in polygon] if isinstance(polygon, list) else [None]
            if None in values or len(values) < 6 or len(values) % 2:
                return None, None, f"{origin}: no 'bbox' and 'segmentation' is not a list of polygons"
            points.extend(zip(values[0::2], values[1::2]))
        x1, y1, x2, y2 = _bounding(points)
    else:
        values = [_number(v) for v in bbox] if isinstance(bbox, list) else []
        if len(values) != 4 or None in values:
            return None, None, f"{origin}: 'bbox' must be 4 finite numbers [x, y, width, height], got {bbox!r}"
        x, y, w, h = values
        x1, y1, x2, y2 = x, y, x + w, y + h
    problem = _size_problem(x1, y1, x2, y2)
    if problem:
        return None, None, f"{origin}: {problem}"
    return image_id, SourceBox(categories[entry["category_id"]], x1, y1, x2, y2, False, origin), None


# --------------------------------------------------------------------------------------------------
# LabelMe


def _parse_labelme(batch: _Batch, class_names: list[str] | None) -> None:
    for path in batch.with_suffix(".json"):
        batch.claim(path)
        doc = batch.read_json(path)
        if doc is None:
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
            batch.reject(path, "not a LabelMe file: no 'shapes' list")
            continue
        image_path = doc.get("imagePath")
        if isinstance(image_path, str) and image_path.strip():
            image, reason, note = batch.pair_by_name(image_path.strip(), path, relative_to_annotation=True)
        else:
            (image, reason), note = batch.pair_by_stem(path), None
        if image is None:
            batch.reject(path, reason or "no image")
            continue
        if note:
            batch.notes.append(note)
        boxes: list[SourceBox] = []
        for number, shape in enumerate(doc["shapes"], 1):
            box, problem = _labelme_shape(shape, f"shape {number}")
            if problem:
                batch.reject(path, problem)
            else:
                boxes.append(box)
        batch.add(
            _Record(path, image, boxes, path, _positive_int(doc.get("imageWidth")), _positive_int(doc.get("imageHeight")))
        )


_LABELME_MIN_POINTS = {"rectangle": 2, "polygon": 3, "linestrip": 2, "line": 2, "circle": 2}


def _labelme_shape(shape: object, origin: str) -> tuple[SourceBox | None, str | None]:
    """A box from one LabelMe shape: rectangles, polygons, lines and circles become their bounds."""
    if not isinstance(shape, dict):
        return None, f"{origin}: not an object"
    label = shape.get("label")
    if not isinstance(label, str) or not label.strip():
        return None, f"{origin}: missing 'label'"
    label = label.strip()
    origin = f"{origin} ({label})"
    kind = shape.get("shape_type") or "polygon"
    raw_points = shape.get("points")
    points: list[tuple[float, float]] = []
    for point in raw_points if isinstance(raw_points, list) else [None]:
        xy = [_number(v) for v in point] if isinstance(point, list) else []
        if len(xy) != 2 or None in xy:
            return None, f"{origin}: 'points' must be a list of [x, y] number pairs"
        points.append((xy[0], xy[1]))
    if kind == "point":
        return None, f"{origin}: a point has no extent, so it is not a box"
    if not isinstance(kind, str) or kind not in _LABELME_MIN_POINTS:
        return None, f"{origin}: shape_type {kind!r} is not supported (rectangle, polygon, linestrip, line, circle)"
    if len(points) < _LABELME_MIN_POINTS[kind]:
        return None, f"{origin}: a {kind} needs at least {_LABELME_MIN_POINTS[kind]} points, got {len(points)}"
    if kind == "circle":
        (cx, cy), (px, py) = points[0], points[1]
        radius = math.hypot(px - cx, py - cy)
        x1, y1, x2, y2 = cx - radius, cy - radius, cx + radius, cy + radius
    else:
        x1, y1, x2, y2 = _bounding(points)
    problem = _size_problem(x1, y1, x2, y2)
    if problem:
        return None, f"{origin}: {kind} has {problem}"
    return SourceBox(label, x1, y1, x2, y2, False, origin), None


# --------------------------------------------------------------------------------------------------
# Native "alumi" sidecars: <line_id>/<camera_id>/<stem>.png + <stem>.json


def _folder_extra(path: str) -> dict:
    parts = PurePosixPath(path).parts
    return {"line_id": parts[-3], "camera_id": parts[-2]} if len(parts) == 3 else {}


def _parse_alumi(batch: _Batch, class_names: list[str] | None) -> None:
    batch.default_extra = _folder_extra
    for path in batch.with_suffix(".json"):
        batch.claim(path)
        doc = batch.read_json(path)
        if doc is None:
            continue
        record, problem = _alumi_sidecar(batch, path, doc)
        if problem:
            batch.reject(path, problem)
        elif record is not None:
            batch.add(record)


def _alumi_sidecar(batch: _Batch, path: str, doc: object) -> tuple[_Record | None, str | None]:
    if not isinstance(doc, dict):
        return None, "sidecar is not a JSON object"
    for key in ("image", "line_id", "camera_id", "captured_at"):
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            return None, f"field '{key}' must be a non-empty string"
    width, height = _positive_int(doc.get("width")), _positive_int(doc.get("height"))
    if width is None or height is None:
        return None, f"fields 'width' and 'height' must be positive integers, got {doc.get('width')!r}x{doc.get('height')!r}"
    if not isinstance(doc.get("boxes"), list):
        return None, "field 'boxes' must be a list"
    try:
        captured = datetime.fromisoformat(doc["captured_at"].replace("Z", "+00:00"))
    except ValueError:
        return None, f"field 'captured_at' {doc['captured_at']!r} is not an ISO-8601 timestamp"
    if captured.tzinfo is None:
        batch.notes.append(f"{path}: captured_at {doc['captured_at']!r} has no time zone; taken as UTC")
        captured = captured.replace(tzinfo=timezone.utc)
    folder = _folder_extra(path)
    for key in ("line_id", "camera_id"):
        if folder and folder[key] != doc[key]:
            return None, f"field '{key}' is {doc[key]!r} but the sidecar lies in folder {folder[key]!r}"
    image, reason, note = batch.pair_by_name(doc["image"], path, relative_to_annotation=True, fallback=False)
    if image is None:
        return None, reason
    if note:
        batch.notes.append(note)
    boxes: list[SourceBox] = []
    for number, entry in enumerate(doc["boxes"], 1):
        box, problem = _alumi_box(entry, f"box {number}")
        if problem:
            batch.reject(path, problem)
        else:
            boxes.append(box)
    extra = {
        "line_id": doc["line_id"],
        "camera_id": doc["camera_id"],
        "captured_at": captured.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
    }
    return _Record(path, image, boxes, path, width, height, extra=extra), None


def _alumi_box(entry: object, origin: str) -> tuple[SourceBox | None, str | None]:
    if not isinstance(entry, dict):
        return None, f"{origin}: not an object"
    name = entry.get("class_name")
    if not isinstance(name, str) or not name.strip():
        return None, f"{origin}: missing 'class_name'"
    origin = f"{origin} ({name.strip()})"
    values = []
    for key in ("x_center", "y_center", "width", "height"):
        value = _number(entry.get(key))
        if value is None:
            return None, f"{origin}: '{key}' is {entry.get(key)!r}, not a finite number"
        values.append(value)
    xc, yc, w, h = values
    if w <= 0 or h <= 0:
        return None, f"{origin}: zero or negative box size (width {w:g}, height {h:g})"
    return SourceBox(name.strip(), xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2, True, origin), None


# --------------------------------------------------------------------------------------------------
# Agreement of two label sets (used for byte-identical copies)


def _labels_agree(a: AnnotatedImage, b: AnnotatedImage) -> bool:
    if len(a.boxes) != len(b.boxes):
        return False
    if any(box.normalised != a.boxes[0].normalised for box in a.boxes + b.boxes):
        return False
    unmatched = list(b.boxes)
    for box in a.boxes:
        partners = [o for o in unmatched if o.class_name.strip().lower() == box.class_name.strip().lower()]
        best = max(partners, key=lambda o: _iou(box, o), default=None)
        if best is None or _iou(box, best) < MATCH_IOU:
            return False
        unmatched.remove(best)
    return True


def _iou(a: SourceBox, b: SourceBox) -> float:
    w = min(a.x2, b.x2) - max(a.x1, b.x1)
    h = min(a.y2, b.y2) - max(a.y1, b.y1)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union
