"""ONNX Runtime backend (CPU, or the CUDA provider where onnxruntime-gpu is installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alumi_edge.model_info import FLOAT_INPUT, ModelInfo
from alumi_edge.runtimes.base import Runtime, RuntimeUnavailable

DEVICES = ("auto", "cpu", "cuda")


def providers_for(device: str, available: list[str]) -> list[str]:
    """Execution providers to ask for, in order, for a device choice."""
    if device not in DEVICES:
        raise ValueError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cuda":
        if not has_cuda:
            raise RuntimeUnavailable(
                "device 'cuda' asked for but onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use device 'cpu'"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "auto" and has_cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def check_input(model_path: Path, name: str, shape: list, tensor_type: str, info: ModelInfo) -> None:
    """The session's input must be what the metadata's ``imgsz`` and ``input_format`` promise."""
    if len(shape) != 4:
        raise ValueError(f"{model_path}: model input {name} has shape {shape}, expected 4 dims")
    expected_type = {"float32": "tensor(float)", "uint8": "tensor(uint8)"}[info.input_dtype]
    if tensor_type != expected_type:
        raise ValueError(
            f"{model_path}: model input {name} is {tensor_type} but metadata 'input_format' "
            f"{info.input_format!r} means {expected_type}"
        )
    expected = info.input_shape
    if any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected[1:])):  # symbolic dims pass
        if info.input_format == FLOAT_INPUT:
            raise ValueError(
                f"{model_path}: model input is {tuple(shape[2:])} but metadata 'imgsz' says {info.input_hw}"
            )
        raise ValueError(
            f"{model_path}: model input {name} has shape {shape}; metadata 'imgsz' {info.input_hw} with "
            f"input_format {info.input_format!r} means {list(expected)}"
        )


class OnnxRuntime(Runtime):
    """Runs the release's ONNX with onnxruntime; ``session.run`` is thread-safe and releases the GIL."""

    def __init__(
        self,
        model_path: str | Path,
        info: ModelInfo | None = None,
        device: str = "cpu",
        intra_op_threads: int = 0,
    ):
        super().__init__(model_path, info)
        self.device = device
        self.intra_op_threads = intra_op_threads
        self._session = None
        self._input_name = ""
        self.name = "onnxruntime"

    def load(self) -> OnnxRuntime:
        """Create the inference session and check its input against the model's metadata."""
        import onnxruntime as ort

        providers = providers_for(self.device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.intra_op_threads > 0:
            options.intra_op_num_threads = self.intra_op_threads
        # ONNX Runtime's pool threads keep spinning for ~35 ms after every run by default: on a two-core
        # device that is a core taken from decoding, pre/post-processing and the next request. Spin during
        # a run (fast), stop when it returns.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=providers)
        model_input = session.get_inputs()[0]
        check_input(self.model_path, model_input.name, model_input.shape, model_input.type, self.info)
        self._session = session
        self._input_name = model_input.name
        active = session.get_providers()[0]
        self.name = "onnxruntime-cuda" if active == "CUDAExecutionProvider" else "onnxruntime-cpu"
        return self

    def forward(self, tensor: np.ndarray) -> np.ndarray:
        """First output of the network."""
        if self._session is None:
            raise RuntimeError("OnnxRuntime.forward called before load()")
        return self._session.run(None, {self._input_name: tensor})[0]

    def close(self) -> None:
        self._session = None
