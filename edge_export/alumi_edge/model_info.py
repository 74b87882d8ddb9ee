"""What a detector ONNX file says about itself: class names, input size, stride, version.

Ultralytics writes ``names``, ``imgsz``, ``stride``, ``task`` and ``end2end`` into the model's
``metadata_props``; the pipeline adds ``model_version`` and ``dataset_hash``. The properties are read
with a small protobuf walk over the file so that no runtime has to be created just to learn them.
"""

from __future__ import annotations

import ast
import json
import mmap
from dataclasses import dataclass, field
from pathlib import Path

_METADATA_PROPS_FIELD = 14  # ModelProto.metadata_props (repeated StringStringEntryProto)

# What the model's input tensor holds (metadata property ``input_format``; absent means the first):
# - rgb_f32_nchw: (1, 3, H, W) float32, RGB, pixel / 255 — what ultralytics exports;
# - bgr_u8_s2d2: (1, H/2, W/2, 12) uint8, the letterboxed BGR pixels with each 2×2 block packed into the
#   channels (space-to-depth) — the INT8 model, whose first convolution was rearranged to read them.
FLOAT_INPUT = "rgb_f32_nchw"
PIXEL_INPUT = "bgr_u8_s2d2"
INPUT_FORMATS = (FLOAT_INPUT, PIXEL_INPUT)


class ModelMetadataError(ValueError):
    """The model file is not an ONNX model or its metadata cannot be understood."""


def _read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= end:
            raise ModelMetadataError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ModelMetadataError("varint too long")


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, value or (start, end) slice) of one protobuf message."""
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos, end)
            yield number, wire, value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos, end)
            if pos + length > end:
                raise ModelMetadataError("length-delimited field runs past the end of the file")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ModelMetadataError(f"unsupported protobuf wire type {wire}")


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict of strings."""
    path = Path(path)
    props: dict[str, str] = {}
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for number, wire, value in _fields(buf, 0, len(buf)):
                if number != _METADATA_PROPS_FIELD or wire != 2:
                    continue
                key = val = ""
                for sub_number, sub_wire, sub_value in _fields(buf, *value):
                    if sub_wire == 2 and sub_number in (1, 2):
                        text = bytes(buf[sub_value[0] : sub_value[1]]).decode("utf-8")
                        key, val = (text, val) if sub_number == 1 else (key, text)
                props[key] = val
    except (ValueError, OSError) as exc:
        raise ModelMetadataError(f"{path}: not a readable ONNX model ({exc})") from exc
    return props


def _literal(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return ast.literal_eval(value)


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a detector that pre- and post-processing need."""

    names: tuple[str, ...]
    input_hw: tuple[int, int]
    stride: int = 32
    model_version: str = ""
    dataset_hash: str = ""
    end_to_end: bool = False
    input_format: str = FLOAT_INPUT
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of the input tensor the model takes."""
        h, w = self.input_hw
        return (1, 3, h, w) if self.input_format == FLOAT_INPUT else (1, h // 2, w // 2, 12)

    @property
    def input_dtype(self) -> str:
        """numpy dtype name of the input tensor."""
        return "float32" if self.input_format == FLOAT_INPUT else "uint8"


def parse_model_info(props: dict[str, str], source: str = "model") -> ModelInfo:
    """Build ModelInfo from ONNX metadata properties, naming the property that is missing or wrong."""
    for key in ("names", "imgsz"):
        if key not in props:
            raise ModelMetadataError(f"{source}: metadata property {key!r} is missing (export with ultralytics)")
    try:
        raw_names = _literal(props["names"])
        if isinstance(raw_names, dict):
            ids = sorted(int(k) for k in raw_names)
            if ids != list(range(len(ids))):
                raise ValueError(f"class ids {ids} are not 0..{len(ids) - 1}")
            names = tuple(str(raw_names[k] if k in raw_names else raw_names[str(k)]) for k in ids)
        else:
            names = tuple(str(n) for n in raw_names)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise ModelMetadataError(f"{source}: metadata property 'names'={props['names']!r} is not a list/dict") from exc
    try:
        imgsz = _literal(props["imgsz"])
        if isinstance(imgsz, int):
            imgsz = [imgsz, imgsz]
        input_hw = (int(imgsz[0]), int(imgsz[1]))
    except (ValueError, SyntaxError, TypeError, IndexError) as exc:
        raise ModelMetadataError(f"{source}: metadata property 'imgsz'={props['imgsz']!r} is not [h, w]") from exc
    if not names:
        raise ModelMetadataError(f"{source}: metadata property 'names' lists no class")
    if min(input_hw) <= 0:
        raise ModelMetadataError(f"{source}: metadata property 'imgsz'={props['imgsz']!r} must be positive")
    input_format = props.get("input_format", "") or FLOAT_INPUT
    if input_format not in INPUT_FORMATS:
        raise ModelMetadataError(
            f"{source}: metadata property 'input_format'={input_format!r}: expected one of "
            f"{', '.join(INPUT_FORMATS)} (a newer alumi-edge may be needed)"
        )
    if input_format == PIXEL_INPUT and (input_hw[0] % 2 or input_hw[1] % 2):
        raise ModelMetadataError(f"{source}: input_format {PIXEL_INPUT} needs even image sides, imgsz is {input_hw}")
    return ModelInfo(
        names=names,
        input_hw=input_hw,
        stride=int(props.get("stride", "32") or 32),
        model_version=props.get("model_version", ""),
        dataset_hash=props.get("dataset_hash", ""),
        end_to_end=props.get("end2end", "False").strip().lower() == "true",
        input_format=input_format,
        metadata=dict(props),
    )


def read_model_info(path: str | Path) -> ModelInfo:
    """ModelInfo of an ONNX file."""
    return parse_model_info(read_onnx_metadata(path), source=str(path))
