"""INT8 graph rewrites (lib.int8_graph) on small hand-built models, quantised for real with ONNX Runtime."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from alumi_edge.processing import pack_pixels, to_input_tensor
from alumi_pipelines.lib.export import int8_graph

SIDE = 32


def _float_model(first_kernel: int = 3, branch_gain: float = 1.0):
    """A stem like YOLO's: 3×3 stride-2 conv + SiLU, Split, a 1×1 conv + SiLU, Concat, nearest 2× upsample, conv."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = lambda *shape: numpy_helper.from_array(rng.normal(0, 0.4, shape).astype(np.float32))  # noqa: E731
    inits = []
    for name, shape in [("w0", (8, 3, first_kernel, first_kernel)), ("w1", (4, 4, 1, 1)), ("w2", (6, 12, 1, 1))]:
        t = w(*shape)
        t.name = name
        if name == "w1":
            t = numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(branch_gain), name)
        inits.append(t)
    inits += [
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b0"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b1"),
        numpy_helper.from_array(np.array([4, 4], np.int64), "halves"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    pad = first_kernel // 2
    nodes = [
        helper.make_node(
            "Conv",
            ["images", "w0", "b0"],
            ["c0"],
            name="stem/conv",
            kernel_shape=[first_kernel] * 2,
            strides=[2, 2],
            pads=[pad] * 4,
        ),
        helper.make_node("Sigmoid", ["c0"], ["s0"], name="stem/sigmoid"),
        helper.make_node("Mul", ["c0", "s0"], ["a0"], name="stem/mul"),
        helper.make_node("Split", ["a0", "halves"], ["left", "right"], name="split", axis=1),
        helper.make_node("Conv", ["right", "w1", "b1"], ["c1"], name="branch/conv"),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="branch/sigmoid"),
        helper.make_node("Mul", ["c1", "s1"], ["a1"], name="branch/mul"),
        helper.make_node("Concat", ["left", "right", "a1"], ["cat"], name="concat", axis=1),
        helper.make_node("Resize", ["cat", "", "scales"], ["up"], name="upsample", mode="nearest"),
        helper.make_node("Conv", ["up", "w2"], ["out"], name="out/conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6, SIDE, SIDE])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _images(count: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(count)]


def _quantised(model, tmp_path, exclude=()):
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src, dst = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(src))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.images = iter(_images(8))

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {"images": to_input_tensor(image)}

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        calibrate_method=CalibrationMethod.MinMax,
    )
    return onnx.load(str(dst))


def _run(model, feed):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


def _optimised_ops(model, tmp_path) -> list[str]:
    """Op types of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node]


def _params(model, tensor: str) -> tuple[float, int]:
    from onnx import numpy_helper

    init = {i.name: i for i in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    return float(numpy_helper.to_array(init[q.input[1]])), int(numpy_helper.to_array(init[q.input[2]]))


# -- space-to-depth ---------------------------------------------------------------------------------
def test_pack_pixels_is_a_2x2_space_to_depth_of_the_bgr_pixels():
    image = _images(1)[0]
    packed = pack_pixels(image)
    half = SIDE // 2
    reference = image.reshape(half, 2, half, 2, 3).transpose(0, 2, 1, 3, 4).reshape(1, half, half, 12)
    np.testing.assert_array_equal(packed, reference)
    assert packed.dtype == np.uint8 and packed.flags["C_CONTIGUOUS"]
    assert packed[0, 3, 5, 9 + 2] == image[7, 11, 2]  # row parity 1, column parity 1, red (BGR index 2)


def test_space_to_depth_weights_compute_the_same_convolution():
    """A float 3×3 stride-2 conv over RGB/255 equals the rearranged 2×2 conv over the packed BGR pixels."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(3).normal(0, 1, (5, 3, 3, 3)).astype(np.float32)
    packed_weights = int8_graph.space_to_depth_weights(weights)
    assert packed_weights.shape == (5, 12, 2, 2)
    # Every original weight appears exactly once; the other 12·4 − 27 entries per filter are zero.
    assert np.count_nonzero(packed_weights[0]) == 27
    assert sorted(packed_weights[0][packed_weights[0] != 0]) == sorted(weights[0].ravel())

    def conv(w, kernel, stride, pads, channels, side):
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[kernel] * 2, strides=[stride] * 2, pads=pads)],
            "conv",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, side, side])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(w, "w")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    image = _images(1, seed=4)[0]
    expected = _run(conv(weights, 3, 2, [1, 1, 1, 1], 3, SIDE), to_input_tensor(image))
    packed = pack_pixels(image).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    got = _run(conv(packed_weights, 2, 1, [1, 1, 0, 0], 12, SIDE // 2), np.ascontiguousarray(packed))
    assert got.shape == expected.shape == (1, 5, SIDE // 2, SIDE // 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_space_to_depth_weights_refuse_other_shapes():
    with pytest.raises(ValueError, match=r"\(8, 3, 1, 1\)"):
        int8_graph.space_to_depth_weights(np.zeros((8, 3, 1, 1), np.int8))


def test_pack_pixel_input_gives_bit_identical_outputs(tmp_path):
    from onnx import checker, numpy_helper

    quantised = _quantised(_float_model(), tmp_path)
    # The reference: the same quantised model, its input quantised at 1/255 exactly as the rewrite does.
    reference = copy.deepcopy(quantised)
    init = {i.name: i for i in reference.graph.initializer}
    q = next(n for n in reference.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "images")
    init[q.input[1]].CopyFrom(numpy_helper.from_array(np.array(1 / 255, np.float32), q.input[1]))
    init[q.input[2]].CopyFrom(numpy_helper.from_array(np.array(0, np.uint8), q.input[2]))
    assert int8_graph._requantize_biases(reference.graph, "images", 1 / 255) == 1  # the stem conv's bias

    rewritten = copy.deepcopy(quantised)
    packed = int8_graph.pack_pixel_input(rewritten)
    checker.check_model(rewritten)
    ops = _optimised_ops(rewritten, tmp_path)
    assert ops.count("QLinearConv") == 3 and "Conv" not in ops
    assert packed == int8_graph.PixelInput("images", (1, SIDE // 2, SIDE // 2, 12))
    assert not [n for n in rewritten.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "images"]
    conv = next(n for n in rewritten.graph.node if n.name == "stem/conv")
    assert {a.name: list(a.ints) for a in conv.attribute if a.ints} == {
        "kernel_shape": [2, 2],
        "strides": [1, 1],
        "pads": [1, 1, 0, 0],
        "dilations": [1, 1],
    }
    float_model = _float_model()
    for image in _images(4, seed=9):
        want = _run(reference, to_input_tensor(image))
        got = _run(rewritten, pack_pixels(image))
        np.testing.assert_array_equal(got, want)
        # and still the float model's numbers, to quantisation error
        full = _run(float_model, to_input_tensor(image))
        assert np.abs(got - full).max() < 0.1 * np.abs(full).max()


def test_pack_pixel_input_leaves_a_model_without_the_pattern_alone(tmp_path):
    quantised = _quantised(_float_model(first_kernel=1), tmp_path)
    before = quantised.SerializeToString()
    assert int8_graph.pack_pixel_input(quantised) is None
    assert quantised.SerializeToString() == before


# -- Concat scales --------------------------------------------------------------------------------------
def test_share_concat_scales_gives_the_concat_one_range_covering_every_input(tmp_path):
    # The branch (a1) is the widest input, so the split halves the branch conv reads are widened to it.
    quantised = _quantised(_float_model(branch_gain=3.0), tmp_path)
    members = ["left", "right", "a1", "cat", "a0"]  # Split keeps a0's scale on left/right
    before = {t: _params(quantised, t) for t in members if _has_quantize(quantised, t)}
    assert len({before[t] for t in ("right", "cat")}) == 2  # calibrated apart
    images = _images(4, seed=5)
    outputs_before = [_run(quantised, to_input_tensor(i)) for i in images]

    assert before["a1"][0] > 1.5 * before["right"][0]  # the branch's range is well over the split halves'
    # Sharing widens the halves by that factor: past a 1.5 limit, within a 3 limit.
    untouched = copy.deepcopy(quantised)
    assert int8_graph.share_concat_scales(untouched, max_widening=1.5) == 0
    assert untouched.SerializeToString() == quantised.SerializeToString()
    rewritten = copy.deepcopy(quantised)
    assert int8_graph.share_concat_scales(rewritten, max_widening=3.0) == 1
    after = {t: _params(rewritten, t) for t in before}
    assert len(set(after.values())) == 1  # one scale and zero point for the whole group
    # The branch conv reads a tensor whose scale moved: its int32 bias moved with it, so ONNX Runtime still
    # fuses every conv into a QLinearConv (a stale bias scale silently leaves the conv in float).
    ops = _optimised_ops(rewritten, tmp_path)
    assert ops.count("QLinearConv") == 3 and "Conv" not in ops
    scale, zero = next(iter(after.values()))
    for _tensor, (old_scale, old_zero) in before.items():  # the shared range contains each old range
        assert (0 - zero) * scale <= (0 - old_zero) * old_scale + 1e-6
        assert (255 - zero) * scale >= (255 - old_zero) * old_scale - 1e-6
    float_model = _float_model(branch_gain=3.0)
    for image, old in zip(images, outputs_before):
        full = _run(float_model, to_input_tensor(image))
        new = _run(rewritten, to_input_tensor(image))
        assert np.abs(new - full).max() < 0.1 * np.abs(full).max()
        assert not np.array_equal(new, old)  # the rewrite did change the arithmetic
    again = copy.deepcopy(rewritten)
    int8_graph.share_concat_scales(again, max_widening=3.0)
    assert again.SerializeToString() == rewritten.SerializeToString()  # already shared: nothing moves


def _has_quantize(model, tensor: str) -> bool:
    return any(n.op_type == "QuantizeLinear" and n.input[0] == tensor for n in model.graph.node)


# -- nodes kept in float --------------------------------------------------------------------------------
def _attention_graph():
    """ultralytics' Attention core: q·scale → Transpose → MatMul(k) → Softmax → Transpose → MatMul(v); plus a
    DFL-like Softmax feeding a Conv, which is no attention."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Mul", ["q", "scale"], ["qs"], name="attn/Mul"),
        helper.make_node("Transpose", ["qs"], ["qt"], name="attn/Transpose", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["qt", "k"], ["logits"], name="attn/MatMul"),
        helper.make_node("Softmax", ["logits"], ["p"], name="attn/Softmax", axis=-1),
        helper.make_node("Transpose", ["p"], ["pt"], name="attn/Transpose_1", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["v", "pt"], ["y"], name="attn/MatMul_1"),
        helper.make_node("Softmax", ["z"], ["zs"], name="dfl/Softmax", axis=1),
        helper.make_node("Conv", ["zs", "w"], ["zo"], name="dfl/Conv"),
    ]
    f = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    graph = helper.make_graph(
        nodes,
        "attn",
        [f("q", [1, 2, 8, 16]), f("k", [1, 2, 8, 16]), f("v", [1, 2, 8, 16]), f("z", [1, 16, 4, 4])],
        [f("y", None), f("zo", None)],
        [
            numpy_helper.from_array(np.array(0.35, np.float32), "scale"),
            numpy_helper.from_array(np.ones((1, 16, 1, 1), np.float32), "w"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_attention_float_nodes_finds_the_core_and_skips_other_softmaxes():
    found = int8_graph.attention_float_nodes(_attention_graph())
    assert sorted(found) == sorted(
        ["attn/Softmax", "attn/MatMul", "attn/Mul", "attn/Transpose", "attn/Transpose_1", "attn/MatMul_1"]
    )
    assert int8_graph.attention_float_nodes(_attention_graph(), exclude={"attn/Softmax"}) == []


def test_resize_nodes():
    assert int8_graph.resize_nodes(_float_model()) == ["upsample"]
    assert int8_graph.resize_nodes(_float_model(), exclude={"upsample"}) == []
