"""Warm start: a retrain starts from the champion's weights when the class map is unchanged, from scratch
otherwise; the data-aware choices and the cores used are logged with the run."""

from __future__ import annotations

import os

import torch
from dagster import DagsterInstance, materialize
from gold_factory import write_tiny_gold

from alumi_pipelines.assets.training.champion import champion_model
from alumi_pipelines.assets.training.detector import detector_model
from alumi_pipelines.assets.training.evaluation import detector_evaluation, promotion_gate
from alumi_pipelines.resources.pipeline_settings import PipelineSettings
from alumi_pipelines.settings import Settings

CI = {"profile": "ci", "epochs": 1}


def _train(assets, lake, registry, config, classes=None):
    settings = PipelineSettings.from_settings(Settings.from_env())
    if classes:
        settings = settings.model_copy(update={"classes": list(classes)})
    result = materialize(
        assets,
        resources={"lake": lake, "mlflow": registry, "pipeline_settings": settings},
        instance=DagsterInstance.ephemeral(),
        run_config={"ops": {"detector_model": {"config": config}}},
        raise_on_error=False,
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node("detector_model")
    return {k: v.value for k, v in mat.metadata.items()}


def _first_conv(registry, version, tmp_path):
    ckpt = torch.load(registry.download_weights(version, tmp_path / f"v{version}"), weights_only=False)
    return ckpt["model"].float().state_dict()["model.0.conv.weight"]


def test_a_retrain_starts_from_the_champion_when_its_classes_are_the_datasets(
    lake, tiny_gold_manifest, registry, ci_profile, tmp_path, no_network
):
    # seed 1: the champion's weights differ from the seed-0 initialisation the later runs would start from
    first = _train(
        [detector_model, detector_evaluation, promotion_gate, champion_model], lake, registry, {**CI, "seed": 1}
    )
    assert first["started_from"] == "scratch"  # the ci profile trains from scratch unless told
    assert registry.alias_version("champion") == "1"

    warm = _train([detector_model], lake, registry, {**CI, "warm_start": True, "lr0": 0.0001})
    assert warm["started_from"] == "champion v1"
    assert registry.version("2").tags["started_from"] == "champion v1"
    cold = _train([detector_model], lake, registry, {**CI, "lr0": 0.0001})
    assert cold["started_from"] == "scratch"
    # one short epoch (the learning rate still warming up) stays near where it started: the champion's weights
    # for the warm start, a fresh initialisation for the cold one
    champion, warm_w, cold_w = (_first_conv(registry, v, tmp_path) for v in ("1", "2", "3"))
    assert (warm_w - champion).abs().mean() < 0.2 * (cold_w - champion).abs().mean()

    # the data-aware choices and the cores used are params of the run
    params = registry.client().get_run(registry.version("2").run_id).data.params
    assert params["started_from"] == "champion v1"
    assert int(params["cpu_threads"]) == len(os.sched_getaffinity(0)) == warm["cpu_threads"]
    assert params["auto/imgsz"] == "set in the config"  # the ci profile's fixed 64 px
    assert 0.0 < warm["cpu_utilisation"] <= 1.05


def test_a_changed_class_map_trains_from_scratch(lake, tiny_gold_manifest, registry, ci_profile, tmp_path, no_network):
    _train([detector_model, detector_evaluation, promotion_gate, champion_model], lake, registry, CI)
    assert registry.alias_version("champion") == "1"
    write_tiny_gold(lake, classes=("hole", "crack", "stain"), layout="manifest", seed=3)
    renamed = _train([detector_model], lake, registry, {**CI, "warm_start": True}, classes=("hole", "crack", "stain"))
    assert renamed["started_from"] == (
        "scratch (champion v1 knows classes ['scratch', 'dent', 'pit'], the dataset has ['hole', 'crack', 'stain'])"
    )
