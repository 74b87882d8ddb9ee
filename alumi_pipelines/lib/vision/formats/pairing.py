"""The batch a parser works on: its file index, pairing annotations with images, and the records found.

Pairing an annotation with its image: by the name the annotation gives (VOC ``<filename>``, COCO
``file_name``, LabelMe ``imagePath``, alumi ``image``), matched on relative path first and then on
base name, or by stem (YOLO, or when no name is given). Several candidates are told apart by folder
structure (``labels/x/a.txt`` belongs to ``images/x/a.jpg``); what stays ambiguous is rejected.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from alumi_pipelines.lib.vision.formats.model import (
    BATCH_MARKER,
    IMAGE_SUFFIXES,
    AnnotatedImage,
    ParseResult,
    Rejection,
    SourceBox,
)

# Folder names that only say "this holds labels" or "this holds images": equal for pairing purposes.
_ROLE_DIRS = frozenset(
    "labels label annotations annotation anno annos ann xml xmls yolo voc coco labelme txt "
    "images image imgs img jpegimages pictures photos pics".split()
)
_DRIVE = re.compile(r"^[A-Za-z]:")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CLIMBS = "climbs out of its folder with '..'"


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


@dataclass
class Record:
    annotation_path: str
    image_path: str
    boxes: list[SourceBox]
    origin: str  # names the record in messages ("images entry id 3 of a.json")
    declared_width: int | None = None
    declared_height: int | None = None
    declared_channels: int | None = None
    extra: dict = field(default_factory=dict)
    labelled: bool = True  # False: the record describes the image (capture metadata) but labels nothing
    problems: list[str] = field(default_factory=list)  # rejected records of this image (it is held out)


class Batch:
    """The listing of one batch, indexed for pairing, plus what the parser found so far."""

    def __init__(self, files: Iterable[str], read: Callable[[str], bytes]) -> None:
        self.read_bytes = read
        self.rejections: list[Rejection] = []
        self.notes: list[str] = []
        self.records: list[Record] = []
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
            if path != BATCH_MARKER:
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

    def hold_out_unreadable(self, path: str) -> None:
        """The annotation file ``path`` was just rejected as a whole: hold out the image its stem names.

        The image stays unlabelled (nothing was read that labels it) and is listed as held out with the file's
        reason. Nothing is recorded when the stem names no image or several.
        """
        image, _ = self.pair_by_stem(path)
        if image is not None and self.rejections:
            self.add(Record(path, image, [], path, labelled=False, problems=[self.rejections[-1].reason]))

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

    def add(self, record: Record) -> None:
        self.records.append(record)

    def result(self) -> ParseResult:
        """One AnnotatedImage per image; images claimed by several annotations lose all of them."""
        by_image: dict[str, list[Record]] = defaultdict(list)
        records_of_file: dict[str, int] = defaultdict(int)
        for record in self.records:
            by_image[record.image_path].append(record)
            records_of_file[record.annotation_path] += 1
        # a rejection in a file that annotates one image is a rejected record of that image
        file_problems: dict[str, list[str]] = defaultdict(list)
        for rejection in self.rejections:
            if records_of_file.get(rejection.path) == 1:
                file_problems[rejection.path].append(rejection.reason)
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
                        r.labelled,
                        r.boxes if r.labelled else [],
                        r.declared_width,
                        r.declared_height,
                        r.declared_channels,
                        {**self.default_extra(path), **r.extra},
                        list(dict.fromkeys([*r.problems, *file_problems.get(r.annotation_path, [])])),
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
