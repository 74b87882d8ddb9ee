"""Fixtures of the edge tests (helpers live in edge_support.py, importable from the tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from edge_support import ReleaseStore, edge_settings, make_color_onnx


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory):
    """(private PEM, public PEM, public key path) of a fresh Ed25519 key."""
    from alumi_pipelines.lib.export.release import load_or_create_signing_key

    key_path = tmp_path_factory.mktemp("keys") / "release.key"
    private_pem, public_pem = load_or_create_signing_key(key_path)
    return private_pem, public_pem, key_path.with_name("release.key.pub")


@pytest.fixture(scope="session")
def color_onnx(tmp_path_factory) -> Path:
    return make_color_onnx(tmp_path_factory.mktemp("models") / "model.onnx")


@pytest.fixture
def release_store(tmp_path, signing_keys) -> ReleaseStore:
    root = tmp_path / "lake" / "releases"
    root.mkdir(parents=True)
    return ReleaseStore(root, signing_keys[0], tmp_path / "work")


@pytest.fixture
def edge_home(tmp_path, release_store, signing_keys) -> Path:
    """A device folder with release 1.0.0 pulled and switched to."""
    from alumi_edge.pull import pull

    release_store.publish("1.0.0")
    home = tmp_path / "device"
    pull(str(release_store.root), home, signing_keys[1])
    return home


@pytest.fixture
def client(edge_home):
    """TestClient (as a context manager, so the lifespan loads the model) on the pulled release."""
    from fastapi.testclient import TestClient

    from alumi_edge.main import create_app

    with TestClient(create_app(edge_settings(edge_home))) as test_client:
        yield test_client
