"""The Dagster UI as a data engineer uses it: asset groups, launching ingestion, reading metadata.

Starts `dagster dev` on loopback with a fresh DAGSTER_HOME and drives Debian's headless Chromium with
Playwright (no browser download). Screenshots go to the test's tmp folder (printed on failure) and, when
ALUMI_SCREENSHOTS is set, to that folder.
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ui_server import BIN, DagsterDev, instance_env

pytestmark = pytest.mark.browser


def _shot(page, folder: Path, name: str):
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    extra = os.environ.get("ALUMI_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / f"{name}.png", Path(extra) / f"{name}.png")


def _dismiss_welcome(page):
    try:
        page.get_by_role("button", name="Skip").click(timeout=8000)
    except Exception:  # the community dialog only shows once per browser profile
        pass


def test_asset_groups_launch_ingestion_and_read_metadata(tmp_path, browser):
    env = instance_env(tmp_path)
    subprocess.run(
        [str(BIN / "alumi"), "demo-data", "--images", "6", "--days", "1", "--size", "192", "--start", "2026-11-01"],
        env=env,
        check=True,
        capture_output=True,
    )
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with DagsterDev(env, tmp_path / "dagster-dev.log") as dev:
        page = browser.new_page(viewport={"width": 1400, "height": 900})

        # the asset graph, grouped by lake zone
        page.goto(f"{dev.url}/asset-groups", wait_until="networkidle")
        _dismiss_welcome(page)
        for group in (
            "raw",
            "processed",
            "corrections",
            "gold",
            "training",
            "export",
            "release",
            "drift",
            "predictions",
            "plant_raw",
            "plant_features",
            "plant_risk",
            "plant_drift",
        ):
            page.get_by_text(group, exact=True).first.wait_for(timeout=30000)
        _shot(page, shots, "1-asset-groups")
        page.set_viewport_size({"width": 1400, "height": 2400})  # the catalog renders only the rows in view
        page.goto(f"{dev.url}/assets", wait_until="networkidle")
        for asset in ("raw_images", "raw_labels", "processed_images", "processed_labels", "gold_dataset"):
            page.get_by_text(asset, exact=True).first.wait_for(timeout=30000)
        _shot(page, shots, "2-catalog")
        page.set_viewport_size({"width": 1400, "height": 900})

        # launch the ingestion job for every landing batch from the job page
        page.goto(f"{dev.url}/locations/alumi_pipelines.definitions/jobs/ingestion_job", wait_until="networkidle")
        _dismiss_welcome(page)
        page.get_by_role("button", name="Materialize all").first.click()
        page.get_by_role("button", name="All", exact=True).click()
        _shot(page, shots, "3-launch-dialog")
        page.get_by_role("button", name=re.compile(r"^Launch (1 run|backfill)")).click()

        # wait for the run to succeed (the daemon runs the backfill)
        from dagster import DagsterInstance, DagsterRunStatus

        os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
        deadline = time.time() + 300
        status = None
        with DagsterInstance.get() as instance:
            while time.time() < deadline:
                runs = instance.get_runs()
                status = runs[0].status if runs else None
                if status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
                    break
                time.sleep(2)
        assert status == DagsterRunStatus.SUCCESS, (tmp_path / "dagster-dev.log").read_text()[-3000:]
        page.goto(f"{dev.url}/runs", wait_until="networkidle")
        page.get_by_text("Success").first.wait_for(timeout=30000)
        _shot(page, shots, "4-runs")

        # the asset's metadata: counts and the class histogram
        page.goto(f"{dev.url}/assets/raw_images", wait_until="networkidle")
        page.get_by_text("unique_images").first.wait_for(timeout=30000)
        page.get_by_text("quarantined").first.wait_for()
        _shot(page, shots, "5-raw-images-metadata")
        page.goto(f"{dev.url}/assets/processed_labels", wait_until="networkidle")
        page.get_by_text("class_histogram").first.wait_for(timeout=30000)
        _shot(page, shots, "6-processed-labels-metadata")
        page.get_by_role("tab", name="Checks").click()
        page.get_by_text("labels_valid").first.wait_for(timeout=30000)
        _shot(page, shots, "7-processed-labels-checks")
    assert len(list(shots.glob("*.png"))) == 7
