"""Pictures of the data for the Dagster UI: boxes with class names drawn on images, images tiled into one mosaic.

A :class:`Tile` is an image (BGR, any size, or None for a record without a readable image) with its boxes and a
caption; :func:`mosaic_png` lays out up to ``max_tiles`` of them as thumbnails of ``side`` pixels on a grid, each
caption in a strip under its thumbnail (a tile without an image shows its caption as wrapped text instead), and
encodes the grid as a PNG no larger than ``max_bytes`` (the grid is shrunk until it fits), so asset metadata
stays small. Text is drawn with OpenCV's built-in Hershey font: nothing is read from disk or downloaded.

:func:`pick` chooses samples by the sha256 of their keys, so re-materialising shows the same images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

BACKGROUND = (40, 40, 40)  # BGR of the grid, letterbox borders and caption strips
TEXT = (235, 235, 235)
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.38
CAPTION_LINES = 2
LINE_HEIGHT = 13  # pixels per caption line at FONT_SCALE
GAP = 4  # pixels between tiles
MAX_BYTES = 300_000

# distinct, readable on light and dark images (BGR); classes take them in class-map order
PALETTE = (
    (56, 56, 255),
    (49, 210, 207),
    (255, 112, 31),
    (29, 178, 255),
    (187, 212, 0),
    (255, 149, 200),
    (10, 249, 72),
    (255, 56, 132),
    (168, 153, 44),
    (199, 55, 255),
)
MISSED = (0, 0, 255)  # ground truth the model did not find: red
FALSE_ALARM = (0, 200, 255)  # predictions that match no ground truth: amber


@dataclass(frozen=True)
class Box:
    """A box in normalised ``(x1, y1, x2, y2)`` (0..1 of the image's width and height) with its label text."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    colour: tuple[int, int, int]

    @classmethod
    def from_cxcywh(cls, xc: float, yc: float, w: float, h: float, label: str, colour: tuple[int, int, int]) -> Box:
        return cls(xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2, label, colour)


@dataclass(frozen=True)
class Tile:
    """One cell of a mosaic: an image (BGR uint8; None: the caption alone, as text) with boxes and a caption."""

    image: np.ndarray | None
    caption: str
    boxes: Sequence[Box] = field(default_factory=tuple)


def class_colours(names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A colour per class name, in class-map order (the palette repeats after ten classes)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def colour_of(name: str, colours: dict[str, tuple[int, int, int]]) -> tuple[int, int, int]:
    """The class's colour; a name outside the map gets one chosen by its hash (stable across runs)."""
    if name in colours:
        return colours[name]
    return PALETTE[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(PALETTE)]


def sample_order(key: str, salt: str = "") -> str:
    """The sort key of deterministic sampling: the sha256 of ``salt`` and the key."""
    return hashlib.sha256(f"{salt}\0{key}".encode()).hexdigest()


def pick(
    keys: Iterable[str], n: int, *, classes_of: Callable[[str], Iterable[str]] | None = None, salt: str = ""
) -> list[str]:
    """Up to ``n`` keys in sha256 order; with ``classes_of``, first one key per class (rarest class first) so
    every class that has a key is shown, then the rest in sha256 order."""
    ordered = sorted(dict.fromkeys(keys), key=lambda k: sample_order(k, salt))
    if classes_of is None or n <= 0:
        return ordered[: max(0, n)]
    by_class: dict[str, list[str]] = {}
    for key in ordered:
        for name in sorted(set(classes_of(key))):
            by_class.setdefault(name, []).append(key)
    chosen: list[str] = []
    for _, members in sorted(by_class.items(), key=lambda kv: (len(kv[1]), kv[0])):
        if len(chosen) >= n:
            break
        first = next((k for k in members if k not in chosen), None)
        if first is not None:
            chosen.append(first)
    chosen += [k for k in ordered if k not in chosen][: n - len(chosen)]
    return chosen


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    b, g, r = background
    return (0, 0, 0) if 0.114 * b + 0.587 * g + 0.299 * r > 140 else (255, 255, 255)


def draw_boxes(image: np.ndarray, boxes: Sequence[Box], thickness: int = 2) -> np.ndarray:
    """A copy of ``image`` with each box's outline in its colour and its label on a filled background above it
    (inside the image when the box touches the top edge)."""
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    for box in boxes:
        x1 = int(round(min(max(box.x1, 0.0), 1.0) * (w - 1)))
        y1 = int(round(min(max(box.y1, 0.0), 1.0) * (h - 1)))
        x2 = int(round(min(max(box.x2, 0.0), 1.0) * (w - 1)))
        y2 = int(round(min(max(box.y2, 0.0), 1.0) * (h - 1)))
        cv2.rectangle(out, (x1, y1), (x2, y2), box.colour, thickness, cv2.LINE_8)
    for box in boxes:  # labels last, so no outline crosses a label
        if not box.label:
            continue
        x1 = int(round(min(max(box.x1, 0.0), 1.0) * (w - 1)))
        y1 = int(round(min(max(box.y1, 0.0), 1.0) * (h - 1)))
        (tw, th), base = cv2.getTextSize(box.label, FONT, FONT_SCALE, 1)
        top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1 + thickness
        left = min(x1, max(0, w - tw - 2))
        cv2.rectangle(out, (left, top), (left + tw + 2, top + th + base + 2), box.colour, cv2.FILLED)
        cv2.putText(
            out, box.label, (left + 1, top + th + 1), FONT, FONT_SCALE, _text_colour(box.colour), 1, cv2.LINE_AA
        )
    return out


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """The image scaled to fit a ``side`` square (never enlarged beyond it), centred on the background."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, size, interpolation=interpolation)
    cell = np.full((side, side, 3), BACKGROUND, np.uint8)
    top, left = (side - size[1]) // 2, (side - size[0]) // 2
    cell[top : top + size[1], left : left + size[0]] = small
    return cell


def _wrap(text: str, width: int, lines: int) -> list[str]:
    """``text`` broken into at most ``lines`` lines of at most ``width`` pixels (the last one cut with …)."""
    words, out, current = text.split(), [], ""
    for word in words:
        trial = f"{current} {word}".strip()
        if cv2.getTextSize(trial, FONT, FONT_SCALE, 1)[0][0] <= width or not current:
            current = trial
        else:
            out.append(current)
            current = word
    if current:
        out.append(current)
    if len(out) > lines:
        out = out[: lines - 1] + [" ".join(out[lines - 1 :])]
    fitted = []
    for line in out:
        if cv2.getTextSize(line, FONT, FONT_SCALE, 1)[0][0] > width:
            while line and cv2.getTextSize(line + "...", FONT, FONT_SCALE, 1)[0][0] > width:
                line = line[:-1]
            line += "..."
        fitted.append(line)
    return fitted


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image.astype(np.uint8, copy=False)


def render_tile(tile: Tile, side: int) -> np.ndarray:
    """One cell: the thumbnail with its boxes (drawn after scaling, so lines and labels keep their size), and
    the caption strip under it; without an image, the caption fills the cell as wrapped text."""
    strip_height = CAPTION_LINES * LINE_HEIGHT + 4
    if tile.image is None:
        cell = np.full((side, side, 3), (70, 70, 70), np.uint8)
        for i, line in enumerate(_wrap(tile.caption, side - 8, max(1, (side - 8) // LINE_HEIGHT))):
            cv2.putText(cell, line, (4, 4 + (i + 1) * LINE_HEIGHT - 3), FONT, FONT_SCALE, TEXT, 1, cv2.LINE_AA)
        caption = ""
    else:
        cell = draw_boxes(_fit(_as_bgr(tile.image), side), tile.boxes)
        caption = tile.caption
    strip = np.full((strip_height, side, 3), BACKGROUND, np.uint8)
    for i, line in enumerate(_wrap(caption, side - 4, CAPTION_LINES)):
        cv2.putText(strip, line, (2, (i + 1) * LINE_HEIGHT - 1), FONT, FONT_SCALE, TEXT, 1, cv2.LINE_AA)
    return np.vstack([cell, strip])


def mosaic(tiles: Sequence[Tile], *, side: int = 160, columns: int = 4, max_tiles: int = 12) -> np.ndarray:
    """The first ``max_tiles`` tiles on a grid of ``columns`` (fewer when there are fewer tiles), BGR uint8."""
    if side < 32:
        raise ValueError(f"mosaic: side={side}: thumbnails must be at least 32 pixels")
    if columns < 1 or max_tiles < 1:
        raise ValueError(f"mosaic: columns={columns}, max_tiles={max_tiles}: both must be at least 1")
    cells = [render_tile(t, side) for t in list(tiles)[:max_tiles]]
    if not cells:
        cells = [render_tile(Tile(None, "nothing to show"), side)]
    cols = min(columns, len(cells))
    rows = -(-len(cells) // cols)
    ch, cw = cells[0].shape[:2]
    grid = np.full((rows * ch + (rows + 1) * GAP, cols * cw + (cols + 1) * GAP, 3), BACKGROUND, np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        y, x = GAP + r * (ch + GAP), GAP + c * (cw + GAP)
        grid[y : y + ch, x : x + cw] = cell
    return grid


def encode_png(image: np.ndarray, max_bytes: int = MAX_BYTES) -> bytes:
    """PNG bytes of ``image``, shrunk by steps of 0.8 until they fit ``max_bytes``."""
    scale = 1.0
    while True:
        current = image
        if scale < 1.0:
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            current = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, data = cv2.imencode(".png", current, [cv2.IMWRITE_PNG_COMPRESSION, 6])
        if not ok:  # pragma: no cover - cv2 encodes any uint8 BGR array
            raise ValueError("mosaic: the PNG encoder failed")
        if len(data) <= max_bytes or min(current.shape[:2]) <= 32:
            return data.tobytes()
        scale *= 0.8


def mosaic_png(
    tiles: Sequence[Tile], *, side: int = 160, columns: int = 4, max_tiles: int = 12, max_bytes: int = MAX_BYTES
) -> bytes:
    """:func:`mosaic` encoded as a PNG of at most ``max_bytes``."""
    return encode_png(mosaic(tiles, side=side, columns=columns, max_tiles=max_tiles), max_bytes)


# -- the evaluation's pictures: ground truth the model missed, predictions matching no ground truth --------------
@dataclass(frozen=True)
class ImageErrors:
    """One image's errors: ground-truth boxes no prediction found, predictions no ground truth explains."""

    name: str
    missed: list[tuple[str, tuple[float, float, float, float]]]  # (class, normalised cxcywh)
    false_alarms: list[tuple[str, float, tuple[float, float, float, float]]]  # (class, confidence, cxcywh)

    @property
    def score(self) -> float:
        """How bad: one per missed box, plus each false alarm's confidence (a confident false alarm is worse)."""
        return len(self.missed) + sum(conf for _, conf, _ in self.false_alarms)

    def caption(self) -> str:
        parts = []
        if self.missed:
            parts.append("missed: " + ", ".join(sorted(name for name, _ in self.missed)))
        if self.false_alarms:
            alarms = sorted(self.false_alarms, key=lambda a: (-a[1], a[0]))
            parts.append("false alarm: " + ", ".join(f"{name} {conf:.2f}" for name, conf, _ in alarms))
        return " / ".join(parts) or "no errors"

    def boxes(self) -> list[Box]:
        drawn = [Box.from_cxcywh(*b, f"missed {name}", MISSED) for name, b in self.missed]
        drawn += [Box.from_cxcywh(*b, f"{name} {conf:.2f}", FALSE_ALARM) for name, conf, b in self.false_alarms]
        return drawn


def worst_first(errors: Iterable[ImageErrors], n: int) -> list[ImageErrors]:
    """The ``n`` images with the highest error score (ties by name), images without errors left out."""
    return sorted((e for e in errors if e.score > 0), key=lambda e: (-e.score, e.name))[:n]


def find_errors(
    name: str,
    labels: Sequence[tuple[str, tuple[float, float, float, float]]],
    predictions: Sequence[tuple[str, float, tuple[float, float, float, float]]],
    *,
    iou: float = 0.5,
) -> ImageErrors:
    """Missed boxes and false alarms of one image, boxes as ``(class, [confidence,] normalised cxcywh)``.

    Boxes are paired as the review queue pairs them (``review.greedy_matches``: class-agnostic, IoU descending,
    IoU ≥ ``iou``); a pair of different classes is both a missed box and a false alarm, as in mAP.
    """
    from alumi_pipelines.lib.vision.review import greedy_matches

    pairs = greedy_matches([(c, *b) for c, b in labels], [(c, *b) for c, _, b in predictions], iou)
    same = [(i, j) for i, j in pairs if labels[i][0] == predictions[j][0]]
    found, explained = {i for i, _ in same}, {j for _, j in same}
    return ImageErrors(
        name,
        [labels[i] for i in range(len(labels)) if i not in found],
        [predictions[j] for j in range(len(predictions)) if j not in explained],
    )
