"""INT8 static quantisation of an exported detector with ONNX Runtime (QDQ), the Detect head's decoding kept in float.

The graph rewrites applied after quantisation live in :mod:`alumi_pipelines.lib.export.int8_graph`.
onnx, onnxruntime and the edge package's preprocessing are imported inside :func:`quantize_int8`.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alumi_edge.model_info import FLOAT_INPUT
from alumi_pipelines.lib.export import int8_graph
from alumi_pipelines.lib.export.onnx_export import ExportError, read_metadata, save_with_metadata
from alumi_pipelines.lib.export.yolo_data import read_bgr

ACTIVATION_TYPES = ("QUInt8", "QInt8")

# Ops the Detect head uses to turn feature maps into boxes and scores: distribution focal loss
# (Reshape/Transpose/Softmax/Conv as exported, ReduceMax/Exp/MatMul once rewritten), anchor arithmetic
# and the class sigmoid. Quantising these
# to 8 bits wrecks the pixel coordinates, so they stay in float.
HEAD_DECODE_OPS = frozenset(
    {
        "Concat",
        "Sigmoid",
        "Mul",
        "Add",
        "Sub",
        "Div",
        "Reshape",
        "Slice",
        "Split",
        "Softmax",
        "Transpose",
        "Unsqueeze",
        "Squeeze",
        "Gather",
        "Shape",
        "Constant",
        "Cast",
        "Flatten",
        "ReduceMax",
        "Exp",
    }
)


def head_decode_nodes(model) -> list[str]:
    """Names of the Detect head's box-decoding nodes, found by walking back from the graph outputs.

    The walk follows producers through :data:`HEAD_DECODE_OPS` and the DFL's bin-weighted sum (a Conv
    fed by a Softmax, or a MatMul of an Exp after :func:`~alumi_pipelines.lib.export.dfl.rewrite_dfl`)
    and stops at every other node — the head's last feature convolutions are where it ends, so those
    and everything before them stay quantisable. ``model`` is an ``onnx.ModelProto`` or a path.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    producer = {out: node for node in model.graph.node for out in node.output}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"  # quantize_static addresses nodes by name

    def is_dfl_conv(node) -> bool:  # the bin-weighted sum: a Conv after a Softmax as exported, a MatMul of Exp
        if node.op_type not in ("Conv", "MatMul"):
            return False
        sources = [producer[i] for i in node.input if i in producer]
        return any(s.op_type in ("Softmax", "Exp") for s in sources)

    found: dict[str, None] = {}
    stack = [producer[o.name] for o in model.graph.output if o.name in producer]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type not in HEAD_DECODE_OPS and not is_dfl_conv(node):
            continue
        found[node.name] = None
        stack.extend(producer[i] for i in node.input if i in producer)
    if not any(producer[o.name].op_type in HEAD_DECODE_OPS for o in model.graph.output if o.name in producer):
        raise ExportError(
            "head decode nodes: the graph output is not produced by a box-decoding op (not a YOLO Detect head?)"
        )
    order = {node.name: i for i, node in enumerate(model.graph.node)}
    return sorted(found, key=lambda n: order.get(n, 0))


@dataclass(frozen=True)
class QuantizationResult:
    path: Path
    excluded_nodes: list[str]
    calibration_images: int
    activation_type: str
    per_channel: bool
    size_bytes: int
    preprocessed: bool
    float_nodes: list[str] = field(default_factory=list)  # attention cores and upsampling kept in float
    shared_concat_scales: int = 0  # Concats whose inputs now share the output's scale
    input_format: str = FLOAT_INPUT  # PIXEL_INPUT when it takes packed uint8 pixels


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    calibration_images: Sequence[Path],
    *,
    per_channel: bool = True,
    activation_type: str = "QUInt8",
    exclude_head: bool = True,
    op_types: Sequence[str] | None = None,
    float_ops: bool = True,
    share_concat_scales: bool = True,
    pixel_input: bool = True,
) -> QuantizationResult:
    """Static QDQ quantisation with ONNX Runtime (QInt8 weights, per channel), calibrated on images.

    The model is first shape-inferred and optimised (``quant_pre_process``); the Detect head's
    box-decoding nodes stay in float (:func:`head_decode_nodes`), and with ``float_ops`` so do the
    attention cores and the upsampling, which ONNX Runtime runs faster in float. ``op_types`` limits
    quantisation to those op types (default: every type ONNX Runtime quantises). QUInt8 activations: on
    x86 CPUs without VNNI, QInt8 activations ran about 2.4× slower than QUInt8 here. The quantised graph
    then gets the CPU rewrites of :mod:`alumi_pipelines.lib.export.int8_graph` that are switched on: one
    scale per Concat, and (QUInt8 only) packed uint8 pixels as input, recorded in the metadata property
    ``input_format``. Metadata properties of the FP32 model are carried over.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from alumi_edge.model_info import read_model_info
    from alumi_edge.processing import preprocess

    if activation_type not in ACTIVATION_TYPES:
        raise ExportError(f"activation type {activation_type!r}: expected one of {', '.join(ACTIVATION_TYPES)}")
    if not calibration_images:
        raise ExportError("INT8 quantisation needs at least one calibration image")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    info = read_model_info(fp32_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    prepared = out_path.with_name(f".prep-{out_path.name}")
    preprocessed = True
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    except Exception:  # an op the optimiser cannot handle: quantise the exported graph as it is
        preprocessed = False
        shutil.copyfile(fp32_path, prepared)
    model = onnx.load(str(prepared))
    input_name = model.graph.input[0].name
    excluded = head_decode_nodes(model) if exclude_head else []
    float_nodes = (
        (
            int8_graph.attention_float_nodes(model, exclude=set(excluded))
            + int8_graph.resize_nodes(model, exclude=set(excluded))
        )
        if float_ops
        else []
    )
    onnx.save(model, str(prepared))  # with the names head_decode_nodes gave unnamed nodes

    class ImageReader(CalibrationDataReader):
        """Feeds each calibration image once, letterboxed exactly as the edge runtime does."""

        def __init__(self) -> None:
            self._paths = iter(calibration_images)

        def get_next(self) -> dict | None:
            path = next(self._paths, None)
            if path is None:
                return None
            tensor, _ = preprocess(read_bgr(Path(path)), info.input_hw)
            return {input_name: tensor}

    try:
        quantize_static(
            str(prepared),
            str(out_path),
            ImageReader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=getattr(QuantType, activation_type),
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded + float_nodes,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(op_types) if op_types else None,
        )
    finally:
        prepared.unlink(missing_ok=True)
    quantized = onnx.load(str(out_path))
    shared = int8_graph.share_concat_scales(quantized) if share_concat_scales else 0
    packed = int8_graph.pack_pixel_input(quantized) if pixel_input and activation_type == "QUInt8" else None
    input_format = packed.input_format if packed else FLOAT_INPUT
    onnx.checker.check_model(quantized)
    save_with_metadata(
        quantized,
        out_path,
        {
            **read_metadata(fp32_path),
            "quantization": f"int8-qdq-{activation_type.lower()}",
            "quantization_excluded_nodes": len(excluded),
            "input_format": input_format,
        },
    )
    return QuantizationResult(
        out_path,
        excluded,
        len(calibration_images),
        activation_type,
        per_channel,
        out_path.stat().st_size,
        preprocessed,
        float_nodes,
        shared,
        input_format,
    )
