"""Releases in an Azure blob container, read over HTTPS with a SAS token.

The source is the releases root in the container plus a read-only SAS query, as the pipelines print it:
``https://<account>.blob.core.windows.net/<container>/<lake path>/releases?sv=…&se=…&sp=r&sig=…``
(Azurite: ``http://127.0.0.1:10000/devstoreaccount1/<container>/…``). The token may instead come from
``ALUMI_EDGE_AZURE_SAS`` so it stays out of command lines and shell history.

Over the generic HttpSource this adds: the SAS is checked before any request (signature present, read
permission, not expired, already valid), so an expired token is reported as expired and a wrong device
clock as such; Azure's transient answers (408, 429, 5xx, honouring Retry-After) are retried like network
errors; messages name Azure's error code (AuthenticationFailed, BlobNotFound, ContainerNotFound, …) and
never the signature; a lake root is accepted by looking under ``releases/`` when the channel is not at
the root.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from alumi_edge.sources import HttpSource, SourceError, http_chunks

SAS_ENV = "ALUMI_EDGE_AZURE_SAS"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0
_AZURE_BLOB_HOST = re.compile(r"^[a-z0-9]{3,24}\.blob\.core\.(windows\.net|chinacloudapi\.cn|usgovcloudapi\.net)$")
_SIGNATURE = re.compile(r"(sig=)[^&\s'\"]+", re.IGNORECASE)
_ERROR_HINTS = {
    "AuthenticationFailed": "the SAS signature was refused (wrong or rotated account key, or an altered token)",
    "AuthorizationFailure": "the SAS token was refused (bad signature, rotated key, IP range or revoked policy)",
    "AuthorizationPermissionMismatch": "the SAS token lacks read permission",
    "AuthorizationResourceTypeMismatch": "the SAS token is not for blobs in this container",
    "BlobNotFound": "not found",
    "ContainerNotFound": "the container does not exist",
    "ResourceNotFound": "not found",
    "ServerBusy": "the storage account is throttling requests",
}


@dataclass(frozen=True)
class SasToken:
    """The parts of a SAS query the device can check without asking Azure."""

    permissions: str
    starts: dt.datetime | None
    expires: dt.datetime | None

    def check(self, now: dt.datetime, where: str) -> None:
        """Raise SourceError when the token cannot work at ``now``."""
        if self.expires is not None and now >= self.expires:
            raise SourceError(
                f"{where}: the SAS token expired at {self.expires.isoformat()} "
                "(ask for a new source URL, or check the device clock)"
            )
        if self.starts is not None and now < self.starts - dt.timedelta(minutes=5):
            raise SourceError(
                f"{where}: the SAS token is valid only from {self.starts.isoformat()}; the device clock says "
                f"{now.isoformat()} (check NTP)"
            )


def parse_sas(query: str, where: str) -> SasToken:
    """Check the SAS query's shape (signature, read permission) and read its validity window."""
    fields = urllib.parse.parse_qs(query, keep_blank_values=True)
    if not fields.get("sig", [""])[0]:
        raise SourceError(f"{where}: the URL carries no SAS token (no 'sig' parameter); set {SAS_ENV} or append it")
    permissions = fields.get("sp", [""])[0]
    if "r" not in permissions:
        raise SourceError(f"{where}: the SAS token has permissions {permissions!r}; reading releases needs 'r'")
    return SasToken(permissions, _sas_time(fields, "st", where), _sas_time(fields, "se", where))


def _sas_time(fields: Mapping[str, list[str]], name: str, where: str) -> dt.datetime | None:
    value = fields.get(name, [""])[0]
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise SourceError(f"{where}: SAS parameter {name}={value!r} is not an ISO 8601 time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def is_azure_blob_url(url: str) -> bool:
    """An Azure blob endpoint (by host name), or any http(s) URL carrying a SAS (Azurite, private endpoints)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return False
    query = urllib.parse.parse_qs(parts.query)
    return bool(_AZURE_BLOB_HOST.match(parts.hostname or "")) or ("sig" in query and "sv" in query)


class AzureBlobSource(HttpSource):
    """A releases root (or a lake root) in an Azure blob container, read with a SAS token."""

    def __init__(
        self,
        url: str,
        sas_token: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 4,
        now: Callable[[], dt.datetime] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        parts = urllib.parse.urlsplit(url)
        if sas_token and not parts.query:
            url = urllib.parse.urlunsplit(parts._replace(query=sas_token.lstrip("?")))
        self._prefix = ""  # "releases/" once a lake root was recognised
        super().__init__(url, timeout_s=timeout_s, retries=retries)
        self.sas = parse_sas(self._query, self.describe())
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self._sleep = sleep
        self._may_be_lake_root = not self._path.endswith("/releases")

    def url(self, relpath: str) -> str:
        return super().url(self._prefix + relpath)

    def describe(self, relpath: str = "") -> str:
        return super().describe(self._prefix + relpath if relpath else self._prefix.rstrip("/"))

    @contextmanager
    def open_chunks(self, relpath: str):
        self.sas.check(self._now(), self.describe(relpath))
        client, response = self._get(relpath)
        if response.status_code == 404 and self._may_be_lake_root and relpath.startswith("channels/"):
            self._may_be_lake_root = False
            self._prefix = "releases/"
            response.close()
            client.close()
            client, response = self._get(relpath)
            if response.status_code == 404:
                self._prefix = ""
        try:
            if response.status_code >= 400:
                raise SourceError(f"{self.describe(relpath)}: {_explain(response)}")
            yield http_chunks(response, self.describe(relpath))
        finally:
            response.close()
            client.close()

    def _get(self, relpath: str):
        """(client, streaming response) of a GET, retried on network errors and Azure's transient statuses."""
        import httpx

        url = self.url(relpath)
        last = ""
        for attempt in range(self.retries):
            delay = min(0.5 * 2**attempt, 8.0)
            client = httpx.Client(timeout=self.timeout_s, follow_redirects=False)
            headers = {"x-ms-client-request-id": str(uuid.uuid4())}
            try:
                response = client.send(client.build_request("GET", url, headers=headers), stream=True)
            except httpx.TransportError as exc:
                client.close()
                last = redact(str(exc) or type(exc).__name__)
            else:
                if response.status_code not in RETRY_STATUS:
                    return client, response
                last = _explain(response)
                delay = _retry_after(response, delay)
                response.close()
                client.close()
            if attempt + 1 < self.retries:
                self._sleep(delay)
        raise SourceError(f"{self.describe(relpath)}: unreachable after {self.retries} tries ({last})")


def _explain(response) -> str:
    code = response.headers.get("x-ms-error-code", "")
    hint = _ERROR_HINTS.get(code)
    label = f"HTTP {response.status_code}" + (f" {code}" if code else "")
    return f"{hint} ({label})" if hint else label


def _retry_after(response, default: float) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return default


def redact(text: str) -> str:
    """``text`` with any SAS signature blanked out."""
    return _SIGNATURE.sub(r"\1***", text)


def azure_source_for(uri: str, env: Mapping[str, str] | None = None) -> AzureBlobSource | None:
    """An AzureBlobSource when ``uri`` is an Azure blob URL (or ``ALUMI_EDGE_AZURE_SAS`` is set), else None."""
    env = os.environ if env is None else env
    sas = env.get(SAS_ENV) or None
    if is_azure_blob_url(uri) or (sas and uri.startswith(("https://", "http://"))):
        return AzureBlobSource(uri, sas_token=sas)
    return None


__all__ = ["AzureBlobSource", "SasToken", "azure_source_for", "is_azure_blob_url", "parse_sas"]
