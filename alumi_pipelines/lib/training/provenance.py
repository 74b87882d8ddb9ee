"""Where a run works and what code it ran: per-run scratch folders and the code version logged with a model."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def code_version() -> dict[str, Any]:
    """git commit (and whether the tree has local changes) when available, plus the package version."""
    from importlib import metadata

    try:
        package = metadata.version("alumi-pipelines")
    except metadata.PackageNotFoundError:
        package = "unknown"
    repo = Path(__file__).resolve().parents[3]
    commit, dirty = None, None
    if (repo / ".git").exists():
        try:
            commit = (
                subprocess.run(
                    ["git", "-C", str(repo), "rev-parse", "HEAD"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=True,
                ).stdout.strip()
                or None
            )
            status = subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            dirty = bool(status.strip())
        except (OSError, subprocess.SubprocessError):
            commit, dirty = None, None
    version = f"{commit[:12]}{'-dirty' if dirty else ''}" if commit else package
    return {"git_commit": commit or "unknown", "git_dirty": dirty, "package_version": package, "code_version": version}


@contextlib.contextmanager
def scratch_dir(root: Path, *parts: str, keep_on_error: bool = True) -> Iterator[Path]:
    """A fresh folder ``root/parts...``, removed when the block succeeds (kept for inspection on error)."""
    folder = Path(root).joinpath(*parts)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    try:
        yield folder
    except BaseException:
        if not keep_on_error:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
