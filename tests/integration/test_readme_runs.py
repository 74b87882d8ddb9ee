"""The README's shell commands run as written: the quick start, and importing your own dataset (on the real sample),
in a fresh ALUMI_HOME. Only the lines that cannot run inside the suite are left out, and they must still be there."""

import re
import subprocess

from cli_helpers import REPO

NOT_HERE = {
    "./scripts/test": "the test suite itself",
    "dagster dev": "a server that runs until stopped (tests/e2e drives the UI)",
}


def shell_blocks(section: str) -> list[str]:
    """The fenced bash blocks of a '## ' section of the README (up to its first subsection), continuation lines
    joined."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {section}\n")
    following = re.search(r"\n#{2,3} ", text[start + 1 :])
    body = text[start : start + 1 + following.start() if following else None]
    blocks = re.findall(r"```bash\n(.*?)```", body, flags=re.S)
    return [b.replace("\\\n", " ") for b in blocks]


def commands(section: str) -> tuple[list[str], list[str]]:
    """(commands to run, commands left out) of a section, in README order."""
    run, skipped = [], []
    for block in shell_blocks(section):
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            (skipped if any(k in line for k in NOT_HERE) else run).append(line)
    return run, skipped


def run_script(lines: list[str], env: dict, timeout: int = 1500) -> str:
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"README commands failed ({proc.returncode}):\n{script}\n{output[-6000:]}"
    return output


def test_quick_start_runs_as_written(cli_env):
    lines, skipped = commands("Quick start")
    assert [s.split("#")[0].strip() for s in skipped] == ["./scripts/test", "source scripts/env.sh && dagster dev"]
    assert lines[0].startswith("./scripts/demo")
    env = {**cli_env, "DEMO_IMAGES": "16", "DEMO_DAYS": "2", "DEMO_SIZE": "256"}
    output = run_script(lines, env)
    assert output.count("RUN_SUCCESS") >= 3  # the demo's end_to_end_job, then the CI block's two jobs
    assert "STEP_FAILURE" not in output


def test_importing_your_own_dataset_runs_as_written(cli_env, cr7_dir):
    lines, skipped = commands("Importing your own dataset")
    assert skipped == [] and any(line.startswith("alumi import path/to/dataset") for line in lines)
    env = {k: v for k, v in cli_env.items() if k != "ALUMI_CLASSES"}
    output = run_script([line.replace("path/to/dataset", str(cr7_dir)) for line in lines], env)
    assert "the lake's class map is now inclusions, dents, oil_spots, pits, punching, linear, macular" in output
    assert "Asset check 'splits_cover_classes' on 'gold_dataset' passed" in output
    assert "Asset check 'promotion_gate' on 'detector_evaluation' passed" in output
    assert output.count("RUN_SUCCESS") == 3 and "STEP_FAILURE" not in output
