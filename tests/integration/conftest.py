import os
import shutil

import pytest
from cli_helpers import BIN, REPO


@pytest.fixture
def cli_env(tmp_path):
    """Environment for CLI runs: a fresh ALUMI_HOME and DAGSTER_HOME (with the repo's dagster.yaml)."""
    home = tmp_path / "alumi"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    return {
        **os.environ,
        "ALUMI_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ALUMI_PROFILE": "ci",
    }
