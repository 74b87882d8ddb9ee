"""Pure export logic on hand-made inputs: head-node walk, calibration choice, mAP50, box matching, metadata, keys."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from alumi_pipelines.lib.export.accuracy import MapResult, detection_map, int8_verdict, match_detections
from alumi_pipelines.lib.export.dfl import rewrite_dfl
from alumi_pipelines.lib.export.int8 import head_decode_nodes
from alumi_pipelines.lib.export.latency import time_calls
from alumi_pipelines.lib.export.onnx_export import ExportError, export_onnx, read_metadata, set_metadata
from alumi_pipelines.lib.export.predict import ImageDetections
from alumi_pipelines.lib.export.yolo_data import LabelledImage, read_yolo_split, select_calibration_images


def _head_like_graph():
    """A miniature YOLO Detect head: feature convs, DFL box decoding, class sigmoid, one output."""
    from onnx import TensorProto, helper, numpy_helper

    f32 = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["images", "w_stem"], ["stem"], name="stem/conv"),
        helper.make_node("Sigmoid", ["stem"], ["stem_sig"], name="stem/act/sigmoid"),
        helper.make_node("Mul", ["stem", "stem_sig"], ["feat"], name="stem/act/mul"),
        helper.make_node("Conv", ["feat", "w_box"], ["box_raw"], name="head/cv2/conv"),
        helper.make_node("Conv", ["feat", "w_cls"], ["cls_raw"], name="head/cv3/conv"),
        helper.make_node("Reshape", ["box_raw", "s_box"], ["box_flat"], name="head/reshape_box"),
        helper.make_node("Reshape", ["cls_raw", "s_cls"], ["cls_flat"], name="head/reshape_cls"),
        helper.make_node("Reshape", ["box_flat", "s_dfl"], ["dfl_in"], name="head/dfl/reshape"),
        helper.make_node("Transpose", ["dfl_in"], ["dfl_t"], name="head/dfl/transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Softmax", ["dfl_t"], ["dfl_sm"], name="head/dfl/softmax", axis=1),
        helper.make_node("Conv", ["dfl_sm", "w_dfl"], ["dfl_out"], name="head/dfl/conv"),
        helper.make_node("Reshape", ["dfl_out", "s_dist"], ["dist"], name="head/dfl/reshape_1"),
        helper.make_node("Slice", ["dist", "z", "two", "one"], ["lt"], name="head/slice_lt"),
        helper.make_node("Slice", ["dist", "two", "four", "one"], ["rb"], name="head/slice_rb"),
        helper.make_node("Sub", ["anchors", "lt"], ["x1y1"], name="head/sub"),
        helper.make_node("Add", ["anchors", "rb"], ["x2y2"], name="head/add"),
        helper.make_node("Add", ["x1y1", "x2y2"], ["sum"], name="head/add_centre"),
        helper.make_node("Div", ["sum", "two_f"], ["centre"], name="head/div"),
        helper.make_node("Sub", ["x2y2", "x1y1"], ["wh"], name="head/sub_wh"),
        helper.make_node("Concat", ["centre", "wh"], ["xywh"], name="head/concat_box", axis=1),
        helper.make_node("Mul", ["xywh", "strides"], ["boxes"], name="head/mul_stride"),
        helper.make_node("Sigmoid", ["cls_flat"], ["scores"], name="head/sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["output0"], name="head/concat_out", axis=1),
    ]
    init = [
        numpy_helper.from_array(np.zeros((1,), np.float32), n)
        for n in ("w_stem", "w_box", "w_cls", "w_dfl", "anchors", "strides", "two_f")
    ]
    init += [
        numpy_helper.from_array(np.zeros((1,), np.int64), n)
        for n in ("s_box", "s_cls", "s_dfl", "s_dist", "z", "one", "two", "four")
    ]
    graph = helper.make_graph(
        nodes, "head", [f32("images", [1, 3, 32, 32])], [f32("output0", [1, 7, 16])], initializer=init
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_head_decode_nodes_walks_back_to_the_feature_convolutions():
    found = head_decode_nodes(_head_like_graph())
    assert found == [
        "head/reshape_box",
        "head/reshape_cls",
        "head/dfl/reshape",
        "head/dfl/transpose",
        "head/dfl/softmax",
        "head/dfl/conv",
        "head/dfl/reshape_1",
        "head/slice_lt",
        "head/slice_rb",
        "head/sub",
        "head/add",
        "head/add_centre",
        "head/div",
        "head/sub_wh",
        "head/concat_box",
        "head/mul_stride",
        "head/sigmoid",
        "head/concat_out",
    ]
    # The stem's SiLU (Sigmoid + Mul) sits behind a Conv the walk stops at, so it stays quantisable.
    assert "stem/act/mul" not in found and "head/cv2/conv" not in found and "head/cv3/conv" not in found


def test_head_decode_nodes_refuses_a_graph_without_a_decoding_head():
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="only/conv")],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
        initializer=[numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")],
    )
    with pytest.raises(ExportError, match="not a YOLO Detect head"):
        head_decode_nodes(helper.make_model(graph))


def test_calibration_selection_is_deterministic_and_capped():
    names = [f"images/train/{i:04d}.png" for i in range(500)]
    first = select_calibration_images(names, 300)
    assert len(first) == 300 == len(set(first))
    assert select_calibration_images(list(reversed(names)) + names[:10], 300) == first
    assert select_calibration_images(names[:20], 300) == select_calibration_images(list(reversed(names[:20])), 300)
    assert len(select_calibration_images(names[:20], 300)) == 20
    with pytest.raises(ExportError, match="at least 1"):
        select_calibration_images(names, 0)


def _truth(boxes, classes):
    from pathlib import Path

    return LabelledImage(
        Path("x.png"), 100, 100, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)
    )


def _pred(boxes, confs, classes):
    return ImageDetections(
        np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(confs, np.float32), np.asarray(classes, np.int64)
    )


def _map(predictions, truths, config_dir):
    return detection_map(predictions, truths, config_dir=config_dir)


def test_detection_map_on_hand_built_boxes(ultralytics_dir):
    truths = [_truth([[10, 10, 50, 50], [60, 60, 90, 90]], [0, 1])]
    perfect = _map([_pred([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.8], [0, 1])], truths, ultralytics_dir)
    # 0.995, not 1: ultralytics' 101-point curve ends at precision 0 past full recall; IoU 1 at every threshold.
    assert (perfect.map50, perfect.map50_95) == (pytest.approx(0.995), pytest.approx(0.995))
    assert perfect.per_class50 == {0: pytest.approx(0.995), 1: pytest.approx(0.995)}
    assert (perfect.images, perfect.instances) == (1, 2)
    wrong_class = _map([_pred([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.8], [1, 0])], truths, ultralytics_dir)
    assert (wrong_class.map50, wrong_class.map50_95) == (0.0, 0.0)
    assert _map([_pred([], [], [])], truths, ultralytics_dir).map50 == 0.0
    # A false positive ranked above the true positive: precision 1/2 at full recall for class 0.
    fp_first = _map(
        [_pred([[70, 0, 99, 20], [10, 10, 50, 50], [60, 60, 90, 90]], [0.95, 0.9, 0.8], [0, 0, 1])],
        truths,
        ultralytics_dir,
    )
    assert fp_first.per_class50[1] == pytest.approx(0.995)
    assert fp_first.per_class50[0] == pytest.approx(0.5, abs=0.01)
    assert fp_first.map50 == pytest.approx((fp_first.per_class50[0] + 0.995) / 2)
    # IoU 0.76 is a hit at the six thresholds 0.50 ... 0.75 of ten: mAP50-95 = 0.995 * 6 / 10.
    square = [_truth([[0, 0, 100, 100]], [0])]
    partial = _map([_pred([[0, 0, 100, 76]], [0.9], [0])], square, ultralytics_dir)
    assert partial.map50 == pytest.approx(0.995) and partial.map50_95 == pytest.approx(0.995 * 0.6)
    # Below IoU 0.5 is a miss; a second box on a matched truth is a false positive ranked below it (AP unchanged);
    # a class without ground truth is not averaged in.
    assert _map([_pred([[30, 30, 70, 70]], [0.9], [0])], [_truth([[10, 10, 50, 50]], [0])], ultralytics_dir).map50 == 0
    duplicate = _map([_pred([[0, 0, 100, 100], [0, 0, 100, 98]], [0.9, 0.8], [0, 0])], square, ultralytics_dir)
    assert duplicate.map50 == pytest.approx(0.995)
    extra_class = _map([_pred([[0, 0, 100, 100], [5, 5, 20, 20]], [0.9, 0.95], [0, 2])], square, ultralytics_dir)
    assert extra_class.per_class50 == {0: pytest.approx(0.995)} and extra_class.map50 == pytest.approx(0.995)
    # Two images, one truth each, the detection of the second ranked first: both hits, still 0.995.
    two = _map(
        [_pred([[0, 0, 100, 100]], [0.4], [0]), _pred([[10, 10, 50, 50]], [0.9], [0])],
        [square[0], _truth([[10, 10, 50, 50]], [0])],
        ultralytics_dir,
    )
    assert two.map50 == pytest.approx(0.995) and two.instances == 2
    with pytest.raises(ExportError, match="2 prediction sets for 1 images"):
        _map([_pred([], [], []), _pred([], [], [])], square, ultralytics_dir)


def test_int8_verdict_refuses_a_drop_beyond_the_margin():
    fp32 = MapResult(0.485, 0.30, {}, 10, 20)
    within = int8_verdict(fp32, MapResult(0.478, 0.29, {}, 10, 20), margin=0.01)
    assert within["accepted"] and within["map50_drop"] == pytest.approx(0.007)
    refused = int8_verdict(fp32, MapResult(0.455, 0.27, {}, 10, 20), margin=0.01)
    assert not refused["accepted"]
    assert (refused["map50_fp32"], refused["map50_int8"], refused["margin"]) == (0.485, 0.455, 0.01)
    assert refused["why"] == "mAP50 FP32 0.4850 vs INT8 0.4550: drop +0.0300 exceeds the margin 0.01"


def test_match_detections_pairs_boxes_greedily_by_class_and_iou():
    ref = _pred([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.5], [0, 1])
    same = _pred([[60.2, 60, 90, 90], [10, 10.3, 50, 50]], [0.5, 0.9], [1, 0])
    report = match_detections(ref, same, "a.png")
    assert report.passed and report.matched == 2
    moved = _pred([[10, 10, 50, 50], [66, 60, 96, 90]], [0.9, 0.5], [0, 1])  # IoU 0.67 < 0.9
    report = match_detections(ref, moved, "b.png")
    assert not report.passed and report.matched == 1
    assert any("b.png: class 1 box" in p and "best IoU 0.667" in p for p in report.problems)
    other_class = _pred([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.5], [0, 2])
    assert match_detections(ref, other_class, "c.png").matched == 1
    fewer = match_detections(ref, _pred([[10, 10, 50, 50]], [0.9], [0]), "d.png")
    assert "d.png: 2 reference boxes but 1 candidate boxes" in fewer.problems


def test_set_metadata_adds_and_replaces_properties(tmp_path):
    import onnx

    path = tmp_path / "head.onnx"
    onnx.save(_head_like_graph(), str(path))
    set_metadata(path, {"names": "{0: 'a'}", "model_version": "3"})
    props = set_metadata(path, {"model_version": "4", "dataset_hash": "abc"})
    assert props == {"names": "{0: 'a'}", "model_version": "4", "dataset_hash": "abc"}
    assert read_metadata(path) == props
    assert not list(tmp_path.glob(".tmp-*"))


def test_export_refuses_missing_pipeline_metadata_and_bad_sizes(tmp_path):
    with pytest.raises(ExportError, match="dataset_hash, mlflow_run_id must be given"):
        export_onnx(tmp_path / "best.pt", tmp_path, config_dir=tmp_path, imgsz=96, metadata={"model_version": "1"})
    with pytest.raises(ExportError, match="imgsz 100: must be a positive multiple of 32"):
        export_onnx(
            tmp_path / "best.pt",
            tmp_path,
            config_dir=tmp_path,
            imgsz=100,
            metadata={"model_version": "1", "dataset_hash": "d", "mlflow_run_id": "r"},
        )


def test_read_yolo_split_converts_labels_to_pixels_and_names_bad_lines(tmp_path):
    import cv2

    (tmp_path / "images" / "test").mkdir(parents=True)
    (tmp_path / "labels" / "test").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images" / "test" / "a.png"), np.zeros((50, 100, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "images" / "test" / "b.png"), np.zeros((50, 100, 3), np.uint8))
    (tmp_path / "labels" / "test" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    [a, b] = read_yolo_split(tmp_path, "test", num_classes=2)
    assert (a.width, a.height) == (100, 50)
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35]])
    assert a.class_ids.tolist() == [1] and len(b.boxes) == 0  # b has no label file: background
    (tmp_path / "labels" / "test" / "a.txt").write_text("7 0.5 0.5 0.2 0.4\n")
    with pytest.raises(ExportError, match=r"a.txt:1: expected 'class x y w h' with class in 0..1"):
        read_yolo_split(tmp_path, "test", num_classes=2)


def test_time_calls_reports_median_of_the_timed_runs():
    calls = []
    stats = time_calls(calls.append, runs=7, warmup=2)
    assert calls == [0, 1, 0, 1, 2, 3, 4, 5, 6]
    assert stats.runs == 7 and 0 <= stats.min_ms <= stats.median_ms <= stats.p90_ms


def test_release_naming_and_signing_key_choice(tmp_path):
    from alumi_pipelines.assets.release import release_version
    from alumi_pipelines.lib.export.release import ReleaseError, signing_key_path

    assert release_version("12", "0123456789abcdef") == "12-01234567"
    assert signing_key_path(tmp_path) == (tmp_path / "keys" / "release-dev.key", True)
    assert signing_key_path(tmp_path, None, "") == (tmp_path / "keys" / "release-dev.key", True)
    key = tmp_path / "prod.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    assert signing_key_path(tmp_path, None, str(key)) == (key, False)
    with pytest.raises(ReleaseError, match="release_key \\(ALUMI_RELEASE_KEY\\)=.*missing.pem.*no such file"):
        signing_key_path(tmp_path, None, str(tmp_path / "missing.pem"))
    with pytest.raises(ReleaseError, match="config signing_key=.*other.pem.*no such file"):
        signing_key_path(tmp_path, str(tmp_path / "other.pem"), str(key))
    assert signing_key_path(tmp_path, str(key), str(tmp_path / "missing.pem")) == (key, False)  # config wins


def test_gold_images_and_staging_copy_only_the_asked_images_and_their_labels_from_a_remote_lake(tmp_path):
    from alumi_pipelines.assets.export import gold_image_paths
    from alumi_pipelines.assets.gold import stage_gold
    from alumi_pipelines.resources import lake_keys
    from alumi_pipelines.resources.lake import Lake

    lake = Lake(base_uri=f"memory://export-stage-{tmp_path.name}")
    prefix = lake_keys.gold_prefix("abc")
    rows = []
    for split, name in (("train", "a"), ("train", "b"), ("test", "c")):  # a version written with image copies
        lake.write_bytes(f"{prefix}/images/{split}/{name}.png", name.encode())
        lake.write_bytes(f"{prefix}/labels/{split}/{name}.txt", f"0 0.5 0.5 0.1 0.1 # {name}\n".encode())
        rows.append({"image_id": name, "split": split, "file": f"images/{split}/{name}.png"})
    lake.write_table(lake_keys.gold_manifest_key(prefix), pl.DataFrame(rows))
    assert gold_image_paths(lake, prefix, ("train", "val", "test")) == {
        "train": ["images/train/a.png", "images/train/b.png"],
        "val": [],
        "test": ["images/test/c.png"],
    }
    root = stage_gold(
        lake, prefix, tmp_path, splits=("train", "test"), only={"images/train/b.png", "images/test/c.png"}
    )
    staged = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert staged == ["images/test/c.png", "images/train/b.png", "labels/test/c.txt", "labels/train/b.txt"]
    assert (root / "labels/train/b.txt").read_text().endswith("# b\n")


def test_onnx_model_without_a_champion_fails_naming_the_alias(tmp_path):
    from dagster import DagsterInstance, materialize

    from alumi_pipelines.assets.export import onnx_model
    from alumi_pipelines.resources.lake import Lake
    from alumi_pipelines.resources.mlflow_registry import MlflowRegistry
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings

    registry = MlflowRegistry(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "artifacts"),
        model_name="no-champion",
    )
    settings = PipelineSettings(classes=["scratch"], home=str(tmp_path / "home"))
    result = materialize(
        [onnx_model],
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
        resources={"lake": Lake(base_uri=str(tmp_path / "lake")), "mlflow": registry, "pipeline_settings": settings},
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "model 'no-champion' has no 'champion' alias: materialise champion_model first" in str(
        failure.step_failure_data.error.message if failure.step_failure_data.error else failure
    )


def _dfl_graph(bins: int = 16, anchors: int = 50):
    """The DFL decoding exactly as ultralytics exports it: (1, 4*bins, a) → distances (1, 4, a)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Reshape", ["x", "s_in"], ["r"], name="/model.23/dfl/Reshape"),
        helper.make_node("Transpose", ["r"], ["t"], name="/model.23/dfl/Transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Softmax", ["t"], ["sm"], name="/model.23/dfl/Softmax", axis=1),
        helper.make_node("Conv", ["sm", "w"], ["c"], name="/model.23/dfl/conv/Conv"),
        helper.make_node("Reshape", ["c", "s_out"], ["y"], name="/model.23/dfl/Reshape_1"),
    ]
    init = [
        numpy_helper.from_array(np.array([1, 4, bins, anchors], np.int64), "s_in"),
        numpy_helper.from_array(np.array([1, 4, anchors], np.int64), "s_out"),
        numpy_helper.from_array(np.arange(bins, dtype=np.float32).reshape(1, bins, 1, 1), "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "dfl",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4 * bins, anchors])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, anchors])],
        initializer=init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_dfl_rewrite_keeps_the_numbers_and_moves_no_data():
    import onnx

    model = _dfl_graph()
    x = np.random.default_rng(0).normal(0, 3, (1, 64, 50)).astype(np.float32)
    x[0, 5, 7] = 400.0  # a logit whose exp overflows float32 unless the max is subtracted
    before = _run(model, x)
    assert rewrite_dfl(model) is True
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Reshape", "ReduceMax", "Sub", "Exp", "MatMul", "Slice", "Slice", "Div", "Reshape"]
    assert "Transpose" not in ops and "Softmax" not in ops
    assert "w" not in {i.name for i in model.graph.initializer}  # the conv's weights went with it
    after = _run(model, x)
    assert after.shape == (1, 4, 50) and np.isfinite(after).all()
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    # An independent reference: expected bin value under the softmax over the 16 bins.
    logits = x.reshape(4, 16, 50).astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(after[0], (p * np.arange(16)[None, :, None]).sum(axis=1), rtol=1e-5, atol=1e-5)
    assert after[0, 0, 7] == pytest.approx(5.0, abs=1e-4)  # the huge logit's bin takes all the weight
    assert rewrite_dfl(model) is False  # nothing left to rewrite


def test_dfl_rewrite_for_opset_18_passes_the_axis_as_an_input():
    from onnx import helper

    model = _dfl_graph()
    model.opset_import[0].version = 18
    x = np.random.default_rng(1).normal(0, 2, (1, 64, 50)).astype(np.float32)
    before = _run(model, x)
    assert rewrite_dfl(model) is True
    reduce_max = next(n for n in model.graph.node if n.op_type == "ReduceMax")
    assert len(reduce_max.input) == 2 and not [a for a in reduce_max.attribute if a.name == "axes"]
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)
    assert helper.get_attribute_value(reduce_max.attribute[0]) == 1  # keepdims


def test_dfl_rewrite_leaves_other_softmaxes_alone():
    model = _dfl_graph()
    for node in model.graph.node:
        if node.op_type == "Transpose":
            node.attribute[0].ints[:] = [0, 1, 3, 2]  # not the DFL's transpose
    before = model.SerializeToString()
    assert rewrite_dfl(model) is False
    assert model.SerializeToString() == before
