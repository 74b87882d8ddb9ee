"""Data-aware training settings: image size from the images, batch from memory, threads from the machine."""

from __future__ import annotations

import pytest

from alumi_pipelines.lib.training import TrainingConfigError, resolve_training_args, ultralytics_train_kwargs
from alumi_pipelines.lib.training.autoconf import choose_batch, choose_imgsz, cpu_count, resolve_auto

GIB = 1024**3


@pytest.mark.parametrize(
    ("sides", "cap", "expected"),
    [
        ([200] * 50, 320, 224),  # small images: the next multiple of 32, no upscaling to the cap
        ([400] * 30 + [380] * 10, 320, 320),  # larger than the CPU cap: capped
        ([400] * 30, 640, 416),
        ([640, 480, 1024], 1280, 640),  # the median long side
        ([20, 30, 40], 320, 64),  # never below 64
    ],
)
def test_image_size_follows_the_data(sides, cap, expected):
    imgsz, why = choose_imgsz(sides, cap)
    assert imgsz == expected
    assert imgsz % 32 == 0
    assert ("maximum" in why) == (expected == cap and max(sides) > cap)


def test_no_image_sizes_fall_back_to_the_cap():
    assert choose_imgsz([], 320)[0] == 320


def test_batch_fits_memory():
    assert choose_batch(320, 16 * GIB)[0] == 16  # plenty: the CPU maximum
    small, why = choose_batch(640, 1 * GIB)
    assert small == 1  # 40 % of 1 GiB holds one 640 px image at 300 MiB
    assert "1.0 GiB available" in why
    mid = choose_batch(320, 2 * GIB)[0]
    assert 1 < mid < 16
    assert choose_batch(320, None)[0] == 16


def test_resolve_auto_fills_numbers_and_keeps_explicit_values():
    args = resolve_training_args("cpu")
    out, choice = resolve_auto(args, [400] * 10, cores=2, memory=8 * GIB)
    assert (out["imgsz"], out["batch"], out["threads"]) == (320, 16, 2)
    assert choice.reasons["threads"] == "every core the process may use"
    kwargs = ultralytics_train_kwargs(out)
    assert kwargs["imgsz"] == 320 and "threads" not in kwargs and "warm_start" not in kwargs
    explicit, choice = resolve_auto(
        resolve_training_args("cpu", {"imgsz": 128, "batch": 4, "threads": 1}), [400] * 10, cores=2
    )
    assert (explicit["imgsz"], explicit["batch"], explicit["threads"]) == (128, 4, 1)
    assert choice.reasons["imgsz"] == "set in the config"


def test_unresolved_auto_is_refused_before_training():
    with pytest.raises(TrainingConfigError, match="imgsz='auto': resolve it from the dataset"):
        ultralytics_train_kwargs(resolve_training_args("cpu"))


def test_gpu_auto_batch_is_ultralytics_autobatch():
    out, choice = resolve_auto(resolve_training_args("gpu", {"batch": "auto"}), [1024] * 5, cores=8)
    assert (out["imgsz"], out["batch"]) == (1024, -1)
    assert choice.reasons["batch"] == "ultralytics' auto-batch on the GPU"


def test_cpu_count_is_positive_and_bounded_by_the_machine():
    import os

    assert 1 <= cpu_count() <= (os.cpu_count() or 1)
