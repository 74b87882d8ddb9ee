"""Azure settings without a server: URIs, which credential the env vars select, EnvVar deferral, the edge SAS checks."""

from __future__ import annotations

import datetime as dt
import http.server
import threading

import pytest

from alumi_pipelines.resources.azure import (
    AzureLake,
    AzureLakeError,
    azure_lake,
    lake_for_uri,
    parse_abfs_uri,
    parse_connection_string,
    redact,
)
from alumi_pipelines.resources.lake import Lake

KEY_ENV = {"ALUMI_AZURE_ACCOUNT_KEY": "a2V5", "ALUMI_AZURE_ACCOUNT_NAME": "alumiprod"}


def test_abfs_uris_give_container_account_and_path():
    assert parse_abfs_uri("abfs://lake@alumiprod.dfs.core.windows.net/prod/v1") == parse_abfs_uri(
        "abfss://lake@alumiprod.blob.core.windows.net/prod/v1/"
    )
    location = parse_abfs_uri("abfs://lake@alumiprod.dfs.core.chinacloudapi.cn/prod")
    assert (location.container, location.account_name, location.endpoint_suffix, location.root) == (
        "lake",
        "alumiprod",
        "core.chinacloudapi.cn",
        "lake/prod",
    )
    assert parse_abfs_uri("az://lake").root == "lake"
    with pytest.raises(AzureLakeError, match="container 'Lake_1' is not a valid name"):
        parse_abfs_uri("abfs://Lake_1/x")
    with pytest.raises(AzureLakeError, match="host 'example.com' is not"):
        parse_abfs_uri("abfs://lake@example.com/x")


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({"ALUMI_AZURE_CONNECTION_STRING": "AccountName=alumiprod;AccountKey=a2V5", **KEY_ENV}, None),
        (KEY_ENV, "key"),
        ({"ALUMI_AZURE_SAS_TOKEN": "sv=1&sig=x", "ALUMI_AZURE_ACCOUNT_NAME": "alumiprod"}, "sas"),
        ({"ALUMI_AZURE_ACCOUNT_NAME": "alumiprod"}, "default_azure_credential"),
    ],
)
def test_env_vars_choose_the_credential_and_stay_deferred(env, kind):
    lake = azure_lake("abfs://lake/prod", env=env)
    if kind is None:
        assert lake.connection_string.env_var_name == "ALUMI_AZURE_CONNECTION_STRING"
    else:
        assert lake.credential.credential_type == kind
    for secret in ("a2V5", "sig=x"):  # no secret value in the resource's config or repr
        assert secret not in repr(lake) and secret not in repr(lake.credential.model_dump() if kind else "")
    assert lake.account_name == "alumiprod"


def test_read_now_holds_values_and_a_deferred_lake_reads_them_when_used(monkeypatch):
    now = azure_lake("abfs://lake/prod", env=KEY_ENV, deferred=False)
    assert now.credential.key == "a2V5"
    deferred = azure_lake("abfs://lake/prod", env=KEY_ENV)
    monkeypatch.delenv("ALUMI_AZURE_ACCOUNT_KEY", raising=False)
    with pytest.raises(AzureLakeError, match="environment variable ALUMI_AZURE_ACCOUNT_KEY is not set"):
        deferred._client_settings(parse_abfs_uri(deferred.base_uri))
    monkeypatch.setenv("ALUMI_AZURE_ACCOUNT_KEY", "c2VjcmV0")
    settings = deferred._client_settings(parse_abfs_uri(deferred.base_uri))
    assert (settings["account_key"], settings["endpoint"]) == ("c2VjcmV0", "https://alumiprod.blob.core.windows.net")


def test_configuration_mistakes_are_named():
    with pytest.raises(AzureLakeError, match=r"names no storage account: write it as abfs://lake@<account>"):
        azure_lake("abfs://lake/prod", env={"ALUMI_AZURE_ACCOUNT_KEY": "a2V5"})
    mismatch = AzureLake(
        base_uri="abfs://lake@other.dfs.core.windows.net/p", connection_string="AccountName=alumiprod;AccountKey=a2V5"
    )
    with pytest.raises(AzureLakeError, match="the connection string is for account 'alumiprod', not 'other'"):
        mismatch._client_settings(parse_abfs_uri(mismatch.base_uri))
    with pytest.raises(AzureLakeError, match="is not Key=Value"):
        parse_connection_string("AccountName=a;garbage")


def test_local_uris_stay_plain_lakes(tmp_path):
    lake = lake_for_uri(str(tmp_path / "lake"))
    assert type(lake) is Lake and lake.is_local
    assert isinstance(lake_for_uri("abfs://lake@alumiprod.dfs.core.windows.net/p", env={}), AzureLake)


def test_redaction_hides_signatures_and_keys():
    text = "GET https://a.blob.core.windows.net/c/x?sv=2024&sig=abc%2Fdef&se=1 AccountKey=c2VjcmV0;BlobEndpoint=x"
    assert redact(text) == "GET https://a.blob.core.windows.net/c/x?sv=2024&sig=***&se=1 AccountKey=***;BlobEndpoint=x"


# -- the edge source's own checks ----------------------------------------------------------------------
def _sas(hours_from_now: float, start_hours: float = -1, permissions: str = "r") -> str:
    now = dt.datetime.now(dt.UTC)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (
        f"sv=2024-11-04&st={(now + dt.timedelta(hours=start_hours)).strftime(fmt)}"
        f"&se={(now + dt.timedelta(hours=hours_from_now)).strftime(fmt)}&sr=c&sp={permissions}&sig=c2ln"
    )


def test_edge_sas_checks_happen_before_any_request():
    from alumi_edge.sources import SourceError
    from alumi_edge.sources_azure import AzureBlobSource, is_azure_blob_url

    base = "https://alumiprod.blob.core.windows.net/lake/prod/releases"
    assert is_azure_blob_url(base) and is_azure_blob_url(f"http://127.0.0.1:1/devstoreaccount1/c?{_sas(1)}")
    assert not is_azure_blob_url("https://example.com/releases")
    with pytest.raises(SourceError, match="the SAS token expired at"):
        AzureBlobSource(f"{base}?{_sas(-1, -2)}").read_bytes("channels/stable.json", 100)
    with pytest.raises(SourceError, match=r"valid only from .*\(check NTP\)"):
        AzureBlobSource(f"{base}?{_sas(5, 2)}").read_bytes("channels/stable.json", 100)
    source = AzureBlobSource(base, sas_token="?" + _sas(1))
    assert source.describe("channels/stable.json") == f"{base}/channels/stable.json"
    assert source.url("1.0.0/model.onnx").startswith(f"{base}/1.0.0/model.onnx?sv=")


class _FlakyBlobs(http.server.BaseHTTPRequestHandler):
    answers: list[tuple[int, dict, bytes]] = []
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.seen.append(self.path)
        status, headers, body = self.answers.pop(0)
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_edge_source_retries_azure_throttling_and_names_error_codes():
    from alumi_edge.sources import SourceError
    from alumi_edge.sources_azure import AzureBlobSource

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyBlobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/devstoreaccount1/lake/releases?{_sas(1)}"
        sleeps: list[float] = []
        _FlakyBlobs.answers = [
            (503, {"x-ms-error-code": "ServerBusy", "Retry-After": "2"}, b""),
            (500, {"x-ms-error-code": "InternalError"}, b""),
            (200, {}, b'{"version": "1.0.0"}'),
        ]
        source = AzureBlobSource(url, sleep=sleeps.append)
        assert source.read_bytes("channels/stable.json", 1000) == b'{"version": "1.0.0"}'
        assert sleeps == [2.0, 1.0]  # Retry-After honoured, then the doubling backoff
        assert all(
            path.startswith("/devstoreaccount1/lake/releases/channels/stable.json?sv=") for path in _FlakyBlobs.seen
        )

        _FlakyBlobs.answers = [(404, {"x-ms-error-code": "BlobNotFound"}, b"")]
        with pytest.raises(SourceError, match=r"releases/9.9.9/manifest.json: not found \(HTTP 404 BlobNotFound\)"):
            source.read_bytes("9.9.9/manifest.json", 1000)
        _FlakyBlobs.answers = [(503, {}, b"")] * 4
        with pytest.raises(SourceError, match=r"unreachable after 4 tries \(HTTP 503\)"):
            source.read_bytes("channels/stable.json", 1000)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (KEY_ENV, {"account_key": "a2V5"}),
        ({"ALUMI_AZURE_SAS_TOKEN": "?sv=1&sig=x", "ALUMI_AZURE_ACCOUNT_NAME": "alumiprod"}, {"sas_key": "sv=1&sig=x"}),
        (
            {
                "ALUMI_AZURE_CONNECTION_STRING": "DefaultEndpointsProtocol=http;AccountName=alumiprod;AccountKey=a2V5;"
                "BlobEndpoint=http://127.0.0.1:10000/alumiprod;"
            },
            {"account_key": "a2V5", "endpoint": "http://127.0.0.1:10000/alumiprod"},
        ),
        ({"ALUMI_AZURE_ACCOUNT_NAME": "alumiprod"}, {}),
    ],
    ids=["key", "sas", "connection-string", "default-azure-credential"],
)
def test_the_object_data_path_gets_the_lake_credential_endpoint_retries_and_timeouts(env, expected):
    """obstore's store, built with no request: the same account, container, path and credential as the SDK's."""
    lake = azure_lake("abfs://lake/prod/zone", env=env, deferred=False, max_retries=3, retry_backoff_s=0.25)
    store = lake._objects()
    config = dict(store.config)
    assert (config["account_name"], config["container_name"], store.prefix) == ("alumiprod", "lake", "prod/zone")
    endpoint = expected.get("endpoint", "https://alumiprod.blob.core.windows.net")
    assert config["endpoint"] == endpoint
    assert store.client_options["allow_http"] == ("true" if endpoint.startswith("http://") else "false")
    for name, value in expected.items():
        assert config[name] == value
    if not expected:  # DefaultAzureCredential: a token provider, no secret in the config
        assert store.credential_provider is not None
        assert not {"account_key", "sas_key"} & set(config)
    assert store.retry_config["max_retries"] == 3
    assert store.retry_config["backoff"]["init_backoff"].total_seconds() == 0.25
    assert store.client_options["timeout"] == "2m" and store.client_options["connect_timeout"] == "10s"
    assert lake._objects() is store  # one store per process
