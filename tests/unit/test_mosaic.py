"""lib.vision.mosaic: boxes and class names drawn where they belong, tiles laid out, captions written, size bounded."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from alumi_pipelines.lib.vision import mosaic
from alumi_pipelines.lib.vision.mosaic import BACKGROUND, GAP, Box, Tile

RED = (0, 0, 255)


def _decode(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_a_box_outline_is_drawn_in_its_colour_at_its_coordinates_with_its_label():
    image = np.full((100, 200, 3), 128, np.uint8)
    drawn = mosaic.draw_boxes(image, [Box(0.25, 0.5, 0.75, 0.9, "pit", RED)], thickness=2)
    x1, y1, x2, y2 = round(0.25 * 199), round(0.5 * 99), round(0.75 * 199), round(0.9 * 99)
    for x, y in ((x1, (y1 + y2) // 2), (x2, (y1 + y2) // 2), ((x1 + x2) // 2, y2), ((x1 + x2) // 2, y1)):
        assert tuple(drawn[y, x]) == RED, (x, y)
    assert tuple(drawn[(y1 + y2) // 2, (x1 + x2) // 2]) == (128, 128, 128)  # inside: untouched
    # the label: a filled patch of the box colour above the box, with text (other pixels) in it
    label = drawn[: y1 - 1, x1 : x1 + 30]
    assert (label == RED).all(axis=2).sum() > 50
    assert ((label != RED).any(axis=2) & (label != 128).any(axis=2)).sum() > 5
    assert tuple(image[y1, x1]) == (128, 128, 128)  # the input is not changed


def test_mosaic_lays_out_tiles_with_their_captions():
    side, columns = 64, 3
    tiles = [Tile(np.full((50, 80, 3), 200, np.uint8), f"image {i}") for i in range(5)]
    grid = mosaic.mosaic(tiles, side=side, columns=columns, max_tiles=12)
    strip = mosaic.CAPTION_LINES * mosaic.LINE_HEIGHT + 4
    rows = 2
    assert grid.shape == (rows * (side + strip) + (rows + 1) * GAP, columns * side + (columns + 1) * GAP, 3)
    for i in range(6):
        r, c = divmod(i, columns)
        y, x = GAP + r * (side + strip + GAP), GAP + c * (side + GAP)
        centre = grid[y + side // 2, x + side // 2]
        caption = grid[y + side : y + side + strip, x : x + side]
        written = (caption != BACKGROUND).any(axis=2).sum()
        if i < 5:
            assert tuple(centre) == (200, 200, 200)
            assert written > 20, f"tile {i}: no caption pixels"
        else:  # the empty sixth cell
            assert tuple(centre) == BACKGROUND and written == 0
    assert mosaic.mosaic(tiles, side=side, columns=columns, max_tiles=2).shape[1] == 2 * side + 3 * GAP


def test_a_tile_without_an_image_shows_its_reason_as_text():
    cell = mosaic.render_tile(Tile(None, "not an image: unknown file signature"), 96)
    text = cell[:96]
    assert (text != (70, 70, 70)).any(axis=2).sum() > 100


def test_the_png_stays_under_the_size_bound_and_decodes():
    rng = np.random.default_rng(0)
    noise = [Tile(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8), f"noise {i}") for i in range(12)]
    unbounded = mosaic.mosaic_png(noise, side=160, max_bytes=10**9)
    bounded = mosaic.mosaic_png(noise, side=160, max_bytes=150_000)
    assert len(unbounded) > 150_000 >= len(bounded)
    assert _decode(bounded).shape[1] < _decode(unbounded).shape[1]


def test_pick_is_deterministic_and_covers_every_class():
    keys = [f"img{i}" for i in range(40)]
    classes = {k: (["scratch"] if i % 2 else ["dent"]) for i, k in enumerate(keys)}
    classes["img7"] = ["pit"]  # the only pit
    chosen = mosaic.pick(keys, 4, classes_of=classes.get)
    assert chosen == mosaic.pick(list(reversed(keys)), 4, classes_of=classes.get)
    assert chosen[0] == "img7" and {"dent", "scratch", "pit"} <= {c for k in chosen for c in classes[k]}
    assert len(set(chosen)) == 4
    assert mosaic.pick(keys, 3) == sorted(keys, key=mosaic.sample_order)[:3]


def test_errors_are_missed_boxes_and_false_alarms_class_changes_count_as_both():
    labels = [("pit", (0.2, 0.2, 0.1, 0.1)), ("dent", (0.7, 0.7, 0.2, 0.2)), ("scratch", (0.5, 0.2, 0.2, 0.1))]
    predictions = [
        ("pit", 0.9, (0.2, 0.2, 0.1, 0.1)),  # found
        ("scratch", 0.6, (0.7, 0.7, 0.2, 0.2)),  # wrong class on the dent
        ("dent", 0.41, (0.1, 0.9, 0.1, 0.1)),  # nothing there
    ]
    errors = mosaic.find_errors("a.jpg", labels, predictions)
    assert [name for name, _ in errors.missed] == ["dent", "scratch"]
    assert [(name, conf) for name, conf, _ in errors.false_alarms] == [("scratch", 0.6), ("dent", 0.41)]
    assert errors.score == pytest.approx(2 + 0.6 + 0.41)
    assert errors.caption() == "missed: dent, scratch / false alarm: scratch 0.60, dent 0.41"
    assert {b.colour for b in errors.boxes()} == {mosaic.MISSED, mosaic.FALSE_ALARM}
    clean = mosaic.find_errors("b.jpg", labels[:1], predictions[:1])
    assert clean.score == 0 and mosaic.worst_first([clean, errors], 5) == [errors]


def test_bad_layout_parameters_are_refused_with_the_rule():
    with pytest.raises(ValueError, match="side=8"):
        mosaic.mosaic([], side=8)
    with pytest.raises(ValueError, match="columns=0"):
        mosaic.mosaic([], columns=0)


def test_a_mosaic_of_real_photographs_stays_small(cr7_dir):
    """Twelve CR7-DET images (400 × 400 px) with their YOLO boxes: under 300 kB, every class's colour drawn."""
    names = (cr7_dir / "classes.txt").read_text().split()
    colours = mosaic.class_colours(names)
    images = sorted((cr7_dir / "image").glob("*.jpg"), key=lambda p: mosaic.sample_order(p.name))[:12]
    tiles, classes = [], set()
    for path in images:
        boxes = []
        for line in (cr7_dir / "label" / f"{path.stem}.txt").read_text().split("\n"):
            if line.strip():
                cid, xc, yc, w, h = line.split()
                boxes.append(
                    Box.from_cxcywh(float(xc), float(yc), float(w), float(h), names[int(cid)], colours[names[int(cid)]])
                )
                classes.add(names[int(cid)])
        tiles.append(Tile(cv2.imread(str(path)), path.name, boxes))
    png = mosaic.mosaic_png(tiles)
    assert len(png) < mosaic.MAX_BYTES
    image = _decode(png)
    assert image.shape == (3 * (160 + 30) + 4 * GAP, 4 * 160 + 5 * GAP, 3)
    for name in classes:
        assert (image == np.array(colours[name], np.uint8)).all(axis=2).sum() > 30, name
