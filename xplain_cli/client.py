"""A small synchronous client of the v1 HTTP API (httpx), used by the command line."""

from __future__ import annotations

import json
import mimetypes
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


class ApiError(Exception):
    """The service answered with a problem+json (or another error status)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _problem_detail(response: httpx.Response) -> str:
    """The most useful one-line text of an error response."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "title"):
            if body.get(key):
                return str(body[key])
    return json.dumps(body)


@dataclass
class Client:
    """The service at ``url``, with an optional API key."""

    url: str
    api_key: str | None = None
    timeout: float = 30.0

    def _http(self) -> httpx.Client:
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        # No Nagle delay: a multipart POST would otherwise wait for the server's delayed ACK.
        nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        return httpx.Client(
            base_url=self.url.rstrip("/"),
            headers=headers,
            timeout=self.timeout,
            transport=httpx.HTTPTransport(socket_options=nodelay),
        )

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise ApiError(response.status_code, _problem_detail(response))
        return response

    def get_json(self, path: str, **params: Any) -> Any:
        """GET ``path`` and decode its JSON."""
        with self._http() as http:
            return self._check(http.get(path, params=params or None)).json()

    def get_bytes(self, path: str, **params: Any) -> bytes:
        """GET ``path`` and return its body."""
        with self._http() as http:
            return self._check(http.get(path, params=params or None)).content

    def submit(
        self,
        image: Path,
        *,
        method: str,
        model: str | None,
        target: str | None,
        params: dict[str, Any],
        evaluate: list[str],
        wait: float,
    ) -> tuple[int, dict[str, Any]]:
        """POST the image; returns (HTTP status, JSON body): 200 finished, 202 queued."""
        data: dict[str, str] = {"method": method, "wait": str(wait)}
        if model:
            data["model"] = model
        if target is not None:
            data["target"] = target
        if params:
            data["params"] = json.dumps(params)
        if evaluate:
            data["evaluate"] = json.dumps(evaluate)
        content_type = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
        with self._http() as http, image.open("rb") as handle:
            files = {"file": (image.name, handle, content_type)}
            response = self._check(
                http.post("/v1/explanations", data=data, files=files, timeout=wait + self.timeout)
            )
        return response.status_code, response.json()

    def events(self, job_id: str) -> Iterator[dict[str, Any]]:
        """The job's server-sent events, decoded, until the stream closes."""
        with (
            self._http() as http,
            http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as response,
        ):
            self._check(response)
            for line in response.iter_lines():
                if line.startswith("data:"):
                    try:
                        yield json.loads(line[5:].strip())
                    except ValueError:
                        continue
