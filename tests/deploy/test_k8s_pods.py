"""Every pod of end_to_end_job and retraining_job under deploy/helm/values.yaml, computed with dagster-k8s's classes
(k8s_pods.py): the GPU goes to the detector_model step alone, each pod's resources are the README's, and every pod
mounts the shared staging cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1].parent
VALUES = REPO / "deploy" / "helm" / "values.yaml"
CACHE_PVC = REPO / "deploy" / "k8s" / "cache-pvc.yaml"
GPU = "nvidia.com/gpu"
GPU_STEP = "detector_model"
KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "none", "user": {"token": "none"}}],
    "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
    "current-context": "none",
}

sys.path.insert(0, str(Path(__file__).resolve().parent))
from k8s_pods import filled_values  # noqa: E402


def compute_pods(values_path: Path, jobs: list[str], tmp_path: Path) -> dict:
    """k8s_pods.py in a process with the user deployment's environment, as the chart's code server loads the code."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(KUBECONFIG))
    deployment = filled_values(values_path)["dagster-user-deployments"]["deployments"][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALUMI_")}
    env.update({item["name"]: str(item["value"]) for item in deployment["env"] if "value" in item})
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("k8s_pods.py")), str(values_path), str(kubeconfig), *jobs],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def pods(tmp_path_factory) -> dict:
    return compute_pods(VALUES, ["end_to_end_job", "retraining_job"], tmp_path_factory.mktemp("k8s"))


def container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def quantity(value: str) -> float:
    """A Kubernetes quantity (500m, 2, 6Gi, 1536Mi) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, value
    return float(match.group(1)) * units.get(match.group(2), 1)


def readme_resources() -> dict[str, dict[str, dict[str, str]]]:
    """The "what runs where" table of the README's "Running on Kubernetes": pod → {requests, limits}."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Running on Kubernetes\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header == ["pod", "one per", "node pool", "requests", "limits"], header
    table = {}
    for row in rows[1:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        parsed = {}
        for column in ("requests", "limits"):
            pairs = [item.strip().split(" ") for item in cells[header.index(column)].split(",")]
            parsed[column] = {name: value for name, value in pairs}
        parsed["pool"] = cells[2]
        table[cells[0]] = parsed
    return table


@pytest.mark.parametrize("job", ["end_to_end_job", "retraining_job"])
def test_the_gpu_goes_to_the_detector_model_step_alone(pods, job):
    computed = pods[job]
    assert computed["executor"] == "alumi_k8s_executor"  # one pod per step
    assert "dagster-k8s/config" not in computed["tags"]  # no run-level GPU request
    steps = computed["steps"]
    assert GPU_STEP in steps and len(steps) >= 14  # every asset and blocking check of the job is a step pod
    with_gpu = sorted(key for key, body in steps.items() if GPU in json.dumps(container(body)["resources"]))
    assert with_gpu == [GPU_STEP]
    run = computed["run"]  # the run's own pod (its env names the training config, as text only)
    assert GPU not in json.dumps(container(run)["resources"])
    assert "nodeSelector" not in pod_spec(run) and "tolerations" not in pod_spec(run)

    gpu_pod = pod_spec(steps[GPU_STEP])
    assert gpu_pod["nodeSelector"] == {"agentpool": "gpupool"}
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in gpu_pod["tolerations"]
    resources = container(steps[GPU_STEP])["resources"]
    assert resources["requests"][GPU] == resources["limits"][GPU] == "1"
    assert {m["name"]: m["mountPath"] for m in container(steps[GPU_STEP])["volumeMounts"]}["dshm"] == "/dev/shm"
    for key, body in steps.items():
        if key != GPU_STEP:
            assert "nodeSelector" not in pod_spec(body) and "tolerations" not in pod_spec(body), key


@pytest.mark.parametrize("job", ["end_to_end_job", "retraining_job"])
def test_every_pod_gets_the_resources_the_readme_states(pods, job):
    documented = readme_resources()
    computed = pods[job]

    def stated(row: str) -> dict:
        return {column: documented[row][column] for column in ("requests", "limits")}

    assert container(computed["run"])["resources"] == stated("run")
    for key, body in computed["steps"].items():
        assert container(body)["resources"] == stated(f"`{GPU_STEP}` step" if key == GPU_STEP else "step"), key
    assert documented[f"`{GPU_STEP}` step"]["pool"] == "GPU (`gpupool`)"
    assert documented["step"]["pool"] == documented["run"]["pool"] == "CPU"
    for name, row in documented.items():  # every documented pod is one Kubernetes accepts: requests <= limits
        for resource, request in row["requests"].items():
            assert quantity(request) <= quantity(row["limits"].get(resource, request)), (name, resource)


def test_the_service_pods_resources_are_the_readme_ones():
    documented = readme_resources()
    values = yaml.safe_load(VALUES.read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    for name, resources in [
        ("code location (gRPC server)", deployment["resources"]),
        ("webserver, daemon", values["dagsterWebserver"]["resources"]),
        ("webserver, daemon", values["dagsterDaemon"]["resources"]),
    ]:
        for column in ("requests", "limits"):
            assert {k: str(v) for k, v in resources[column].items()} == documented[name][column], (name, column)


def test_step_pods_carry_the_code_locations_env_secrets_and_volumes(pods):
    values = filled_values(VALUES)
    deployment = values["dagster-user-deployments"]["deployments"][0]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    for job in pods.values():
        for key, body in [("run", job["run"]), *job["steps"].items()]:
            spec, box = pod_spec(body), container(body)
            assert box["image"] == image, key
            assert spec["serviceAccountName"] == values["serviceAccount"]["name"], key
            mounts = {m["name"] for m in box["volumeMounts"]}
            assert {m["name"] for m in deployment["volumeMounts"]} <= mounts, key
            env_from = [list(source.values())[0]["name"] for source in box["envFrom"]]
            assert "alumi-azure" in env_from and "dagster-alumi-pipelines-user-env" in env_from, key
            env = {item["name"]: item.get("value") for item in box["env"]}
            assert env["ALUMI_EXECUTOR"] == "k8s" and env["ALUMI_LAKE_URI"].startswith("abfs://"), key
            assert body["spec"]["backoffLimit"] == 0, key  # Dagster's retries decide, not Kubernetes'


def test_run_launcher_resources_would_not_reach_run_pods(tmp_path):
    """Why the values set none: the code location's resources, copied into every run, take precedence."""
    values = yaml.safe_load(VALUES.read_text())
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert "resources" not in launcher
    launcher["resources"] = {"requests": {"cpu": "2", "memory": "6Gi"}, "limits": {"cpu": "4", "memory": "12Gi"}}
    changed = tmp_path / "values.yaml"
    changed.write_text(yaml.safe_dump(values, sort_keys=False))
    run = compute_pods(changed, ["ingestion_job"], tmp_path)["ingestion_job"]["run"]
    code_location = values["dagster-user-deployments"]["deployments"][0]["resources"]
    assert container(run)["resources"] == {
        column: {k: str(v) for k, v in code_location[column].items()} for column in ("requests", "limits")
    }


def test_every_run_and_step_pod_mounts_the_shared_cache_at_alumi_cache_dir(pods):
    """The staging cache survives from one run to the next: every pod of a run mounts the one claim at the path
    ALUMI_CACHE_DIR names, with a size bound below the claim's size."""
    claim = yaml.safe_load(CACHE_PVC.read_text())
    requested = quantity(claim["spec"]["resources"]["requests"]["storage"])
    for job in pods.values():
        for key, body in [("run", job["run"]), *job["steps"].items()]:
            box = container(body)
            env = {item["name"]: item.get("value") for item in box["env"]}
            mounts = {m["name"]: m for m in box["volumeMounts"]}
            volumes = {v["name"]: v for v in pod_spec(body)["volumes"]}
            cache_volumes = [v for v in volumes.values() if "persistentVolumeClaim" in v]
            assert [v["persistentVolumeClaim"]["claimName"] for v in cache_volumes] == [claim["metadata"]["name"]], key
            mount = mounts[cache_volumes[0]["name"]]
            assert env["ALUMI_CACHE_DIR"] == mount["mountPath"] and not mount.get("readOnly"), key
            assert env["ALUMI_CACHE_DIR"] not in {m["mountPath"] for m in mounts.values() if m is not mount}, key
            assert 0 < float(env["ALUMI_CACHE_MAX_GB"]) * 1e9 < requested, key
