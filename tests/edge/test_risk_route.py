"""POST /v1/risk through TestClient: the release's risk model scores a sensor window exactly like the pipeline."""

from __future__ import annotations

import datetime as dt
import json
import math
import sys

import numpy as np
import polars as pl
import pytest
from edge_support import COLOR_NAMES, auth_header, color_image, edge_settings, encode, expected_for, make_color_onnx
from fastapi.testclient import TestClient

NOW = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(RiskModel, its published JSON bytes, clean samples of unseen parts) from a small simulated plant."""
    from alumi_pipelines.lib.plant.dataset import join_outcomes, time_split
    from alumi_pipelines.lib.plant.features import part_features
    from alumi_pipelines.lib.plant.risk_model import train_risk_model
    from alumi_pipelines.lib.plant.samples import normalise_files
    from alumi_pipelines.lib.plant.sim import simulate_days

    plant = simulate_days(dt.date(2026, 3, 2), 4, 60, seed=8)
    clean = normalise_files(plant.historian_files(), known_parts=plant.known_parts, now=NOW).clean
    dataset, _ = join_outcomes(part_features(clean), plant.outcomes)
    model = train_risk_model(dataset, time_split(dataset), {"num_boost_round": 60})
    document = json.loads(model.to_json_bytes())
    document["info"]["registry"] = {"model_name": "alumi-defect-risk", "version": "7"}  # as publish_risk_champion adds
    unseen = simulate_days(dt.date(2026, 4, 1), 1, 9, seed=21)
    unseen_clean = normalise_files(unseen.historian_files(), known_parts=unseen.known_parts, now=NOW).clean
    return model, json.dumps(document).encode(), unseen_clean


def publish_with_risk(release_store, version: str, risk_bytes: bytes | None) -> None:
    """A signed release with the colour detector and (optionally) a risk_model file."""
    from alumi_pipelines.lib.export.release import ReleaseInput, publish_release, write_release
    from alumi_pipelines.resources import lake_keys

    staging = release_store.work / f"risk-staging-{version}"
    staging.mkdir(parents=True)
    model = make_color_onnx(staging / "model.onnx", model_version=version)
    sample = color_image(128, 128, squares=(("red", 32, 32, 32),))
    (staging / "sample.png").write_bytes(encode(sample))
    (staging / "sample_expected.json").write_text(json.dumps(expected_for(model, sample)))
    files = [
        ReleaseInput(model, "model.onnx", "model"),
        ReleaseInput(staging / "sample.png", "sample.png", "sample_image"),
        ReleaseInput(staging / "sample_expected.json", "sample_expected.json", "sample_expected"),
    ]
    if risk_bytes is not None:
        (staging / "risk_model.json").write_bytes(risk_bytes)
        files.append(ReleaseInput(staging / "risk_model.json", "risk_model.json", "risk_model"))
    built = release_store.work / "risk-built" / version
    write_release(
        built,
        files,
        version=version,
        classes=list(COLOR_NAMES),
        imgsz=64,
        private_key_pem=release_store.private_pem,
        metrics={},
        source={},
    )

    def write(key: str, data: bytes) -> None:
        target = release_store.root / key.removeprefix("releases/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    publish_release(
        built,
        write,
        file_key=lake_keys.release_file_key,
        channel_key=lake_keys.channel_key,
        private_key_pem=release_store.private_pem,
    )


@pytest.fixture
def risk_client(tmp_path, release_store, signing_keys, trained):
    """TestClient on a device that pulled release 2.0.0, which carries the risk model."""
    from alumi_edge.main import create_app
    from alumi_edge.pull import pull
    from alumi_edge.routers.risk import create_risk_router

    publish_with_risk(release_store, "2.0.0", trained[1])
    home = tmp_path / "device"
    pull(str(release_store.root), home, signing_keys[1])
    with TestClient(create_app(edge_settings(home), extra_routers=[create_risk_router()])) as client:
        yield client


def _windows(clean: pl.DataFrame, n_parts: int = 6):
    """(part_id, alloy, columns) of the first parts: canonical signals with None for dropouts, UTC timestamps."""
    from alumi_pipelines.lib.plant.samples import SIGNALS

    for part_id in clean["part_id"].unique(maintain_order=True).to_list()[:n_parts]:
        rows = clean.filter(pl.col("part_id") == part_id)
        yield part_id, rows["alloy"][0], rows.select("timestamp", *SIGNALS)


def _body(part_id: str, alloy: str, window: pl.DataFrame, timestamps: str = "iso") -> dict:
    from alumi_pipelines.lib.plant.samples import SIGNALS

    body = {"part_id": part_id, "alloy": alloy, "signals": {s: window[s].to_list() for s in SIGNALS}}
    if timestamps == "iso":
        body["timestamps"] = window["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S%.f+00:00").to_list()
    elif timestamps == "epoch":
        body["timestamps"] = (window["timestamp"].dt.epoch("us") / 1e6).to_list()
    return body


@pytest.mark.parametrize("timestamps", ["iso", "epoch", "none"])
def test_route_returns_the_same_risk_as_risk_for_window(risk_client, trained, timestamps):
    from alumi_pipelines.lib.plant.risk_model import risk_for_window

    model, _, clean = trained
    seen = 0
    for part_id, alloy, window in _windows(clean):
        response = risk_client.post("/v1/risk", json=_body(part_id, alloy, window, timestamps), headers=auth_header())
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["part_id"] == part_id and body["model_version"] == "7" and body["release"] == "2.0.0"
        assert body["samples"] == window.height
        columns = {"alloy": alloy, **{c: window[c].to_numpy() for c in window.columns if c != "timestamp"}}
        if timestamps != "none":
            columns["timestamp"] = window["timestamp"].to_numpy()
        expected = risk_for_window(model, columns)
        assert body["risk"].keys() == expected.keys() == {"scratch", "dent", "pit", "crack", "stain"}
        for t, p in expected.items():
            assert body["risk"][t] == pytest.approx(p, rel=1e-9, abs=1e-12)
            assert 0.0 < body["risk"][t] < 1.0
        seen += 1
    assert seen == 6


def test_window_features_match_the_pipeline_definition():
    from alumi_edge.risk import window_features
    from alumi_pipelines.lib.plant.features import window_features_numpy
    from alumi_pipelines.lib.plant.samples import LIMITS, SIGNALS

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 240):
        signals = {s: rng.normal(sum(LIMITS[s]) / 2, (LIMITS[s][1] - LIMITS[s][0]) / 3, n) for s in SIGNALS}
        signals["melt_temp_c"][: n // 2] = np.nan  # a dropout burst
        signals["mould_level_mm"][:] = np.nan  # a sensor down for the whole window
        seconds = np.sort(rng.choice(10_000, n, replace=False)).astype(float)[rng.permutation(n)]
        ours = window_features(
            {s: [None if math.isnan(v) else v for v in signals[s]] for s in SIGNALS}, SIGNALS, LIMITS, seconds.tolist()
        )
        theirs = window_features_numpy({**signals, "timestamp": seconds})
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert (math.isnan(ours[key]) and math.isnan(theirs[key])) or ours[key] == theirs[key], key


@pytest.mark.parametrize(
    "change, status, error, detail",
    [
        (lambda b: b["signals"].pop("rolling_force_kn"), 422, "invalid_window", "missing 'rolling_force_kn'"),
        (lambda b: b["signals"].update(rolling_force_t=[1.0] * 5), 422, "invalid_window", "unknown 'rolling_force_t'"),
        (lambda b: b["signals"]["melt_temp_c"].pop(), 422, "invalid_window", "melt_temp_c has 4"),
        (lambda b: b.update(alloy="7075"), 422, "invalid_window", "alloy: '7075' is not one the model was trained on"),
        (lambda b: b.update(timestamps=["2026-03-02T10:00:00"] * 5), 422, "invalid_window", "has no UTC offset"),
        (
            lambda b: b.update(timestamps=["2026-03-02T10:00:00Z"] * 4),
            422,
            "invalid_window",
            "timestamps: 4 values, expected 5",
        ),
        (
            lambda b: b["signals"].update(melt_temp_c=[]) or [b["signals"].__setitem__(s, []) for s in b["signals"]],
            422,
            "invalid_window",
            "holds no samples",
        ),
        (
            lambda b: b["signals"]["strip_speed_m_min"].__setitem__(0, "Bad"),
            422,
            "invalid_request",
            "signals.strip_speed_m_min",
        ),
        (lambda b: b.pop("part_id"), 422, "invalid_request", "part_id"),
    ],
)
def test_bad_windows_get_json_errors_naming_the_field(risk_client, change, status, error, detail):
    from alumi_pipelines.lib.plant.samples import LIMITS, SIGNALS

    body = {
        "part_id": "L1-20260401-0001",
        "alloy": "6063",
        "signals": {s: [sum(LIMITS[s]) / 2] * 5 for s in SIGNALS},
        "timestamps": [f"2026-04-01T10:00:0{i}Z" for i in range(5)],
    }
    ok = risk_client.post("/v1/risk", json=body, headers=auth_header())
    assert ok.status_code == 200, ok.text
    change(body)
    response = risk_client.post("/v1/risk", json=body, headers=auth_header())
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert detail in json.dumps(response.json()["detail"])


def test_risk_needs_a_token(risk_client):
    response = risk_client.post("/v1/risk", json={"part_id": "p", "alloy": "6063", "signals": {}})
    assert response.status_code == 401 and response.json()["error"] == "token_missing"


def test_release_without_a_risk_model_answers_503(edge_home):
    from alumi_edge.main import create_app
    from alumi_edge.routers.risk import create_risk_router

    with TestClient(create_app(edge_settings(edge_home), extra_routers=[create_risk_router()])) as client:
        body = {"part_id": "p", "alloy": "6063", "signals": {"melt_temp_c": [720.0]}}
        response = client.post("/v1/risk", json=body, headers=auth_header())
        assert response.status_code == 503
        assert response.json() == {
            "error": "risk_model_not_loaded",
            "detail": "release 1.0.0 has no file with role 'risk_model'",
        }
        assert client.get("/readyz").status_code == 200  # detection keeps serving


def test_without_xgboost_the_route_answers_501_with_the_install_hint(tmp_path, trained, monkeypatch):
    from alumi_edge.main import create_app
    from alumi_edge.routers.risk import create_risk_router
    from alumi_pipelines.lib.plant.samples import SIGNALS

    model_file = tmp_path / "risk_model.json"
    model_file.write_bytes(trained[1])
    monkeypatch.setitem(sys.modules, "xgboost", None)  # `import xgboost` now raises ImportError
    app = create_app(edge_settings(tmp_path / "device"), extra_routers=[create_risk_router(model_file)])
    with TestClient(app) as client:
        body = {"part_id": "p", "alloy": "6063", "signals": {s: [1.0, 2.0] for s in SIGNALS}}
        response = client.post("/v1/risk", json=body, headers=auth_header())
    assert response.status_code == 501
    assert response.json()["error"] == "risk_unavailable"
    assert "pip install 'alumi-edge[risk]'" in response.json()["detail"]


def test_a_corrupted_risk_file_is_refused_not_scored(risk_client, tmp_path):
    from alumi_edge.device_home import DeviceHome

    home = DeviceHome(risk_client.app.state.settings.home)
    path = home.version_dir("2.0.0") / "risk_model.json"
    path.write_bytes(path.read_bytes().replace(b'"alloys"', b'"alloyz"'))
    response = risk_client.post(
        "/v1/risk", json={"part_id": "p", "alloy": "6063", "signals": {}}, headers=auth_header()
    )
    assert response.status_code == 503 and response.json()["error"] == "risk_model_not_loaded"
    assert "sha256" in response.json()["detail"] and "differs from the manifest" in response.json()["detail"]
