"""The Detect head's DFL decoding rewritten without a transpose (an in-place edit of an ONNX graph)."""

from __future__ import annotations

import numpy as np

from alumi_pipelines.lib.export.onnx_export import OPSET
from alumi_pipelines.lib.export.onnx_graph import graph_index, node_attr


def rewrite_dfl(model) -> bool:
    """Rewrite the Detect head's DFL decoding without a transpose; True when it was rewritten.

    ultralytics exports the distribution focal loss decoding as ``Reshape(b, 4, 16, a) → Transpose(0, 2,
    1, 3) → Softmax(axis=1) → 1×1 Conv`` (the conv's weights are the bin values 0..15): the expected bin
    under a softmax over the 16 bins. ONNX Runtime runs that softmax through an internal transpose on one
    thread (about 3 ms at 640 px here), and a softmax over the last axis still needs an explicit
    transpose (0.6 ms). The same arithmetic without moving any data::

        m = ReduceMax(x, axis=2); e = Exp(x - m)
        s = MatMul([bins; ones], e)          # (b, 4, 2, a): Σ e·bin and Σ e per box side and anchor
        out = s[:, :, 0:1] / s[:, :, 1:2]    # (b, 4, 1, a): the conv's output elements, in the same order

    The max is subtracted as a softmax does, so large logits cannot overflow. ``model`` (an
    ``onnx.ModelProto``) is edited in place; a graph without this pattern is left as it is.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    producer, consumers, initializers = graph_index(graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    attr = node_attr

    rewritten = False
    for softmax in [n for n in graph.node if n.op_type == "Softmax" and attr(n, "axis") == 1]:
        transpose = producer.get(softmax.input[0])
        convs = consumers.get(softmax.output[0], [])
        if transpose is None or transpose.op_type != "Transpose" or list(attr(transpose, "perm", [])) != [0, 2, 1, 3]:
            continue
        if len(consumers.get(transpose.output[0], [])) != 1 or len(convs) != 1 or convs[0].op_type != "Conv":
            continue
        conv = convs[0]
        weight = initializers.get(conv.input[1])
        if len(conv.input) != 2 or weight is None or attr(conv, "group", 1) != 1:
            continue
        bins = numpy_helper.to_array(weight)
        if bins.ndim != 4 or bins.shape[0] != 1 or bins.shape[2:] != (1, 1):
            continue
        prefix = softmax.name.rsplit("/", 1)[0] if "/" in softmax.name else softmax.name
        name = lambda part, prefix=prefix: f"{prefix}/{part}"  # noqa: E731
        row = bins.reshape(1, -1).astype(np.float32)
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.concatenate([row, np.ones_like(row)]), name("bins_and_ones")),
                numpy_helper.from_array(np.array([2], np.int64), name("bin_axis")),
                numpy_helper.from_array(np.array([0], np.int64), name("at_0")),
                numpy_helper.from_array(np.array([1], np.int64), name("at_1")),
                numpy_helper.from_array(np.array([2], np.int64), name("at_2")),
            ]
        )
        x = transpose.input[0]
        reduce_max = (
            helper.make_node("ReduceMax", [x, name("bin_axis")], [name("max")], keepdims=1, name=name("ReduceMax"))
            if opset >= 18
            else helper.make_node("ReduceMax", [x], [name("max")], axes=[2], keepdims=1, name=name("ReduceMax"))
        )
        replacement = [
            reduce_max,
            helper.make_node("Sub", [x, name("max")], [name("shifted")], name=name("Sub")),
            helper.make_node("Exp", [name("shifted")], [name("exp")], name=name("Exp")),
            helper.make_node("MatMul", [name("bins_and_ones"), name("exp")], [name("sums")], name=name("MatMul")),
            helper.make_node(
                "Slice",
                [name("sums"), name("at_0"), name("at_1"), name("bin_axis")],
                [name("weighted")],
                name=name("SliceWeighted"),
            ),
            helper.make_node(
                "Slice",
                [name("sums"), name("at_1"), name("at_2"), name("bin_axis")],
                [name("total")],
                name=name("SliceTotal"),
            ),
            helper.make_node("Div", [name("weighted"), name("total")], [conv.output[0]], name=name("Div")),
        ]
        old = {id(transpose), id(softmax), id(conv)}
        nodes = []
        for node in graph.node:
            if id(node) == id(transpose):
                nodes.extend(replacement)
            elif id(node) not in old:
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        changed = {transpose.output[0], softmax.output[0], conv.output[0]}
        for info in [v for v in graph.value_info if v.name in changed]:  # their shapes changed
            graph.value_info.remove(info)
        if not any(weight.name in n.input for n in graph.node):
            graph.initializer.remove(weight)
        rewritten = True
    return rewritten
