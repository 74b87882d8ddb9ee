"""Runtimes behind one interface; :func:`create_runtime` picks TensorRT where it can run, else ONNX Runtime."""

from __future__ import annotations

import logging
from pathlib import Path

from alumi_edge.model_info import FLOAT_INPUT, ModelInfo, read_model_info
from alumi_edge.runtimes.base import Box, DetectionResult, Runtime, RuntimeUnavailable
from alumi_edge.runtimes.onnx import OnnxRuntime

__all__ = ["Box", "DetectionResult", "OnnxRuntime", "Runtime", "RuntimeUnavailable", "create_runtime"]
RUNTIME_KINDS = ("auto", "onnxruntime", "tensorrt")

log = logging.getLogger(__name__)


def create_runtime(
    model_path: str | Path,
    kind: str = "auto",
    device: str = "auto",
    engine_cache_dir: str | Path | None = None,
    precision: str = "fp16",
    intra_op_threads: int = 0,
    info: ModelInfo | None = None,
) -> Runtime:
    """A loaded runtime for ``model_path``: TensorRT when asked (or on ``auto`` when available), else ONNX Runtime."""
    if kind not in RUNTIME_KINDS:
        raise ValueError(f"runtime {kind!r}: expected one of {', '.join(RUNTIME_KINDS)}")
    model_path = Path(model_path)
    info = info if info is not None else read_model_info(model_path)
    if kind == "auto" and device != "cpu" and info.input_format != FLOAT_INPUT:
        log.info(
            "TensorRT not used: %s takes %s input (TensorRT builds from the FP32 ONNX)", model_path, info.input_format
        )
    elif kind in ("auto", "tensorrt") and device != "cpu":
        from alumi_edge.runtimes.tensorrt import TensorRTRuntime, tensorrt_available

        available, reason = tensorrt_available()
        if available:
            cache = Path(engine_cache_dir) if engine_cache_dir else model_path.parent / "engines"
            return TensorRTRuntime(model_path, cache, info=info, precision=precision).load()
        if kind == "tensorrt":
            raise RuntimeUnavailable(reason)
        log.info("TensorRT not used: %s", reason)
    elif kind == "tensorrt":
        raise RuntimeUnavailable("runtime 'tensorrt' needs a CUDA device but device is set to 'cpu'")
    return OnnxRuntime(model_path, info=info, device=device, intra_op_threads=intra_op_threads).load()
