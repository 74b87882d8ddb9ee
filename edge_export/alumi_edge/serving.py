"""The model being served and its hot swap: load the new runtime fully, then replace one reference.

Requests take ``holder.loaded`` once at their start and keep using that object, so a reload never
disturbs a request in flight; the old runtime is freed when the last such request finishes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from alumi_edge.device_home import DeviceHome, HomeError
from alumi_edge.manifest import ReleaseError
from alumi_edge.model_info import read_model_info
from alumi_edge.runtimes import Runtime, create_runtime
from alumi_edge.selftest import load_expected
from alumi_edge.settings import EdgeSettings
from alumi_edge.verify import verify_installed

log = logging.getLogger(__name__)


class NoModel(Exception):
    """No release is installed and no model path is configured."""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded runtime with the version and file it came from."""

    runtime: Runtime
    version: str
    model_path: Path
    loaded_at: float
    release: dict

    def describe(self) -> dict:
        return {
            "model_version": self.version,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            **self.runtime.describe(),
            "release": self.release,
        }


def serves_on_cpu(settings: EdgeSettings) -> bool:
    """Whether the configured runtime and device resolve to ONNX Runtime on the CPU."""
    if settings.device == "cpu" and settings.runtime != "tensorrt":
        return True
    if settings.runtime == "tensorrt" or settings.device == "cuda":
        return False
    if settings.runtime == "auto":
        from alumi_edge.runtimes.tensorrt import tensorrt_available

        if tensorrt_available()[0]:
            return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" not in ort.get_available_providers()


def serving_role(settings: EdgeSettings, manifest, release_dir: Path) -> str:
    """The release file to serve: the configured role, or on ``auto`` the INT8 model where it runs on the CPU.

    TensorRT builds its own engine (FP16/INT8) from the FP32 ONNX, and a GPU runs the FP32 ONNX; on a CPU
    the INT8 model (held at export to lose at most the configured mAP50 margin) is the faster one. Only an
    INT8 model that has its own expected boxes, and so was self-tested at pull, is chosen on ``auto``; a release
    whose INT8 model the export refused carries none, so ``auto`` serves its FP32 model and a pinned role it
    lacks is a NoModel naming why.
    """
    if settings.model_role != "auto":
        if manifest.file_for_role(settings.model_role) is None:
            refused = manifest.refused.get(settings.model_role)
            reason = f"the export refused it ({refused['why']})" if refused else "it was not exported"
            raise NoModel(
                f"release {manifest.version} has no {settings.model_role} file: {reason}; set "
                "ALUMI_EDGE_MODEL_ROLE=auto or model to serve its FP32 model"
            )
        return settings.model_role
    expected = manifest.file_for_role("sample_expected")
    if manifest.file_for_role("model_int8") is None or expected is None:
        return "model"
    try:
        tested = "model_int8" in load_expected(release_dir / expected.path)["roles"]
    except ReleaseError:
        return "model"
    return "model_int8" if tested and serves_on_cpu(settings) else "model"


class ModelHolder:
    """Resolves which model to serve, loads it, and swaps it on reload."""

    def __init__(self, settings: EdgeSettings):
        self.settings = settings
        self.home = DeviceHome(settings.home)
        self.loaded: LoadedModel | None = None
        self.last_error: str | None = None
        self._reload_lock = threading.Lock()

    def resolve(self) -> tuple[Path, str, dict]:
        """(model file, version, release summary) of what should be served now."""
        if self.settings.model_path is not None:
            path = self.settings.model_path.expanduser()
            info = read_model_info(path)
            return path, info.model_version or path.stem, {}
        version = self.home.current_version()
        if version is None:
            raise NoModel(
                f"no release installed under {self.home.root} (run 'alumi-edge pull'), no ALUMI_EDGE_MODEL_PATH"
            )
        try:
            manifest = self.home.manifest(version)
            role = serving_role(self.settings, manifest, self.home.version_dir(version))
            path = self.home.model_path(version, role)
        except HomeError as exc:
            raise NoModel(str(exc)) from exc
        # every file against the signed manifest: catches on-disk corruption and local edits since the pull
        verified = verify_installed(self.home.root, self.settings.pubkey_pem(), version)
        summary = {
            "verified": verified.to_dict(),
            "role": role,
            "version": manifest.version,
            "created_at": manifest.created_at,
            "metrics": manifest.metrics,
            "source": manifest.source,
            "refused": manifest.refused,
        }
        return path, manifest.version, summary

    def _load(self, path: Path, version: str, release: dict) -> LoadedModel:
        s = self.settings
        runtime = create_runtime(
            path,
            kind=s.runtime,
            device=s.device,
            engine_cache_dir=s.engine_cache_dir,
            precision=s.precision,
            intra_op_threads=s.intra_op_threads,
        )
        runtime.warmup()
        return LoadedModel(runtime=runtime, version=version, model_path=path, loaded_at=time.time(), release=release)

    def reload(self, force: bool = False) -> dict:
        """Load the model that should be served now and swap it in; the old one keeps serving until then."""
        with self._reload_lock:
            previous = self.loaded
            path, version, release = self.resolve()
            if previous is not None and not force and previous.version == version and previous.model_path == path:
                return {"reloaded": False, "model_version": version, "previous_version": version}
            new = self._load(path, version, release)
            self.loaded = new  # the swap: one reference assignment
            self.last_error = None
            log.info("serving model %s from %s with %s", version, path, new.runtime.name)
            return {
                "reloaded": True,
                "model_version": version,
                "previous_version": previous.version if previous else None,
                "runtime": new.runtime.name,
            }

    def try_initial_load(self) -> None:
        """Load at start-up; on failure stay unready (readyz 503) and remember why."""
        try:
            self.reload()
        except Exception as exc:  # the server must start even without a usable model
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("no model loaded at start-up: %s", self.last_error)
