"""The notebooks, executed top to bottom on a small synthetic lake (outputs are not kept in git)."""

import datetime as dt
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def notebook_home(tmp_path, monkeypatch):
    """ALUMI_HOME with ingested synthetic data and a gold dataset; DAGSTER_HOME with the repo's instance config."""
    home = tmp_path / "alumi"
    (home / "dagster").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster" / "dagster.yaml")
    monkeypatch.setenv("ALUMI_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("ALUMI_PROFILE", "ci")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return home


def _vision_data(home: Path) -> None:
    from alumi_pipelines.lib.vision.synth import write_landing_batch
    from alumi_pipelines.assets.gold import build_gold
    from alumi_pipelines.assets.processed import process_batch
    from alumi_pipelines.assets.raw import ingest_landing_batch, write_landing_file
    from alumi_pipelines.resources.lake import Lake
    from alumi_pipelines.resources.pipeline_settings import PipelineSettings
    from alumi_pipelines.settings import Settings

    lake = Lake(base_uri=str(home / "lake"))
    settings = PipelineSettings.from_settings(Settings.from_env())
    write_landing_batch(lambda k, d: write_landing_file(lake, "day-1", k, d), "day-1", 48,
                        day=dt.date(2026, 11, 1), seed=3, size=256)
    ingest_landing_batch(lake, "day-1", settings)
    process_batch(lake, "day-1", settings)
    build_gold(lake, settings)


def _run(path: Path, cwd: Path) -> nbformat.NotebookNode:
    book = nbformat.read(path, as_version=4)
    NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return book


def _outputs(book) -> str:
    return "\n".join(
        out.get("text", "") + json.dumps(out.get("data", {}).get("text/plain", ""))
        for cell in book.cells if cell.cell_type == "code" for out in cell.outputs
    )


def test_notebooks_are_committed_without_outputs():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        book = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in book.cells if c.cell_type == "code"), f"{path.name} has outputs"


def test_defect_detection_notebook(notebook_home, tmp_path):
    _vision_data(notebook_home)
    book = _run(REPO / "notebooks" / "defect_detection.ipynb", tmp_path)
    text = _outputs(book)
    assert "success: True" in text and "promotion gate passed: True" in text and "export success: True" in text
    images = [o for c in book.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # class balance, labelled samples, detections
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_plant_risk_notebook(notebook_home, tmp_path):
    from alumi_pipelines.assets.plant.sensor_raw import write_plant_demo
    from alumi_pipelines.resources.lake import Lake

    today = dt.datetime.now(dt.timezone.utc).date()
    write_plant_demo(Lake(base_uri=str(notebook_home / "lake")), today - dt.timedelta(days=7), 6, 90, seed=0)
    book = _run(REPO / "notebooks" / "plant_risk.ipynb", tmp_path)
    text = _outputs(book)
    assert "6 days landed" in text and "success: True" in text and "margins over baselines" in text
    images = [o for c in book.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1
