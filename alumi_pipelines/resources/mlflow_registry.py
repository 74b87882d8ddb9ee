"""MLflow tracking and model registry for the detector: runs, metrics, artifacts, versions and aliases.

A ``ConfigurableResource`` over ``MlflowClient`` with explicit run ids rather than dagster-mlflow's
``mlflow_tracking`` resource: that one imports mlflow when the code location loads, opens one MLflow run
per Dagster run in every step that uses it, and has no registry; training needs nested sweep runs,
versions with tags and the ``champion``/``previous`` aliases. Runs carry dagster-mlflow's
``dagster_run_id`` tag so both find the same runs. mlflow is imported inside methods only.

The CLI calls :func:`promote` and :func:`rollback` (``alumi promote`` / ``alumi rollback``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from alumi_pipelines.settings import Settings

EXPERIMENT = "alumi-detector"
CHAMPION = "champion"
PREVIOUS = "previous"
WEIGHTS_PATH = "weights"  # artifact folder of a run that holds best.pt; a version's source points at it
_PROMOTED_FROM = "alumi.promoted_from"


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to...)."""


def _mlflow():
    """Import mlflow with its usage telemetry off (nothing leaves the machine)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    return mlflow


def _as_local_dir(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    return Path(uri) if "://" not in uri else None


@dataclass(frozen=True)
class VersionInfo:
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: list[str]
    created_at: float


@dataclass(frozen=True)
class AliasMove:
    model_name: str
    champion: str | None
    previous: str | None
    changed: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "champion": self.champion,
            "previous": self.previous,
            "changed": self.changed,
        }


class TrackedRun:
    """One MLflow run: log params, per-step metrics, artifacts and tags by its id."""

    def __init__(self, client, run_id: str, artifact_uri: str):
        self._client = client
        self.run_id = run_id
        self.artifact_uri = artifact_uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, int(step or 0)) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 500):
            self._client.log_batch(self.run_id, metrics=items[i : i + 500])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(str(k), str(v)[:5000]) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            self.log_artifact(path, artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self._client.log_dict(self.run_id, obj, artifact_file)

    def log_input(
        self, name: str, digest: str, source_uri: str, profile: Mapping[str, Any], context: str = "training"
    ) -> None:
        """A dataset input of the run (what ``mlflow.log_input`` records): the UI lists it on the run's page."""
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=name,
            digest=digest[:36],  # the tracking store keeps at most 36 characters
            source_type="alumi_lake",
            source=json.dumps({"uri": source_uri}),
            profile=json.dumps(dict(profile), sort_keys=True),
        )
        tags = [InputTag(key="mlflow.data.context", value=context)]
        self._client.log_inputs(self.run_id, datasets=[DatasetInput(dataset=dataset, tags=tags)])


class MlflowRegistry(ConfigurableResource):
    """MLflow tracking (experiment ``alumi-detector``) and the registered detector model."""

    tracking_uri: str = Field(description="MLflow tracking + registry URI (sqlite:///..., http://...)")
    artifact_location: str = Field(description="artifact root for the experiment (folder or URI)")
    experiment_name: str = Field(default=EXPERIMENT, description="MLflow experiment of training runs")
    model_name: str = Field(default="alumi-detector", description="registered model name")
    ui_url: str = Field(
        default="",
        description="MLflow UI base URL for run links (ALUMI_MLFLOW_UI_URL); empty: the tracking URI "
        "when it is http(s), else no link",
    )

    _client: Any = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowRegistry:
        return cls(
            tracking_uri=settings.mlflow_uri,
            artifact_location=settings.mlflow_artifacts_uri,
            model_name=settings.model_name,
            ui_url=settings.mlflow_ui_url,
        )

    # -- plumbing --------------------------------------------------------------------------------
    def client(self):
        """The MlflowClient (sqlite parent folders and local artifact folders are created first)."""
        if self._client is None:
            _mlflow()
            from mlflow import MlflowClient

            if self.tracking_uri.startswith("sqlite:///"):
                Path(self.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def _artifact_root(self) -> str:
        local = _as_local_dir(self.artifact_location)
        if local is None:
            return self.artifact_location
        local = local.expanduser().resolve()
        local.mkdir(parents=True, exist_ok=True)
        return local.as_uri()

    def experiment_id(self) -> str:
        """Id of the experiment, created (with our artifact location) when missing."""
        client = self.client()
        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        return client.create_experiment(self.experiment_name, artifact_location=self._artifact_root())

    # -- runs ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def run(
        self, run_name: str, *, tags: Mapping[str, Any] | None = None, parent_run_id: str | None = None
    ) -> Iterator[TrackedRun]:
        """Start a run (nested under ``parent_run_id`` if given); FINISHED on success, FAILED on error."""
        client = self.client()
        all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        created = client.create_run(self.experiment_id(), run_name=run_name, tags=all_tags)
        run = TrackedRun(client, created.info.run_id, created.info.artifact_uri)
        try:
            yield run
        except BaseException:
            client.set_terminated(run.run_id, status="FAILED")
            raise
        client.set_terminated(run.run_id, status="FINISHED")

    def tracked(self, run_id: str) -> TrackedRun:
        """An existing run, to add metrics or artifacts to it (e.g. test-split results after training)."""
        run = self.client().get_run(run_id)
        return TrackedRun(self.client(), run.info.run_id, run.info.artifact_uri)

    def find_run(self, tag: str, value: str) -> TrackedRun | None:
        """The newest run of this resource's experiment whose ``tag`` is ``value``, or None."""
        found = self.client().search_runs(
            [self.experiment_id()],
            filter_string=f"tags.`{tag}` = '{value}'",
            order_by=["start_time DESC"],
            max_results=1,
        )
        return TrackedRun(self.client(), found[0].info.run_id, found[0].info.artifact_uri) if found else None

    def run_url(self, run_id: str) -> str | None:
        """The run's page in the MLflow UI (``ui_url``, else an http(s) tracking URI), or None without a UI."""
        base = self.ui_url or (self.tracking_uri if self.tracking_uri.startswith(("http://", "https://")) else "")
        if not base:
            return None
        experiment = self.client().get_run(run_id).info.experiment_id
        return f"{base.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """Latest value of every metric of a run."""
        return dict(self.client().get_run(run_id).data.metrics)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client().get_metric_history(run_id, key)]

    # -- versions --------------------------------------------------------------------------------
    def register_weights(self, run: TrackedRun, *, tags: Mapping[str, Any], description: str = "") -> str:
        """Register the run's ``weights/`` artifact folder as a new model version; returns its number."""
        from mlflow.exceptions import MlflowException

        client = self.client()
        try:
            client.get_registered_model(self.model_name)
        except MlflowException:
            client.create_registered_model(self.model_name, description="Surface-defect detector (YOLO)")
        mv = client.create_model_version(
            self.model_name,
            source=f"{run.artifact_uri}/{WEIGHTS_PATH}",
            run_id=run.run_id,
            tags={str(k): str(v) for k, v in tags.items()},
            description=description or None,
        )
        return str(mv.version)

    def register_folder(
        self,
        run: TrackedRun,
        artifact_path: str,
        *,
        tags: Mapping[str, Any],
        description: str = "",
        model_description: str = "",
    ) -> str:
        """Register the run's ``artifact_path`` folder as a new version of this resource's model; returns its number.

        The registered model is created (with ``model_description``) when it does not exist yet.
        """
        from mlflow.exceptions import MlflowException

        client = self.client()
        try:
            client.get_registered_model(self.model_name)
        except MlflowException:
            client.create_registered_model(self.model_name, description=model_description or None)
        mv = client.create_model_version(
            self.model_name,
            source=f"{run.artifact_uri}/{artifact_path}",
            run_id=run.run_id,
            tags={str(k): str(v) for k, v in tags.items()},
            description=description or None,
        )
        return str(mv.version)

    def _info(self, mv) -> VersionInfo:
        return VersionInfo(
            version=str(mv.version),
            run_id=mv.run_id,
            source=mv.source,
            tags=dict(mv.tags or {}),
            aliases=list(getattr(mv, "aliases", []) or []),
            created_at=mv.creation_timestamp / 1000.0,
        )

    def version(self, version: str | int) -> VersionInfo:
        """One version, or RegistryError naming the model and version."""
        from mlflow.exceptions import MlflowException

        try:
            return self._info(self.client().get_model_version(self.model_name, str(version)))
        except MlflowException as exc:
            raise RegistryError(f"model {self.model_name!r} has no version {str(version)!r}") from exc

    def versions(self) -> list[VersionInfo]:
        """Every version of the model, oldest first."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client().search_model_versions(f"name='{self.model_name}'")
        except MlflowException:
            return []
        return sorted((self._info(mv) for mv in found), key=lambda v: int(v.version))

    def latest_version(self) -> VersionInfo | None:
        versions = self.versions()
        return self.version(versions[-1].version) if versions else None

    def alias_version(self, alias: str) -> str | None:
        """The version an alias points to, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client().get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException:
            return None

    def set_version_tags(self, version: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client().set_model_version_tag(self.model_name, str(version), str(key), str(value)[:5000])

    def download_weights(self, version: str, dest: Path) -> Path:
        """best.pt of a version, downloaded into ``dest``."""
        info = self.version(version)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        mlflow = _mlflow()
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{info.source}/best.pt", dst_path=str(dest), tracking_uri=self.tracking_uri
            )
        )
        if not local.is_file():
            raise RegistryError(f"model {self.model_name!r} version {version}: no best.pt under {info.source}")
        return local

    def resolve_artifact_uri(self, uri: str) -> str:
        """Where a ``models:/name/version``, ``models:/name@alias`` or ``runs:/id/path`` URI's files live.

        Resolved against this resource's registry (MLflow's own resolution uses the process-wide URI).
        """
        client = self.client()
        if uri.startswith("models:/"):
            rest = uri[len("models:/") :]
            if "@" in rest:
                name, alias = rest.split("@", 1)
                return client.get_model_version_by_alias(name, alias).source
            name, _, version = rest.partition("/")
            if version in ("", "latest"):
                found = client.search_model_versions(f"name='{name}'")
                if not found:
                    raise RegistryError(f"{uri}: model {name!r} has no version")
                version = str(max(int(mv.version) for mv in found))
            return client.get_model_version(name, version).source
        if uri.startswith("runs:/"):
            run_id, _, path = uri[len("runs:/") :].partition("/")
            return f"{client.get_run(run_id).info.artifact_uri}/{path}".rstrip("/")
        return uri

    def download_uri(self, uri: str, dest: Path) -> Path:
        """A ``models:/`` or ``runs:/`` URI downloaded into ``dest`` (the .pt inside when it is a folder)."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        mlflow = _mlflow()
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=self.resolve_artifact_uri(uri), dst_path=str(dest), tracking_uri=self.tracking_uri
            )
        )
        if local.is_dir():
            found = sorted(local.rglob("best.pt")) or sorted(local.rglob("*.pt"))
            if not found:
                raise RegistryError(f"{uri}: holds no .pt file")
            local = found[0]
        return local

    # -- aliases ---------------------------------------------------------------------------------
    def promote(self, version: str | int) -> AliasMove:
        """Point ``champion`` at a version; the old champion becomes ``previous``."""
        version = self.version(version).version
        client = self.client()
        old = self.alias_version(CHAMPION)
        if old == version:
            return AliasMove(self.model_name, version, self.alias_version(PREVIOUS), changed=False)
        if old is not None:
            client.set_registered_model_alias(self.model_name, PREVIOUS, old)
        client.set_model_version_tag(self.model_name, version, _PROMOTED_FROM, old or "")
        client.set_model_version_tag(self.model_name, version, "alumi.promoted_at", dt.datetime.now(dt.UTC).isoformat())
        client.set_registered_model_alias(self.model_name, CHAMPION, version)
        return AliasMove(self.model_name, version, old, changed=True)

    def rollback(self) -> AliasMove:
        """Point ``champion`` back at ``previous``; ``previous`` moves one step further back (or goes)."""
        client = self.client()
        current, previous = self.alias_version(CHAMPION), self.alias_version(PREVIOUS)
        if previous is None:
            raise RegistryError(
                f"model {self.model_name!r} has no {PREVIOUS!r} version to roll back to "
                f"(champion is {current or 'unset'})"
            )
        client.set_registered_model_alias(self.model_name, CHAMPION, previous)
        if current is not None:
            client.set_model_version_tag(
                self.model_name, current, "alumi.rolled_back_at", dt.datetime.now(dt.UTC).isoformat()
            )
        before = self.version(previous).tags.get(_PROMOTED_FROM) or None
        if before is not None and before not in (current, previous):
            client.set_registered_model_alias(self.model_name, PREVIOUS, before)
        else:
            client.delete_registered_model_alias(self.model_name, PREVIOUS)
            before = None
        return AliasMove(self.model_name, previous, before, changed=True)


def _registry(model_name: str | None, tracking_uri: str | None) -> MlflowRegistry:
    settings = Settings.from_env()
    return MlflowRegistry(
        tracking_uri=tracking_uri or settings.mlflow_uri,
        artifact_location=settings.mlflow_artifacts_uri,
        model_name=model_name or settings.model_name,
    )


def promote(
    model_name: str | None = None, version: str | int | None = None, *, tracking_uri: str | None = None
) -> dict[str, Any]:
    """Make ``version`` the champion of ``model_name`` (defaults from ALUMI_* settings); for ``alumi promote``."""
    if version is None:
        raise RegistryError("promote: give the version to promote")
    return _registry(model_name, tracking_uri).promote(version).as_dict()


def rollback(model_name: str | None = None, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """Move ``champion`` back to ``previous`` for ``model_name``; for ``alumi rollback``."""
    return _registry(model_name, tracking_uri).rollback().as_dict()
