"""Training settings chosen from the data and the machine: image size, batch, CPU threads.

A profile may leave ``imgsz`` and ``batch`` as ``"auto"``; :func:`resolve_auto` turns them into numbers
before training and says why, so the choice is logged with the run.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alumi_pipelines.lib.training.profiles import AUTO, validate_training_args

STRIDE = 32  # a YOLO input side is a multiple of the model's largest stride
MIN_IMGSZ = 64
# Training memory of a nano YOLO per image at 640 px (activations, gradients, the mosaic buffer), measured
# order of magnitude; it scales with the pixel count. Bigger architectures need more, hence the headroom.
BYTES_PER_IMAGE_AT_640 = 300 * 1024**2
MEMORY_SHARE = 0.4  # of the memory available when training starts
CPU_MAX_BATCH = 16


@dataclass(frozen=True)
class AutoChoice:
    imgsz: int
    batch: int
    threads: int
    reasons: dict[str, str]  # key -> why this value

    def as_params(self) -> dict[str, Any]:
        return {
            "imgsz": self.imgsz,
            "batch": self.batch,
            "threads": self.threads,
            **{f"auto/{k}": v for k, v in self.reasons.items()},
        }


def choose_imgsz(long_sides: Sequence[int], imgsz_max: int) -> tuple[int, str]:
    """The median long side of the images rounded up to a multiple of 32, between 64 and ``imgsz_max``.

    Small images are not upscaled past the next multiple of the stride; large ones are capped, the cap being
    what a profile's hardware trains in its budget."""
    sides = [int(s) for s in long_sides if s and s > 0]
    if not sides:
        return imgsz_max, f"no image sizes known: the profile's maximum {imgsz_max}"
    median = statistics.median(sides)
    rounded = max(MIN_IMGSZ, math.ceil(median / STRIDE) * STRIDE)
    if rounded > imgsz_max:
        return imgsz_max, f"median long side {median:g} px over the profile's maximum: {imgsz_max}"
    return rounded, f"median long side {median:g} px of {len(sides)} images, rounded up to a multiple of {STRIDE}"


def choose_batch(imgsz: int, available_bytes: int | None, *, max_batch: int = CPU_MAX_BATCH) -> tuple[int, str]:
    """The largest batch up to ``max_batch`` whose training memory fits a share of the available memory."""
    if not available_bytes:
        return max_batch, f"available memory unknown: {max_batch}"
    per_image = BYTES_PER_IMAGE_AT_640 * (imgsz / 640) ** 2
    fits = int(available_bytes * MEMORY_SHARE // per_image)
    batch = max(1, min(max_batch, fits))
    gib = available_bytes / 1024**3
    return batch, f"{gib:.1f} GiB available, about {per_image / 1024**2:.0f} MiB per image at {imgsz} px"


def cpu_count() -> int:
    """The cores this process may use: its CPU affinity, bounded by a cgroup v2 CPU quota (a Kubernetes limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def available_memory() -> int | None:
    """Bytes of memory available now (MemAvailable), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def resolve_auto(
    args: Mapping[str, Any],
    long_sides: Sequence[int],
    *,
    cores: int | None = None,
    memory: int | None = None,
) -> tuple[dict[str, Any], AutoChoice]:
    """``args`` with ``imgsz``/``batch`` "auto" and ``threads`` 0 replaced by numbers, and why each was chosen."""
    out = dict(args)
    reasons: dict[str, str] = {}
    if out["imgsz"] == AUTO:
        out["imgsz"], reasons["imgsz"] = choose_imgsz(long_sides, out["imgsz_max"])
    else:
        reasons["imgsz"] = "set in the config"
    if out["batch"] == AUTO:
        if str(out["device"]) == "cpu":
            out["batch"], reasons["batch"] = choose_batch(out["imgsz"], memory)
        else:
            out["batch"], reasons["batch"] = -1, "ultralytics' auto-batch on the GPU"
    else:
        reasons["batch"] = "set in the config"
    if not out["threads"]:
        out["threads"] = cores or cpu_count()
        reasons["threads"] = "every core the process may use"
    else:
        reasons["threads"] = "set in the config"
    validate_training_args(out)
    return out, AutoChoice(imgsz=out["imgsz"], batch=out["batch"], threads=out["threads"], reasons=reasons)
