"""Bad input fails fast, naming the problem, before any model is built."""

from __future__ import annotations

import re
import time
import zipfile

import pytest
from dagster import materialize
from dagster._core.errors import DagsterInvalidConfigError

from alumi_pipelines.lib.training import (
    DatasetError,
    WeightsError,
    check_base_weights,
    check_yolo_dataset,
    link_yolo_dataset,
)


@pytest.fixture
def gold_root(lake, tiny_gold):
    return lake.local_path(tiny_gold["prefix"])


def test_tiny_gold_passes_and_is_counted(gold_root, tmp_path):
    data_yaml = link_yolo_dataset(gold_root, tmp_path / "ds")
    summary = check_yolo_dataset(tmp_path / "ds")
    assert summary.data_yaml == data_yaml
    assert summary.classes == ["scratch", "dent", "pit"]
    assert summary.images == {"train": 16, "val": 4, "test": 4}
    assert summary.boxes["train"] == {"scratch": 8, "dent": 8, "pit": 8}
    assert sum(summary.boxes["test"].values()) == 6


def test_linked_dataset_points_at_itself_and_leaves_the_source_alone(gold_root, tmp_path):
    import yaml

    data_yaml = link_yolo_dataset(gold_root, tmp_path / "ds")
    data = yaml.safe_load(data_yaml.read_text())
    assert data["path"] == str((tmp_path / "ds").resolve())
    assert data["names"] == {0: "scratch", 1: "dent", 2: "pit"}
    linked = sorted((tmp_path / "ds" / "images" / "train").iterdir())
    # hard links to the source's files: no copy, and a source folder removed later (a cache evicting it) leaves
    # the linked dataset whole
    assert len(linked) == 16 and all(p.samefile(gold_root / "images" / "train" / p.name) for p in linked)
    assert all(not p.is_symlink() and p.stat().st_nlink >= 2 for p in linked)
    assert yaml.safe_load((gold_root / "data.yaml").read_text())["path"] == "."


def _remove(folder):
    for p in folder.iterdir():
        p.unlink()


def test_empty_split_is_named(gold_root, tmp_path):
    _remove(gold_root / "images" / "test")
    link_yolo_dataset(gold_root, tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"split 'test': no images in .*images/test"):
        check_yolo_dataset(tmp_path / "ds")


def test_missing_split_is_named(gold_root, tmp_path):
    link_yolo_dataset(gold_root, tmp_path / "ds")
    _remove(tmp_path / "ds" / "images" / "val")
    (tmp_path / "ds" / "images" / "val").rmdir()
    with pytest.raises(DatasetError, match=r"split 'val': folder .*images/val is missing"):
        check_yolo_dataset(tmp_path / "ds")


def test_class_without_train_examples_is_named(gold_root, tmp_path):
    for label in (gold_root / "labels" / "train").iterdir():
        kept = [line for line in label.read_text().splitlines() if not line.startswith("2 ")]
        label.write_text("".join(f"{line}\n" for line in kept))
    link_yolo_dataset(gold_root, tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"class\(es\) 'pit' have no examples in the train split"):
        check_yolo_dataset(tmp_path / "ds")


def test_malformed_label_line_is_named(gold_root, tmp_path):
    label = sorted((gold_root / "labels" / "val").iterdir())[0]
    label.write_text("1 0.5 0.5 0.2\n")
    link_yolo_dataset(gold_root, tmp_path / "ds")
    with pytest.raises(DatasetError, match=rf"{label.name}:1: expected 'class x y w h'"):
        check_yolo_dataset(tmp_path / "ds")


def test_base_weights_checks(tmp_path, tiny_checkpoint):
    with pytest.raises(WeightsError, match=r"nope.pt: file does not exist"):
        check_base_weights(tmp_path / "nope.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match=r"notes.pt: not a YOLO checkpoint \(not a PyTorch .pt archive\)"):
        check_base_weights(text)
    other = tmp_path / "other.pt"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02ctorch.nn.modules.linear\nLinear\nq\x00.")
    with pytest.raises(WeightsError, match=r"other.pt: a PyTorch file, but not a YOLO checkpoint"):
        check_base_weights(other)
    assert check_base_weights(tiny_checkpoint) == tiny_checkpoint.resolve()


def _materialize_training(lake, registry, config: dict):
    from alumi_pipelines.assets.training.detector import detector_model

    return materialize(
        [detector_model],
        resources={"lake": lake, "mlflow": registry, "pipeline_settings": _settings()},
        run_config={"ops": {"detector_model": {"config": config}}},
        raise_on_error=False,
    )


def _failure_message(result) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "the step should have failed"
    return str(failures[0].step_failure_data.error.cause or failures[0].step_failure_data.error)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"profile": "ci", "base_weights": "/no/such/weights.pt"},
            r"base weights /no/such/weights.pt: file does not exist",
        ),
        (
            {"profile": "ci", "base_weights": "s3://bucket/w.pt"},
            r"base weights s3://bucket/w.pt: unsupported URI scheme",
        ),
        ({"profile": "ci", "imgsz": 70}, r"training config imgsz=70: must be a multiple of 32"),
        ({"profile": "ci", "sweep": {"devices": ["cpu"]}}, r"sweep: unknown training config key 'devices'"),
    ],
)
def test_asset_fails_fast_without_training(lake, tiny_gold, registry, config, message):
    start = time.perf_counter()
    result = _materialize_training(lake, registry, config)
    assert not result.success
    assert re.search(message, _failure_message(result)), _failure_message(result)
    assert time.perf_counter() - start < 60
    assert registry.latest_version() is None
    experiment = registry.client().get_experiment_by_name(registry.experiment_name)
    assert experiment is None or not registry.client().search_runs([experiment.experiment_id])


def test_asset_fails_fast_on_empty_split(lake, registry):
    from gold_factory import write_tiny_gold

    # a dataset of its own (seed 11): the session's staging cache may hold the shared tiny dataset whole
    tiny_gold = write_tiny_gold(lake, seed=11)
    for f in lake.list_files(f"{tiny_gold['prefix']}/images/val"):
        lake.delete(f.key)
    result = _materialize_training(lake, registry, {"profile": "ci"})
    assert "split 'val': " in _failure_message(result)
    assert registry.latest_version() is None


def test_asset_fails_without_gold_pointer(lake, registry):
    result = _materialize_training(lake, registry, {"profile": "ci"})
    assert "gold/current.json: no gold dataset yet" in _failure_message(result)


def test_unknown_config_key_is_rejected_by_dagster(lake, tiny_gold, registry):
    from alumi_pipelines.assets.training.detector import detector_model

    with pytest.raises(DagsterInvalidConfigError, match='Received unexpected config entry "epoch"'):
        materialize(
            [detector_model],
            resources={"lake": lake, "mlflow": registry, "pipeline_settings": _settings()},
            run_config={"ops": {"detector_model": {"config": {"epoch": 3}}}},
        )


def test_base_weights_from_path_file_uri_and_registry(tmp_path, tiny_checkpoint, registry):
    from alumi_pipelines.assets.training.detector import resolve_base_weights

    assert resolve_base_weights(None, registry, tmp_path) is None
    assert resolve_base_weights(str(tiny_checkpoint), registry, tmp_path) == tiny_checkpoint.resolve()
    assert resolve_base_weights(tiny_checkpoint.resolve().as_uri(), registry, tmp_path) == tiny_checkpoint.resolve()
    with registry.run("pretrained") as run:
        run.log_artifact(tiny_checkpoint, "weights")
    version = registry.register_weights(run, tags={})
    fetched = resolve_base_weights(f"models:/{registry.model_name}/{version}", registry, tmp_path / "a")
    assert fetched.read_bytes() == tiny_checkpoint.read_bytes()
    fetched = resolve_base_weights(f"runs:/{run.run_id}/weights", registry, tmp_path / "b")
    assert fetched.name == "best.pt" and fetched.stat().st_size == tiny_checkpoint.stat().st_size
    with pytest.raises(WeightsError, match=r"base weights models:/nope/1: cannot be fetched from MLflow"):
        resolve_base_weights("models:/nope/1", registry, tmp_path / "c")


def test_evaluation_refuses_a_model_with_other_classes(tiny_checkpoint, tmp_path, ultralytics_config_dir, lake):
    from gold_factory import write_tiny_gold

    from alumi_pipelines.lib.training import evaluate_detector

    pointer = write_tiny_gold(lake, classes=("scratch", "dent", "crack"))
    data_yaml = link_yolo_dataset(lake.local_path(pointer["prefix"]), tmp_path / "ds")
    with pytest.raises(
        DatasetError,
        match=r"predicts classes \['scratch', 'dent', 'pit'\], the dataset has "
        r"\['scratch', 'dent', 'crack'\]",
    ):
        evaluate_detector(tiny_checkpoint, data_yaml, tmp_path / "eval", config_dir=ultralytics_config_dir, imgsz=64)


def _settings():
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings
    from alumi_pipelines.settings import Settings

    return PipelineSettings.from_settings(Settings.from_env())
