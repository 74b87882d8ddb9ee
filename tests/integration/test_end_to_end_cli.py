"""end_to_end_job through `dagster job execute` on the ci profile, then an edge device pulls what it released."""

import json
from pathlib import Path

from cli_helpers import BIN, REPO, run


def test_end_to_end_job_releases_a_model_that_a_device_pulls(cli_env, tmp_path):
    # the README's first quick-start command, on a small dataset
    env = {**cli_env, "DEMO_IMAGES": "24", "DEMO_DAYS": "2", "DEMO_SIZE": "256"}
    out = run(["bash", REPO / "scripts" / "demo"], env, cwd=tmp_path)
    log = out.stdout + out.stderr
    assert "RUN_SUCCESS" in log and "STEP_FAILURE" not in log
    for check in ("labels_valid", "no_split_leakage", "promotion_gate", "onnx_parity", "int8_accuracy"):
        assert f"Asset check '{check}'" in log and "passed" in log
    home = Path(cli_env["ALUMI_HOME"])
    lake = home / "lake"
    stable = json.loads((lake / "releases" / "channels" / "stable.json").read_text())
    manifest = json.loads((lake / "releases" / stable["manifest"]).read_text())
    roles = {f["role"] for f in manifest["files"]}
    assert {"model", "model_int8", "wheel", "sample_image", "sample_expected", "build_plan"} <= roles
    champion = json.loads((lake / "models" / "champion.json").read_text())
    assert manifest["source"]["model_version"] == champion["version"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()  # nothing in the cwd

    # the self-test has something to compare: the raw top scores of both models (this two-epoch model may find no
    # box at all on the test images), informative ones
    sample_doc = next(f["path"] for f in manifest["files"] if f["role"] == "sample_expected")
    expected = json.loads((lake / "releases" / stable["version"] / sample_doc).read_text())
    for raw in (expected["raw"], expected["roles"]["model_int8"]["raw"]):
        assert len(raw["top_scores"]) == 16 and max(raw["top_scores"]) >= 1e-6

    device = tmp_path / "device"
    pubkey = home / "keys" / "release-dev.key.pub"
    pulled = run(
        [
            BIN / "alumi-edge",
            "pull",
            "--source",
            str(lake / "releases"),
            "--pubkey",
            str(pubkey),
            "--home",
            str(device),
        ],
        cli_env,
    )
    assert "32 raw scores within tolerance" in pulled.stderr
    info = json.loads(run([BIN / "alumi-edge", "info", "--json", "--home", str(device)], cli_env).stdout)
    assert stable["version"] in json.dumps(info)
