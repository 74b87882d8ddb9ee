"""TensorRT engines for the detector: the on-device build plan, and the engine build where TensorRT can run.

Engines depend on the GPU and the TensorRT version, so a release ships the ONNX and a build plan; the
device builds (and caches) its own engine, keyed ``<trt_version>-<gpu_name>-<precision>``. Where
``tensorrt`` imports and a CUDA device exists (a Jetson, a GPU node), :func:`build_engines` builds FP16
and INT8 engines with the TensorRT Python API — INT8 calibrated by an entropy calibrator reading the
calibration images through the edge package's own pre-processing — and times them.

Pure logic: no dagster, no lake. ``tensorrt`` and ``pycuda`` are imported only inside functions (or
passed in, which is how the tests drive the build code with a stand-in module).
"""

from __future__ import annotations

import re
import shlex
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alumi_pipelines.lib.files import write_atomic

PLAN_FORMAT = 1
PLAN_NAME = "tensorrt_plan.json"
PRECISIONS = ("fp16", "int8")
ENGINE_KEY_FORMAT = "<trt_version>-<gpu_name>-<precision>"
ENGINE_DIR = "engines"
DEFAULT_WORKSPACE_MIB = 1024
CALIBRATION_ALGORITHM = "IInt8EntropyCalibrator2"


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot build engines on this machine; the message says why."""


class EngineBuildError(RuntimeError):
    """TensorRT refused the network or the build; the message carries TensorRT's reasons."""


# -- cache keys and the plan ---------------------------------------------------------------------
def _slug(text: str, keep: str = "") -> str:
    return re.sub(rf"[^A-Za-z0-9{re.escape(keep)}]+", "-", text).strip("-").lower()


def engine_cache_key(trt_version: str, gpu_name: str, precision: str) -> str:
    """``<trt_version>-<gpu_name>-<precision>`` with the GPU name slugged (``10.3.0-orin-fp16``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if not trt_version or not gpu_name:
        raise ValueError("engine cache key: TensorRT version and GPU name must be non-empty")
    return f"{_slug(trt_version, '.')}-{_slug(gpu_name) or 'gpu'}-{precision}"


def engine_file_name(onnx_sha256: str, key: str) -> str:
    """Engine file of one model under one cache key."""
    return f"{onnx_sha256[:16]}-{key}.engine"


def calibration_cache_name(onnx_sha256: str, trt_version: str, gpu_name: str) -> str:
    """INT8 calibration cache written by the calibrator (depends on the model and TensorRT, as the engine)."""
    return f"{onnx_sha256[:16]}-{engine_cache_key(trt_version, gpu_name, 'int8')}.calib"


def trtexec_command(
    onnx_file: str,
    precision: str,
    engine_file: str,
    *,
    calibration_cache: str | None = None,
    timing_cache: str = f"{ENGINE_DIR}/timing.cache",
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
) -> list[str]:
    """argv of the ``trtexec`` build for one precision (INT8 also enables FP16 for layers without INT8)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    argv = [
        "trtexec",
        f"--onnx={onnx_file}",
        f"--saveEngine={engine_file}",
        f"--memPoolSize=workspace:{int(workspace_mib)}",
        f"--timingCacheFile={timing_cache}",
    ]
    if precision == "fp16":
        argv.append("--fp16")
    else:
        if not calibration_cache:
            raise ValueError("an INT8 trtexec build needs the calibration cache written by the calibrator")
        argv += ["--int8", "--fp16", f"--calib={calibration_cache}"]
    return argv


def build_plan(
    *,
    onnx_file: str,
    onnx_sha256: str,
    input_name: str,
    input_shape: Sequence[int],
    calibration_images: Sequence[dict[str, Any]],
    model_version: str,
    reason: str,
    int8_onnx_file: str | None = None,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
) -> dict[str, Any]:
    """The on-device build plan: trtexec command lines per precision, the ONNX, the calibration image set.

    ``<trt_version>`` and ``<gpu_name>`` in paths are filled in by the device (``trtexec --version``,
    ``nvidia-smi`` / the Jetson's model name); :func:`engine_cache_key` is the exact rule.
    ``calibration_images`` are dicts with at least ``path`` (and ideally ``sha256``).
    """
    shape = [int(v) for v in input_shape]
    if len(shape) != 4 or min(shape) <= 0:
        raise ValueError(f"input shape {list(input_shape)}: expected a static [1, 3, H, W]")
    if not calibration_images:
        raise ValueError("build plan: the calibration image list is empty")
    for i, image in enumerate(calibration_images):
        if not isinstance(image, dict) or not image.get("path"):
            raise ValueError(f"build plan: calibration_images[{i}] needs a 'path'")
    placeholder = {
        p: f"{ENGINE_DIR}/{engine_file_name(onnx_sha256, ENGINE_KEY_FORMAT.replace('<precision>', p))}"
        for p in PRECISIONS
    }
    calib_cache = f"{ENGINE_DIR}/{onnx_sha256[:16]}-<trt_version>-<gpu_name>-int8.calib"
    builds = {}
    for precision in PRECISIONS:
        argv = trtexec_command(
            onnx_file,
            precision,
            placeholder[precision],
            calibration_cache=calib_cache if precision == "int8" else None,
            workspace_mib=workspace_mib,
        )
        builds[precision] = {
            "precision": precision,
            "engine": placeholder[precision],
            "cache_key": ENGINE_KEY_FORMAT.replace("<precision>", precision),
            "argv": argv,
            "command": shlex.join(argv),
            "builder_flags": ["FP16"] if precision == "fp16" else ["INT8", "FP16"],
        }
    builds["int8"]["calibration_cache"] = calib_cache
    builds["int8"]["note"] = (
        "trtexec cannot calibrate from images: the calibration cache is written by the entropy calibrator "
        "(alumi_pipelines.lib.export.tensorrt_plan.build_engines, TensorRT Python API) over the calibration images "
        "below, once per TensorRT version and GPU; without it trtexec would calibrate on random data"
    )
    plan = {
        "format": PLAN_FORMAT,
        "model_version": model_version,
        "onnx": {"path": onnx_file, "sha256": onnx_sha256, "input": input_name, "shape": shape, "dynamic": False},
        "engine_cache": {
            "dir": ENGINE_DIR,
            "key_format": ENGINE_KEY_FORMAT,
            "file_format": f"<onnx_sha256[:16]>-{ENGINE_KEY_FORMAT}.engine",
        },
        "builds": builds,
        "calibration": {
            "algorithm": CALIBRATION_ALGORITHM,
            "batch_size": 1,
            "preprocess": "letterbox to the input size (grey 114, centred), BGR→RGB, /255, NCHW float32 "
            "(alumi_edge.processing.preprocess)",
            "count": len(calibration_images),
            "images": [dict(image) for image in calibration_images],
        },
        "built_here": False,
        "reason": reason,
    }
    if int8_onnx_file:
        plan["int8_onnx"] = {
            "path": int8_onnx_file,
            "note": "ONNX Runtime QDQ model for CPUs; TensorRT engines are built from the FP32 ONNX above",
        }
    return plan


# -- where TensorRT can run ----------------------------------------------------------------------
def tensorrt_guard() -> tuple[Any, Any, str]:
    """``(tensorrt, pycuda.driver, "")`` when both import and a CUDA device exists, else ``(None, None, why)``."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return None, None, f"the 'tensorrt' Python package is not installed here ({exc}); it ships with JetPack"
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        return None, None, f"'pycuda' is not installed here ({exc}); engines need it to reach the GPU"
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda raises its own error types when no driver is loaded
        return None, None, f"CUDA failed to start: {exc}"
    if count < 1:
        return None, None, "no CUDA device found"
    return trt, cuda, ""


def explicit_batch_flags(trt) -> int:
    """Network creation flags: EXPLICIT_BATCH before TensorRT 10 (where it is the only mode and deprecated)."""
    major = int(str(trt.__version__).split(".")[0])
    if major < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def make_calibrator(trt, cuda, images: Sequence[Path], input_hw: tuple[int, int], cache_path: Path):
    """An ``IInt8EntropyCalibrator2`` that feeds each image once (batch 1) and reads/writes ``cache_path``."""
    from alumi_edge.imaging import decode_image
    from alumi_edge.processing import preprocess

    base = trt.IInt8EntropyCalibrator2

    class ImageCalibrator(base):
        def __init__(self) -> None:
            base.__init__(self)
            self.images = [Path(p) for p in images]
            self.cache_path = Path(cache_path)
            self.index = 0
            self.host = np.zeros((1, 3, *input_hw), dtype=np.float32)
            self.device = cuda.mem_alloc(self.host.nbytes)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names, *args):
            if self.index >= len(self.images):
                return None
            path = self.images[self.index]
            self.index += 1
            tensor, _ = preprocess(decode_image(path.read_bytes()), input_hw)
            np.copyto(self.host, tensor)
            cuda.memcpy_htod(self.device, self.host)
            return [int(self.device)]

        def read_calibration_cache(self):
            return self.cache_path.read_bytes() if self.cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            write_atomic(self.cache_path, bytes(cache))

    return ImageCalibrator()


@dataclass
class BuiltEngine:
    precision: str
    path: Path
    cache_key: str
    size_bytes: int
    build_seconds: float
    flags: list[str]
    latency_ms: float | None = None
    calibration_cache: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "engine": self.path.name,
            "cache_key": self.cache_key,
            "size_bytes": self.size_bytes,
            "build_seconds": round(self.build_seconds, 2),
            "flags": self.flags,
            "latency_ms": self.latency_ms,
            "calibration_cache": self.calibration_cache.name if self.calibration_cache else None,
        }


def build_engine(
    trt,
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    *,
    calibrator=None,
    workspace_bytes: int = DEFAULT_WORKSPACE_MIB << 20,
) -> tuple[bytes, list[str]]:
    """Parse the ONNX and build a serialized engine (written atomically); returns (bytes, builder flags set)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(explicit_batch_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    flags: list[str] = []
    if builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        flags.append("FP16")
    elif precision == "fp16":
        raise EngineBuildError("this GPU has no fast FP16: an FP16 engine would not be faster than FP32")
    if precision == "int8":
        if not builder.platform_has_fast_int8:
            raise EngineBuildError("this GPU has no fast INT8 support")
        if calibrator is None:
            raise EngineBuildError("an INT8 engine needs a calibrator (calibration images)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        flags.append("INT8")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build a {precision} engine from {onnx_path}")
    data = bytes(serialized)
    write_atomic(engine_path, data)
    return data, flags


def engine_latency_ms(trt, cuda, engine_bytes: bytes, runs: int = 50, warmup: int = 5) -> float:
    """Median ms of one inference (copy in, execute, copy out) of a serialized engine on zeros."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EngineBuildError("TensorRT could not deserialise the engine it just built")
    context = engine.create_execution_context()
    stream = cuda.Stream()
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        shape = tuple(engine.get_tensor_shape(name))
        host = np.zeros(shape, dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
        device = cuda.mem_alloc(host.nbytes)
        context.set_tensor_address(name, int(device))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append((host, device))

    def once() -> None:
        for host, device in inputs:
            cuda.memcpy_htod_async(device, host, stream)
        if not context.execute_async_v3(stream.handle):
            raise EngineBuildError("TensorRT execution failed")
        for host, device in outputs:
            cuda.memcpy_dtoh_async(host, device, stream)
        stream.synchronize()

    for _ in range(warmup):
        once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        once()
        times.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(times), 3)


@dataclass
class EngineBuildReport:
    trt_version: str
    gpu_name: str
    engines: list[BuiltEngine] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "trt_version": self.trt_version,
            "gpu_name": self.gpu_name,
            "engines": [e.as_dict() for e in self.engines],
        }


def build_engines(
    onnx_path: Path,
    out_dir: Path,
    calibration_images: Sequence[Path],
    input_hw: tuple[int, int],
    onnx_sha256: str,
    *,
    precisions: Sequence[str] = PRECISIONS,
    latency_runs: int = 50,
    workspace_bytes: int = DEFAULT_WORKSPACE_MIB << 20,
    modules: tuple[Any, Any] | None = None,
) -> EngineBuildReport:
    """Build (and time) one engine per precision into ``out_dir``, named by :func:`engine_cache_key`.

    ``modules`` is ``(tensorrt, pycuda.driver)``; by default :func:`tensorrt_guard` supplies them or
    TensorRTUnavailable says why it cannot.
    """
    if modules is None:
        trt, cuda, reason = tensorrt_guard()
        if trt is None:
            raise TensorRTUnavailable(reason)
    else:
        trt, cuda = modules
    out_dir = Path(out_dir)
    device = cuda.Device(0)
    context = device.make_context()
    try:
        gpu_name = str(device.name())
        report = EngineBuildReport(trt_version=str(trt.__version__), gpu_name=gpu_name)
        for precision in precisions:
            key = engine_cache_key(report.trt_version, gpu_name, precision)
            engine_path = out_dir / engine_file_name(onnx_sha256, key)
            calibrator, cache = None, None
            if precision == "int8":
                cache = out_dir / calibration_cache_name(onnx_sha256, report.trt_version, gpu_name)
                calibrator = make_calibrator(trt, cuda, calibration_images, input_hw, cache)
            start = time.perf_counter()
            data, flags = build_engine(
                trt, onnx_path, engine_path, precision, calibrator=calibrator, workspace_bytes=workspace_bytes
            )
            built = BuiltEngine(
                precision,
                engine_path,
                key,
                len(data),
                time.perf_counter() - start,
                flags,
                calibration_cache=cache if cache is not None and cache.is_file() else None,
            )
            built.latency_ms = engine_latency_ms(trt, cuda, data, runs=latency_runs)
            report.engines.append(built)
    finally:
        context.pop()
    return report
