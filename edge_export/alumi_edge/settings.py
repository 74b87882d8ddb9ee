"""Settings of the edge server and CLI, from ``ALUMI_EDGE_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_HS256_SECRET_BYTES = 32


class EdgeSettings(BaseSettings):
    """Every knob of ``alumi-edge``; each field ``foo`` is read from ``ALUMI_EDGE_FOO``."""

    model_config = SettingsConfigDict(env_prefix="ALUMI_EDGE_", extra="ignore")

    home: Path = Field(Path("~/.alumi-edge"), description="device folder: versions/, current, feedback queue")
    model_path: Path | None = Field(None, description="serve this ONNX instead of the pulled release")
    pubkey: str | None = Field(
        None,
        description="pinned Ed25519 public key(s): PEM text or a PEM file (several keys allowed); pull checks "
        "releases and channel pointers with it, serve and verify the installed release's signature",
    )
    model_role: Literal["auto", "model", "model_int8"] = Field(
        "auto",
        description="release file to serve; auto: the INT8 model on a CPU when the release has one, else the FP32",
    )
    runtime: Literal["auto", "onnxruntime", "tensorrt"] = Field("auto", description="TensorRT when available on auto")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="ONNX Runtime device")
    precision: Literal["fp16", "fp32"] = Field("fp16", description="TensorRT engine precision")
    engine_cache: Path | None = Field(None, description="TensorRT engine cache (default <home>/engines)")
    conf: float = Field(0.25, ge=0.0, le=1.0, description="default confidence threshold")
    iou: float = Field(0.7, ge=0.0, le=1.0, description="default NMS IoU threshold")
    max_det: int = Field(300, ge=1, le=10000, description="most boxes returned per image")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1, description="larger request bodies get HTTP 413")
    max_image_pixels: int = Field(
        100_000_000, ge=1, description="images whose header declares more pixels get HTTP 413 (before decoding)"
    )
    max_decoded_bytes: int = Field(
        1024**3,
        ge=1,
        description="images whose header declares a larger decoded buffer (width x height x samples x bytes) get "
        "HTTP 413 (before decoding)",
    )
    inference_workers: int = Field(2, ge=1, le=64, description="threads running inference (never the event loop)")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per inference (0 = its default)")
    keep_buffers: bool = Field(
        True,
        description="keep large freed buffers in the process (glibc mallopt): "
        "faster per request, resident memory stays at its peak",
    )
    auth: Literal["hs256", "rs256", "none"] = Field("hs256", description="JWT check on detect/feedback/admin")
    jwt_secret: SecretStr | None = Field(None, description="HS256 shared secret (at least 32 bytes)")
    jwt_public_key: str | None = Field(None, description="RS256 public key: PEM text or a path to a PEM file")
    jwt_audience: str | None = Field(None, description="required 'aud' claim, if set")
    jwt_issuer: str | None = Field(None, description="required 'iss' claim, if set")
    admin_scope: str = Field("admin", description="scope/role a token needs for /admin")
    device_id: str = Field(default_factory=socket.gethostname, description="names this device in synced feedback")
    feedback_db: Path | None = Field(None, description="feedback queue (default <home>/feedback.sqlite3)")
    capture: bool = Field(
        True,
        description="keep recent frames (operator page), an hourly prediction log and frames sampled for "
        "learning under <home>/capture",
    )
    capture_max_bytes: int = Field(
        2 * 1024**3,
        ge=1,
        description="frames on disk at most; the oldest go first, a kept frame only once it is synced",
    )
    capture_recent_frames: int = Field(200, ge=0, description="latest frames kept for the operator page")
    capture_uncertain_low: float = Field(
        0.25, ge=0.0, le=1.0, description="keep a frame whose highest confidence is at least this ..."
    )
    capture_uncertain_high: float = Field(0.5, ge=0.0, le=1.0, description="... and below this (uncertain)")
    capture_rare_classes: str = Field(
        "", description="comma-separated class names; a frame with any of them is kept (e.g. 'crack,pit')"
    )
    capture_random_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="share of the other frames kept at random (0 = none)"
    )
    capture_per_hour_cap: int = Field(
        60, ge=0, description="frames kept by the sampling rules per hour at most (flagged frames not counted)"
    )
    host: str = Field("127.0.0.1", description="serve: bind address")
    port: int = Field(8080, ge=0, le=65535, description="serve: port")
    log_level: str = Field("info", description="serve: uvicorn log level")

    @field_validator("capture_rare_classes", mode="before")
    @classmethod
    def _join_classes(cls, value):
        """A list or tuple of class names is accepted too (the environment gives a comma-separated string)."""
        if isinstance(value, list | tuple | set):
            return ",".join(str(v) for v in value)
        return value

    @model_validator(mode="after")
    def _expand(self) -> EdgeSettings:
        self.home = self.home.expanduser()
        if self.capture_uncertain_low > self.capture_uncertain_high:
            raise ValueError(
                "ALUMI_EDGE_CAPTURE_UNCERTAIN_LOW must not exceed ALUMI_EDGE_CAPTURE_UNCERTAIN_HIGH "
                f"({self.capture_uncertain_low} > {self.capture_uncertain_high})"
            )
        return self

    @property
    def capture_dir(self) -> Path:
        return self.home / "capture"

    @property
    def capture_rare_class_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.capture_rare_classes.split(",") if name.strip())

    @property
    def feedback_path(self) -> Path:
        return (self.feedback_db or self.home / "feedback.sqlite3").expanduser()

    @property
    def engine_cache_dir(self) -> Path:
        return (self.engine_cache or self.home / "engines").expanduser()

    def pubkey_pem(self) -> bytes | None:
        """The pinned key set as PEM bytes, None when not configured; ValueError names a missing file."""
        value = (self.pubkey or "").strip()
        if not value:
            return None
        if value.startswith("-----BEGIN"):
            return value.encode("ascii")
        path = Path(value).expanduser()
        if not path.is_file():
            raise ValueError(f"ALUMI_EDGE_PUBKEY: {path} is neither PEM text nor an existing file")
        return path.read_bytes()

    def jwt_key_and_algorithm(self) -> tuple[str | bytes, str] | None:
        """(verification key, algorithm), None when auth is off; ValueError naming the missing setting."""
        if self.auth == "none":
            return None
        if self.auth == "hs256":
            secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
            if len(secret.encode("utf-8")) < MIN_HS256_SECRET_BYTES:
                raise ValueError(
                    f"ALUMI_EDGE_JWT_SECRET must hold at least {MIN_HS256_SECRET_BYTES} bytes "
                    "when ALUMI_EDGE_AUTH=hs256 "
                    "(or set ALUMI_EDGE_AUTH=none to serve without tokens)"
                )
            return secret, "HS256"
        value = (self.jwt_public_key or "").strip()
        if not value:
            raise ValueError("ALUMI_EDGE_JWT_PUBLIC_KEY (PEM text or file path) is required when ALUMI_EDGE_AUTH=rs256")
        if not value.startswith("-----BEGIN"):
            path = Path(value).expanduser()
            if not path.is_file():
                raise ValueError(f"ALUMI_EDGE_JWT_PUBLIC_KEY: {path} is neither PEM text nor an existing file")
            value = path.read_text()
        return value, "RS256"
