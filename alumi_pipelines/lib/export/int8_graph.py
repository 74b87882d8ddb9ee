"""Graph rewrites of a QDQ-quantised YOLO detector that make ONNX Runtime's CPU kernels faster.

Each function takes an ``onnx.ModelProto`` as ``onnxruntime.quantization.quantize_static`` wrote it
(QuantizeLinear → DequantizeLinear pairs around every quantised tensor), edits it in place and says
what it changed; a graph without the pattern is left as it is. Measured on yolo11n at 640 px, two
threads (``benchmarks/bench_edge_latency.py``):

- :func:`attention_float_nodes`, :func:`resize_nodes` — the attention block's softmax and matrix
  products are faster in float than as QLinearSoftmax/QLinearMatMul, and so is the neck's nearest
  upsampling (uint8 Resize in ONNX Runtime's NHWC layout: 0.82 ms; float: 0.58 ms plus 0.09 ms to
  requantise), so they are left out of quantisation.
- :func:`share_concat_scales` — a Concat whose inputs carry their own scales runs as a per-byte
  lookup; with one scale for every input and the output it is a copy.
- :func:`pack_pixel_input` — the model takes the letterboxed BGR pixels as uint8, packed 2×2 into
  channels (space-to-depth), and its first convolution is rearranged to match. The first layer's
  3-channel 3×3 stride-2 convolution was the slowest QLinearConv of the network (its im2col copies
  3 bytes at a time); as a 12-channel 2×2 stride-1 convolution it is exact and about twice as fast,
  and the float tensor, the input QuantizeLinear and a layout transpose go away.

Only onnx and numpy are used (and alumi_edge's names for the input layouts); nothing here runs a model.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from alumi_edge.model_info import PIXEL_INPUT as PIXEL_FORMAT
from alumi_pipelines.lib.export.onnx_graph import graph_index as _index
from alumi_pipelines.lib.export.onnx_graph import node_attr as _attr


def _requantize_biases(graph, tensor: str, input_scale: float) -> int:
    """Re-quantise the int32 bias of every Conv that reads the quantised ``tensor`` for its new input scale.

    A QDQ Conv's bias is quantised at ``input scale × weight scale``; ONNX Runtime fuses
    DequantizeLinear → Conv → QuantizeLinear into a QLinearConv only while that holds, so a rewrite that
    moves an input's scale must move the bias with it (else the Conv silently runs in float). Returns how
    many biases were rewritten.
    """
    from onnx import numpy_helper

    producer, consumers, initializers = _index(graph)
    done = 0
    for quantize in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor]:
        for dequantize in consumers.get(quantize.output[0], []):
            if dequantize.op_type != "DequantizeLinear":
                continue
            for conv in consumers.get(dequantize.output[0], []):
                if conv.op_type != "Conv" or conv.input[0] != dequantize.output[0] or len(conv.input) < 3:
                    continue
                weight_dq, bias_dq = producer.get(conv.input[1]), producer.get(conv.input[2])
                if (
                    weight_dq is None
                    or bias_dq is None
                    or bias_dq.op_type != "DequantizeLinear"
                    or weight_dq.op_type != "DequantizeLinear"
                    or bias_dq.input[0] not in initializers
                    or bias_dq.input[1] not in initializers
                    or weight_dq.input[1] not in initializers
                ):
                    continue
                quantized = numpy_helper.to_array(initializers[bias_dq.input[0]])
                if quantized.dtype != np.int32:
                    continue
                old_scale = numpy_helper.to_array(initializers[bias_dq.input[1]]).astype(np.float64)
                weight_scale = numpy_helper.to_array(initializers[weight_dq.input[1]]).astype(np.float32)
                new_scale = (np.float32(input_scale) * weight_scale).astype(np.float32)
                bias = quantized.astype(np.float64) * old_scale
                info = np.iinfo(np.int32)
                requantized = np.clip(np.round(bias / new_scale.astype(np.float64)), info.min, info.max).astype(
                    np.int32
                )
                for name, value in (
                    (bias_dq.input[0], requantized),
                    (bias_dq.input[1], new_scale.reshape(old_scale.shape)),
                ):
                    if sum(name in n.input for n in graph.node) > 1:  # shared: give this Conv its own copy
                        own = f"{name}_{conv.name or conv.output[0]}"
                        graph.initializer.append(numpy_helper.from_array(value, own))
                        bias_dq.input[list(bias_dq.input).index(name)] = own
                    else:
                        initializers[name].CopyFrom(numpy_helper.from_array(value, name))
                done += 1
    return done


# -- which nodes stay float ------------------------------------------------------------------------
def attention_float_nodes(model, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Names of attention cores to keep in float: each Softmax (not in ``exclude``) between two MatMuls —
    the one producing its logits (through an optional scaling Mul) and the one it feeds (through an optional
    Transpose) — with those MatMuls, the Transposes feeding them and a constant scaling Mul before such a
    Transpose. Run on the float model before quantisation; nodes need names."""
    graph = model.graph
    producer, consumers, initializers = _index(graph)

    def scaling_mul(node) -> bool:
        return node.op_type == "Mul" and any(
            i in initializers or (i in producer and producer[i].op_type == "Constant") for i in node.input
        )

    found: dict[str, None] = {}
    for softmax in graph.node:
        if softmax.op_type != "Softmax" or softmax.name in exclude:
            continue
        chain = [softmax]
        logits = producer.get(softmax.input[0])
        if logits is not None and scaling_mul(logits):
            chain.append(logits)
            logits = next(
                (producer[i] for i in logits.input if i in producer and producer[i].op_type == "MatMul"), None
            )
        if logits is None or logits.op_type != "MatMul":
            continue
        matmuls = [logits]
        for user in consumers.get(softmax.output[0], []):
            if user.op_type == "Transpose":
                follow = [c for c in consumers.get(user.output[0], []) if c.op_type == "MatMul"]
                if follow:
                    chain.append(user)
                    matmuls.extend(follow)
            elif user.op_type == "MatMul":
                matmuls.append(user)
        if len(matmuls) < 2:
            continue  # not a scaled dot-product attention
        chain.extend(matmuls)
        for matmul in matmuls:
            for name in matmul.input:
                transpose = producer.get(name)
                if transpose is None or transpose.op_type != "Transpose" or transpose in chain:
                    continue
                chain.append(transpose)
                before = producer.get(transpose.input[0])
                if before is not None and scaling_mul(before):
                    chain.append(before)
        for node in chain:
            found[node.name] = None
    return list(found)


def resize_nodes(model, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Names of the Resize nodes (the neck's upsampling) not in ``exclude``."""
    return [n.name for n in model.graph.node if n.op_type == "Resize" and n.name not in exclude]


# -- Concat scales ---------------------------------------------------------------------------------
def _quantised_tensors(graph, initializers) -> dict[str, tuple[str, str]]:
    """Float tensor name → (scale initializer, zero-point initializer) of its per-tensor QuantizeLinear."""
    out = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        scale, zero = initializers.get(node.input[1]), initializers.get(node.input[2])
        if scale is not None and zero is not None and int(np.prod(scale.dims)) == 1:
            out[node.input[0]] = (node.input[1], node.input[2])
    return out


def share_concat_scales(model, max_widening: float = 2.0) -> int:
    """Give each quantised Concat's inputs the scale and zero point of one range that covers all of them
    and the output; returns how many Concats now share one scale.

    Tensors that already share a scale initializer (ops ONNX Runtime runs in uint8 without requantising:
    Split, MaxPool, Resize, …) are kept together, so each group gets the union of its members' ranges and
    nothing that was a copy becomes a requantisation. The union only widens a range: each tensor keeps
    every value it could represent, at a coarser step. A Concat is left alone when that would widen some
    member's range more than ``max_widening`` times (2: at most one bit of its eight), as when a branch of
    small activations meets one of large ones.
    """
    from onnx import numpy_helper

    graph = model.graph
    producer, _, initializers = _index(graph)
    params = _quantised_tensors(graph, initializers)
    ranges: dict[str, tuple[float, float]] = {}
    for tensor, (scale_name, zero_name) in params.items():
        zero_point = numpy_helper.to_array(initializers[zero_name])
        info = np.iinfo(zero_point.dtype)
        scale, zero = float(numpy_helper.to_array(initializers[scale_name])), int(zero_point)
        ranges[tensor] = ((info.min - zero) * scale, (info.max - zero) * scale)
    parent: dict[str, str] = {}
    members: dict[str, list[str]] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        members.setdefault(x, [x])
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
            members[rb].extend(members.pop(ra))

    def source(dequantized: str) -> str | None:  # the float tensor behind a DequantizeLinear output
        dq = producer.get(dequantized)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None

    def width(tensors) -> tuple[float, float]:  # (narrowest member's width, width of the union)
        low = min(ranges[t][0] for t in tensors)
        high = max(ranges[t][1] for t in tensors)
        return min(ranges[t][1] - ranges[t][0] for t in tensors), high - low

    by_scale: dict[str, list[str]] = defaultdict(list)
    for tensor, (scale, _) in params.items():
        by_scale[scale].append(tensor)
    for group in by_scale.values():
        for tensor in group[1:]:
            union(group[0], tensor)
    shared = 0
    for node in graph.node:
        if node.op_type != "Concat" or node.output[0] not in params:
            continue
        inputs = [source(i) for i in node.input]
        if any(t is None or t not in params for t in inputs):
            continue
        roots = {find(t) for t in [*inputs, node.output[0]]}
        narrowest, union_width = width([t for r in roots for t in members[r]])
        if narrowest <= 0 or union_width / narrowest > max_widening:
            continue
        for tensor in inputs:
            union(tensor, node.output[0])
        shared += 1
    for root, group in members.items():
        if parent.get(root, root) != root or len({params[t] for t in group}) < 2:
            continue
        low = min(0.0, *(ranges[t][0] for t in group))  # a quantisation range always holds 0
        high = max(0.0, *(ranges[t][1] for t in group))
        zero_dtype = numpy_helper.to_array(initializers[params[group[0]][1]]).dtype
        info = np.iinfo(zero_dtype)
        scale = np.float32((high - low) / (info.max - info.min))
        zero = np.clip(np.round(info.min - low / scale), info.min, info.max).astype(zero_dtype)
        for tensor in group:
            scale_name, zero_name = params[tensor]
            initializers[scale_name].CopyFrom(numpy_helper.from_array(np.array(scale, np.float32), scale_name))
            initializers[zero_name].CopyFrom(numpy_helper.from_array(np.array(zero, zero_dtype), zero_name))
        for tensor in group:
            _requantize_biases(graph, tensor, float(scale))
    return shared


# -- pixel input -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PixelInput:
    """How :func:`pack_pixel_input` changed the model input."""

    input_name: str
    shape: tuple[int, int, int, int]  # (1, H/2, W/2, 12)
    input_format: str = PIXEL_FORMAT


# Space-to-depth of a 3×3 stride-2 convolution with padding 1: input row 2y + d - 1 (tap d = 0, 1, 2) lies in
# block row y - 1 at sub-row 1 (d = 0) or in block row y at sub-row 0 (d = 1) or 1 (d = 2). As a 2×2 kernel
# over blocks (offsets -1, 0: padding 1 before, 0 after): (block offset index, sub-position) → tap.
_S2D_TAPS = {(0, 1): 0, (1, 0): 1, (1, 1): 2}


def space_to_depth_weights(weights: np.ndarray) -> np.ndarray:
    """(O, 3, 3, 3) weights of a 3×3 stride-2 pad-1 conv over RGB → (O, 12, 2, 2) weights of the same conv
    over the 2×2-packed BGR pixels (channel ``(row parity * 2 + column parity) * 3 + BGR channel``),
    stride 1, padding (1, 1, 0, 0). Entries are copied, never computed: integer weights stay exact."""
    if weights.ndim != 4 or weights.shape[1:] != (3, 3, 3):
        raise ValueError(f"first-layer weights of shape {weights.shape}: expected (out, 3, 3, 3)")
    packed = np.zeros((weights.shape[0], 12, 2, 2), weights.dtype)
    for (block_y, sub_y), tap_y in _S2D_TAPS.items():
        for (block_x, sub_x), tap_x in _S2D_TAPS.items():
            for bgr in range(3):
                packed[:, (sub_y * 2 + sub_x) * 3 + bgr, block_y, block_x] = weights[:, 2 - bgr, tap_y, tap_x]
    return packed


def pack_pixel_input(model) -> PixelInput | None:
    """Make the model take uint8 pixels packed 2×2 (``bgr_u8_s2d2``) instead of a float RGB tensor.

    Needs the QDQ pattern ``input → QuantizeLinear → DequantizeLinear → Conv`` (3×3, stride 2, padding 1,
    one group, 3 input channels, quantised weights) with even input sides. The input's quantisation
    becomes scale 1/255, zero point 0, so the quantised pixel is the pixel itself: the model sees exactly
    the integer values the QuantizeLinear would have produced from ``pixel / 255``. The packed input is
    transposed to NCHW inside the graph, which ONNX Runtime cancels against its own NHWC layout. Returns
    None (model untouched) when the pattern is not there.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    producer, consumers, initializers = _index(graph)
    model_input = graph.input[0]
    users = consumers.get(model_input.name, [])
    if len(users) != 1 or users[0].op_type != "QuantizeLinear":
        return None
    quantize = users[0]
    dequantizers = consumers.get(quantize.output[0], [])
    if len(dequantizers) != 1 or dequantizers[0].op_type != "DequantizeLinear":
        return None
    dequantize = dequantizers[0]
    convs = consumers.get(dequantize.output[0], [])
    if len(convs) != 1 or convs[0].op_type != "Conv" or convs[0].input[0] != dequantize.output[0]:
        return None
    conv = convs[0]
    if (
        list(_attr(conv, "kernel_shape", [])) != [3, 3]
        or list(_attr(conv, "strides", [1, 1])) != [2, 2]
        or list(_attr(conv, "pads", [0, 0, 0, 0])) != [1, 1, 1, 1]
        or _attr(conv, "group", 1) != 1
        or list(_attr(conv, "dilations", [1, 1])) != [1, 1]
        or _attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
    ):
        return None
    weight_dq = producer.get(conv.input[1])
    if weight_dq is None or weight_dq.op_type != "DequantizeLinear" or weight_dq.input[0] not in initializers:
        return None
    weights = numpy_helper.to_array(initializers[weight_dq.input[0]])
    dims = [d.dim_value for d in model_input.type.tensor_type.shape.dim]
    if (
        weights.shape[1:] != (3, 3, 3)
        or len(dims) != 4
        or dims[0] != 1
        or dims[1] != 3
        or min(dims[2:]) <= 0
        or dims[2] % 2
        or dims[3] % 2
    ):
        return None
    if sum(weight_dq.input[0] in n.input for n in graph.node) != 1 or len(consumers.get(conv.input[1], [])) != 1:
        return None  # the weights are shared with another node: rearranging them would change it too
    scale_name, zero_name = (dequantize.input[1], dequantize.input[2]) if len(dequantize.input) == 3 else ("", "")
    if zero_name not in initializers or numpy_helper.to_array(initializers[zero_name]).dtype != np.uint8:
        return None  # pixels are uint8: the input must be quantised to uint8

    packed_name = f"{weight_dq.input[0]}_s2d"
    graph.initializer.append(numpy_helper.from_array(space_to_depth_weights(weights), packed_name))
    graph.initializer.remove(initializers[weight_dq.input[0]])
    weight_dq.input[0] = packed_name
    del conv.attribute[:]
    conv.attribute.extend(
        [
            helper.make_attribute("kernel_shape", [2, 2]),
            helper.make_attribute("strides", [1, 1]),
            helper.make_attribute("pads", [1, 1, 0, 0]),
            helper.make_attribute("dilations", [1, 1]),
            helper.make_attribute("group", 1),
        ]
    )
    initializers[scale_name].CopyFrom(numpy_helper.from_array(np.array(1 / 255, np.float32), scale_name))
    initializers[zero_name].CopyFrom(numpy_helper.from_array(np.array(0, np.uint8), zero_name))
    _requantize_biases(graph, model_input.name, 1 / 255)
    shape = (1, dims[2] // 2, dims[3] // 2, 12)
    nodes = list(graph.node)
    position = nodes.index(quantize)
    nodes[position] = helper.make_node(
        "Transpose", [model_input.name], [quantize.output[0]], perm=[0, 3, 1, 2], name="pixels/to_nchw"
    )
    del graph.node[:]
    graph.node.extend(nodes)
    stale = {quantize.output[0], dequantize.output[0], conv.input[1]}
    for info in [v for v in graph.value_info if v.name in stale]:
        graph.value_info.remove(info)
    graph.input.remove(model_input)
    graph.input.insert(0, helper.make_tensor_value_info(model_input.name, TensorProto.UINT8, list(shape)))
    return PixelInput(model_input.name, shape)
