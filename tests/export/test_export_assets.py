"""export_job end to end on a quickly trained champion: ONNX + parity, INT8 + margin, TensorRT plan, signed release."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from export_factory import CLASSES, IMGSZ, SPLITS

# gate (ONNX through the edge runtime) vs ultralytics val (PyTorch) on the same input: float32 differences of the two
# runtimes only (tests/export/test_one_map.py checks the same on an informative split)
MAP_TOLERANCE = 0.002


def _check_result(result, check_name: str):
    evaluations = [e for e in result.get_asset_check_evaluations() if e.check_name == check_name]
    assert len(evaluations) == 1, f"{check_name} ran {len(evaluations)} times"
    return evaluations[0]


def _meta(result, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_export_job_materialises_every_asset_and_passes_both_checks(export_run):
    result = export_run.result
    assert result.success
    done = sorted(e.asset_key.to_user_string() for e in result.get_asset_materialization_events())
    assert done == ["edge_release", "onnx_int8_model", "onnx_model", "tensorrt_engine"]
    assert _check_result(result, "onnx_parity").passed
    assert _check_result(result, "int8_accuracy").passed


def test_onnx_model_carries_pipeline_metadata_and_a_static_input(export_run):
    import onnx

    from alumi_pipelines.lib.export.onnx_export import read_metadata

    meta = _meta(export_run.result, "onnx_model")
    assert meta["onnx_key"] == f"models/onnx/{export_run.version}/model.onnx"
    path = export_run.lake.local_path(meta["onnx_key"])
    props = read_metadata(path)
    assert props["model_version"] == export_run.version
    assert props["dataset_hash"] == export_run.pointer["dataset_hash"]
    assert props["mlflow_run_id"] == export_run.run_id
    assert props["imgsz"] == f"[{IMGSZ}, {IMGSZ}]"
    assert props["stride"] == "32"
    assert eval(props["names"]) == dict(enumerate(CLASSES))  # ultralytics writes a dict literal
    model = onnx.load(str(path))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, IMGSZ, IMGSZ]
    assert model.opset_import[0].version == meta["opset"] == 17
    assert meta["size_bytes"] == path.stat().st_size
    assert not list(Path.cwd().glob("*.onnx")), "export must not write into the working directory"


def test_onnx_parity_reports_matching_boxes_on_the_test_split(export_run):
    check = _check_result(export_run.result, "onnx_parity")
    meta = {k: v.value for k, v in check.metadata.items()}
    assert meta["images"] == SPLITS["test"]
    assert meta["images_matching"] == SPLITS["test"]
    assert meta["map50_diff"] <= 0.002
    assert meta["box_conf"] == 0.25
    assert meta["boxes_torch"] == meta["boxes_onnx"] > 10 * SPLITS["test"]
    record = export_run.record(f"models/onnx/{export_run.version}/parity.json")
    assert record["passed"] and record["mismatches"] == []


def test_int8_model_is_quantised_except_the_head_and_reports_size_latency_and_map(export_run):
    import onnx

    meta = _meta(export_run.result, "onnx_int8_model")
    record = export_run.record(meta["int8_record_key"])
    assert meta["calibration_images"] == SPLITS["train"] + SPLITS["val"] == len(record["calibration"])
    assert all(c["path"].startswith(export_run.pointer["prefix"] + "/images/") for c in record["calibration"])
    assert not any("/images/test/" in c["path"] for c in record["calibration"])
    assert meta["size_bytes_int8"] < meta["size_bytes_fp32"] / 2
    assert meta["latency_ms_fp32"] > 0 and meta["latency_ms_int8"] > 0
    assert record["latency_fp32"]["runs"] == 10
    assert 0.0 <= meta["map50_int8"] <= 1.0 and 0.0 <= meta["map50_fp32"] <= 1.0
    model = onnx.load(str(export_run.lake.local_path(meta["int8_key"])))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 50
    excluded = set(record["excluded_nodes"])
    assert "/model.23/dfl/MatMul" in excluded
    by_name = {n.name: n for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    # The output is produced in float: its producer is the head's final Concat, not a DequantizeLinear.
    assert producer[model.graph.output[0].name].op_type == "Concat"
    # The DFL bin-weighted sum still takes float weights (no DequantizeLinear feeding it).
    dfl = by_name["/model.23/dfl/MatMul"]
    assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in dfl.input)
    # CPU rewrites (lib.int8_graph): packed uint8 pixels in, attention and upsampling in float, shared scales.
    assert record["input_format"] == meta["input_format"] == "bgr_u8_s2d2"
    props = {p.key: p.value for p in model.metadata_props}
    assert props["input_format"] == "bgr_u8_s2d2" and props["model_version"] == export_run.version
    model_input = model.graph.input[0]
    assert model_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in model_input.type.tensor_type.shape.dim] == [1, IMGSZ // 2, IMGSZ // 2, 12]
    assert {by_name[n].op_type for n in record["float_nodes"]} == {"Softmax", "MatMul", "Transpose", "Mul", "Resize"}
    assert record["shared_concat_scales"] >= 10


def test_int8_accuracy_reports_the_verdict_as_a_warning_and_the_margin_decides(export_run, refused_int8_run):
    from dagster import AssetCheckSeverity

    passed = _check_result(export_run.result, "int8_accuracy")
    assert passed.passed and passed.severity == AssetCheckSeverity.WARN
    assert passed.metadata["margin"].value == 0.01 and passed.metadata["in_release"].value is True
    assert "within the margin 0.01: INT8 ships" in passed.metadata["why"].value
    refused = _check_result(refused_int8_run.result, "int8_accuracy")
    assert not refused.passed and refused.severity == AssetCheckSeverity.WARN
    assert refused.metadata["margin"].value == -1.0 and refused.metadata["in_release"].value is False
    why = refused.metadata["why"].value
    assert "exceeds the margin -1.0: INT8 refused: the release ships the FP32 model only" in why
    # a warning, not a blocking failure: the job went on to the release
    assert refused_int8_run.result.success
    done = sorted(e.asset_key.to_user_string() for e in refused_int8_run.result.get_asset_materialization_events())
    assert done == ["edge_release", "onnx_int8_model", "onnx_model", "tensorrt_engine"]


def test_gate_map_is_ultralytics_val_map_on_the_test_split(export_run, tmp_path, ultralytics_dir):
    """The gates' mAP (FP32 ONNX through the edge runtime, ultralytics' matching and AP) is what
    ``YOLO(weights).val(split="test", rect=False)`` reports: the edge runtime's input is val's, pixel for pixel, and
    boxes are matched unclipped, as val matches them in the letterboxed input."""
    from alumi_pipelines.lib.training.offline import import_ultralytics

    import_ultralytics(ultralytics_dir)
    from ultralytics import YOLO

    int8 = export_run.record(f"models/onnx/{export_run.version}/int8.json")
    assert int8["map_nms"] == {"conf": 0.001, "iou": 0.7, "max_det": 300, "multi_label": True, "clip": False}
    metrics = YOLO(str(export_run.root / "best.pt")).val(
        data=str(export_run.root / "yolo" / "data.yaml"),
        split="test",
        imgsz=IMGSZ,
        conf=0.001,
        iou=0.7,
        max_det=300,
        batch=1,
        rect=False,
        device="cpu",
        plots=False,
        verbose=False,
        project=str(tmp_path),
        name="val",
    )
    print({"val": (metrics.box.map50, metrics.box.map), "gate": (int8["map50_fp32"], int8["map50_95_fp32"])})
    # This 3-epoch champion scores low (mAP50 about 0.0016 here) but not zero, so the comparison can fail.
    assert metrics.box.map50 > 0.001 and metrics.box.map > 0.0002
    assert int8["map50_fp32"] == pytest.approx(metrics.box.map50, abs=MAP_TOLERANCE)
    assert int8["map50_95_fp32"] == pytest.approx(metrics.box.map, abs=MAP_TOLERANCE)
    parity = export_run.record(f"models/onnx/{export_run.version}/parity.json")
    assert parity["map50_onnx"] == int8["map50_fp32"]  # one mAP: the parity check and the INT8 gate agree


def test_tensorrt_engine_without_tensorrt_writes_the_plan_and_says_why(export_run):
    meta = _meta(export_run.result, "tensorrt_engine")
    assert meta["engine_built"] is False
    assert "tensorrt" in meta["reason"].lower() and "not installed" in meta["reason"]
    plan = export_run.record(meta["plan_key"])
    int8 = export_run.record(f"models/onnx/{export_run.version}/int8.json")
    assert plan["built_here"] is False and plan["reason"] == meta["reason"]
    assert plan["onnx"]["path"] == "model.onnx" and plan["onnx"]["shape"] == [1, 3, IMGSZ, IMGSZ]
    assert plan["engine_cache"]["key_format"] == "<trt_version>-<gpu_name>-<precision>"
    assert plan["calibration"]["images"] == int8["calibration"]
    fp16, int8_build = plan["builds"]["fp16"]["argv"], plan["builds"]["int8"]["argv"]
    assert fp16[:2] == ["trtexec", "--onnx=model.onnx"] and "--fp16" in fp16 and "--int8" not in fp16
    assert {"--int8", "--fp16"} <= set(int8_build)
    assert any(a.startswith("--calib=engines/") and a.endswith("-int8.calib") for a in int8_build)
    engine_suffix = "-<trt_version>-<gpu_name>-fp16.engine"
    assert any(a.startswith("--saveEngine=engines/") and a.endswith(engine_suffix) for a in fp16)


def test_edge_release_is_complete_signed_and_self_tests(export_run, tmp_path, _isolated_home):
    from alumi_edge.manifest import ChecksumError, verify_release_dir
    from alumi_edge.selftest import run_self_test

    meta = _meta(export_run.result, "edge_release")
    name = meta["release_version"]
    assert name == f"{export_run.version}-{export_run.pointer['dataset_hash'][:8]}"
    lake = export_run.lake
    keys = {f.key[len(f"releases/{name}/") :] for f in lake.list_files(f"releases/{name}")}
    wheel = [k for k in keys if k.endswith(".whl")]
    assert len(wheel) == 1 and wheel[0].startswith("alumi_edge-")
    assert keys == {
        "manifest.json",
        "manifest.sig",
        "model.onnx",
        "model_int8.onnx",
        "tensorrt_plan.json",
        "sample/sample.png",
        "sample/expected.json",
        wheel[0],
    }
    folder = lake.get_dir(f"releases/{name}", tmp_path / "release")
    public_pem = (_isolated_home / "keys" / "release-dev.key.pub").read_bytes()
    manifest = verify_release_dir(folder, public_pem)
    assert manifest.version == name and list(manifest.classes) == list(CLASSES)
    assert manifest.imgsz == (IMGSZ, IMGSZ)
    assert manifest.source["model_version"] == export_run.version
    assert manifest.source["mlflow_run_id"] == export_run.run_id
    assert {f.role for f in manifest.files} == {
        "model",
        "model_int8",
        "wheel",
        "build_plan",
        "sample_image",
        "sample_expected",
    }
    assert manifest.metrics["test_map50_int8"] == _meta(export_run.result, "onnx_int8_model")["map50_int8"]
    report = run_self_test(folder, manifest)
    assert report.passed and report.matched == report.expected
    assert report.models == ["model.onnx", "model_int8.onnx"]  # whichever model a device serves was run
    assert report.raw_compared == 2 * 16  # and its raw top scores, not only its boxes
    expected = json.loads((folder / "sample" / "expected.json").read_text())
    assert set(expected["roles"]) == {"model_int8"}
    assert expected["boxes"] and expected["roles"]["model_int8"]["boxes"]
    with zipfile.ZipFile(folder / wheel[0]) as archive:
        names = archive.namelist()
    assert "alumi_edge/main.py" in names and not any(n.startswith("alumi_pipelines") for n in names)
    (folder / "model_int8.onnx").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="model_int8.onnx"):
        verify_release_dir(folder, public_pem)


def test_channel_pointer_points_at_the_release_and_a_rerun_moves_only_the_pointer(export_run, _isolated_home):
    from alumi_edge.channel import verify_pointer
    from alumi_pipelines.assets.release import edge_release

    name = _meta(export_run.result, "edge_release")["release_version"]
    stable = export_run.record("releases/channels/stable.json")
    assert stable["version"] == name and stable["manifest"] == f"{name}/manifest.json"
    public_pem = (_isolated_home / "keys" / "release-dev.key.pub").read_bytes()
    first = verify_pointer(export_run.lake.read_bytes("releases/channels/stable.json"), public_pem, "stable")
    manifest_before = export_run.lake.read_bytes(f"releases/{name}/manifest.json")
    config = {"ops": {"edge_release": {"config": {"channels": ["canary", "stable"]}}}}
    again = export_run.materialize([edge_release], run_config=config)
    meta = _meta(again, "edge_release")
    assert meta["reused"] is True and meta["release_version"] == name
    # re-materialising re-signs the pointers: a higher sequence and a later expiry, same version
    resigned = verify_pointer(
        export_run.lake.read_bytes("releases/channels/stable.json"), public_pem, "stable", newest_accepted=first
    )
    assert resigned.version == name and resigned.sequence > first.sequence and resigned.expires_at >= first.expires_at
    assert export_run.record("releases/channels/canary.json")["version"] == name
    assert export_run.lake.read_bytes(f"releases/{name}/manifest.json") == manifest_before


def test_edge_release_with_a_missing_release_key_fails_naming_the_setting(export_run, tmp_path):
    from alumi_pipelines.assets.release import edge_release
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings

    settings = PipelineSettings(
        classes=list(CLASSES), home=export_run.settings.home, release_key=str(tmp_path / "missing.pem")
    )
    result = export_run.materialize([edge_release], raise_on_error=False, resources={"pipeline_settings": settings})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "release_key (ALUMI_RELEASE_KEY)=" in message and "missing.pem" in message and "no such file" in message


def test_head_decode_nodes_of_the_exported_model(export_run):
    import onnx

    from alumi_pipelines.lib.export.int8 import head_decode_nodes

    path = export_run.lake.local_path(f"models/onnx/{export_run.version}/model.onnx")
    model = onnx.load(str(path))
    nodes = head_decode_nodes(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    # The DFL's bin-weighted sum is a MatMul of Exp, with no transpose (rewrite_dfl).
    assert [n for n in nodes if ops[n] in ("Conv", "MatMul")] == ["/model.23/dfl/MatMul"]
    assert not [n for n in model.graph.node if n.name.startswith("/model.23/dfl/") and n.op_type == "Transpose"]
    assert {"ReduceMax", "Exp", "Sigmoid", "Concat", "Sub", "Add", "Div", "Mul"} <= {ops[n] for n in nodes}
    assert all(n.startswith("/model.23/") for n in nodes)  # nothing outside the Detect head
    assert ops[nodes[-1]] == "Concat"  # the output's producer is last in graph order


def test_export_and_parity_run_offline(trained_champion, no_network, tmp_path, _isolated_home):
    """Export (with onnxslim) and the PyTorch/ONNX comparison make no network connection and write only where told."""
    from alumi_pipelines.lib.export.accuracy import parity
    from alumi_pipelines.lib.export.onnx_export import export_onnx
    from alumi_pipelines.lib.export.yolo_data import read_yolo_split

    root, lake, _registry, pointer, version, run_id = trained_champion
    config_dir = _isolated_home / "ultralytics"
    result = export_onnx(
        root / "best.pt",
        tmp_path / "out",
        config_dir=config_dir,
        imgsz=IMGSZ,
        metadata={"model_version": version, "dataset_hash": pointer["dataset_hash"], "mlflow_run_id": run_id},
    )
    assert result.simplified and result.simplify_error == ""
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.onnx", "model.pt"]
    images = read_yolo_split(lake.local_path(pointer["prefix"]), "test", len(CLASSES))[:2]
    report = parity(root / "best.pt", result.path, images, config_dir=config_dir, imgsz=IMGSZ)
    assert report.passed and report.boxes_torch > 0
    assert no_network == []


def test_a_refused_int8_model_leaves_the_release_which_ships_fp32_and_a_device_serves_it(
    refused_int8_run, tmp_path, _isolated_home
):
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from alumi_edge.manifest import verify_release_dir
    from alumi_edge.pull import pull
    from alumi_edge.selftest import run_self_test

    run = refused_int8_run
    int8 = _meta(run.result, "onnx_int8_model")
    assert int8["int8_accepted"] is False and int8["margin"] == -1.0
    meta = _meta(run.result, "edge_release")
    assert meta["int8_in_release"] is False and "exceeds the margin -1.0" in meta["int8_refused"]
    name = meta["release_version"]
    keys = {f.key.rsplit("/", 1)[-1] for f in run.lake.list_files(f"releases/{name}")}
    assert "model.onnx" in keys and "model_int8.onnx" not in keys
    public_pem = (_isolated_home / "keys" / "release-dev.key.pub").read_bytes()
    folder = run.lake.get_dir(f"releases/{name}", tmp_path / "release")
    manifest = verify_release_dir(folder, public_pem)
    assert manifest.file_for_role("model_int8") is None
    refused = manifest.refused["model_int8"]
    assert (refused["map50_fp32"], refused["map50_int8"], refused["margin"]) == (
        int8["map50_fp32"],
        int8["map50_int8"],
        -1.0,
    )
    assert refused["map50_drop"] == pytest.approx(int8["map50_fp32"] - int8["map50_int8"], abs=1e-6)
    assert refused["why"].startswith(f"mAP50 FP32 {int8['map50_fp32']:.4f} vs INT8 {int8['map50_int8']:.4f}")
    assert run_self_test(folder, manifest).models == ["model.onnx"]
    plan = json.loads((folder / "tensorrt_plan.json").read_text())
    assert "int8_onnx" not in plan

    # a device pulls it and serves the FP32 model over HTTP; pinning the INT8 role names why it is missing
    home = tmp_path / "device"
    pull(str(run.lake.local_path("releases")), home, public_pem)
    pubkey = _isolated_home / "keys" / "release-dev.key.pub"
    sample = folder / next(f.path for f in manifest.files if f.role == "sample_image")

    def serve(role: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "edge_export"),
            "ALUMI_EDGE_AUTH": "none",
            "ALUMI_EDGE_CAPTURE": "false",
            "ALUMI_EDGE_HOME": str(home),
            "ALUMI_EDGE_PUBKEY": str(pubkey),
            "ALUMI_EDGE_DEVICE": "cpu",
            "ALUMI_EDGE_RUNTIME": "onnxruntime",
            "ALUMI_EDGE_MODEL_ROLE": role,
        }
        cmd = [sys.executable, "-m", "alumi_edge", "serve", "--port", str(port)]
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"{base}/readyz", timeout=2)
                if answer.status_code in (200, 503):
                    return server, base, answer
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "server did not answer"
            time.sleep(0.2)

    def stop(server):
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    server, base, ready = serve("auto")
    try:
        assert ready.status_code == 200, ready.text
        model = httpx.get(f"{base}/v1/model").json()
        assert model["release"]["role"] == "model" and model["model_path"].endswith("/model.onnx")
        assert model["release"]["refused"]["model_int8"]["margin"] == -1.0
        answer = httpx.post(f"{base}/v1/detect", files={"file": (sample.name, sample.read_bytes(), "image/png")})
        assert answer.status_code == 200, answer.text
        expected = json.loads((folder / "sample" / "expected.json").read_text())
        assert len(answer.json()["boxes"]) >= len([b for b in expected["boxes"] if b["confidence"] > 0.27])
    finally:
        stop(server)
    server, base, ready = serve("model_int8")
    try:
        assert ready.status_code == 503
        detail = ready.json()["detail"]
        assert "\n" not in detail and f"release {name} has no model_int8 file: the export refused it (mAP50" in detail
        assert "set ALUMI_EDGE_MODEL_ROLE=auto or model" in detail
    finally:
        stop(server)
