"""Where releases are fetched from: a local folder, a ``file://`` URI or an HTTP(S) URL (with a SAS query).

A source is addressed at the releases root (the folder holding ``channels/`` and ``<version>/``);
a lake root is accepted too when it has a ``releases/`` folder.
"""

from __future__ import annotations

import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHUNK_BYTES = 1 << 20


class SourceError(Exception):
    """The source cannot be read (unreachable, missing file, HTTP error)."""


class ReleaseSource(ABC):
    """Reads files below a releases root."""

    @abstractmethod
    @contextmanager
    def open_chunks(self, relpath: str) -> Iterator[Iterator[bytes]]:
        """Context manager yielding an iterator of the file's byte chunks."""

    @abstractmethod
    def describe(self, relpath: str = "") -> str:
        """Where ``relpath`` lives, for messages (never includes secrets)."""

    def read_bytes(self, relpath: str, max_bytes: int) -> bytes:
        """The whole file, refusing files larger than ``max_bytes``."""
        parts: list[bytes] = []
        total = 0
        with self.open_chunks(relpath) as chunks:
            for chunk in chunks:
                total += len(chunk)
                if total > max_bytes:
                    raise SourceError(f"{self.describe(relpath)}: larger than {max_bytes} bytes")
                parts.append(chunk)
        return b"".join(parts)


class LocalSource(ReleaseSource):
    """A folder on this machine (a mounted share or a synced copy of the lake)."""

    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if (root / "releases" / "channels").is_dir() and not (root / "channels").is_dir():
            root = root / "releases"
        self.root = root

    def describe(self, relpath: str = "") -> str:
        return str(self.root / relpath) if relpath else str(self.root)

    @contextmanager
    def open_chunks(self, relpath: str):
        path = self.root / safe_relpath(relpath)
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise SourceError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        with fh:
            yield iter(lambda: fh.read(CHUNK_BYTES), b"")


class HttpSource(ReleaseSource):
    """An HTTP(S) releases root; a query string (an Azure SAS token) is appended to every file URL."""

    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 3):
        parts = urllib.parse.urlsplit(url)
        self._scheme, self._netloc = parts.scheme, parts.netloc
        self._path = parts.path.rstrip("/")
        self._query = parts.query
        self.timeout_s = timeout_s
        self.retries = retries

    def url(self, relpath: str) -> str:
        path = f"{self._path}/{urllib.parse.quote(safe_relpath(relpath))}"
        return urllib.parse.urlunsplit((self._scheme, self._netloc, path, self._query, ""))

    def describe(self, relpath: str = "") -> str:
        path = f"{self._path}/{relpath}" if relpath else self._path
        return f"{self._scheme}://{self._netloc}{path}"

    @contextmanager
    def open_chunks(self, relpath: str):
        import httpx

        url = self.url(relpath)
        last_error: Exception | None = None
        for attempt in range(self.retries):
            client = httpx.Client(timeout=self.timeout_s, follow_redirects=True)
            try:
                response = client.send(client.build_request("GET", url), stream=True)
                break
            except httpx.TransportError as exc:
                client.close()
                last_error = exc
                if attempt + 1 < self.retries:
                    time.sleep(min(0.5 * 2**attempt, 5.0))
        else:
            raise SourceError(f"{self.describe(relpath)}: unreachable after {self.retries} tries ({last_error})")
        try:
            if response.status_code >= 400:
                raise SourceError(f"{self.describe(relpath)}: HTTP {response.status_code}")
            yield http_chunks(response, self.describe(relpath))
        finally:
            response.close()
            client.close()


def http_chunks(response, where: str) -> Iterator[bytes]:
    import httpx

    try:
        yield from response.iter_bytes()
    except httpx.HTTPError as exc:
        raise SourceError(f"{where}: download interrupted ({exc})") from exc


def safe_relpath(relpath: str) -> str:
    """``relpath`` when it stays below the source root (relative, no '..', no backslash)."""
    parts = relpath.split("/")
    if not relpath or relpath.startswith("/") or "\\" in relpath or any(p in ("", ".", "..") for p in parts):
        raise SourceError(f"path {relpath!r}: must be relative without '..'")
    return relpath


def open_source(uri: str) -> ReleaseSource:
    """A ReleaseSource for a local path, ``file://`` URI or ``http(s)://`` URL."""
    if uri.startswith(("https://", "http://")):
        from alumi_edge.sources_azure import azure_source_for  # an Azure Blob URL with a SAS token

        return azure_source_for(uri) or HttpSource(uri)
    if uri.startswith("file://"):
        parsed = urllib.parse.urlsplit(uri)
        return LocalSource(urllib.parse.unquote(parsed.path))
    if "://" in uri:
        raise SourceError(f"source {uri!r}: expected a folder, file:// URI or http(s):// URL")
    return LocalSource(uri)
