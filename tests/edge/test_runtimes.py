"""Runtime selection, ONNX metadata, and the TensorRT path (guard here; engine build/cache logic on a stand-in)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from edge_support import color_image, make_color_onnx

from alumi_edge.model_info import ModelInfo, ModelMetadataError, parse_model_info, read_model_info
from alumi_edge.runtimes import OnnxRuntime, RuntimeUnavailable, create_runtime
from alumi_edge.runtimes.onnx import providers_for
from alumi_edge.runtimes.tensorrt import TensorRTRuntime, engine_cache_name, tensorrt_available


def test_model_info_from_onnx_metadata(color_onnx):
    info = read_model_info(color_onnx)
    assert info.names == ("red", "green", "blue") and info.input_hw == (64, 64) and info.stride == 16
    assert info.model_version == "1.0.0" and info.dataset_hash == "d" * 16 and info.end_to_end is False


def test_model_info_errors_name_the_property(tmp_path):
    with pytest.raises(ModelMetadataError, match="'imgsz' is missing"):
        parse_model_info({"names": "{0: 'a'}"})
    with pytest.raises(ModelMetadataError, match="'names'"):
        parse_model_info({"names": "{0: 'a', 2: 'b'}", "imgsz": "[64, 64]"})
    assert parse_model_info({"names": '["a", "b"]', "imgsz": "320", "end2end": "True"}).input_hw == (320, 320)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelMetadataError, match="junk.onnx"):
        read_model_info(junk)


def test_model_info_input_format(tmp_path):
    props = {"names": '["a"]', "imgsz": "[64, 96]"}
    info = parse_model_info(props)
    assert info.input_format == "rgb_f32_nchw" and info.input_shape == (1, 3, 64, 96) and info.input_dtype == "float32"
    packed = parse_model_info({**props, "input_format": "bgr_u8_s2d2"})
    assert packed.input_shape == (1, 32, 48, 12) and packed.input_dtype == "uint8"
    with pytest.raises(ModelMetadataError, match="'input_format'='rgb_u8'.*newer alumi-edge"):
        parse_model_info({**props, "input_format": "rgb_u8"})
    with pytest.raises(ModelMetadataError, match="even image sides"):
        parse_model_info({"names": '["a"]', "imgsz": "[63, 64]", "input_format": "bgr_u8_s2d2"})


def test_packed_pixel_model_detects_the_same_boxes_as_the_float_model(tmp_path, color_onnx):
    packed_path = make_color_onnx(tmp_path / "packed.onnx", input_format="bgr_u8_s2d2")
    image = color_image(squares=(("red", 32, 32, 32), ("blue", 80, 48, 16)))
    plain = OnnxRuntime(color_onnx).load()
    packed = OnnxRuntime(packed_path).load()
    tensor, _ = packed.preprocess(image)
    assert tensor.dtype == np.uint8 and tensor.shape == (1, 32, 32, 12)
    packed.warmup()
    want, got = plain.detect(image), packed.detect(image)
    assert [b.class_name for b in got.boxes] == [b.class_name for b in want.boxes] and len(got.boxes) >= 2
    for a, b in zip(got.boxes, want.boxes):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-5)
        assert (a.x1, a.y1, a.x2, a.y2) == pytest.approx((b.x1, b.y1, b.x2, b.y2), abs=1e-3)
    # TensorRT builds from the FP32 ONNX: on "auto" a packed model goes to ONNX Runtime, asked for it refuses.
    assert isinstance(create_runtime(packed_path, kind="auto", device="auto"), OnnxRuntime)
    with pytest.raises(RuntimeUnavailable, match="bgr_u8_s2d2"):
        TensorRTRuntime(packed_path, tmp_path / "engines").load()


def test_onnx_runtime_refuses_a_model_whose_input_contradicts_its_metadata(tmp_path):
    import onnx

    path = make_color_onnx(tmp_path / "model.onnx")
    model = onnx.load(str(path))
    model.metadata_props.add(key="input_format", value="bgr_u8_s2d2")
    onnx.save(model, str(path))
    with pytest.raises(
        ValueError, match="tensor\\(float\\) but metadata 'input_format' 'bgr_u8_s2d2' means tensor\\(uint8\\)"
    ):
        OnnxRuntime(path).load()
    with pytest.raises(ValueError, match="model input is \\(32, 32\\) but metadata 'imgsz' says \\(64, 64\\)"):
        OnnxRuntime(
            make_color_onnx(tmp_path / "small.onnx", imgsz=32), info=ModelInfo(names=("r", "g", "b"), input_hw=(64, 64))
        ).load()


def test_tensorrt_guard_explains_and_auto_falls_back(color_onnx):
    available, reason = tensorrt_available()
    assert available is False and "tensorrt" in reason  # no TensorRT on this machine
    runtime = create_runtime(color_onnx, kind="auto", device="auto")
    assert isinstance(runtime, OnnxRuntime) and runtime.name == "onnxruntime-cpu"
    with pytest.raises(RuntimeUnavailable, match="alumi-edge\\[tensorrt\\]"):
        create_runtime(color_onnx, kind="tensorrt")
    with pytest.raises(RuntimeUnavailable, match="device is set to 'cpu'"):
        create_runtime(color_onnx, kind="tensorrt", device="cpu")
    with pytest.raises(RuntimeUnavailable, match="CUDAExecutionProvider"):
        providers_for("cuda", ["CPUExecutionProvider"])
    assert providers_for("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"


def test_engine_cache_name_keys_model_tensorrt_and_gpu():
    name = engine_cache_name("a" * 64, "10.3.0", "Orin (nvgpu)", "fp16")
    assert name == "aaaaaaaaaaaaaaaa-trt10.3.0-orin-nvgpu-fp16.engine"
    assert engine_cache_name("a" * 64, "10.4.0", "Orin (nvgpu)", "fp16") != name
    assert engine_cache_name("b" * 64, "10.3.0", "Orin (nvgpu)", "fp16") != name
    with pytest.raises(ValueError, match="precision 'int4'"):
        engine_cache_name("a" * 64, "10.3.0", "Orin", "int4")


def _fake_tensorrt_modules(builds: list[str]):
    """Stand-ins for ``tensorrt`` and ``pycuda.driver`` whose "engine" runs the ONNX with onnxruntime."""
    import onnxruntime as ort

    memory: dict[int, np.ndarray] = {}

    class DeviceMemory:
        def __init__(self, nbytes):
            self.id = len(memory) + 1
            memory[self.id] = np.zeros(nbytes, np.uint8)

        def __int__(self):
            return self.id

    class Context:
        def pop(self): ...
        def push(self): ...
        def detach(self): ...

    class Device:
        @staticmethod
        def count():
            return 1

        def __init__(self, index):
            pass

        def name(self):
            return "Orin (nvgpu)"

        def make_context(self):
            return Context()

    def htod(dev, host, stream):
        memory[int(dev)][:] = host.view(np.uint8)

    def dtoh(host, dev, stream):
        host.view(np.uint8)[:] = memory[int(dev)]

    cuda = types.SimpleNamespace(
        init=lambda: None,
        Device=Device,
        Stream=lambda: types.SimpleNamespace(handle=0, synchronize=lambda: None),
        pagelocked_empty=lambda n, dtype: np.zeros(n, dtype),
        mem_alloc=DeviceMemory,
        memcpy_htod_async=htod,
        memcpy_dtoh_async=dtoh,
    )

    class Engine:
        def __init__(self, onnx_bytes):
            self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            self.tensors = [(i.name, tuple(i.shape), "in") for i in self.session.get_inputs()] + [
                (o.name, tuple(o.shape), "out") for o in self.session.get_outputs()
            ]
            self.num_io_tensors = len(self.tensors)

        def get_tensor_name(self, i):
            return self.tensors[i][0]

        def _tensor(self, name):
            return next(t for t in self.tensors if t[0] == name)

        def get_tensor_shape(self, name):
            return self._tensor(name)[1]

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if self._tensor(name)[2] == "in" else "output"

        def create_execution_context(self):
            engine, addresses = self, {}

            class ExecutionContext:
                def set_tensor_address(self, name, address):
                    addresses[name] = address

                def execute_async_v3(self, stream):
                    (in_name, in_shape, _), (out_name, _, _) = engine.tensors[0], engine.tensors[1]
                    x = memory[addresses[in_name]].view(np.float32).reshape(in_shape)
                    y = engine.session.run(None, {in_name: x})[0]
                    memory[addresses[out_name]][:] = y.astype(np.float32).ravel().view(np.uint8)
                    return True

            return ExecutionContext()

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return types.SimpleNamespace()

        def create_builder_config(self):
            return types.SimpleNamespace(set_memory_pool_limit=lambda *a: None, set_flag=lambda flag: None)

        def build_serialized_network(self, network, config):
            builds.append("build")
            return b"FAKEENGINE" + network.onnx

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data):
            self.network.onnx = data
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            return Engine(data[len(b"FAKEENGINE") :]) if data.startswith(b"FAKEENGINE") else None

    class Logger:
        WARNING = 2

        def __init__(self, level=None):
            pass

    trt = types.SimpleNamespace(
        __version__="10.3.0",
        Logger=Logger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        Runtime=Runtime,
        nptype=lambda dtype: np.float32,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE=0),
        BuilderFlag=types.SimpleNamespace(FP16=1),
        TensorIOMode=types.SimpleNamespace(INPUT="input"),
    )
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = cuda
    return trt, pycuda, cuda


def test_tensorrt_runtime_builds_once_then_reuses_cached_engine(monkeypatch, tmp_path, color_onnx):
    builds: list[str] = []
    trt, pycuda, cuda = _fake_tensorrt_modules(builds)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    assert tensorrt_available() == (True, "")

    runtime = create_runtime(color_onnx, kind="auto", engine_cache_dir=tmp_path / "engines")
    assert isinstance(runtime, TensorRTRuntime) and runtime.name == "tensorrt-fp16"
    assert runtime.engine_path.name.endswith("-trt10.3.0-orin-nvgpu-fp16.engine") and runtime.engine_path.is_file()
    image = color_image(128, 128, squares=(("red", 32, 32, 32),))
    boxes = runtime.detect(image).boxes
    reference = OnnxRuntime(color_onnx).load().detect(image).boxes
    assert [(b.class_name, b.x1, b.y1, b.x2, b.y2) for b in boxes] == [
        (b.class_name, b.x1, b.y1, b.x2, b.y2) for b in reference
    ]
    assert builds == ["build"]
    second = TensorRTRuntime(color_onnx, tmp_path / "engines").load()
    assert builds == ["build"] and second.engine_path == runtime.engine_path  # cache hit, no rebuild
    runtime.close()


def test_onnx_runtime_pool_stops_spinning_when_a_run_returns(tmp_path):
    """A default ONNX Runtime session keeps a core busy for tens of ms after each run; ours does not."""
    import time

    import onnxruntime as ort
    from edge_support import make_color_onnx

    path = make_color_onnx(tmp_path / "model.onnx", imgsz=512)
    tensor = np.random.default_rng(0).random((1, 3, 512, 512), dtype=np.float32)

    def cpu_ms_after_run(run) -> float:
        """Least CPU time the process uses in the 100 ms after a run (of three; the first run of a
        process pays one-off set-up)."""
        used = []
        for _ in range(3):
            run()
            start = time.process_time()
            time.sleep(0.1)
            used.append((time.process_time() - start) * 1000.0)
        return min(used)

    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = plain.get_inputs()[0].name
    runtime = OnnxRuntime(path, device="cpu", intra_op_threads=2).load()
    assert cpu_ms_after_run(lambda: runtime.forward(tensor)) < 5.0
    # The reference: what the option prevents (a spinning pool thread burns most of the 100 ms sleep).
    assert cpu_ms_after_run(lambda: plain.run(None, {name: tensor})) > 10.0
