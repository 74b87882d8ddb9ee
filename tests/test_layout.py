"""The layout's rules, checked on the source: one module spells lake keys, asset code reads no environment,
lib/ imports no Dagster, no private name crosses a module boundary, every asset group has its module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "alumi_pipelines"
KEYS_MODULE = PACKAGE / "resources" / "lake_keys.py"
ZONE_KEY = re.compile(r"^(landing|raw|quarantine|processed|corrections|gold|models|releases|reports|predictions)/")


def _where(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (prose, not keys)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def lake_key_literals(path: Path) -> list[str]:
    """'file:line: text' for every string literal or f-string in ``path`` that starts like a lake key."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    found = []
    for node in sorted(ast.walk(tree), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
        if isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            text = head.value if isinstance(head, ast.Constant) and isinstance(head.value, str) else ""
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs | parts:
            text = node.value
        else:
            continue
        if ZONE_KEY.match(text):
            found.append(f"{_where(path)}:{node.lineno}: {text[:60]!r}")
    return found


def environment_reads(path: Path) -> list[str]:
    """'file:line: what' for every os.environ / os.getenv / Settings.from_env() in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in sorted(ast.walk(tree), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
        name = None
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "from_env"):
            name = node.attr
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            name = next((a.name for a in node.names if a.name in ("environ", "getenv")), None)
        if name:
            found.append(f"{_where(path)}:{node.lineno}: {name}")
    return found


def private_imports(path: Path) -> list[str]:
    """'file:line: module._name' for every ``from <our module> import _name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("alumi_pipelines", "alumi_edge")):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{_where(path)}:{node.lineno}: {node.module}.{alias.name}")
    return found


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_keys_module_spells_a_lake_key():
    offenders = [hit for p in _sources(PACKAGE) if p != KEYS_MODULE for hit in lake_key_literals(p)]
    assert offenders == []
    assert lake_key_literals(KEYS_MODULE), "the scan must see the keys module's own keys"


def test_the_key_scan_catches_literals_and_f_strings(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Docstrings may say gold/datasets/ freely."""\nA = "gold/current.json"\n'
        'def f(b):\n    return f"raw/manifests/{b}.parquet", "not/a/zone"\n'
    )
    assert [hit.split(": ", 1)[1] for hit in lake_key_literals(sample)] == ["'gold/current.json'", "'raw/manifests/'"]


def test_asset_sensor_and_job_modules_read_no_environment():
    modules = [
        *_sources(PACKAGE / "assets"),
        *_sources(PACKAGE / "sensors"),
        PACKAGE / "jobs.py",
        PACKAGE / "definitions.py",
        PACKAGE / "partitions.py",
    ]
    assert [hit for p in modules for hit in environment_reads(p)] == []


def test_the_environment_scan_sees_every_form(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nfrom os import environ\nfrom alumi_pipelines.settings import Settings\n"
        "a = os.environ.get('X')\nb = os.getenv('Y')\nc = Settings.from_env()\n"
    )
    assert [hit.rsplit(": ", 1)[1] for hit in environment_reads(sample)] == ["environ", "environ", "getenv", "from_env"]


def test_no_private_name_is_imported_across_modules():
    roots = [PACKAGE, REPO / "edge_export" / "alumi_edge", REPO / "tests", REPO / "benchmarks"]
    assert [hit for root in roots for p in _sources(root) for hit in private_imports(p)] == []


def test_lib_is_pure_of_dagster_and_the_lake():
    offenders = []
    for p in _sources(PACKAGE / "lib"):
        bad = {
            m
            for m in imported_modules(p)
            if m.split(".")[0] == "dagster"
            or m.startswith("alumi_pipelines.")
            and not m.startswith("alumi_pipelines.lib")
        }
        offenders += [f"{_where(p)}: {m}" for m in sorted(bad)]
    assert offenders == []


@pytest.fixture(scope="module")
def defs():
    from alumi_pipelines.definitions import defs

    return defs


def test_every_asset_group_is_a_module_named_after_it(defs):
    """From an asset's group in the UI, its code is in assets/<group>.py (the plant branch: assets/plant/)."""
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        group = node.group_name
        module = node.assets_def.op.compute_fn.decorated_fn.__module__
        expected = f"alumi_pipelines.assets.{group.replace('plant_', 'plant.')}"
        if group.startswith("plant_"):
            assert module.startswith("alumi_pipelines.assets.plant."), (key, module)
        else:
            assert module == expected or module.startswith(expected + "."), (key, group, module)


def test_every_asset_links_to_its_source_file(defs):
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        refs = graph.get(key).metadata["dagster/code_references"].code_references
        paths = {Path(r.file_path) for r in refs}
        assert paths and all(p.is_file() and PACKAGE in p.parents for p in paths), key
