"""CPU latency of ONNX models as the edge runtime serves them, and the timing rule behind it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alumi_pipelines.lib.export.onnx_export import ExportError
from alumi_pipelines.lib.export.yolo_data import read_bgr


@dataclass(frozen=True)
class LatencyStats:
    runs: int
    median_ms: float
    p90_ms: float
    min_ms: float

    def as_dict(self) -> dict[str, float]:
        return {"runs": self.runs, "median_ms": self.median_ms, "p90_ms": self.p90_ms, "min_ms": self.min_ms}


def time_calls(fn: Callable[[int], Any], runs: int, warmup: int = 3) -> LatencyStats:
    """Median/p90/min wall time of ``fn(i)`` over ``runs`` calls after ``warmup`` calls."""
    if runs < 1:
        raise ExportError(f"latency runs {runs}: must be at least 1")
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    return LatencyStats(runs, round(statistics.median(times), 3), round(p90, 3), round(times[0], 3))


def session_latency(
    model_path: Path, images: Sequence[Path], *, runs: int = 50, warmup: int = 5, intra_op_threads: int = 0
) -> LatencyStats:
    """CPU latency of a bare ``session.run`` on letterboxed tensors of ``images`` (cycled), in ms.

    The session is the edge runtime's (same options as on a device), so FP32 and INT8 are timed as served.
    """
    from alumi_edge.runtimes.onnx import OnnxRuntime

    if not images:
        raise ExportError("latency: no images")
    runtime = OnnxRuntime(model_path, device="cpu", intra_op_threads=intra_op_threads).load()
    try:
        tensors = [runtime.preprocess(read_bgr(p))[0] for p in images]
        return time_calls(lambda i: runtime.forward(tensors[i % len(tensors)]), runs, warmup)
    finally:
        runtime.close()
