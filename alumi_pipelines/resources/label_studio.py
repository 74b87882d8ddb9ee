"""Label Studio, where QA reviews the queue: projects, local-files storage, task import, reviewed tasks.

The resource speaks Label Studio's REST API (``/api/...``, the endpoints label-studio-sdk calls) over httpx.
The SDK itself is not a dependency of the pipelines: label-studio-sdk 2.x pins opencv-python-headless < 4.13
and with it numpy < 2.3, which clash with the versions ultralytics and the rest of the project run on.

The API key is a personal access token (Label Studio ≥ 1.14: Account & Settings → Personal Access Token), which
is exchanged for a short-lived access token and renewed when it expires, or a legacy token where the
organization still allows them. Errors are :class:`LabelStudioError` with one line naming the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

LS_DATETIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # the one format Label Studio's task filters accept
PAGE_SIZE = 100


class LabelStudioError(RuntimeError):
    """Label Studio cannot be used as configured; the message names the setting to fix."""


class LabelStudio(ConfigurableResource):
    """The Label Studio server QA reviews in (``ALUMI_LABEL_STUDIO_URL``, ``ALUMI_LABEL_STUDIO_API_KEY``)."""

    url: str = Field(default="", description="base URL of the Label Studio server, e.g. http://localhost:8080")
    api_key: str = Field(default="", repr=False, description="personal access token (or a legacy API token)")
    files_root: str = Field(
        default="",
        description="the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, for a lake on local disk: images are "
        "served as /data/local-files/?d=<path below it>; empty: the lake's own folder",
    )
    link_hours: int = Field(default=168, description="lifetime of the signed image URLs of an Azure lake (hours)")
    timeout_s: float = Field(default=30.0, description="per request")

    _client: Any = PrivateAttr(default=None)
    _access: str | None = PrivateAttr(default=None)

    # -- connection ----------------------------------------------------------------------------------
    def configured(self) -> bool:
        return bool(self.url.strip())

    def _http(self):
        import httpx

        if not self.configured():
            raise LabelStudioError(
                "Label Studio is not configured: set ALUMI_LABEL_STUDIO_URL and ALUMI_LABEL_STUDIO_API_KEY"
            )
        if not self.api_key.strip():
            raise LabelStudioError(
                f"no API key for Label Studio at {self.url}: create a personal access token (Account & Settings) "
                "and set ALUMI_LABEL_STUDIO_API_KEY"
            )
        if self._client is None:
            self._client = httpx.Client(base_url=self.url.rstrip("/"), timeout=self.timeout_s)
        return self._client

    def _is_personal_token(self) -> bool:
        parts = self.api_key.strip().split(".")
        return len(parts) == 3 and parts[0].startswith("eyJ")

    def _auth_header(self, renew: bool = False) -> dict[str, str]:
        if not self._is_personal_token():
            return {"Authorization": f"Token {self.api_key.strip()}"}
        if self._access is None or renew:
            response = self._send("POST", "/api/token/refresh", json={"refresh": self.api_key.strip()}, auth=False)
            if response.status_code != 200:
                raise LabelStudioError(
                    f"Label Studio at {self.url} refused the personal access token ({response.status_code}): "
                    "create a new one (Account & Settings) and set ALUMI_LABEL_STUDIO_API_KEY"
                )
            self._access = response.json()["access"]
        return {"Authorization": f"Bearer {self._access}"}

    def _send(self, method: str, path: str, *, auth: bool = True, renew: bool = False, **kwargs):
        import httpx

        headers = self._auth_header(renew) if auth else {}
        try:
            return self._http().request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise LabelStudioError(
                f"Label Studio at {self.url} is unreachable ({type(exc).__name__}: {exc}): start it or fix "
                "ALUMI_LABEL_STUDIO_URL"
            ) from None

    def request(self, method: str, path: str, **kwargs) -> Any:
        """One API call; JSON back. An expired access token is renewed once."""
        response = self._send(method, path, **kwargs)
        if response.status_code == 401 and self._is_personal_token():
            response = self._send(method, path, renew=True, **kwargs)
        if response.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio at {self.url} refused the API key on {method} {path} ({response.status_code}: "
                f"{_detail(response)}): check ALUMI_LABEL_STUDIO_API_KEY (a personal access token, or enable legacy "
                "tokens for the organization)"
            )
        if response.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio at {self.url}: {method} {path} failed ({response.status_code}: {_detail(response)})"
            )
        return response.json() if response.content else None

    # -- projects ------------------------------------------------------------------------------------
    def projects(self) -> list[dict]:
        out, page = [], 1
        while True:
            found = self.request("GET", "/api/projects", params={"page": page, "page_size": PAGE_SIZE})
            results = found.get("results", []) if isinstance(found, dict) else found
            out.extend(results)
            if not isinstance(found, dict) or not found.get("next"):
                return out
            page += 1

    def ensure_project(self, title: str, label_config: str, description: str) -> tuple[dict, str]:
        """The project named ``title``: created, or its config and description brought up to date.

        Returns the project and what was done (``created``, ``updated`` or ``unchanged``).
        """
        for project in self.projects():
            if project.get("title") == title:
                same_config = _squeezed(project.get("label_config")) == _squeezed(label_config)
                if same_config and (project.get("description") or "").strip() == description.strip():
                    return project, "unchanged"
                body = {"label_config": label_config, "description": description}
                return self.request("PATCH", f"/api/projects/{project['id']}", json=body), "updated"
        body = {"title": title, "label_config": label_config, "description": description, "show_skip_button": True}
        return self.request("POST", "/api/projects", json=body), "created"

    def ensure_local_storage(self, project_id: int, path: str) -> dict:
        """A local-files source storage on ``path`` for the project: the server serves the images below it only
        to projects with such a storage. Never synced (tasks are imported with their URLs)."""
        for storage in self.request("GET", "/api/storages/localfiles", params={"project": project_id}) or []:
            if storage.get("path") == path:
                return storage
        body = {"project": project_id, "path": path, "title": "alumi lake images", "use_blob_urls": True}
        return self.request("POST", "/api/storages/localfiles", json=body)

    # -- tasks ---------------------------------------------------------------------------------------
    def tasks(self, project_id: int, *, updated_after: str | None = None, fields: str = "all") -> Iterator[dict]:
        """The project's tasks (with annotations), oldest update first; only those updated after the given
        Label Studio time (``LS_DATETIME``) when one is given."""
        query: dict = {"ordering": ["tasks:updated_at"]}
        if updated_after:
            query["filters"] = {
                "conjunction": "and",
                "items": [
                    {
                        "filter": "filter:tasks:updated_at",
                        "operator": "greater",
                        "type": "Datetime",
                        "value": updated_after,
                    }
                ],
            }
        page = 1
        while True:
            params = {"project": project_id, "fields": fields, "page": page, "page_size": PAGE_SIZE}
            params["query"] = json.dumps(query)
            found = self.request("GET", "/api/tasks", params=params)
            batch = found.get("tasks", []) if isinstance(found, dict) else []
            yield from batch
            if len(batch) < PAGE_SIZE:
                return
            page += 1

    def task_image_ids(self, project_id: int) -> set[str]:
        """The image ids of the project's tasks (so an image is never imported twice)."""
        return {
            t["data"]["image_id"]
            for t in self.tasks(project_id, fields="task_only")
            if isinstance(t.get("data"), dict) and isinstance(t["data"].get("image_id"), str)
        }

    def import_tasks(self, project_id: int, tasks: Sequence[dict]) -> list[int]:
        """Import tasks (with their predictions) into the project; the new task ids."""
        if not tasks:
            return []
        found = self.request(
            "POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=list(tasks)
        )
        return list(found.get("task_ids") or [])

    def user_emails(self) -> dict[int, str]:
        return {u["id"]: u.get("email") or u.get("username") or str(u["id"]) for u in self.request("GET", "/api/users")}


def ls_time(moment: datetime) -> str:
    """A time as Label Studio's task filters take it."""
    return moment.astimezone(UTC).strftime(LS_DATETIME)


def _squeezed(text: str | None) -> str:
    """Text without whitespace: the server stores a config reformatted."""
    return "".join((text or "").split())


def _detail(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].replace("\n", " ")
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("validation_errors") or body)[:300]
    return str(body)[:300]
