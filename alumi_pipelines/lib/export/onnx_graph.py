"""Small lookups over an ONNX graph shared by the graph rewrites (``dfl``, ``int8_graph``)."""

from __future__ import annotations

from collections import defaultdict


def graph_index(graph) -> tuple[dict, dict, dict]:
    """(tensor → producing node, tensor → consuming nodes, name → initializer) of an ``onnx.GraphProto``."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    initializers = {init.name: init for init in graph.initializer}
    return producer, consumers, initializers


def node_attr(node, name: str, default=None):
    """The value of a node's attribute, or ``default`` when it has none of that name."""
    from onnx import helper

    found = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return found[0] if found else default
