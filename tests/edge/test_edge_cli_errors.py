"""Every documented failure of `alumi-edge` is one line on stderr, `alumi-edge <command>: <cause>: <fix>`, with the
exit code the README's table gives it; driven through `python -m alumi_edge` as a device runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from edge_support import EDGE_SRC, auth_header

from alumi_edge import __version__
from alumi_edge.cli import build_parser


def edge(*args, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ALUMI_EDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "alumi_edge", *map(str, args)],
        env={**clean, "PYTHONPATH": str(EDGE_SRC), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_failure(proc: subprocess.CompletedProcess, code: int, start: str) -> str:
    """The exit code, and the last stderr line: the one error line, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("alumi-edge")]
    assert len(errors) == 1, proc.stderr
    assert errors[0] == proc.stderr.strip().splitlines()[-1]
    assert errors[0].startswith(start), errors[0]
    return errors[0]


def test_nothing_to_do_exits_1(tmp_path):
    home = tmp_path / "device"
    line = assert_failure(edge("info", "--home", home), 1, f"alumi-edge info: no release installed in {home}: ")
    assert line.endswith("run alumi-edge pull --source ... --pubkey ... --home ... first")
    assert_failure(
        edge("rollback", "--home", home), 1, f"alumi-edge rollback: nothing to roll back to: {home}: no previous"
    )
    line = assert_failure(edge("verify", "--home", home), 1, f"alumi-edge verify: nothing to verify: {home}: ")
    assert line.endswith(": pull a release first, or name an installed --version")


@pytest.mark.parametrize(
    ("args", "env", "start"),
    [
        (["pull"], {}, "alumi-edge pull: no release source: give --source"),
        (["pull", "--source", "{tmp}"], {}, "alumi-edge pull: no pinned public key: give --pubkey"),
        (
            ["pull", "--source", "{tmp}", "--pubkey", "{tmp}/nope.pub"],
            {},
            "alumi-edge pull: public key file {tmp}/nope.pub does not exist: give the path of the release's .pub",
        ),
        (["pull", "--bogus"], {}, "alumi-edge pull: unrecognized arguments: --bogus: see alumi-edge pull --help"),
        (["pull", "--keep", "many"], {}, "alumi-edge pull: argument --keep: invalid int value: 'many': see alumi-edge"),
        (["launch"], {}, "alumi-edge: argument COMMAND: invalid choice: 'launch'"),
        (
            ["serve", "--home", "{tmp}"],
            {"ALUMI_EDGE_PORT": "abc"},
            "alumi-edge serve: ALUMI_EDGE_PORT='abc': Input should be a valid integer",
        ),
        (
            ["serve", "--home", "{tmp}"],
            {"ALUMI_EDGE_AUTH": "hs256"},
            "alumi-edge serve: ALUMI_EDGE_JWT_SECRET must hold at least 32 bytes",
        ),
        (
            ["serve", "--home", "{tmp}", "--model", "{tmp}/model.onnx"],
            {"ALUMI_EDGE_AUTH": "none"},
            "alumi-edge serve: --model {tmp}/model.onnx does not exist: give an ONNX file",
        ),
        (["sync", "--home", "{tmp}"], {}, "alumi-edge sync: no sync target: give --target"),
        (
            ["sync", "--home", "{tmp}", "--target", "ftp://lake/x"],
            {},
            "alumi-edge sync: sync target 'ftp://lake/x': expected a folder, file:// URI or http(s):// URL: give",
        ),
    ],
)
def test_usage_errors_exit_2(tmp_path, args, env, start):
    fill = {"tmp": tmp_path}
    proc = edge(*(a.format(**fill) for a in args), **env)
    assert_failure(proc, 2, start.format(**fill))
    assert "usage:" not in proc.stderr  # one line, not argparse's usage block


def test_a_refused_release_exits_3_and_keeps_nothing(tmp_path, release_store):
    from alumi_pipelines.lib.export.release import load_or_create_signing_key

    release_store.publish("1.0.0")
    load_or_create_signing_key(tmp_path / "other.key")  # a key the release was not signed with
    home = tmp_path / "device"
    proc = edge("pull", "--source", release_store.root, "--pubkey", tmp_path / "other.key.pub", "--home", home)
    line = assert_failure(proc, 3, "alumi-edge pull: release refused, current version unchanged: ")
    assert line.endswith(
        ": check that --pubkey pins the key the release is signed with; else publish a fresh release "
        "(materialise edge_release) and pull again"
    )
    assert not (home / "current").exists()


def test_verify_of_a_changed_file_exits_3(edge_home, signing_keys):
    sample = edge_home / "current" / "sample.png"
    data = bytearray(sample.read_bytes())
    data[len(data) // 2] ^= 0x01
    sample.write_bytes(bytes(data))
    line = assert_failure(
        edge("verify", "--home", edge_home, "--pubkey", signing_keys[2]),
        3,
        "alumi-edge verify: verify failed: installed version 1.0.0 does not verify: sample.png: sha256",
    )
    assert line.endswith(": reinstall it: alumi-edge rollback, or pull after removing the version")


def test_an_unreachable_source_exits_4(tmp_path, signing_keys):
    line = assert_failure(
        edge("pull", "--source", tmp_path / "nowhere", "--pubkey", signing_keys[2], "--home", tmp_path / "device"),
        4,
        "alumi-edge pull: source unreachable, current version unchanged: ",
    )
    assert "channels/stable.json" in line
    assert line.endswith(": check --source (ALUMI_EDGE_SOURCE), the network and the SAS token, then pull again")


def test_a_server_that_cannot_listen_exits_4(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = edge("serve", "--home", tmp_path, "--port", port, ALUMI_EDGE_AUTH="none")
    line = assert_failure(proc, 4, f"alumi-edge serve: cannot listen on 127.0.0.1:{port}: Address already in use: ")
    assert line.endswith("stop what holds the port, or choose another with --port (ALUMI_EDGE_PORT) or --host")


def test_feedback_left_queued_exits_5(tmp_path, client):
    body = {"kind": "missed_defect", "image_sha256": "ab" * 32, "box": {"x1": 1, "y1": 2, "x2": 30, "y2": 40}}
    for i in range(2):
        answer = client.post(
            "/v1/feedback", json={**body, "class_name": "red", "author": f"op{i}"}, headers=auth_header()
        )
        assert answer.status_code == 201
    home = client.app.state.settings.home
    proc = edge("sync", "--home", home, "--target", tmp_path / "offline-lake", "--attempts", "1", "--backoff", "0")
    line = assert_failure(
        proc, 5, "alumi-edge sync: sync stopped, 2 records, 0 frames and 0 prediction logs stay queued"
    )
    assert line.endswith(": check --target (ALUMI_EDGE_SYNC_TARGET) and the network; the next sync sends them")
    assert json.loads(proc.stdout)["pending"] == 2  # the summary is printed either way


def test_an_unusable_device_folder_exits_6(tmp_path):
    (tmp_path / "disk").write_text("a file where the device folder should be")
    home = tmp_path / "disk" / "alumi-edge"
    line = assert_failure(
        edge("sync", "--home", home, "--target", tmp_path / "lake"),
        6,
        f"alumi-edge sync: device folder {home}: Not a directory: ",
    )
    assert line.endswith(": give a writable --home (ALUMI_EDGE_HOME) with free space")


def test_version_help_and_the_exit_code_table(tmp_path):
    proc = edge("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"alumi-edge {__version__}"
    help_text = edge("--help").stdout
    for code in range(7):
        assert f"\n    {code}  " in help_text
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in subparsers.items()
        for action in sub._actions
        if action.dest != "help" and not action.help
    ]
    assert missing == []
