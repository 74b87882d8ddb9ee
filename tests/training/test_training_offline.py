"""Training, validation and ONNX export never touch the network nor write into the working directory."""

from __future__ import annotations

import os

import numpy as np


def test_train_val_export_make_no_network_attempt(
    no_network, tiny_dataset, ultralytics_config_dir, tmp_path, monkeypatch, registry
):
    from alumi_pipelines.lib.training import evaluate_detector, resolve_training_args, train_detector

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    epochs_seen = []
    args = resolve_training_args("ci", {"epochs": 2})
    with registry.run("offline") as run:
        outcome = train_detector(
            tiny_dataset,
            args,
            tmp_path / "out",
            config_dir=ultralytics_config_dir,
            on_epoch=lambda e, n, m: (epochs_seen.append((e, n)), run.log_metrics(m, step=e)),
        )
        run.log_artifact(outcome.best_weights, "weights")
    assert epochs_seen == [(1, 2), (2, 2)]
    assert [step for step, _ in registry.metric_history(run.run_id, "train/box_loss")] == [1, 2]
    assert outcome.epochs_run == 2 and outcome.train_images == 16
    assert outcome.best_weights.is_file() and outcome.best_weights.is_relative_to(tmp_path / "out")
    assert {"val/mAP50", "val/mAP50-95"} <= set(outcome.final_metrics)
    assert {p.name for p in outcome.plots} >= {"BoxPR_curve.png", "confusion_matrix.png", "val_batch0_pred.jpg"}

    result = evaluate_detector(
        outcome.best_weights,
        tiny_dataset,
        tmp_path / "eval",
        config_dir=ultralytics_config_dir,
        imgsz=64,
        latency_images=3,
    )
    assert result["images"] == 4 and result["split"] == "test"
    assert set(result["per_class"]) == {"scratch", "dent", "pit"}
    assert sum(r["instances"] for r in result["per_class"].values()) == 6
    matrix = np.array(result["confusion_matrix"]["matrix"])
    assert matrix.shape == (4, 4) and matrix[:, :3].sum() == 6  # every true box is counted once (column sums)
    assert result["latency_ms"] > 0

    from ultralytics import YOLO

    onnx_path = YOLO(str(outcome.best_weights)).export(format="onnx", imgsz=64, device="cpu", simplify=False)
    assert onnx_path.endswith(".onnx") and os.path.getsize(onnx_path) > 100_000

    assert no_network == []
    assert sorted(os.listdir(cwd)) == []  # no ./runs, ./mlruns, ./mlflow.db, ./weights
