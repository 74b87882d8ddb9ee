"""ONNX export of YOLO detectors and the pipeline metadata written into the ONNX file.

Pure logic over local paths: nothing here imports dagster or touches the lake. ultralytics and onnx are
imported inside the functions that use them; ultralytics always offline (through
:mod:`alumi_pipelines.lib.training`). :class:`ExportError` is the error of every module of this package
that exports, quantises or compares models.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alumi_pipelines.lib.files import file_sha256, write_atomic

OPSET = 17
PIPELINE_METADATA_KEYS = ("model_version", "dataset_hash", "mlflow_run_id")


class ExportError(ValueError):
    """An export, quantisation or comparison that cannot be done; the message names the file or field."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    imgsz: int
    opset: int
    simplified: bool
    metadata: dict[str, str]
    names: list[str]
    sha256: str
    size_bytes: int
    simplify_error: str = ""
    dfl_rewritten: bool = False  # the head's DFL decoding was rewritten without a transpose (rewrite_dfl)


def checkpoint_imgsz(weights: Path, config_dir: Path) -> int:
    """The image size a YOLO checkpoint was trained at (its ``train_args``)."""
    from alumi_pipelines.lib.training.offline import import_ultralytics

    import_ultralytics(config_dir)
    from ultralytics import YOLO

    args = (YOLO(str(weights)).ckpt or {}).get("train_args") or {}
    imgsz = args.get("imgsz")
    if isinstance(imgsz, (list, tuple)):
        imgsz = max(imgsz)
    if not isinstance(imgsz, int) or imgsz <= 0:
        raise ExportError(f"{weights}: checkpoint records no training image size; pass imgsz explicitly")
    return imgsz


def set_metadata(path: str | Path, props: Mapping[str, Any]) -> dict[str, str]:
    """Add or replace ``metadata_props`` of an ONNX file in place (atomically); returns all properties."""
    import onnx

    return save_with_metadata(onnx.load(str(path)), path, props)


def save_with_metadata(model, path: str | Path, props: Mapping[str, Any]) -> dict[str, str]:
    """Add or replace ``props`` in the ``metadata_props`` of ``model`` (an ``onnx.ModelProto``) and save it
    to ``path`` atomically (:func:`alumi_pipelines.lib.files.write_atomic`); returns all properties."""
    current = {p.key: p.value for p in model.metadata_props}
    current.update({str(k): str(v) for k, v in props.items()})
    del model.metadata_props[:]
    for key, value in current.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    write_atomic(Path(path), model.SerializeToString())  # the bytes onnx.save writes
    return current


def read_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def export_onnx(
    weights: Path,
    out_dir: Path,
    *,
    config_dir: Path,
    imgsz: int,
    metadata: Mapping[str, Any],
    opset: int = OPSET,
    simplify: bool = True,
) -> ExportResult:
    """Export a YOLO checkpoint to ``out_dir/model.onnx`` (static 1×3×imgsz×imgsz, FP32) with pipeline metadata.

    ultralytics writes ``names``, ``imgsz`` and ``stride``; ``metadata`` adds e.g. model_version,
    dataset_hash and mlflow_run_id. onnxslim simplification is tried first; when it fails the plain
    export is kept and the error reported. The head's DFL decoding is then rewritten
    (:func:`alumi_pipelines.lib.export.dfl.rewrite_dfl`).
    """
    from alumi_pipelines.lib.training.offline import import_ultralytics

    missing = [k for k in PIPELINE_METADATA_KEYS if not str(metadata.get(k, "") or "")]
    if missing:
        raise ExportError(f"export metadata: {', '.join(missing)} must be given")
    if imgsz <= 0 or imgsz % 32:
        raise ExportError(f"export imgsz {imgsz}: must be a positive multiple of 32")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # ultralytics writes the ONNX beside the weights: work on a copy inside out_dir.
    staged = out_dir / "model.pt"
    if Path(weights).resolve() != staged:
        shutil.copyfile(weights, staged)
    import_ultralytics(config_dir)
    from ultralytics import YOLO

    def run(simplify_now: bool) -> Path:
        model = YOLO(str(staged))
        produced = model.export(
            format="onnx",
            imgsz=imgsz,
            opset=opset,
            dynamic=False,
            simplify=simplify_now,
            half=False,
            nms=False,
            device="cpu",
            verbose=False,
        )
        return Path(produced)

    simplify_error = ""
    simplified = simplify
    try:
        produced = run(simplify)
    except Exception as exc:  # onnxslim missing or failing on this graph: keep the plain export
        if not simplify:
            raise
        simplify_error = f"{type(exc).__name__}: {exc}"
        simplified = False
        produced = run(False)
    target = out_dir / "model.onnx"
    if produced.resolve() != target:
        produced.replace(target)
    import onnx

    from alumi_pipelines.lib.export.dfl import rewrite_dfl  # here, not above: dfl takes its default OPSET from us

    model = onnx.load(str(target))
    dfl_rewritten = rewrite_dfl(model)
    props = save_with_metadata(model, target, {k: metadata[k] for k in metadata})
    onnx.checker.check_model(str(target))
    from alumi_edge.model_info import parse_model_info

    info = parse_model_info(props, source=str(target))
    if info.input_hw != (imgsz, imgsz):
        raise ExportError(f"{target}: metadata imgsz {info.input_hw} differs from the requested {imgsz}")
    return ExportResult(
        path=target,
        imgsz=imgsz,
        opset=opset,
        simplified=simplified,
        metadata=props,
        names=list(info.names),
        sha256=file_sha256(target),
        size_bytes=target.stat().st_size,
        simplify_error=simplify_error,
        dfl_rewritten=dfl_rewritten,
    )
