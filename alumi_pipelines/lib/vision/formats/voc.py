"""Pascal VOC: one ``<annotation>`` XML file per image, boxes in pixel corners."""

from __future__ import annotations

from alumi_pipelines.lib.vision.formats.model import SourceBox
from alumi_pipelines.lib.vision.formats.pairing import Batch, Record
from alumi_pipelines.lib.vision.formats.values import finite_number, positive_int, size_problem


def parse_voc(batch: Batch, class_names: list[str] | None) -> None:
    import xml.etree.ElementTree as ElementTree

    for path in batch.with_suffix(".xml"):
        batch.claim(path)
        data = batch.read(path)
        if data is None:
            batch.hold_out_unreadable(path)
            continue
        try:
            root = ElementTree.fromstring(data)
        except ElementTree.ParseError as exc:
            batch.reject(path, f"not well-formed XML: {exc}")
            batch.hold_out_unreadable(path)
            continue
        if root.tag != "annotation":
            batch.reject(path, f"root element is <{root.tag}>, expected <annotation> (Pascal VOC)")
            batch.hold_out_unreadable(path)
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
            width = positive_int(size.findtext("width"))
            height = positive_int(size.findtext("height"))
            depth = positive_int(size.findtext("depth"))
        boxes: list[SourceBox] = []
        for number, obj in enumerate(root.findall("object"), 1):
            box, problem = _voc_object(obj, f"object {number}")
            if problem:
                batch.reject(path, problem)
            else:
                boxes.append(box)
        batch.add(Record(path, image, boxes, path, width, height, depth))


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
        value = finite_number(text.strip()) if text is not None else None
        if value is None:
            return None, f"{origin}: <{tag}> is {'missing' if text is None else repr(text)}, not a finite number"
        corners.append(value)
    problem = size_problem(*corners)
    if problem:
        return None, f"{origin}: {problem}"
    return SourceBox(name, *corners, False, origin), None
