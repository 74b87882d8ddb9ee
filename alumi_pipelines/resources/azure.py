"""The lake on Azure Blob Storage / Data Lake Storage Gen2 (``abfs://``), and the credentials for it.

Credentials come from ``ALUMI_AZURE_*`` environment variables (``AZURE_ENV_VARS``), first match wins:
a connection string; an account key; a SAS token; otherwise ``DefaultAzureCredential`` (workload or
managed identity on AKS, ``az login`` on a laptop). They are held in dagster-azure's credential config
classes, and in Dagster definitions every secret stays an ``EnvVar``: the UI shows variable names, never
values. ``ALUMI_AZURE_ACCOUNT_URL`` points at another blob endpoint (Azurite's
``http://127.0.0.1:10000/devstoreaccount1``, a private endpoint, a sovereign cloud).

``AzureLake`` is a ``Lake`` (same keys, same methods). Over a plain ``Lake`` on adlfs it adds: bounded
retries (the SDK's defaults wait about a minute before reporting a dead endpoint), one clear error for
refused credentials, a missing container or an unreachable endpoint, a container check before the first
operation, listings never answered from a cache, and create-if-absent writes and copies as one conditional
request (``If-None-Match: *``).

The object data path (reads, listings, and writes below ``DIRECT_PUT_MAX_BYTES``: images, tables, records)
goes through obstore, a Rust client: one request per operation at about a tenth of the Azure SDK's CPU per
request, with the interpreter lock released while it waits, so a pool of threads keeps many requests in flight
on two cores. Larger uploads (model weights, release payloads) go through the Azure SDK in staged blocks with
server-side MD5 verification. Every content-addressed object is also checked against its sha256 where it is
read for training (``resources/cache.py``).
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from dagster import EnvVar
from dagster_azure.blob.resources import (
    AzureBlobStorageAnonymousCredential,
    AzureBlobStorageDefaultCredential,
    AzureBlobStorageKeyCredential,
    AzureBlobStorageResource,
    AzureBlobStorageSASTokenCredential,
)
from pydantic import Field, PrivateAttr

from alumi_pipelines.lib.files import TMP_PREFIX
from alumi_pipelines.resources.lake import Lake, LakeFile, check_key

AZURE_SCHEMES = ("abfs", "abfss", "az")
ENV_CONNECTION_STRING = "ALUMI_AZURE_CONNECTION_STRING"
ENV_ACCOUNT_NAME = "ALUMI_AZURE_ACCOUNT_NAME"
ENV_ACCOUNT_KEY = "ALUMI_AZURE_ACCOUNT_KEY"
ENV_SAS_TOKEN = "ALUMI_AZURE_SAS_TOKEN"
ENV_ACCOUNT_URL = "ALUMI_AZURE_ACCOUNT_URL"
AZURE_ENV_VARS = (
    (ENV_CONNECTION_STRING, "connection string (wins over every other credential)"),
    (
        ENV_ACCOUNT_NAME,
        "storage account, when ALUMI_LAKE_URI does not name it (container@account.dfs.core.windows.net)",
    ),
    (ENV_ACCOUNT_KEY, "shared account key"),
    (ENV_SAS_TOKEN, "SAS token with read, write, delete and list permissions on the lake container"),
    (
        ENV_ACCOUNT_URL,
        "blob endpoint, default https://<account>.blob.core.windows.net "
        "(Azurite: http://127.0.0.1:10000/devstoreaccount1)",
    ),
)

AzureCredential = Union[
    AzureBlobStorageKeyCredential,
    AzureBlobStorageSASTokenCredential,
    AzureBlobStorageDefaultCredential,
    AzureBlobStorageAnonymousCredential,
]
_ACCOUNT_HOST = re.compile(r"^(?P<account>[a-z0-9]{3,24})\.(dfs|blob)\.(?P<suffix>.+)$")
_SAS_SIGNATURE = re.compile(r"(sig=)[^&\s'\"]+", re.IGNORECASE)


DIRECT_PUT_MAX_BYTES = 4 << 20  # smaller uploads are one PUT through obstore; larger ones staged blocks (SDK)


class AzureLakeError(RuntimeError):
    """The Azure lake cannot be used: refused credentials, missing container, unreachable endpoint."""


@dataclass(frozen=True)
class AbfsLocation:
    """Where an ``abfs://`` URI points: container, optional account (from the host) and a path inside."""

    container: str
    path: str
    account_name: str | None = None
    endpoint_suffix: str | None = None

    @property
    def root(self) -> str:
        return f"{self.container}/{self.path}" if self.path else self.container


def is_azure_uri(uri: str) -> bool:
    return uri.split("://", 1)[0].lower() in AZURE_SCHEMES and "://" in uri


def parse_abfs_uri(uri: str) -> AbfsLocation:
    """``abfs://container/path`` or ``abfs://container@account.dfs.core.windows.net/path`` → its parts."""
    if not is_azure_uri(uri):
        raise AzureLakeError(f"lake URI {uri!r}: expected abfs://<container>[@<account>.dfs.core.windows.net]/<path>")
    parts = urllib.parse.urlsplit(uri)
    path = parts.path.strip("/")
    if "@" in parts.netloc:
        container, host = parts.netloc.split("@", 1)
        match = _ACCOUNT_HOST.match(host.lower())
        if not match:
            raise AzureLakeError(f"lake URI {uri!r}: host {host!r} is not <account>.dfs|blob.<endpoint suffix>")
        location = AbfsLocation(container, path, match["account"], match["suffix"])
    else:
        location = AbfsLocation(parts.netloc, path)
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", location.container):
        raise AzureLakeError(
            f"lake URI {uri!r}: container {location.container!r} is not a valid name "
            "(3-63 lowercase letters, digits and single hyphens)"
        )
    return location


def parse_connection_string(connection_string: str) -> dict[str, str]:
    """``Key=Value;…`` → a dict (keys as written: AccountName, AccountKey, BlobEndpoint, …)."""
    out = {}
    for part in connection_string.strip().strip(";").split(";"):
        if "=" not in part:
            raise AzureLakeError(f"{ENV_CONNECTION_STRING}: segment {redact(part)!r} is not Key=Value")
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def redact(text: str) -> str:
    """``text`` with SAS signatures and account keys blanked out."""
    text = _SAS_SIGNATURE.sub(r"\1***", text)
    return re.sub(r"(AccountKey=)[^;\s]+", r"\1***", text)


class AzureLake(Lake):
    """The lake in an Azure blob container; ``base_uri`` is ``abfs://container[@account.dfs.core.windows.net]/path``."""

    account_name: Optional[str] = Field(default=None, description="storage account (else from base_uri's host)")
    account_url: Optional[str] = Field(
        default=None, description="blob endpoint URL; default https://<account>.blob.<endpoint suffix>"
    )
    connection_string: Optional[str] = Field(default=None, repr=False, description="wins over `credential` when set")
    credential: AzureCredential = Field(
        default_factory=AzureBlobStorageDefaultCredential,
        discriminator="credential_type",
        repr=False,
        description="dagster-azure credential: key, sas, default_azure_credential or anonymous",
    )
    max_retries: int = Field(default=4, description="SDK retries of a failed request (network errors, 5xx, 408, 429)")
    retry_backoff_s: float = Field(default=0.5, description="first retry delay, doubled at each retry (±20 %)")
    connect_timeout_s: int = Field(default=10, description="seconds to open a connection")
    read_timeout_s: int = Field(default=120, description="seconds without a byte before a request fails")

    _container_checked: bool = PrivateAttr(default=False)
    _store: Any = PrivateAttr(default=None)
    _store_pid: int = PrivateAttr(default=0)

    # -- the filesystem ----------------------------------------------------------------------
    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None:
            location = parse_abfs_uri(self.base_uri)
            self._fs = _open_filesystem(self._client_settings(location), self.storage_options)
            self._root = location.root
        return self._fs, self._root

    def _objects(self) -> Any:
        """obstore's store for the lake's container and path (made again in a forked process: its connections
        belong to the parent)."""
        if self._store is None or self._store_pid != os.getpid():
            location = parse_abfs_uri(self.base_uri)
            self._store = _open_store(self._client_settings(location), location, self)
            self._store_pid = os.getpid()
        return self._store

    @contextmanager
    def _object_errors(self, action: str, key: str) -> Iterator[None]:
        """obstore's errors as the SDK's are reported (the container is checked first, through the SDK)."""
        from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError

        with self._azure_errors(action, key):
            try:
                yield
            except (PermissionDeniedError, UnauthenticatedError) as exc:
                reason = _status_in(str(exc)) or type(exc).__name__
                raise AzureLakeError(
                    redact(
                        f"lake {self.base_uri}: {action} {key!r} failed: Azure refused the credentials ({reason}); "
                        f"check {self.credential_hint()}"
                    )
                ) from exc
            except BaseError as exc:
                status = _status_in(str(exc))
                where = f"lake {self.base_uri}: {action} {key!r} failed"
                if status is None:
                    raise AzureLakeError(
                        redact(
                            f"{where}: Azure Storage at {self._endpoint_for_messages()} did not answer after "
                            f"{self.max_retries} retries ({_first_line(exc)})"
                        )
                    ) from exc
                raise AzureLakeError(redact(f"{where}: Azure Storage answered {status}: {_first_line(exc)}")) from exc

    @property
    def is_local(self) -> bool:
        return False

    def uri(self, key: str) -> str:
        """``abfs://container@account.dfs.<suffix>/path/key`` (openable by polars, pandas, adlfs)."""
        location = parse_abfs_uri(self.base_uri)
        blob = self.path(key).split("/", 1)[1]
        account = location.account_name or (self.account_name if not isinstance(self.account_name, EnvVar) else None)
        if not account:
            return f"abfs://{location.container}/{blob}"
        return f"abfs://{location.container}@{account}.dfs.{location.endpoint_suffix or 'core.windows.net'}/{blob}"

    def _client_settings(self, location: AbfsLocation) -> dict:
        """Everything the blob service client needs; EnvVars not yet resolved by Dagster are read now."""
        settings: dict[str, Any] = {"client_kwargs": self._client_kwargs()}
        connection_string = _resolved(self.connection_string)
        if connection_string:
            named = parse_connection_string(connection_string).get("AccountName")
            for claimed in (_resolved(self.account_name), location.account_name):
                if named and claimed and claimed != named:
                    raise AzureLakeError(
                        f"lake {self.base_uri}: the connection string is for account {named!r}, not {claimed!r}"
                    )
            settings["connection_string"] = connection_string
            settings["account_name"] = named
            return settings
        account = _resolved(self.account_name) or location.account_name
        if not account:
            raise AzureLakeError(
                f"lake {self.base_uri}: no storage account; write the URI as "
                f"abfs://{location.container}@<account>.dfs.core.windows.net/{location.path} or set {ENV_ACCOUNT_NAME}"
            )
        settings["account_name"] = account
        settings["endpoint"] = (
            _resolved(self.account_url) or f"https://{account}.blob.{location.endpoint_suffix or 'core.windows.net'}"
        ).rstrip("/")
        kind = self.credential.credential_type
        if kind == "key":
            settings["account_key"] = _resolved(self.credential.key)
        elif kind == "sas":
            settings["sas_token"] = (_resolved(self.credential.token) or "").lstrip("?")
        elif kind == "default_azure_credential":
            settings["default_credential_kwargs"] = dict(self.credential.kwargs)
        return settings

    def share_url(self, key: str, hours: int) -> str | None:
        """A read-only blob SAS URL of ``key`` valid for ``hours``: signed with the account key (connection string
        or key credential), or with a user delegation key (DefaultAzureCredential). A lake reached through a
        SAS token cannot sign one: its own token would be shared instead, so that is refused."""
        from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

        location = parse_abfs_uri(self.base_uri)
        settings = self._client_settings(location)
        blob = self.path(key).split("/", 1)[1]
        start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        expiry = start + dt.timedelta(hours=hours, minutes=5)
        signing: dict[str, Any] = {}
        if settings.get("connection_string"):
            parts = parse_connection_string(settings["connection_string"])
            account = parts.get("AccountName")
            endpoint = (
                parts.get("BlobEndpoint")
                or f"https://{account}.blob.{parts.get('EndpointSuffix') or 'core.windows.net'}"
            )
            signing["account_key"] = parts.get("AccountKey")
        else:
            account, endpoint = settings["account_name"], settings["endpoint"]
            signing["account_key"] = settings.get("account_key")
        if not signing["account_key"]:
            if "default_credential_kwargs" not in settings:
                raise AzureLakeError(
                    f"lake {self.base_uri}: cannot sign a read link for {key} with {self.credential.credential_type} "
                    f"credentials; use an account key ({ENV_ACCOUNT_KEY}) or DefaultAzureCredential"
                )
            from azure.identity import DefaultAzureCredential

            service = BlobServiceClient(
                endpoint, credential=DefaultAzureCredential(**settings["default_credential_kwargs"])
            )
            with self._azure_errors("sign a read link for", key):
                signing = {"user_delegation_key": service.get_user_delegation_key(start, expiry)}
        token = generate_blob_sas(
            account_name=account,
            container_name=location.container,
            blob_name=blob,
            permission=BlobSasPermissions(read=True),
            start=start,
            expiry=expiry,
            **signing,
        )
        return f"{endpoint.rstrip('/')}/{location.container}/{urllib.parse.quote(blob)}?{token}"

    def _client_kwargs(self) -> dict:
        retries = max(0, self.max_retries)
        policy = _doubling_retry(
            self.retry_backoff_s, retry_total=retries, retry_connect=retries, retry_read=retries, retry_status=retries
        )
        return {
            "retry_policy": policy,
            "connection_timeout": self.connect_timeout_s,
            "read_timeout": self.read_timeout_s,
        }

    def credential_hint(self) -> str:
        """Which setting to check when Azure refuses the credentials."""
        if self.connection_string:
            return f"the connection string ({ENV_CONNECTION_STRING})"
        return {
            "key": f"the account key ({ENV_ACCOUNT_KEY}) of account {self._account_for_messages()!r}",
            "sas": f"the SAS token ({ENV_SAS_TOKEN}): expiry, signature and permissions r,w,d,l",
            "default_azure_credential": "DefaultAzureCredential: a workload/managed identity, AZURE_CLIENT_ID/"
            "AZURE_TENANT_ID/AZURE_CLIENT_SECRET or `az login`, with the role 'Storage Blob Data Contributor'",
            "anonymous": "anonymous access: the container must allow public reads (writes never do)",
        }[self.credential.credential_type]

    # -- errors ------------------------------------------------------------------------------
    @contextmanager
    def _azure_errors(self, action: str, key: str) -> Iterator[None]:
        from azure.core.exceptions import AzureError

        try:
            if not self._container_checked:
                self._check_container()
            yield
        except AzureError as exc:
            raise AzureLakeError(self._explain(exc, f"{action} {key!r}")) from exc

    def _explain(self, exc: Exception, what: str) -> str:
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError

        where = f"lake {self.base_uri}: {what} failed"
        status = getattr(exc, "status_code", None)
        code = getattr(exc, "error_code", None) or ""
        code = str(getattr(code, "value", code))
        if isinstance(exc, ClientAuthenticationError) or status == 403:
            reason = code or status or type(exc).__name__
            return redact(f"{where}: Azure refused the credentials ({reason}); check {self.credential_hint()}")
        if code == "ContainerNotFound":
            return self._missing_container_message()
        if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
            endpoint = self._endpoint_for_messages()
            return redact(
                f"{where}: Azure Storage at {endpoint} did not answer after {self.max_retries} retries "
                f"({_first_line(exc)})"
            )
        return redact(f"{where}: Azure Storage answered {status or ''} {code}: {_first_line(exc)}".replace("  ", " "))

    def _missing_container_message(self) -> str:
        container = parse_abfs_uri(self.base_uri).container
        return (
            f"lake {self.base_uri}: container {container!r} does not exist in storage account "
            f"{self._account_for_messages()!r}; create it (az storage container create --name {container}) "
            "or fix ALUMI_LAKE_URI"
        )

    def _account_for_messages(self) -> str:
        return self._client_settings(parse_abfs_uri(self.base_uri)).get("account_name") or "?"

    def _endpoint_for_messages(self) -> str:
        settings = self._client_settings(parse_abfs_uri(self.base_uri))
        if "endpoint" in settings:
            return settings["endpoint"]
        fields = parse_connection_string(settings["connection_string"])
        suffix = fields.get("EndpointSuffix", "core.windows.net")
        return fields.get("BlobEndpoint") or f"https://{fields.get('AccountName', '?')}.blob.{suffix}"

    def _check_container(self) -> None:
        """Fail early and clearly when the container is missing or the credentials are refused."""
        from azure.core.exceptions import ResourceNotFoundError
        from fsspec.asyn import sync

        fs, _ = self._filesystem()
        location = parse_abfs_uri(self.base_uri)

        async def first_page() -> None:
            container = fs.service_client.get_container_client(location.container)
            async for _ in container.list_blobs(name_starts_with=location.path, results_per_page=1):
                break

        try:
            sync(fs.loop, first_page)
        except ResourceNotFoundError as exc:
            raise AzureLakeError(self._missing_container_message()) from exc
        self._container_checked = True

    # -- the lake's operations, with clear errors --------------------------------------------
    def exists(self, key: str) -> bool:
        """A blob with this name, or blobs below it; both asked at once (one round trip, not two)."""
        import asyncio

        from fsspec.asyn import sync

        fs, _ = self._filesystem()
        container, blob, _ = fs.split_path(self.path(key))

        async def below() -> bool:
            listing = fs.service_client.get_container_client(container).list_blobs(
                name_starts_with=f"{blob}/", results_per_page=1
            )
            async for _ in listing:
                return True
            return False

        async def either() -> bool:
            found = await asyncio.gather(fs.service_client.get_blob_client(container, blob).exists(), below())
            return any(found)

        with self._azure_errors("checking", key):
            return sync(fs.loop, either)

    def read_bytes(self, key: str) -> bytes:
        """One GET."""
        import obstore
        from obstore.exceptions import NotFoundError

        store = self._objects()
        with self._object_errors("reading", key):
            try:
                return bytes(obstore.get(store, check_key(key)).bytes())
            except NotFoundError as exc:
                raise FileNotFoundError(f"lake key {key!r} does not exist ({self.uri(key)})") from exc

    def list_files(self, prefix: str) -> list[LakeFile]:
        """Every file under a prefix (a folder: ``prefix/…``), sorted by key: one listing request per 5,000
        files, no existence check first; temporary files are skipped."""
        import obstore

        store = self._objects()
        out = []
        with self._object_errors("listing", prefix):
            folder = check_key(prefix).strip("/") if prefix else None
            for page in obstore.list(store, prefix=folder, chunk_size=5000):
                for meta in page:
                    key = meta["path"]
                    if key.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                        continue
                    out.append(LakeFile(key=key, size=int(meta["size"]), mtime=meta["last_modified"].timestamp()))
        return sorted(out, key=lambda f: f.key)

    def list_dirs(self, prefix: str) -> list[str]:
        with self._azure_errors("listing", prefix):
            return super().list_dirs(prefix)

    def write_bytes(self, key: str, data: bytes) -> str:
        """One PUT (or staged blocks committed by one request above 64 MB): readers see all or nothing."""
        self._put(key, data, overwrite=True)
        return key

    def write_if_absent(self, key: str, data: bytes) -> bool:
        """One conditional PUT (``If-None-Match: *``): the service refuses it when the blob exists."""
        try:
            self._put(key, data, overwrite=False)
        except FileExistsError:
            return False
        return True

    def _put(self, key: str, data: bytes, overwrite: bool) -> None:
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        if len(data) < DIRECT_PUT_MAX_BYTES:
            import obstore
            from obstore.exceptions import AlreadyExistsError, PreconditionError

            store = self._objects()
            with self._object_errors("writing", key):
                try:
                    obstore.put(
                        store,
                        check_key(key),
                        bytes(data),
                        mode="overwrite" if overwrite else "create",
                        use_multipart=False,
                        attributes={"Content-Type": content_type},
                    )
                except (AlreadyExistsError, PreconditionError) as exc:
                    raise FileExistsError(f"lake key {key!r} exists") from exc
            return
        fs, _ = self._filesystem()
        full = self.path(key)
        with self._azure_errors("writing", key):
            fs.pipe_file(
                full,
                bytes(data),
                overwrite=overwrite,
                validate_content=True,
                content_settings={"content_type": content_type},
            )

    def copy(self, src: str, dst: str) -> bool:
        """A server-side copy unless ``dst`` exists, as one conditional request; returns whether it copied."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError
        from fsspec.asyn import sync

        fs, _ = self._filesystem()
        container, blob, _ = fs.split_path(self.path(dst))
        _, source_blob, _ = fs.split_path(self.path(src))

        async def copy() -> bool:
            source = fs.service_client.get_blob_client(container, source_blob)
            target = fs.service_client.get_blob_client(container, blob)
            try:
                await target.start_copy_from_url(source.url, match_condition=MatchConditions.IfMissing)
            except ResourceExistsError:
                return False
            return True

        with self._azure_errors("copying to", dst):
            return sync(fs.loop, copy)

    def delete(self, key: str) -> None:
        with self._azure_errors("deleting", key):
            super().delete(key)

    def put_dir(self, local_dir: str | Path, prefix: str) -> list[str]:
        """Publish every file of a local folder under a prefix (each file atomically), several at once."""
        local_dir = Path(local_dir)
        paths = sorted(p for p in local_dir.rglob("*") if p.is_file())
        keys = [f"{check_key(prefix)}/{p.relative_to(local_dir).as_posix()}" for p in paths]
        self.map(lambda pair: self.write_bytes(pair[1], pair[0].read_bytes()), list(zip(paths, keys)))
        return keys


def _resolved(value: Any) -> Any:
    """A config value; an ``EnvVar`` (a deferred lake used outside a run) is read from the environment now."""
    if isinstance(value, EnvVar):
        resolved = value.get_value()
        if not resolved:
            raise AzureLakeError(f"environment variable {value.env_var_name} is not set")
        return resolved
    return value


def _doubling_retry(backoff_s: float, **kwargs):
    """The SDK's retry policy with delays backoff, 2·backoff, 4·backoff… (its own adds 3**n seconds)."""
    import random

    from azure.storage.blob.aio import ExponentialRetry

    class DoublingRetry(ExponentialRetry):
        def get_backoff_time(self, settings: dict) -> float:
            return backoff_s * 2 ** settings["count"] * random.uniform(0.8, 1.2)

    return DoublingRetry(initial_backoff=backoff_s, **kwargs)


def _status_in(message: str) -> str | None:
    """The HTTP status an obstore error names (``... status: 403 Forbidden ...``), if any."""
    found = re.search(r"\b(?:status(?: code)?:?\s*)([1-5]\d\d)\b", message, re.IGNORECASE)
    return found.group(1) if found else None


def _open_store(settings: dict, location: AbfsLocation, lake: AzureLake) -> Any:
    """obstore's AzureStore with the lake's credential, endpoint, retries and timeouts."""
    from obstore.store import AzureStore

    credential: dict[str, Any] = {}
    if settings.get("connection_string"):
        fields = parse_connection_string(settings["connection_string"])
        account = fields.get("AccountName", "")
        endpoint = fields.get("BlobEndpoint") or (
            f"{fields.get('DefaultEndpointsProtocol', 'https')}://{account}.blob."
            f"{fields.get('EndpointSuffix', 'core.windows.net')}"
        )
        if fields.get("AccountKey"):
            credential["account_key"] = fields["AccountKey"]
        elif fields.get("SharedAccessSignature"):
            credential["sas_key"] = fields["SharedAccessSignature"].lstrip("?")
        else:
            credential["skip_signature"] = True
    else:
        account, endpoint = settings["account_name"], settings["endpoint"]
        if settings.get("account_key"):
            credential["account_key"] = settings["account_key"]
        elif settings.get("sas_token"):
            credential["sas_key"] = settings["sas_token"]
        elif "default_credential_kwargs" in settings:
            from azure.identity import DefaultAzureCredential
            from obstore.auth.azure import AzureCredentialProvider

            credential["credential_provider"] = AzureCredentialProvider(
                DefaultAzureCredential(**settings["default_credential_kwargs"])
            )
        else:
            credential["skip_signature"] = True
    retries = max(0, lake.max_retries)
    first = dt.timedelta(seconds=lake.retry_backoff_s)
    return AzureStore(
        location.container,
        prefix=location.path.strip("/") or None,
        account_name=account,
        endpoint=endpoint.rstrip("/"),
        client_options={
            "allow_http": endpoint.startswith("http://"),
            "connect_timeout": dt.timedelta(seconds=lake.connect_timeout_s),
            "timeout": dt.timedelta(seconds=lake.read_timeout_s),
        },
        retry_config={
            "max_retries": retries,
            "backoff": {"init_backoff": first, "max_backoff": first * 2**retries, "base": 2},
            "retry_timeout": dt.timedelta(seconds=lake.read_timeout_s * (retries + 1)),
        },
        **credential,
    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _open_filesystem(settings: dict, storage_options: Mapping[str, Any]):
    """An adlfs filesystem whose service client has our retries, timeouts and endpoint."""
    from adlfs import AzureBlobFileSystem

    class BoundedRetryBlobFileSystem(AzureBlobFileSystem):
        """adlfs with its service client built here (retry policy, timeouts, any endpoint URL)."""

        def __init__(self, *, alumi_settings: dict, **kwargs):
            self._alumi = alumi_settings
            super().__init__(**kwargs)

        def do_connect(self):
            self.service_client = _service_client(self._alumi, self.credential)

    credential = None
    if "default_credential_kwargs" in settings:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential(**settings["default_credential_kwargs"])
    options = {"use_listings_cache": False, **storage_options}
    return BoundedRetryBlobFileSystem(
        alumi_settings=settings, credential=credential, anon=credential is None, skip_instance_cache=True, **options
    )


def _service_client(settings: dict, token_credential: Any):
    from azure.storage.blob.aio import BlobServiceClient

    kwargs = settings["client_kwargs"]
    if settings.get("connection_string"):
        return BlobServiceClient.from_connection_string(settings["connection_string"], **kwargs)
    endpoint = settings["endpoint"]
    if settings.get("account_key"):
        key = {"account_name": settings["account_name"], "account_key": settings["account_key"]}
        return BlobServiceClient(endpoint, credential=key, **kwargs)
    if settings.get("sas_token"):
        return BlobServiceClient(f"{endpoint}?{settings['sas_token']}", **kwargs)
    return BlobServiceClient(endpoint, credential=token_credential, **kwargs)


def azure_lake(base_uri: str, env: Mapping[str, str] | None = None, deferred: bool = True, **options) -> AzureLake:
    """An AzureLake with credentials from ``ALUMI_AZURE_*`` variables.

    ``deferred=True`` (for Definitions) keeps every secret an ``EnvVar`` resolved when a run starts;
    ``deferred=False`` (for the CLI and scripts) reads the values now. ``env`` only decides which
    credential applies; deferred values are read from the process environment at run time.
    """
    env = os.environ if env is None else env
    location = parse_abfs_uri(base_uri)

    def secret(name: str):
        return EnvVar(name) if deferred else env[name]

    fields: dict[str, Any] = {
        "base_uri": base_uri,
        "account_name": env.get(ENV_ACCOUNT_NAME) or location.account_name,
        "account_url": env.get(ENV_ACCOUNT_URL) or None,
        **options,
    }
    if env.get(ENV_CONNECTION_STRING):
        fields["connection_string"] = secret(ENV_CONNECTION_STRING)
    elif env.get(ENV_ACCOUNT_KEY):
        fields["credential"] = AzureBlobStorageKeyCredential(key=secret(ENV_ACCOUNT_KEY))
    elif env.get(ENV_SAS_TOKEN):
        fields["credential"] = AzureBlobStorageSASTokenCredential(token=secret(ENV_SAS_TOKEN))
    else:
        fields["credential"] = AzureBlobStorageDefaultCredential()
    if not fields.get("connection_string") and not fields["account_name"]:
        raise AzureLakeError(
            f"ALUMI_LAKE_URI={base_uri!r} names no storage account: write it as "
            f"abfs://{location.container}@<account>.dfs.core.windows.net/{location.path}, "
            f"or set {ENV_ACCOUNT_NAME} or {ENV_CONNECTION_STRING}"
        )
    return AzureLake(**fields)


def lake_for_uri(base_uri: str, env: Mapping[str, str] | None = None, deferred: bool = True) -> Lake:
    """The lake for any URI: an AzureLake for abfs://, az://; a plain Lake otherwise."""
    if is_azure_uri(base_uri):
        return azure_lake(base_uri, env=env, deferred=deferred)
    return Lake(base_uri=base_uri)


# -- dagster-azure's blob resource and SAS URLs for edge devices ---------------------------------------
def blob_storage_resource(lake: AzureLake) -> AzureBlobStorageResource:
    """dagster-azure's AzureBlobStorageResource for the lake's account, with the lake's credential."""
    settings = lake._client_settings(parse_abfs_uri(lake.base_uri))
    if "connection_string" in settings:
        fields = parse_connection_string(settings["connection_string"])
        account = fields.get("AccountName", "")
        scheme, suffix = (
            fields.get("DefaultEndpointsProtocol", "https"),
            fields.get("EndpointSuffix", "core.windows.net"),
        )
        url = fields.get("BlobEndpoint") or f"{scheme}://{account}.blob.{suffix}"
        if fields.get("AccountKey"):
            credential: AzureCredential = AzureBlobStorageKeyCredential(key=fields["AccountKey"])
        elif fields.get("SharedAccessSignature"):
            credential = AzureBlobStorageSASTokenCredential(token=fields["SharedAccessSignature"])
        else:
            credential = AzureBlobStorageAnonymousCredential()
        return AzureBlobStorageResource(account_url=url.rstrip("/"), credential=credential)
    if "account_key" in settings:
        credential = AzureBlobStorageKeyCredential(key=settings["account_key"])
    elif "sas_token" in settings:
        credential = AzureBlobStorageSASTokenCredential(token=settings["sas_token"])
    else:
        credential = lake.credential
    return AzureBlobStorageResource(account_url=settings["endpoint"], credential=credential)


def releases_sas_url(
    lake: AzureLake, days: float = 30.0, prefix: str = "releases", now: dt.datetime | None = None
) -> str:
    """A read-only HTTPS URL (container SAS, no list permission) of the lake's releases root for ``alumi-edge pull``.

    Signed with the account key, or with a user delegation key when the lake uses DefaultAzureCredential
    (role 'Storage Blob Delegator'). The SAS reads the whole container: keep releases in a container of
    their own when the lake holds data edge devices must not read.
    """
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    resource = blob_storage_resource(lake)
    location = parse_abfs_uri(lake.base_uri)
    now = now or dt.datetime.now(dt.UTC)
    start, expiry = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    permission = ContainerSasPermissions(read=True)
    kind = resource.credential.credential_type
    with resource.get_client() as client:
        if kind == "key":
            sas = generate_container_sas(
                client.account_name,
                location.container,
                account_key=resource.credential.key,
                permission=permission,
                start=start,
                expiry=expiry,
            )
        elif kind == "default_azure_credential":
            try:
                delegation = client.get_user_delegation_key(start, expiry)
            except Exception as exc:  # the SDK raises HttpResponseError or an identity error
                raise AzureLakeError(
                    f"lake {lake.base_uri}: cannot get a user delegation key ({_first_line(exc)})"
                ) from exc
            sas = generate_container_sas(
                client.account_name,
                location.container,
                user_delegation_key=delegation,
                permission=permission,
                start=start,
                expiry=expiry,
            )
        else:
            raise AzureLakeError(
                f"lake {lake.base_uri}: a {kind} credential cannot sign a SAS; "
                "use an account key or DefaultAzureCredential"
            )
    path = "/".join(p for p in (location.container, location.path, prefix.strip("/")) if p)
    return f"{resource.account_url}/{urllib.parse.quote(path)}?{sas}"
