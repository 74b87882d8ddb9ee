"""TensorRT: the guard, the on-device plan, and the engine-build code driven through a stand-in ``tensorrt`` module."""

from __future__ import annotations

import importlib.util
import shlex
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from alumi_pipelines.lib.export import tensorrt_plan as tp

HW = (64, 64)
SHA = "ab" * 32


class FakeTensorRT:
    """Builds ``tensorrt`` and ``pycuda.driver`` stand-ins that record every builder, calibrator and CUDA call."""

    def __init__(
        self,
        version: str = "10.3.0",
        fast_fp16: bool = True,
        fast_int8: bool = True,
        parse_ok: bool = True,
        gpu: str = "Orin (nvgpu)",
    ):
        self.calls: list[tuple] = []
        self.builds: list[dict] = []
        self.uploads: list[np.ndarray] = []
        self.executions = 0
        self.trt = self._tensorrt(version, fast_fp16, fast_int8, parse_ok)
        self.cuda = self._cuda(gpu)

    def _tensorrt(self, version, fast_fp16, fast_int8, parse_ok):
        fake = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = version

        class Logger:
            WARNING = "WARNING"

            def __init__(self, severity):
                fake.calls.append(("Logger", severity))

        class NetworkDefinitionCreationFlag:
            EXPLICIT_BATCH = 0

        class BuilderFlag:
            FP16 = "FP16"
            INT8 = "INT8"

        class MemoryPoolType:
            WORKSPACE = "WORKSPACE"

        class TensorIOMode:
            INPUT = "INPUT"
            OUTPUT = "OUTPUT"

        class IInt8EntropyCalibrator2:
            def __init__(self):
                fake.calls.append(("IInt8EntropyCalibrator2.__init__",))

        class BuilderConfig:
            def __init__(self):
                self.flags, self.pools, self.int8_calibrator = [], {}, None

            def set_flag(self, flag):
                self.flags.append(flag)

            def set_memory_pool_limit(self, pool, size):
                self.pools[pool] = size

        class Network:
            def __init__(self, flags):
                self.flags = flags

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                self.network = network

            def parse(self, data):
                fake.calls.append(("parse", bytes(data)))
                return parse_ok

            def get_error(self, i):
                return "In node 12 (Conv): unsupported attribute"

        class Builder:
            platform_has_fast_fp16 = fast_fp16
            platform_has_fast_int8 = fast_int8

            def __init__(self, logger):
                fake.calls.append(("Builder",))

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return Network(flags)

            def create_builder_config(self):
                return BuilderConfig()

            def build_serialized_network(self, network, config):
                build = {
                    "network_flags": network.flags,
                    "flags": list(config.flags),
                    "pools": dict(config.pools),
                    "calibrator": config.int8_calibrator,
                    "batches": 0,
                    "cache_read": None,
                }
                calibrator = config.int8_calibrator
                if calibrator is not None:  # what TensorRT does with an implicit-quantisation calibrator
                    assert calibrator.get_batch_size() == 1
                    build["cache_read"] = calibrator.read_calibration_cache()
                    if build["cache_read"] is None:
                        while calibrator.get_batch(["images"]) is not None:
                            build["batches"] += 1
                        calibrator.write_calibration_cache(b"TRT-1003-EntropyCalibration2\nimages: 3c010a14\n")
                fake.builds.append(build)
                return bytearray(b"ENGINE:" + "+".join(config.flags).encode())

        class Engine:
            num_io_tensors = 2
            shapes = {"images": (1, 3, *HW), "output0": (1, 7, 84)}

            def get_tensor_name(self, i):
                return ("images", "output0")[i]

            def get_tensor_shape(self, name):
                return self.shapes[name]

            def get_tensor_dtype(self, name):
                return "float32"

            def get_tensor_mode(self, name):
                return TensorIOMode.INPUT if name == "images" else TensorIOMode.OUTPUT

            def create_execution_context(self):
                return Context()

        class Context:
            def set_tensor_address(self, name, address):
                fake.calls.append(("set_tensor_address", name))

            def execute_async_v3(self, stream_handle):
                fake.executions += 1
                return True

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                fake.calls.append(("deserialize", bytes(data)))
                return Engine()

        for cls in (
            Logger,
            NetworkDefinitionCreationFlag,
            BuilderFlag,
            MemoryPoolType,
            TensorIOMode,
            IInt8EntropyCalibrator2,
            Builder,
            OnnxParser,
            Runtime,
        ):
            setattr(trt, cls.__name__, cls)
        trt.nptype = lambda dtype: np.float32
        return trt

    def _cuda(self, gpu):
        fake = self
        cuda = types.ModuleType("pycuda.driver")

        class Pointer:
            def __init__(self, nbytes):
                self.nbytes = nbytes

            def __int__(self):
                return 0x1000

        class Context:
            def pop(self):
                fake.calls.append(("context.pop",))

        class Device:
            def __init__(self, index):
                self.index = index

            @staticmethod
            def count():
                return 1

            def name(self):
                return gpu

            def make_context(self):
                fake.calls.append(("make_context", self.index))
                return Context()

        class Stream:
            handle = 7

            def synchronize(self):
                pass

        cuda.init = lambda: None
        cuda.Device, cuda.Stream = Device, Stream
        cuda.mem_alloc = lambda nbytes: Pointer(nbytes)
        cuda.memcpy_htod = lambda device, host: fake.uploads.append(np.array(host, copy=True))
        cuda.memcpy_htod_async = lambda device, host, stream: None
        cuda.memcpy_dtoh_async = lambda host, device, stream: None
        return cuda

    def install(self, monkeypatch) -> None:
        package = types.ModuleType("pycuda")
        package.driver = self.cuda
        monkeypatch.setitem(sys.modules, "tensorrt", self.trt)
        monkeypatch.setitem(sys.modules, "pycuda", package)
        monkeypatch.setitem(sys.modules, "pycuda.driver", self.cuda)


@pytest.fixture
def calibration_images(tmp_path):
    import cv2

    paths = []
    for i in range(3):
        image = np.full((48 + 8 * i, 80, 3), 40 * (i + 1), np.uint8)
        path = tmp_path / "cal" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def test_guard_without_tensorrt_names_the_missing_package():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed on this machine")
    trt, cuda, reason = tp.tensorrt_guard()
    assert trt is None and cuda is None
    assert "'tensorrt' Python package is not installed" in reason
    with pytest.raises(tp.TensorRTUnavailable, match="tensorrt"):
        tp.build_engines(Path("model.onnx"), Path("out"), [], HW, SHA)


def test_guard_with_tensorrt_but_no_gpu(monkeypatch):
    fake = FakeTensorRT()
    fake.cuda.Device.count = staticmethod(lambda: 0)
    fake.install(monkeypatch)
    assert tp.tensorrt_guard() == (None, None, "no CUDA device found")
    fake.cuda.init = lambda: (_ for _ in ()).throw(RuntimeError("cuInit failed: no CUDA-capable device"))
    assert tp.tensorrt_guard()[2] == "CUDA failed to start: cuInit failed: no CUDA-capable device"


def test_engine_cache_key_and_trtexec_commands():
    assert tp.engine_cache_key("10.3.0", "Orin (nvgpu)", "fp16") == "10.3.0-orin-nvgpu-fp16"
    assert tp.engine_cache_key("8.6.2.3", "NVIDIA Jetson AGX Xavier", "int8") == "8.6.2.3-nvidia-jetson-agx-xavier-int8"
    with pytest.raises(ValueError, match="precision 'fp8'"):
        tp.engine_cache_key("10.3.0", "Orin", "fp8")
    assert tp.trtexec_command("model.onnx", "fp16", "engines/a.engine") == [
        "trtexec",
        "--onnx=model.onnx",
        "--saveEngine=engines/a.engine",
        "--memPoolSize=workspace:1024",
        "--timingCacheFile=engines/timing.cache",
        "--fp16",
    ]
    assert tp.trtexec_command("model.onnx", "int8", "e.engine", calibration_cache="c.calib")[-3:] == [
        "--int8",
        "--fp16",
        "--calib=c.calib",
    ]
    with pytest.raises(ValueError, match="calibration cache"):
        tp.trtexec_command("model.onnx", "int8", "e.engine")


def test_build_plan_content():
    images = [{"path": f"gold/datasets/x/images/train/{i}.png", "sha256": f"{i:064x}"} for i in range(4)]
    plan = tp.build_plan(
        onnx_file="model.onnx",
        onnx_sha256=SHA,
        input_name="images",
        input_shape=[1, 3, 96, 96],
        calibration_images=images,
        model_version="7",
        reason="no tensorrt here",
        int8_onnx_file="model_int8.onnx",
    )
    assert plan["onnx"] == {
        "path": "model.onnx",
        "sha256": SHA,
        "input": "images",
        "shape": [1, 3, 96, 96],
        "dynamic": False,
    }
    assert plan["engine_cache"]["key_format"] == "<trt_version>-<gpu_name>-<precision>"
    fp16, int8 = plan["builds"]["fp16"], plan["builds"]["int8"]
    # Placeholders are quoted (a bare < or > would be a shell redirection); the device substitutes them.
    assert fp16["command"] == (
        "trtexec --onnx=model.onnx "
        "'--saveEngine=engines/abababababababab-<trt_version>-<gpu_name>-fp16.engine' "
        "--memPoolSize=workspace:1024 --timingCacheFile=engines/timing.cache --fp16"
    )
    assert shlex.split(int8["command"]) == int8["argv"]
    assert int8["argv"][-3:] == ["--int8", "--fp16", f"--calib={int8['calibration_cache']}"]
    assert int8["calibration_cache"] == "engines/abababababababab-<trt_version>-<gpu_name>-int8.calib"
    assert (fp16["builder_flags"], int8["builder_flags"]) == (["FP16"], ["INT8", "FP16"])
    assert plan["calibration"]["images"] == images and plan["calibration"]["count"] == 4
    assert plan["calibration"]["algorithm"] == "IInt8EntropyCalibrator2"
    assert plan["built_here"] is False and plan["reason"] == "no tensorrt here"
    assert plan["int8_onnx"]["path"] == "model_int8.onnx"
    with pytest.raises(ValueError, match="calibration image list is empty"):
        tp.build_plan(
            onnx_file="m.onnx",
            onnx_sha256=SHA,
            input_name="images",
            input_shape=[1, 3, 96, 96],
            calibration_images=[],
            model_version="7",
            reason="",
        )
    with pytest.raises(ValueError, match=r"static \[1, 3, H, W\]"):
        tp.build_plan(
            onnx_file="m.onnx",
            onnx_sha256=SHA,
            input_name="images",
            input_shape=[1, 3, -1, 96],
            calibration_images=images,
            model_version="7",
            reason="",
        )


def test_build_engines_drives_the_builder_and_calibrator(tmp_path, calibration_images, monkeypatch):
    import cv2

    from alumi_edge.processing import preprocess

    fake = FakeTensorRT()
    fake.install(monkeypatch)
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"onnx-bytes")
    report = tp.build_engines(
        onnx_path, tmp_path / "engines", calibration_images, HW, SHA, latency_runs=4, workspace_bytes=256 << 20
    )
    assert (report.trt_version, report.gpu_name) == ("10.3.0", "Orin (nvgpu)")
    assert ("create_network", 0) in fake.calls  # TensorRT 10: explicit batch is the only mode, no flag
    assert [c for c in fake.calls if c[0] == "parse"] == [("parse", b"onnx-bytes")] * 2
    fp16, int8 = fake.builds
    assert fp16["flags"] == ["FP16"] and fp16["calibrator"] is None
    assert int8["flags"] == ["FP16", "INT8"]
    assert isinstance(int8["calibrator"], fake.trt.IInt8EntropyCalibrator2)
    assert fp16["pools"] == int8["pools"] == {"WORKSPACE": 256 << 20}
    # The calibrator fed every image once, letterboxed as the edge runtime does.
    assert int8["batches"] == 3 and int8["cache_read"] is None
    for upload, path in zip(fake.uploads, calibration_images):
        np.testing.assert_array_equal(upload, preprocess(cv2.imread(str(path)), HW)[0])
    engines = {e.precision: e for e in report.engines}
    assert engines["fp16"].path == tmp_path / "engines" / "abababababababab-10.3.0-orin-nvgpu-fp16.engine"
    assert engines["fp16"].path.read_bytes() == b"ENGINE:FP16"
    assert engines["int8"].path.read_bytes() == b"ENGINE:FP16+INT8"
    assert engines["int8"].calibration_cache.name == "abababababababab-10.3.0-orin-nvgpu-int8.calib"
    assert engines["int8"].calibration_cache.read_bytes().startswith(b"TRT-1003-EntropyCalibration2")
    assert fake.executions == 2 * (5 + 4)  # warm-up + timed runs per engine
    assert all(e.latency_ms is not None and e.latency_ms >= 0 for e in report.engines)
    assert ("context.pop",) in fake.calls

    # A second build on the same device reuses the calibration cache instead of calibrating again.
    fake.builds.clear()
    tp.build_engines(onnx_path, tmp_path / "engines", calibration_images, HW, SHA, precisions=("int8",), latency_runs=1)
    assert fake.builds[0]["batches"] == 0 and fake.builds[0]["cache_read"].startswith(b"TRT-1003")


def test_tensorrt_8_sets_the_explicit_batch_flag(tmp_path, calibration_images, monkeypatch):
    fake = FakeTensorRT(version="8.6.2")
    fake.install(monkeypatch)
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"x")
    tp.build_engines(onnx_path, tmp_path, calibration_images, HW, SHA, precisions=("fp16",), latency_runs=1)
    assert ("create_network", 1) in fake.calls


@pytest.mark.parametrize(
    "options, message",
    [
        ({"parse_ok": False}, "could not parse .*In node 12 \\(Conv\\): unsupported attribute"),
        ({"fast_int8": False}, "no fast INT8"),
    ],
)
def test_build_failures_are_reported(tmp_path, calibration_images, monkeypatch, options, message):
    fake = FakeTensorRT(**options)
    fake.install(monkeypatch)
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"x")
    with pytest.raises(tp.EngineBuildError, match=message):
        tp.build_engines(onnx_path, tmp_path, calibration_images, HW, SHA, precisions=("int8",), latency_runs=1)
    assert ("context.pop",) in fake.calls  # the CUDA context is released on failure too


def test_tensorrt_engine_asset_builds_engines_where_tensorrt_runs(export_run, monkeypatch):
    """The asset with a stand-in tensorrt: both engines built from the lake's ONNX, timed, stored; the plan says so."""
    from alumi_pipelines.assets.export import tensorrt_engine

    fake = FakeTensorRT()
    fake.install(monkeypatch)
    lake, version = export_run.lake, export_run.version
    plan_key = f"models/onnx/{version}/tensorrt_plan.json"
    before = lake.read_bytes(plan_key)
    try:
        result = export_run.materialize([tensorrt_engine])
        [event] = result.get_asset_materialization_events()
        meta = {k: v.value for k, v in event.materialization.metadata.items()}
        assert meta["engine_built"] is True
        assert meta["reason"] == "engines built here with TensorRT 10.3.0 on Orin (nvgpu)"
        int8 = lake.read_json(f"models/onnx/{version}/int8.json")
        assert fake.builds[1]["batches"] == len(int8["calibration"])  # calibrated on the INT8 calibration set
        for precision in ("fp16", "int8"):
            assert meta[f"latency_ms_{precision}"] >= 0
            assert lake.exists(meta[f"engine_{precision}_key"])
        assert meta["engine_int8_key"].endswith("-10.3.0-orin-nvgpu-int8.engine")
        onnx_bytes = lake.read_bytes(f"models/onnx/{version}/model.onnx")
        assert [c[1] for c in fake.calls if c[0] == "parse"] == [onnx_bytes, onnx_bytes]
        plan = lake.read_json(plan_key)
        assert plan["built_here"] is True
        assert [e["precision"] for e in plan["build_report"]["engines"]] == ["fp16", "int8"]
    finally:
        lake.write_bytes(plan_key, before)  # later tests read the plan of the run without TensorRT
