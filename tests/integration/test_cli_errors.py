"""Every documented failure of `alumi` is one line on stderr naming the cause and the fix, with its exit code."""

import subprocess

import pytest
from cli_helpers import BIN

from alumi_pipelines.cli import build_parser


def alumi(args, env, **extra_env):
    proc = subprocess.run(
        [str(BIN / "alumi"), *map(str, args)], env={**env, **extra_env}, capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    ("args", "extra_env", "code", "message"),
    [
        (["promote", "7"], {}, 3, "alumi promote: model 'alumi-detector' has no version '7': list the versions"),
        (["rollback"], {}, 3, "alumi rollback: model 'alumi-detector' has no 'previous' version to roll back to"),
        (["batches"], {"ALUMI_IMAGE_SIZE": "abc"}, 2, "alumi batches: ALUMI_IMAGE_SIZE='abc': must be an integer; fix"),
        (["batches"], {"ALUMI_PROFILE": "fast"}, 2, "alumi batches: ALUMI_PROFILE='fast' is not one of ci, cpu, gpu"),
        (
            ["batches"],
            {"ALUMI_LAKE_URI": "abfs://C_x@acct.dfs.core.windows.net/lake", "ALUMI_AZURE_ACCOUNT_KEY": "Zm9v"},
            4,
            "alumi batches: lake URI 'abfs://C_x@acct.dfs.core.windows.net/lake': container 'C_x' is not a valid name",
        ),
        (["import", "/nonexistent/data", "--format", "yolo"], {}, 2, "is neither a folder nor a .zip archive: give"),
        (["batches", "--tags"], {}, 1, "alumi batches: no complete landing batch; run `alumi demo-data`"),
        (["export-labels", "--format", "coco", "--out", "x"], {}, 2, "alumi export-labels: no gold dataset yet"),
        (["import", "x", "--format", "pascal"], {}, 2, "argument --format: invalid choice: 'pascal'"),
    ],
)
def test_documented_failures_are_one_line_with_their_exit_code(cli_env, args, extra_env, code, message):
    returncode, _, stderr = alumi(args, cli_env, **extra_env)
    assert returncode == code, stderr
    assert message in stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("alumi")]
    assert len(lines) == 1 or "usage:" in stderr


def test_version_and_help_on_every_option(cli_env):
    returncode, stdout, _ = alumi(["--version"], cli_env)
    assert returncode == 0 and stdout.startswith("alumi ") and stdout.split()[1][0].isdigit()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in subparsers.items()
        for action in sub._actions
        if action.dest != "help" and not action.help
    ]
    assert missing == []
