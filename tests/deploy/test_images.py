"""Each Dockerfile's install lines, repeated in a fresh virtual environment, give an image that runs every job.

There is no Docker daemon here, so the Dockerfile is replayed: its build context (filtered by its .dockerignore)
is copied as its COPY lines say into a folder standing for WORKDIR, and its RUN lines that install Python
packages run there, in order, with the ARG defaults and the image's ENV, `pip`/`python` being the fresh venv's.
System packages (apt-get) and the user account are the base image's business and are not replayed. Then, with
the checkout out of the way (no PYTHONPATH, another working directory), the environment must import every module
the code location can reach, pass `pip check`, and run the `ci`-profile end_to_end_job through `dagster job
execute`, as the README's quick start does.

One substitution, like a `docker build --build-arg`: the CPU image takes torch from download.pytorch.org, which
this machine cannot reach; here it comes from the default index (same version, CUDA build), and the CPU image's
line that asserts the `+cpu` build is skipped. Several GB and several minutes per image: marked slow.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_deploy_files import DEPLOY, REPO, args_of, dockerfile, env_of  # noqa: E402

PYTHON = shutil.which("python3.11") or sys.executable
DEFAULT_INDEX = "https://pypi.org/simple"
BUILD_ARGS = {"Dockerfile": {"TORCH_INDEX_URL": DEFAULT_INDEX}, "Dockerfile.gpu": {}}
SKIPPED_WITH_BUILD_ARGS = {"Dockerfile": "replaced the CPU build"}  # a RUN line that only holds with the CPU index
OPTIONAL_MODULES = {"tensorrt", "pycuda"}  # the `tensorrt` extra: JetPack / CUDA hosts only; the engine step plans


def dockerignore_filter(path: Path):
    """A predicate on context-relative POSIX paths: True where the .dockerignore lets the file into the context."""
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line[1:] if include else line
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("/**", i):
                regex, i = regex + "(?:/.*)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((include, re.compile(regex + "$")))

    def allowed(relative: str) -> bool:
        parts = relative.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        verdict = True
        for include, regex in rules:
            if any(regex.match(prefix) for prefix in prefixes):
                verdict = include
        return verdict

    return allowed


def copy_instruction(arguments: str, workdir: Path, allowed) -> None:
    *sources, target = arguments.split()
    destination = workdir / target
    for source in sources:
        src = REPO / source
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if not allowed(relative):
                continue
            if src.is_file():
                out = destination / file.name if target.endswith("/") or target == "./" else destination
            else:
                out = destination / file.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, out)


def code_location_modules() -> set[str]:
    """Every third-party top-level module the package imports anywhere (what definitions.py can reach)."""
    modules = set()
    for path in (REPO / "alumi_pipelines").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "alumi_pipelines"} - OPTIONAL_MODULES


def run(command, env, cwd, timeout=3600):
    proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu"])
def test_an_environment_built_by_the_dockerfile_runs_end_to_end_job(name, tmp_path):
    instructions = dockerfile(DEPLOY / name)
    build_args = {**args_of(instructions), **BUILD_ARGS[name]}
    root = tmp_path / "image"  # stands for the image's /
    root.mkdir()
    venv = tmp_path / "venv"
    run([PYTHON, "-m", "venv", str(venv)], os.environ, tmp_path)
    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ALUMI_", "DAGSTER_", "PYTHON", "VIRTUAL_ENV"))
    }
    image_env = {
        key: str(root / value.lstrip("/")) if value.startswith("/") else value
        for key, value in env_of(instructions).items()
    }
    env = {**base_env, **build_args, **image_env, "PATH": f"{venv / 'bin'}{os.pathsep}{base_env['PATH']}"}
    allowed = dockerignore_filter(DEPLOY / f"{name}.dockerignore")
    workdir = root
    replayed, skipped = [], []
    for word, rest in instructions:
        if word == "WORKDIR":
            workdir = root / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            copy_instruction(rest, workdir, allowed)
        elif word == "RUN" and re.match(r"(pip|python)\b", rest):
            if name in SKIPPED_WITH_BUILD_ARGS and SKIPPED_WITH_BUILD_ARGS[name] in rest and BUILD_ARGS[name]:
                skipped.append(rest)
                continue
            run(["bash", "-euo", "pipefail", "-c", rest], env, workdir)
            replayed.append(rest)
    assert any("./edge_export" in line for line in replayed) and len(skipped) <= 1
    assert not (workdir / "tests").exists() and (workdir / "edge_export" / "pyproject.toml").is_file()

    # outside the checkout: only what the image holds
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "check"], env, tmp_path)
    modules = sorted(code_location_modules())
    assert {"alumi_edge", "dagster_k8s", "dagster_azure", "ultralytics"} <= set(modules)
    imports = "import importlib, json; " + "; ".join(f"importlib.import_module({m!r})" for m in modules)
    located = run(
        [python, "-c", imports + "; import alumi_pipelines, alumi_edge; print(alumi_pipelines.__file__)"], env, tmp_path
    )
    assert located.stdout.strip() == str(workdir / "alumi_pipelines" / "__init__.py")
    assert "dagster-mlflow" not in run([python, "-m", "pip", "list"], env, tmp_path).stdout

    home = tmp_path / "alumi"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(workdir / "dagster.yaml", home / "dagster" / "dagster.yaml")
    job_env = {**env, "ALUMI_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "ALUMI_PROFILE": "ci"}
    bin_dir = venv / "bin"
    run(
        [bin_dir / "alumi", "demo-data", "--images", "24", "--days", "2", "--start", "2026-11-01", "--size", "256"],
        job_env,
        tmp_path,
    )
    tags = run([bin_dir / "alumi", "batches", "--tags"], job_env, tmp_path).stdout.strip()
    out = run(
        [bin_dir / "dagster", "job", "execute", "-m", "alumi_pipelines.definitions", "-j", "end_to_end_job"]
        + ["--tags", tags],
        job_env,
        tmp_path,
    )
    log = out.stdout + out.stderr
    assert "RUN_SUCCESS" in log and "STEP_FAILURE" not in log
    assert (home / "lake" / "releases" / "channels" / "stable.json").is_file()  # export + release ran (alumi_edge)
    shutil.rmtree(venv, ignore_errors=True)  # several GB
