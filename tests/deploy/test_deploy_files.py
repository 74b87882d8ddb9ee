"""The deploy files agree with the code and with each other: Dockerfiles, Helm values, the PostgreSQL instance."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TRAINING_TAG = ("alumi/training", "true")
GPU_POOL = {"agentpool": "gpupool"}
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments and parser directives dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        instructions.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: ends inside a continued line"
    return instructions


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def env_of(instructions) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def args_of(instructions) -> dict[str, str]:
    return {
        rest.split("=", 1)[0]: rest.split("=", 1)[1] for word, rest in instructions if word == "ARG" and "=" in rest
    }


def pyproject_upper_bound(name: str) -> str:
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(rf"{name}\b", d) and not d.startswith(f"{name}vision"))
    return re.search(r"<=([\d.]+)", spec).group(1)


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


@pytest.fixture(scope="module")
def deployment(values) -> dict:
    deployments = values["dagster-user-deployments"]["deployments"]
    assert values["dagster-user-deployments"]["enabled"] is True and len(deployments) == 1
    return deployments[0]


def deployment_env(deployment) -> dict[str, str]:
    return {item["name"]: item["value"] for item in deployment["env"] if "value" in item}


def queue_limits(limits: list[dict]) -> set[tuple]:
    return {(item["key"], item.get("value"), item["limit"]) for item in limits}


# -- Dockerfiles ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfiles_build_a_non_root_code_location(name):
    instructions = dockerfile(DEPLOY / name)
    words = [w for w, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert words.count("FROM") == 1 and "ADD" not in words

    copied = [rest.split()[0] for w, rest in instructions if w == "COPY"]
    assert {"alumi_pipelines", "edge_export", "pyproject.toml"} <= set(copied)  # the export job builds the edge wheel
    runs = " ".join(rest for w, rest in instructions if w == "RUN")
    # alumi-edge (a dependency no index holds) in the same command as the project, with every extra a deployment uses
    assert re.search(
        r'pip install -e \./edge_export -e "\.\[azure,postgres,k8s\]" "dagster-k8s==\$\{DAGSTER_LIBRARIES_VERSION\}"',
        runs,
    )
    import dagster_postgres

    assert args_of(instructions)["DAGSTER_LIBRARIES_VERSION"] == dagster_postgres.__version__  # matches dagster
    assert args_of(instructions)["TORCH_VERSION"] == pyproject_upper_bound("torch")

    user = [rest for w, rest in instructions if w == "USER"]
    assert user == ["10001:10001"]
    assert words.index("USER") > max(
        i for i, w in enumerate(words) if w in ("RUN", "COPY")
    )  # nothing runs as root after

    assert exec_form(dict(instructions)["ENTRYPOINT"]) == ["/usr/bin/tini", "--"]
    cmd = exec_form(dict(instructions)["CMD"])
    assert cmd[:3] == ["dagster", "api", "grpc"]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert cmd[cmd.index("--module-name") + 1] == workspace["module_name"]
    assert cmd[cmd.index("--attribute") + 1] == workspace["attribute"]
    assert cmd[cmd.index("--port") + 1] == dict(instructions)["EXPOSE"]

    env = env_of(instructions)
    assert env["YOLO_OFFLINE"] == "1" and env["ALUMI_HOME"] == "/var/lib/alumi"
    assert (DEPLOY / f"{name}.dockerignore").read_text().splitlines()[1] == "**"


def test_cpu_and_gpu_images_differ_where_they_should():
    cpu, gpu = dockerfile(DEPLOY / "Dockerfile"), dockerfile(DEPLOY / "Dockerfile.gpu")
    cpu_runs = [rest for w, rest in cpu if w == "RUN"]
    gpu_runs = [rest for w, rest in gpu if w == "RUN"]
    assert any('--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in r for r in cpu_runs)
    assert args_of(cpu)["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert not any("--index-url" in r for r in gpu_runs)  # CUDA wheels
    assert any("--force-reinstall" in r and "nvidia-nccl-cu13" in r for r in gpu_runs)
    assert (env_of(cpu)["ALUMI_PROFILE"], env_of(gpu)["ALUMI_PROFILE"]) == ("cpu", "gpu")
    assert env_of(gpu)["NVIDIA_VISIBLE_DEVICES"] == "all"


# -- Helm values ---------------------------------------------------------------------------------------
def test_values_use_only_keys_of_the_dagster_chart(values):
    chart_keys = {
        "global",
        "serviceAccount",
        "dagsterWebserver",
        "dagster-user-deployments",
        "postgresql",
        "generatePostgresqlPasswordSecret",
        "generateCeleryConfigSecret",
        "rabbitmq",
        "redis",
        "flower",
        "ingress",
        "imagePullSecrets",
        "computeLogManager",
        "scheduler",
        "runLauncher",
        "pythonLogs",
        "dagsterDaemon",
        "busybox",
        "migrate",
        "telemetry",
        "retention",
        "additionalInstanceConfig",
    }
    assert set(values) <= chart_keys
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert set(values["runLauncher"]["config"]) == {"k8sRunLauncher"}
    assert values["computeLogManager"]["type"] == "AzureBlobComputeLogManager"


def test_user_deployment_runs_our_image_and_code_location(deployment):
    image_titles = set()
    for name in ("Dockerfile", "Dockerfile.gpu"):
        label = dict(dockerfile(DEPLOY / name))["LABEL"]
        image_titles.add(re.search(r'org\.opencontainers\.image\.title="([^"]+)"', label).group(1))
    assert image_titles == {"alumi-pipelines", "alumi-pipelines-gpu"}
    assert deployment["image"]["repository"].rsplit("/", 1)[1] in image_titles
    assert deployment["image"]["tag"] not in ("", "latest") and deployment["image"]["pullPolicy"] == "IfNotPresent"
    args = deployment["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == "alumi_pipelines.definitions"
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    env = deployment_env(deployment)
    assert env["ALUMI_LAKE_URI"].startswith("abfs://") and env["ALUMI_PROFILE"] == "gpu"
    assert env["ALUMI_RELEASE_KEY"].startswith("/mnt/secrets-store/")
    assert deployment["podSecurityContext"]["runAsUser"] == 10001  # the Dockerfiles' user


def test_the_training_step_config_routes_to_the_gpu_pool(values, deployment):
    env = deployment_env(deployment)
    assert env["ALUMI_EXECUTOR"] == "k8s"  # one pod per step, so the GPU can go to one step
    step_config_keys = {
        "container_config",
        "pod_spec_config",
        "pod_template_spec_metadata",
        "job_spec_config",
        "job_metadata",
        "merge_behavior",
    }
    training = json.loads(env["ALUMI_K8S_TRAINING_CONFIG"])
    every_step = json.loads(env["ALUMI_K8S_STEP_CONFIG"])
    assert set(training) <= step_config_keys and set(every_step) <= step_config_keys
    assert training["pod_spec_config"]["node_selector"] == GPU_POOL
    tolerations = training["pod_spec_config"]["tolerations"]
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in tolerations
    resources = training["container_config"]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    mounts = {m["name"]: m["mount_path"] for m in training["container_config"]["volume_mounts"]}
    volumes = {v["name"]: v for v in training["pod_spec_config"]["volumes"]}
    assert mounts == {"dshm": "/dev/shm"} and volumes["dshm"]["empty_dir"]["medium"] == "Memory"
    # every step's config names all four numbers: merged over the code location's, none of those may leak through
    for config in (every_step, training):
        assert {"cpu", "memory"} <= set(config["container_config"]["resources"]["requests"])
        assert {"cpu", "memory"} <= set(config["container_config"]["resources"]["limits"])

    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    default_run = json.dumps(launcher)
    assert "nvidia.com/gpu" not in default_run and "gpupool" not in default_run
    assert "nvidia.com/gpu" not in json.dumps(every_step) and "gpupool" not in json.dumps(every_step)
    # resources on the launcher would be overridden by the code location's in every run (test_k8s_pods.py)
    assert "resources" not in launcher


def test_the_executor_of_the_values_puts_the_training_config_on_detector_model_alone(deployment, monkeypatch):
    from alumi_pipelines.jobs import GPU_STEPS, NO_RETRY_ON_FAILURE, step_executor, training_job
    from alumi_pipelines.jobs import TRAINING_TAG as PIPELINE_TRAINING_TAG
    from alumi_pipelines.settings import k8s_step_configs, training_run_tags

    env = deployment_env(deployment)
    for name in ("ALUMI_EXECUTOR", "ALUMI_K8S_STEP_CONFIG", "ALUMI_K8S_TRAINING_CONFIG"):
        monkeypatch.setenv(name, env[name])
    configs = k8s_step_configs()
    assert configs.every_step == json.loads(env["ALUMI_K8S_STEP_CONFIG"])
    assert configs.training_step == json.loads(env["ALUMI_K8S_TRAINING_CONFIG"])
    executor = step_executor(configs)
    assert executor.name == "alumi_k8s_executor" and GPU_STEPS == ("detector_model",)

    # training runs keep their queue tag and carry no run-level Kubernetes config (their own pod needs no GPU)
    tags = training_run_tags(PIPELINE_TRAINING_TAG, NO_RETRY_ON_FAILURE)
    assert tags == {PIPELINE_TRAINING_TAG: "true", "dagster/retry_on_asset_or_op_failure": "false"}
    assert (PIPELINE_TRAINING_TAG, "true") == TRAINING_TAG and training_job.tags[PIPELINE_TRAINING_TAG] == "true"
    assert "dagster-k8s/config" not in training_job.tags

    monkeypatch.setenv("ALUMI_K8S_TRAINING_CONFIG", "{not json")
    with pytest.raises(ValueError, match="ALUMI_K8S_TRAINING_CONFIG: not valid JSON"):
        k8s_step_configs()
    monkeypatch.setenv("ALUMI_K8S_TRAINING_CONFIG", env["ALUMI_K8S_TRAINING_CONFIG"])
    monkeypatch.setenv("ALUMI_EXECUTOR", "multiprocess")  # a GPU request that nothing would honour is an error
    with pytest.raises(ValueError, match="set ALUMI_EXECUTOR=k8s too"):
        k8s_step_configs()
    for name in ("ALUMI_K8S_STEP_CONFIG", "ALUMI_K8S_TRAINING_CONFIG"):
        monkeypatch.delenv(name)
    assert k8s_step_configs() is None and step_executor(None) is None  # one machine: Dagster's default executor


def test_the_chart_version_is_pinned_to_the_dagster_of_the_images():
    from importlib.metadata import requires, version

    libraries = {args_of(dockerfile(DEPLOY / name))["DAGSTER_LIBRARIES_VERSION"] for name in DOCKERFILES}
    assert libraries == {version("dagster-k8s")}  # what the tests here run is what the images pin
    pinned = [r for r in requires("dagster-k8s") if re.match(r"dagster\b\s*==", r)]
    dagster_of_images = re.search(r"==\s*([\d.]+)", pinned[0]).group(1)
    assert dagster_of_images == version("dagster")
    install = f"helm upgrade --install dagster dagster/dagster --version {dagster_of_images} -n alumi"
    values_text = (DEPLOY / "helm" / "values.yaml").read_text()
    header = "".join(line for line in values_text.splitlines(keepends=True) if line.startswith("#"))
    assert install in header and f"Chart version {dagster_of_images}" in header
    for doc in (REPO / "README.md", DEPLOY / "README.md"):
        text = doc.read_text()
        assert install in text, doc
        assert re.findall(r"dagster/dagster --version ([\d.]+)", text) == [dagster_of_images], doc
        assert not re.search(r"helm upgrade --install dagster dagster/dagster(?! --version)", text), doc


def test_alumi_edge_is_a_dependency_and_dagster_mlflow_is_not():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in project["dependencies"]]
    assert "alumi-edge" in names and "dagster-mlflow" not in names
    edge = tomllib.loads((REPO / "edge_export" / "pyproject.toml").read_text())["project"]
    assert edge["name"] == "alumi-edge"
    assert "dagster-k8s" in " ".join(project["optional-dependencies"]["k8s"])
    setup = (REPO / "scripts" / "setup").read_text()
    assert re.search(r'pip install --quiet -e \./edge_export -e "\.\[dev,azure,postgres,k8s\]"', setup)


def test_queue_limits_match_dagster_yaml_everywhere(values):
    local = yaml.safe_load((REPO / "dagster.yaml").read_text())["run_coordinator"]["config"]
    shared = yaml.safe_load((DEPLOY / "dagster.postgres.yaml").read_text())["run_coordinator"]["config"]
    helm = values["dagsterDaemon"]["runCoordinator"]
    assert helm["enabled"] is True and helm["type"] == "QueuedRunCoordinator"
    queued = helm["config"]["queuedRunCoordinator"]
    expected = queue_limits(local["tag_concurrency_limits"])
    assert TRAINING_TAG + (1,) in expected and ("dagster/backfill", None, 3) in expected
    assert queue_limits(queued["tagConcurrencyLimits"]) == expected == queue_limits(shared["tag_concurrency_limits"])
    assert queued["maxConcurrentRuns"] == local["max_concurrent_runs"] == shared["max_concurrent_runs"]
    retries = yaml.safe_load((REPO / "dagster.yaml").read_text())["run_retries"]
    assert values["dagsterDaemon"]["runRetries"] == {
        "enabled": retries["enabled"],
        "maxRetries": retries["max_retries"],
    }
    backfills = yaml.safe_load((DEPLOY / "dagster.postgres.yaml").read_text())["backfills"]
    assert values["additionalInstanceConfig"]["backfills"] == backfills and backfills["num_workers"] >= 1


def test_every_pod_has_requests_and_limits(values, deployment):
    env = deployment_env(deployment)
    for name, resources in [
        ("webserver", values["dagsterWebserver"]["resources"]),
        ("daemon", values["dagsterDaemon"]["resources"]),
        ("code location and run pods", deployment["resources"]),
        ("step pods", json.loads(env["ALUMI_K8S_STEP_CONFIG"])["container_config"]["resources"]),
        ("detector_model pod", json.loads(env["ALUMI_K8S_TRAINING_CONFIG"])["container_config"]["resources"]),
    ]:
        assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
        assert resources["limits"]["memory"], name


def test_secrets_come_from_kubernetes_secrets_and_key_vault(values, deployment):
    postgres = values["postgresql"]
    assert postgres["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert postgres["postgresqlPassword"] == "" and postgres["postgresqlScheme"] == "postgresql+psycopg2"
    provider = yaml.safe_load((DEPLOY / "helm" / "keyvault-secrets.yaml").read_text())
    assert provider["kind"] == "SecretProviderClass" and provider["spec"]["provider"] == "azure"
    synced = {(s["secretName"], d["key"]) for s in provider["spec"]["secretObjects"] for d in s["data"]}
    assert (values["global"]["postgresqlSecretName"], "postgresql-password") in synced
    objects = yaml.safe_load(provider["spec"]["parameters"]["objects"])["array"]
    object_names = {yaml.safe_load(o)["objectName"] for o in objects}
    assert deployment_env(deployment)["ALUMI_RELEASE_KEY"].rsplit("/", 1)[1] in object_names
    csi_volumes = [v for v in deployment["volumes"] if "csi" in v]
    assert csi_volumes[0]["csi"]["volumeAttributes"]["secretProviderClass"] == provider["metadata"]["name"]
    assert {"name": "alumi-azure", "optional": True} in deployment["envSecrets"]
    # no literal secret anywhere in the values: secret-looking keys hold nothing, references or placeholders
    text = (DEPLOY / "helm" / "values.yaml").read_text()
    assert not re.search(r"(AccountKey=|sig=|BEGIN [A-Z ]*PRIVATE KEY)", text)
    for name in ("ALUMI_AZURE_ACCOUNT_KEY", "ALUMI_AZURE_SAS_TOKEN", "ALUMI_AZURE_CONNECTION_STRING"):
        assert name not in deployment_env(deployment)


def test_the_cache_claim_is_shared_by_every_pod_and_larger_than_the_cache_bound(deployment):
    claim = yaml.safe_load((DEPLOY / "k8s" / "cache-pvc.yaml").read_text())
    assert claim["apiVersion"] == "v1" and claim["kind"] == "PersistentVolumeClaim"
    spec = claim["spec"]
    assert spec["accessModes"] == ["ReadWriteMany"]  # pods on many nodes mount it at once
    assert spec["storageClassName"] == "azurefile-csi-nfs"  # NFS: hard links and locks (SMB has neither)
    size = re.fullmatch(r"(\d+)Gi", spec["resources"]["requests"]["storage"])
    assert size, spec["resources"]["requests"]["storage"]
    env = deployment_env(deployment)
    assert 0 < float(env["ALUMI_CACHE_MAX_GB"]) * 1e9 < int(size.group(1)) * 2**30
    volumes = {v["name"]: v for v in deployment["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in deployment["volumeMounts"]}
    assert volumes[mounts[env["ALUMI_CACHE_DIR"]]]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    # apart from ALUMI_HOME, whose emptyDir each pod starts with empty
    assert not env["ALUMI_CACHE_DIR"].startswith(env["ALUMI_HOME"].rstrip("/") + "/")
    assert "deploy/k8s/cache-pvc.yaml" in (DEPLOY / "README.md").read_text()


# -- the PostgreSQL instance -----------------------------------------------------------------------------
def test_postgres_instance_file_is_valid_for_dagster(tmp_path, monkeypatch):
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._serdes.config_class import class_from_code_pointer

    text = (DEPLOY / "dagster.postgres.yaml").read_text()
    (tmp_path / "dagster.yaml").write_text(text)
    config, _ = dagster_instance_config(str(tmp_path))
    assert set(config["storage"]) == {"postgres"}  # run, event log and schedule storage in one database
    db = config["storage"]["postgres"]["postgres_db"]
    used_env = {value["env"] for value in db.values() if isinstance(value, dict) and "env" in value}
    assert used_env == {"DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD"}
    assert db["scheme"] == "postgresql+psycopg2"
    for section in ("compute_logs", "run_coordinator"):
        module = re.sub(
            r"^dagster\.core\.", "dagster._core.", config[section]["module"]
        )  # as the instance loader maps it
        klass = class_from_code_pointer(module, config[section]["class"])
        result = validate_config(klass.config_type(), config[section]["config"])
        assert result.success, (section, [e.message for e in result.errors])
    assert config["compute_logs"]["class"] == "AzureBlobComputeLogManager"
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    mentioned = set(re.findall(r"env: ([A-Z_]+)", text))
    assert mentioned <= set(re.findall(r"[A-Z][A-Z_]{3,}", header)), mentioned  # every variable is documented


def test_jetson_notes_use_real_edge_commands():
    from alumi_edge.cli import build_parser
    from alumi_edge.sources_azure import SAS_ENV

    notes = (DEPLOY / "jetson.md").read_text()
    commands = re.findall(r"\balumi-edge (\w+)", notes)
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    assert {"pull", "serve", "sync"} <= set(commands) <= subcommands
    assert SAS_ENV in notes and "ALUMI_EDGE_RUNTIME" in notes
