"""edge_export/ stays installable on a device: no pipeline-stack import anywhere, declared dependencies only."""

from __future__ import annotations

import ast
import sys
import tomllib

from edge_support import EDGE_SRC

FORBIDDEN = {"dagster", "torch", "torchvision", "ultralytics", "polars", "mlflow", "alumi_pipelines", "pandas"}
# import name → distribution declared in edge_export/pyproject.toml
ALLOWED_THIRD_PARTY = {
    "numpy": "numpy",
    "onnxruntime": "onnxruntime",
    "cv2": "opencv-python-headless",
    "fastapi": "fastapi",
    "starlette": "fastapi",
    "uvicorn": "uvicorn",
    "pydantic": "pydantic",
    "pydantic_settings": "pydantic-settings",
    "cryptography": "cryptography",
    "jwt": "pyjwt",
    "httpx": "httpx",
    "prometheus_client": "prometheus-client",
    "pyarrow": "pyarrow",
    "tensorrt": "tensorrt",
    "pycuda": "pycuda",
    "xgboost": "xgboost",
}


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (EDGE_SRC / "alumi_edge").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.name)
    return found


def test_no_pipeline_stack_imports():
    imports = _imports()
    assert not FORBIDDEN & set(imports), {name: imports[name] for name in FORBIDDEN & set(imports)}


def test_every_third_party_import_is_a_declared_dependency():
    imports = set(_imports()) - set(sys.stdlib_module_names) - {"alumi_edge"}
    assert imports <= set(ALLOWED_THIRD_PARTY), imports - set(ALLOWED_THIRD_PARTY)
    project = tomllib.loads((EDGE_SRC / "pyproject.toml").read_text())["project"]
    declared = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in project["dependencies"]}
    for extra in ("tensorrt", "risk"):
        declared |= {d.split(">")[0].strip().lower() for d in project["optional-dependencies"][extra]}
    missing = {ALLOWED_THIRD_PARTY[name] for name in imports} - declared
    assert not missing, f"imported but not declared in edge_export/pyproject.toml: {missing}"
    assert project["scripts"] == {"alumi-edge": "alumi_edge.cli:main"}
