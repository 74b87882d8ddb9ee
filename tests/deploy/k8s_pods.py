"""The Kubernetes Jobs a run and each of its steps become under deploy/helm/values.yaml, computed by dagster-k8s.

    python tests/deploy/k8s_pods.py VALUES KUBECONFIG JOB [JOB ...]      (prints JSON)

Run it with the environment of the values' user deployment (the test does): the code location then loads as the
chart's code server loads it, with its executor. What the chart itself renders is mirrored here, field by field,
from the Dagster chart's templates at the pinned version: the K8sRunLauncher section of the instance
(``templates/helpers/instance/_run-launcher.tpl``) and the container context the code server hands every run
(``dagsterUserDeployments.k8sContainerContext`` in the user-deployments subchart, includeConfigInLaunchedRuns).
A values key this mirror does not know fails, so the values cannot say something the computation ignores.

From there everything is dagster-k8s's own: ``K8sRunLauncher.get_container_context_for_run`` for the run pod, the
configured ``k8s_job_executor`` and its step handler's container context (launcher < code location < executor
< step tags < per-step config) for every step, and ``construct_dagster_k8s_job`` for the Job body Kubernetes would
receive. Nothing is sent anywhere: the kubeconfig points at no cluster.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RELEASE = "dagster"  # helm upgrade --install dagster dagster/dagster: the chart's fullname is "dagster"
NAMESPACE = "alumi"
DAGSTER_HOME = "/opt/dagster/dagster_home"  # the chart's global.dagsterHome default

LAUNCHER_KEYS = {
    "jobNamespace",
    "loadInclusterConfig",
    "kubeconfigFile",
    "imagePullPolicy",
    "image",
    "envConfigMaps",
    "envSecrets",
    "envVars",
    "volumeMounts",
    "volumes",
    "labels",
    "resources",
    "failPodOnRunFailure",
    "schedulerName",
    "securityContext",
    "runK8sConfig",
}
RUN_K8S_CONFIG_KEYS = {
    "containerConfig": "container_config",
    "podSpecConfig": "pod_spec_config",
    "podTemplateSpecMetadata": "pod_template_spec_metadata",
    "jobSpecConfig": "job_spec_config",
    "jobMetadata": "job_metadata",
}
DEPLOYMENT_KEYS = {
    "name",
    "image",
    "dagsterApiGrpcArgs",
    "port",
    "includeConfigInLaunchedRuns",
    "labels",
    "env",
    "envConfigMaps",
    "envSecrets",
    "volumes",
    "volumeMounts",
    "resources",
    "podSecurityContext",
    "securityContext",
    "annotations",
    "schedulerName",
}


def filled_values(path: Path) -> dict:
    """The values file with each ``<placeholder>`` replaced by a name, as a user fills them in."""
    text = re.sub(r"<([^<>]+)>", lambda m: re.sub(r"[^a-z0-9]", "", m.group(1).lower())[:24], path.read_text())
    return yaml.safe_load(text)


def service_account(values: dict) -> str:
    return values.get("global", {}).get("serviceAccountName") or values["serviceAccount"]["name"]


def image_of(values: dict) -> str:
    image = values["dagster-user-deployments"]["deployments"][0]["image"]
    return f"{image['repository']}:{image['tag']}"


def chart_run_launcher(values: dict, kubeconfig: str) -> dict:
    """The ``run_launcher`` section the chart writes into the instance's dagster.yaml."""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    unknown = set(launcher) - LAUNCHER_KEYS
    assert not unknown, f"runLauncher.config.k8sRunLauncher: keys this mirror of the chart does not know: {unknown}"
    config = {
        # outside a cluster: the kubeconfig instead of the in-cluster config the chart renders
        "load_incluster_config": False,
        "kubeconfig_file": kubeconfig,
        "job_namespace": launcher.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": service_account(values),
        "dagster_home": DAGSTER_HOME,
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    names = {"envConfigMaps": "env_config_maps", "envSecrets": "env_secrets"}
    for key, name in names.items():
        listed = [item["name"] for item in launcher.get(key) or [] if "name" in item]
        if listed:
            config[name] = listed
    plain = {
        "envVars": "env_vars",
        "volumeMounts": "volume_mounts",
        "volumes": "volumes",
        "labels": "labels",
        "resources": "resources",
        "schedulerName": "scheduler_name",
        "securityContext": "security_context",
    }
    for key, name in plain.items():
        if launcher.get(key):
            config[name] = launcher[key]
    if launcher.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    if launcher.get("runK8sConfig"):
        unknown = set(launcher["runK8sConfig"]) - set(RUN_K8S_CONFIG_KEYS)
        assert not unknown, f"runK8sConfig: unknown keys {unknown}"
        config["run_k8s_config"] = {RUN_K8S_CONFIG_KEYS[k]: v for k, v in launcher["runK8sConfig"].items() if v}
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": config}


def chart_container_context(values: dict) -> dict:
    """DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT of the code server: what includeConfigInLaunchedRuns copies into runs."""
    deployment = values["dagster-user-deployments"]["deployments"][0]
    unknown = set(deployment) - DEPLOYMENT_KEYS
    assert not unknown, f"user deployment: keys this mirror of the chart does not know: {unknown}"
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    k8s: dict = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [
            f"{RELEASE}-{deployment['name']}-user-env",
            *[item["name"] for item in deployment.get("envConfigMaps") or [] if "name" in item],
        ],
        "namespace": NAMESPACE,
        "service_account_name": service_account(values),
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    secrets = [item["name"] for item in deployment.get("envSecrets") or [] if "name" in item]
    if secrets:
        k8s["env_secrets"] = secrets
    for key, name in {
        "volumeMounts": "volume_mounts",
        "volumes": "volumes",
        "labels": "labels",
        "resources": "resources",
        "schedulerName": "scheduler_name",
    }.items():
        if deployment.get(key):
            k8s[name] = deployment[key]
    if isinstance(deployment.get("env"), list):
        k8s["env"] = deployment["env"]
    if deployment.get("annotations"):
        k8s["run_k8s_config"]["pod_template_spec_metadata"] = {"annotations": deployment["annotations"]}
    return {"k8s": k8s}


def job_body(container_context, launcher, image: str, component: str) -> dict:
    """The Kubernetes Job dagster-k8s builds for a container context, as the API server would receive it."""
    import kubernetes.client
    from dagster_k8s.job import construct_dagster_k8s_job

    job = construct_dagster_k8s_job(
        job_config=container_context.get_k8s_job_config(job_image=image, run_launcher=launcher),
        args=["dagster", "api", component],
        job_name=f"dagster-{component}",
        pod_name=f"dagster-{component}",
        component=component,
        user_defined_k8s_config=container_context.run_k8s_config,
        labels={},
        env_vars=[],
    )
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def pods_of(job_names: list[str], values: dict, kubeconfig: str) -> dict:
    from dagster import DagsterInstance
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.execution.api import create_execution_plan
    from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
    from dagster._core.execution.context_creation_job import create_context_free_log_manager
    from dagster._core.execution.retries import RetryMode
    from dagster._core.executor.init import InitExecutorContext
    from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
    from dagster._core.system_config.objects import ResolvedRunConfig
    from dagster._grpc.types import ExecuteStepArgs

    image = image_of(values)
    repository = ReconstructableRepository.for_module(
        "alumi_pipelines.definitions",
        "defs",
        working_directory=str(REPO),
        container_image=image,
        container_context=chart_container_context(values),
    )
    out: dict = {}
    with tempfile.TemporaryDirectory() as home:
        instance_yaml = {
            "storage": {"sqlite": {"base_dir": home}},
            "run_launcher": chart_run_launcher(values, kubeconfig),
            "telemetry": {"enabled": False},
        }
        (Path(home) / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
        with DagsterInstance.from_config(home) as instance:
            launcher = instance.run_launcher
            for name in job_names:
                recon_job = repository.get_reconstructable_job(name)
                job_def = recon_job.get_definition()
                origin = recon_job.get_python_origin()
                plan = create_execution_plan(recon_job)
                run = instance.create_run_for_job(
                    job_def, execution_plan=plan, job_code_origin=origin, tags=job_def.run_tags
                )
                run_pod = job_body(launcher.get_container_context_for_run(run), launcher, image, "run_worker")

                executor_def = job_def.executor_def
                executor_config = ResolvedRunConfig.build(job_def, {}).execution.execution_engine_config
                executor = executor_def.executor_creation_fn(
                    InitExecutorContext(
                        job=recon_job, executor_def=executor_def, executor_config=executor_config, instance=instance
                    )
                )
                plan_context = PlanOrchestrationContext(
                    plan_data=PlanData(
                        job=recon_job,
                        dagster_run=run,
                        instance=instance,
                        execution_plan=plan,
                        raise_on_error=True,
                        retry_mode=RetryMode.DISABLED,
                    ),
                    log_manager=create_context_free_log_manager(instance, run),
                    executor=executor,
                    output_capture=None,
                )
                handler = executor._step_handler  # the K8sStepHandler the executor launches every step with
                steps = {}
                for step in plan.steps:
                    context = StepHandlerContext(
                        instance=instance,
                        plan_context=plan_context,
                        steps=plan.steps,
                        execute_step_args=ExecuteStepArgs(origin, run.run_id, [step.key]),
                        dagster_run=run,
                    )
                    container_context = handler._get_container_context(context)
                    steps[step.key] = job_body(container_context, launcher, image, "step_worker")
                out[name] = {
                    "executor": executor_def.name,
                    "tags": dict(job_def.run_tags),
                    "run": run_pod,
                    "steps": steps,
                }
    return out


def main(argv: list[str]) -> int:
    values_path, kubeconfig, *jobs = argv
    print(json.dumps(pods_of(jobs, filled_values(Path(values_path)), kubeconfig)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
