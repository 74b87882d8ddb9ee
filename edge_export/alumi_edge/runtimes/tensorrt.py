"""TensorRT backend for NVIDIA devices (Jetson): builds an engine from the release's ONNX once, then caches it.

Engines are specific to the GPU and the TensorRT version, so releases ship the ONNX and the device
builds its own engine on first start. The cache file name holds the model's sha256, the TensorRT
version, the GPU name and the precision, so a new model, a JetPack upgrade or a different board
each get a fresh build. ``tensorrt`` and ``pycuda`` are imported only inside this class.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import numpy as np

from alumi_edge.files import write_atomic
from alumi_edge.manifest import file_sha256
from alumi_edge.model_info import FLOAT_INPUT, ModelInfo
from alumi_edge.runtimes.base import Runtime, RuntimeUnavailable

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")


def _import_tensorrt():
    """(tensorrt, pycuda.driver), or RuntimeUnavailable saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeUnavailable(
            "the TensorRT runtime needs the 'tensorrt' Python package (it ships with JetPack on Jetson; "
            f"elsewhere install alumi-edge[tensorrt]); importing it failed: {exc}"
        ) from exc
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"the TensorRT runtime needs 'pycuda' to move tensors to the GPU (pip install pycuda); import failed: {exc}"
        ) from exc
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda raises its own LogicError/RuntimeError types
        raise RuntimeUnavailable(f"the TensorRT runtime needs a CUDA device; CUDA failed to start: {exc}") from exc
    if count < 1:
        raise RuntimeUnavailable("the TensorRT runtime needs a CUDA device and none was found")
    return trt, cuda


def tensorrt_available() -> tuple[bool, str]:
    """(True, '') when tensorrt imports and a CUDA device exists, else (False, the reason)."""
    try:
        _import_tensorrt()
    except RuntimeUnavailable as exc:
        return False, str(exc)
    return True, ""


def engine_cache_name(onnx_sha256: str, tensorrt_version: str, gpu_name: str, precision: str) -> str:
    """File name of a cached engine: model hash, TensorRT version, GPU name and precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    gpu_slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    trt_slug = re.sub(r"[^A-Za-z0-9.]+", "-", tensorrt_version)
    return f"{onnx_sha256[:16]}-trt{trt_slug}-{gpu_slug}-{precision}.engine"


class TensorRTRuntime(Runtime):
    """Runs a TensorRT engine built from the ONNX on this device (explicit batch, static 1×3×H×W input)."""

    def __init__(
        self,
        model_path: str | Path,
        cache_dir: str | Path,
        info: ModelInfo | None = None,
        precision: str = "fp16",
        workspace_bytes: int = 1 << 30,
    ):
        super().__init__(model_path, info)
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.cache_dir = Path(cache_dir)
        self.precision = precision
        self.workspace_bytes = workspace_bytes
        self.engine_path: Path | None = None
        self.name = f"tensorrt-{precision}"
        self._lock = threading.Lock()  # an execution context serves one call at a time
        self._trt = self._cuda = None
        self._cuda_context = None
        self._engine = self._context = self._stream = None
        self._input: tuple[str, np.ndarray, object] | None = None
        self._outputs: list[tuple[str, np.ndarray, object, tuple[int, ...]]] = []

    # -- engine ------------------------------------------------------------------------------
    def _build_engine(self, trt, path: Path) -> bytes:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(self.model_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {self.model_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if self.precision == "fp16":
            if builder.platform_has_fast_fp16:
                config.set_flag(trt.BuilderFlag.FP16)
            else:
                log.warning("GPU has no fast FP16; building an FP32 engine")
        log.info("building TensorRT engine for %s (takes minutes on a Jetson)", self.model_path)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {self.model_path}")
        data = bytes(serialized)
        write_atomic(path, data)
        return data

    def load(self) -> TensorRTRuntime:
        """Load the cached engine for this model/GPU/TensorRT, building it first when absent."""
        if self.info.input_format != FLOAT_INPUT:
            raise RuntimeUnavailable(
                f"{self.model_path}: TensorRT builds its engines from the FP32 ONNX (input_format {FLOAT_INPUT}); "
                f"this model takes {self.info.input_format} (the CPU INT8 model): serve model.onnx on a GPU"
            )
        trt, cuda = _import_tensorrt()
        self._trt, self._cuda = trt, cuda
        device = cuda.Device(0)
        self._cuda_context = device.make_context()
        try:
            name = engine_cache_name(file_sha256(self.model_path), trt.__version__, device.name(), self.precision)
            self.engine_path = self.cache_dir / name
            if self.engine_path.is_file():
                data = self.engine_path.read_bytes()
            else:
                data = self._build_engine(trt, self.engine_path)
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:  # stale or damaged cache: rebuild once
                data = self._build_engine(trt, self.engine_path)
                engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise RuntimeError(f"TensorRT could not deserialise {self.engine_path}")
            self._engine = engine
            self._context = engine.create_execution_context()
            self._stream = cuda.Stream()
            self._allocate(trt, cuda, engine)
        finally:
            self._cuda_context.pop()  # the context is pushed again by each forward call's thread
        return self

    def _allocate(self, trt, cuda, engine) -> None:
        self._outputs = []
        for i in range(engine.num_io_tensors):
            tensor_name = engine.get_tensor_name(i)
            shape = tuple(engine.get_tensor_shape(tensor_name))
            if any(d < 0 for d in shape):
                raise RuntimeError(
                    f"tensor {tensor_name} has a dynamic shape {shape}; export the ONNX with a static size"
                )
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(tensor_name)))
            host = cuda.pagelocked_empty(int(np.prod(shape)), dtype)
            device_mem = cuda.mem_alloc(host.nbytes)
            self._context.set_tensor_address(tensor_name, int(device_mem))
            if engine.get_tensor_mode(tensor_name) == trt.TensorIOMode.INPUT:
                h, w = shape[2], shape[3]
                if (h, w) != self.info.input_hw:
                    raise ValueError(f"engine input is {(h, w)} but metadata 'imgsz' says {self.info.input_hw}")
                self._input = (tensor_name, host, device_mem)
            else:
                self._outputs.append((tensor_name, host, device_mem, shape))
        if self._input is None or not self._outputs:
            raise RuntimeError("engine has no input or no output tensor")

    def forward(self, tensor: np.ndarray) -> np.ndarray:
        """Copy in, execute, copy the first output back."""
        if self._context is None or self._input is None:
            raise RuntimeError("TensorRTRuntime.forward called before load()")
        cuda = self._cuda
        with self._lock:
            self._cuda_context.push()
            try:
                _, host_in, device_in = self._input
                np.copyto(host_in, tensor.ravel().astype(host_in.dtype, copy=False))
                cuda.memcpy_htod_async(device_in, host_in, self._stream)
                if not self._context.execute_async_v3(self._stream.handle):
                    raise RuntimeError("TensorRT execution failed")
                _, host_out, device_out, shape = self._outputs[0]
                cuda.memcpy_dtoh_async(host_out, device_out, self._stream)
                self._stream.synchronize()
                return host_out.reshape(shape).astype(np.float32, copy=True)
            finally:
                self._cuda_context.pop()

    def close(self) -> None:
        """Free the engine and the CUDA context."""
        with self._lock:
            self._context = self._engine = None
            self._input, self._outputs = None, []
            if self._cuda_context is not None:
                try:
                    self._cuda_context.detach()
                finally:
                    self._cuda_context = None
