"""The FastAPI app through TestClient: detections, bad input, auth, body limits, health, metrics, hot reload."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading

import pytest
from edge_support import JWT_SECRET, auth_header, color_image, edge_settings, encode, make_token
from fastapi.testclient import TestClient

from alumi_edge.main import create_app

RED_AT_32 = color_image(128, 128, squares=(("red", 32, 32, 32),))


def _assert_red_box(body: dict, version: str = "1.0.0"):
    assert body["model_version"] == version
    assert body["image"]["width"] == 128 and body["image"]["height"] == 128 and len(body["image"]["sha256"]) == 64
    assert [b["class_name"] for b in body["boxes"]] == ["red"]
    box = body["boxes"][0]
    assert box["class_id"] == 0 and box["confidence"] == pytest.approx(1.0, abs=1e-5)
    assert (box["x1"], box["y1"], box["x2"], box["y2"]) == pytest.approx((32, 32, 64, 64), abs=1e-3)
    assert set(body["timing_ms"]) >= {"decode", "preprocess", "inference", "postprocess", "total", "request"}


def test_detect_multipart_and_raw_body(client):
    png = encode(RED_AT_32)
    response = client.post("/v1/detect", files={"file": ("part.png", png, "image/png")}, headers=auth_header())
    assert response.status_code == 200, response.text
    _assert_red_box(response.json())
    raw = client.post(
        "/v1/detect", content=encode(RED_AT_32, ".jpg"), headers={**auth_header(), "Content-Type": "image/jpeg"}
    )
    assert raw.status_code == 200
    body = raw.json()
    assert [b["class_name"] for b in body["boxes"]] == ["red"]  # JPEG colours shift a little, the box does not
    assert (body["boxes"][0]["x1"], body["boxes"][0]["x2"]) == pytest.approx((32, 64), abs=1e-3)
    green_and_blue = color_image(128, 128, squares=(("green", 0, 0, 32), ("blue", 96, 96, 32)))
    body = client.post("/v1/detect?conf=0.5", content=encode(green_and_blue), headers=auth_header()).json()
    assert sorted(b["class_name"] for b in body["boxes"]) == ["blue", "green"]


@pytest.mark.parametrize(
    "kwargs, status, error",
    [
        ({"content": b"this is not an image", "headers": {"Content-Type": "image/png"}}, 415, "unsupported_media_type"),
        ({"content": encode(RED_AT_32)[:300], "headers": {"Content-Type": "image/png"}}, 400, "corrupt_image"),
        (
            {"content": encode(RED_AT_32, ".jpg")[:-200], "headers": {"Content-Type": "image/jpeg"}},
            400,
            "corrupt_image",
        ),
        ({"content": b"", "headers": {"Content-Type": "image/png"}}, 415, "unsupported_media_type"),
        ({"content": b'{"a": 1}', "headers": {"Content-Type": "application/json"}}, 415, "unsupported_media_type"),
        ({"files": {"file": ("notes.txt", b"plain text", "text/plain")}}, 415, "unsupported_media_type"),
        ({"data": {"comment": "no file"}, "files": {}}, 400, "no_file"),
    ],
)
def test_bad_images_get_json_errors_and_server_keeps_serving(client, kwargs, status, error):
    headers = {**auth_header(), **kwargs.pop("headers", {})}
    if kwargs.get("files") == {}:  # multipart body without any file part
        kwargs.pop("files")
        response = client.post("/v1/detect", headers=headers, files={"x": (None, "1")}, data=kwargs.pop("data"))
    else:
        response = client.post("/v1/detect", headers=headers, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and response.json()["detail"]
    ok = client.post("/v1/detect", content=encode(RED_AT_32), headers=auth_header())
    assert ok.status_code == 200


@pytest.mark.parametrize(
    "headers, code",
    [
        ({}, "token_missing"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "token_missing"),
        (auth_header(make_token(expires_in=-120)), "token_expired"),
        (auth_header(make_token(secret="f" * 48)), "token_invalid"),
        (auth_header("not.a.jwt"), "token_invalid"),
        (auth_header(make_token(secret=None, algorithm="none")), "token_invalid"),
    ],
)
def test_missing_expired_forged_tokens_get_401(client, headers, code):
    for method, path, kwargs in [
        ("post", "/v1/detect", {"content": encode(RED_AT_32)}),
        ("post", "/v1/feedback", {"json": {}}),
        ("post", "/admin/reload", {}),
        ("get", "/v1/model", {}),
    ]:
        response = getattr(client, method)(path, headers=headers, **kwargs)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"] == code
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/detect", content=encode(RED_AT_32), headers=auth_header()).status_code == 200


def test_a_verified_token_is_checked_once_and_still_expires(client, monkeypatch):
    from alumi_edge import auth

    verifier = client.app.state.verifier
    decoded = []
    real_decode = verifier._decode
    monkeypatch.setattr(verifier, "_decode", lambda token: decoded.append(token) or real_decode(token))
    token = make_token(expires_in=60)
    for _ in range(3):
        assert client.get("/v1/model", headers=auth_header(token)).status_code == 200
    assert decoded == [token]  # signature and claims checked on first use only
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert client.get("/v1/model", headers=auth_header(forged)).json()["error"] == "token_invalid"
    start = auth._now()
    monkeypatch.setattr(auth, "_now", lambda: start + 60 + auth.LEEWAY_S + 1)
    response = client.get("/v1/model", headers=auth_header(token))
    assert response.status_code == 401 and response.json()["error"] == "token_expired"
    assert token not in verifier._verified


def test_token_without_expiry_is_refused(client):
    import jwt

    token = jwt.encode({"sub": "x"}, JWT_SECRET, algorithm="HS256")
    response = client.get("/v1/model", headers=auth_header(token))
    assert response.status_code == 401 and "exp" in response.json()["detail"]


def test_oversized_bodies_get_413_by_header_and_while_streaming(client):
    big = b"\xff\xd8\xff" + b"0" * 250_000  # limit in these tests is 200 000 bytes
    response = client.post("/v1/detect", content=big, headers={**auth_header(), "Content-Type": "image/jpeg"})
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"

    def chunks():  # no Content-Length: chunked transfer, the limit is enforced while reading
        for _ in range(30):
            yield b"0" * 10_000

    response = client.post("/v1/detect", content=chunks(), headers={**auth_header(), "Content-Type": "image/jpeg"})
    assert response.status_code == 413 and "exceeds the limit of 200000 bytes" in response.json()["detail"]
    response = client.post("/v1/detect", files={"file": ("big.jpg", big, "image/jpeg")}, headers=auth_header())
    assert response.status_code == 413
    assert client.post("/v1/detect", content=encode(RED_AT_32), headers=auth_header()).status_code == 200


def test_health_readiness_model_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == "1.0.0"
    model = client.get("/v1/model", headers=auth_header()).json()
    assert model["model_version"] == "1.0.0" and model["classes"] == ["red", "green", "blue"]
    assert model["imgsz"] == [64, 64] and model["runtime"] == "onnxruntime-cpu"
    assert model["installed"] == {"current": "1.0.0", "previous": None}
    assert model["release"]["source"]["mlflow_run_id"] == "run-1.0.0"
    for _ in range(3):
        client.post("/v1/detect", content=encode(RED_AT_32), headers=auth_header())
    client.post("/v1/detect", content=b"nope", headers=auth_header())
    text = client.get("/metrics").text
    assert 'alumi_edge_detections_total{class_name="red"} 3.0' in text
    assert "alumi_edge_detect_latency_seconds_count 3.0" in text
    assert 'alumi_edge_model_info{runtime="onnxruntime-cpu",version="1.0.0"} 1.0' in text
    assert 'alumi_edge_rejected_requests_total{reason="not_an_image"} 1.0' in text
    assert "alumi_edge_feedback_pending 0.0" in text


def test_reload_swaps_model_without_dropping_requests(client, release_store, signing_keys, edge_home):
    from alumi_edge.pull import pull

    user = auth_header(make_token(scope="detect"))
    admin = auth_header(make_token(scope="detect admin"))
    assert client.post("/admin/reload", headers=user).status_code == 403
    unchanged = client.post("/admin/reload", headers=admin).json()
    assert unchanged == {"reloaded": False, "model_version": "1.0.0", "previous_version": "1.0.0"}

    release_store.publish("1.1.0")
    pull(str(release_store.root), edge_home, signing_keys[1])
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            r = client.post("/v1/detect", content=encode(RED_AT_32), headers=user)
            statuses.append((r.status_code, r.json().get("model_version")))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        outcome = client.post("/admin/reload", headers=admin)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert outcome.status_code == 200, outcome.text
    assert outcome.json()["reloaded"] is True and outcome.json()["model_version"] == "1.1.0"
    assert outcome.json()["previous_version"] == "1.0.0"
    assert statuses and all(code == 200 for code, _ in statuses)
    assert {v for _, v in statuses} <= {"1.0.0", "1.1.0"}
    _assert_red_box(client.post("/v1/detect", content=encode(RED_AT_32), headers=user).json(), version="1.1.0")
    assert 'version="1.1.0"' in client.get("/metrics").text and 'version="1.0.0"' not in client.get("/metrics").text


def test_server_without_model_is_alive_but_not_ready_until_reload(tmp_path, release_store, signing_keys):
    from alumi_edge.pull import pull

    home = tmp_path / "empty-device"
    with TestClient(create_app(edge_settings(home))) as client:
        assert client.get("/healthz").status_code == 200
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and "alumi-edge pull" in not_ready.json()["detail"]
        detect = client.post("/v1/detect", content=encode(RED_AT_32), headers=auth_header())
        assert detect.status_code == 503 and detect.json()["error"] == "model_not_loaded"
        admin = auth_header(make_token(roles=["admin"]))
        assert client.post("/admin/reload", headers=admin).status_code == 409
        release_store.publish("2.0.0")
        pull(str(release_store.root), home, signing_keys[1])
        assert client.post("/admin/reload", headers=admin).json()["model_version"] == "2.0.0"
        assert client.get("/readyz").status_code == 200
        _assert_red_box(client.post("/v1/detect", content=encode(RED_AT_32), headers=auth_header()).json(), "2.0.0")


def test_rs256_tokens_and_algorithm_confusion(edge_home):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    settings = edge_settings(
        edge_home, auth="rs256", jwt_secret=None, jwt_public_key=public_pem, jwt_audience="alumi-edge"
    )
    with TestClient(create_app(settings)) as client:
        good = make_token(secret=private_pem, algorithm="RS256", aud="alumi-edge")
        assert client.get("/v1/model", headers=auth_header(good)).status_code == 200
        wrong_audience = make_token(secret=private_pem, algorithm="RS256", aud="someone-else")
        assert client.get("/v1/model", headers=auth_header(wrong_audience)).status_code == 401

        # an HS256 token whose "secret" is the public key must not pass (PyJWT will not sign one: build it by hand)
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = b64(json.dumps({"sub": "x", "exp": 9999999999, "aud": "alumi-edge"}).encode())
        signature = b64(hmac.new(public_pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
        response = client.get("/v1/model", headers=auth_header(f"{header}.{payload}.{signature}"))
        assert response.status_code == 401 and response.json()["error"] == "token_invalid"


def test_auth_misconfiguration_fails_at_start(edge_home):
    with pytest.raises(ValueError, match="ALUMI_EDGE_JWT_SECRET must hold at least 32 bytes"):
        create_app(edge_settings(edge_home, jwt_secret="short"))
    with pytest.raises(ValueError, match="ALUMI_EDGE_JWT_PUBLIC_KEY"):
        create_app(edge_settings(edge_home, auth="rs256"))


def test_settings_read_from_environment(monkeypatch, tmp_path):
    from alumi_edge.settings import EdgeSettings

    monkeypatch.setenv("ALUMI_EDGE_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("ALUMI_EDGE_MAX_BODY_BYTES", "1234")
    monkeypatch.setenv("ALUMI_EDGE_AUTH", "none")
    monkeypatch.setenv("ALUMI_EDGE_CONF", "0.4")
    settings = EdgeSettings()
    assert (settings.home, settings.max_body_bytes, settings.auth, settings.conf) == (tmp_path / "h", 1234, "none", 0.4)
    assert settings.feedback_path == tmp_path / "h" / "feedback.sqlite3"
    monkeypatch.setenv("ALUMI_EDGE_CONF", "2")
    with pytest.raises(ValueError, match="conf"):
        EdgeSettings()


def test_corrupted_model_on_disk_is_not_loaded(edge_home):
    model = edge_home / "current" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    with TestClient(create_app(edge_settings(edge_home))) as client:
        response = client.get("/readyz")
        assert response.status_code == 503 and "model.onnx: sha256" in response.json()["detail"]


def test_inference_runs_in_the_worker_pool_not_on_the_event_loop(client):
    loaded = client.app.state.holder.loaded
    seen: list[str] = []
    real_detect = loaded.runtime.detect

    def recording_detect(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return real_detect(*args, **kwargs)

    loaded.runtime.detect = recording_detect
    try:
        for _ in range(3):
            assert client.post("/v1/detect", content=encode(RED_AT_32), headers=auth_header()).status_code == 200
    finally:
        del loaded.runtime.detect
    assert len(seen) == 3 and all(name.startswith("alumi-infer") for name in seen), seen


def _served(home, **settings) -> dict:
    with TestClient(create_app(edge_settings(home, **settings))) as client:
        return client.get("/v1/model", headers=auth_header()).json()


def test_a_cpu_device_serves_the_self_tested_int8_model_unless_told_otherwise(tmp_path, release_store, signing_keys):
    from edge_support import release_int8_boxes

    from alumi_edge.pull import pull

    boxes = release_int8_boxes(tmp_path)
    home = tmp_path / "device"
    release_store.publish("1.0.0")  # FP32 only: that is what auto serves
    pull(str(release_store.root), home, signing_keys[1])
    assert _served(home)["model_path"].endswith("/model.onnx") and _served(home)["release"]["role"] == "model"
    release_store.publish("1.1.0", int8_boxes=boxes)
    pull(str(release_store.root), home, signing_keys[1])
    auto = _served(home)
    assert auto["model_version"] == "1.1.0" and auto["release"]["role"] == "model_int8"
    assert auto["model_path"].endswith("/model_int8.onnx")
    assert _served(home, model_role="model")["release"]["role"] == "model"


def test_an_int8_model_without_its_own_expected_boxes_is_not_chosen(tmp_path, release_store, signing_keys):
    """A release written before INT8 self-tests: its INT8 file was never run at pull, so auto keeps FP32."""
    import json

    from edge_support import release_int8_boxes

    from alumi_edge.device_home import DeviceHome
    from alumi_edge.pull import pull
    from alumi_edge.serving import serving_role

    home = tmp_path / "device"
    release_store.publish("1.0.0", int8_boxes=release_int8_boxes(tmp_path))
    pull(str(release_store.root), home, signing_keys[1])
    device = DeviceHome(home)
    manifest, folder = device.manifest(), device.version_dir("1.0.0")
    settings = edge_settings(home)
    assert serving_role(settings, manifest, folder) == "model_int8"
    expected = folder / manifest.file_for_role("sample_expected").path
    document = json.loads(expected.read_text())
    del document["roles"]
    expected.write_text(json.dumps(document))
    assert serving_role(settings, manifest, folder) == "model"
    assert serving_role(edge_settings(home, model_role="model_int8"), manifest, folder) == "model_int8"
