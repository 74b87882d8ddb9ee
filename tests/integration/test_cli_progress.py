"""Long `alumi` commands report progress on stderr: plain lines when stderr is not a terminal."""

import re

from cli_helpers import BIN, CR7, run


def _progress(stderr: str, label: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{label}: ")]


def test_import_prints_plain_progress_lines_on_stderr(cli_env, cr7_dir):
    files = sum(1 for p in CR7.rglob("*") if p.is_file())
    proc = run(
        [BIN / "alumi", "import", CR7, "--format", "yolo", "--batch", "cr7-every"],
        {**cli_env, "ALUMI_PROGRESS_SECONDS": "0"},
    )
    lines = _progress(proc.stderr, "import cr7-every")
    total = f"{files:,}"
    assert len(lines) == files + 1  # one line per file (interval 0), then the final one
    for n, line in enumerate(lines[:-1], start=1):
        assert re.fullmatch(
            rf"import cr7-every: {n:,}/{total} files \({100 * n // files} %\), [\d,.]+ files/s, [\d.]+ [KMG]?B/s, "
            r"(\d+ h )?(\d+ min )?\d+ s left",
            line,
        ), line
    assert re.fullmatch(
        rf"import cr7-every: {total}/{total} files \(100 %\), [\d,.]+ files/s, [\d.]+ MB/s, done in \d+ s", lines[-1]
    )
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr  # no tqdm bar when stderr is a pipe
    assert proc.stdout.startswith(f"cr7-every: copied {files} files into landing")

    # the default interval: a copy this short says only where it ended
    proc = run([BIN / "alumi", "import", CR7, "--format", "yolo", "--batch", "cr7-once"], cli_env)
    assert [line.split(", ")[0] for line in _progress(proc.stderr, "import cr7-once")] == [
        f"import cr7-once: {total}/{total} files (100 %)"
    ]


def test_demo_data_counts_the_images_it_writes(cli_env):
    proc = run(
        [BIN / "alumi", "demo-data", "--images", "3", "--days", "2", "--size", "96", "--start", "2026-11-01"],
        {**cli_env, "ALUMI_PROGRESS_SECONDS": "0"},
    )
    lines = _progress(proc.stderr, "demo-data")
    assert [line.split(", ")[0] for line in lines] == [
        f"demo-data: {n}/6 images ({100 * n // 6} %)" for n in range(1, 7)
    ] + ["demo-data: 6/6 images (100 %)"]
    assert lines[-1].rsplit(", ", 1)[1].startswith("done in ")
