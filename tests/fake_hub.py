"""A local stand-in for the Hugging Face Hub: the few HTTP endpoints ``huggingface_hub`` (2.x) calls to push a
folder (``create_repo``, ``create_branch``, ``upload_folder``), on 127.0.0.1, with every request recorded.

Point a client at it with ``HF_ENDPOINT=fake.url``. What it answers:

- ``POST /api/repos/create`` (JSON ``name``, ``organization``, ``visibility``, ``type``): 200 ``{"url": ...}`` and
  the repository is made, with its ``visibility`` recorded and an empty ``main``; 409 when it exists already
  (``exist_ok=True`` accepts that).
- ``POST /api/models/{owner}/{name}/branch/{branch}``: 200 ``{}``, the branch made from ``main``; 409 if it exists.
- ``POST /api/validate-yaml`` (JSON ``content``: the README about to be pushed): 200 ``{"errors": [], "warnings":
  []}``.
- ``POST /api/models/{owner}/{name}/preupload/{revision}`` (JSON ``files``: path, size, sample): 200, every file
  ``"uploadMode": "regular"`` and not ignored, so the client sends each file's bytes inline in the commit (base64)
  and no LFS or Xet upload has to be faked.
- ``POST /api/models/{owner}/{name}/commit/{revision}`` (NDJSON: a ``header`` line with the summary, then one
  ``file`` line per file with its ``path`` and base64 ``content``): 200 ``{"commitUrl", "commitOid"}``, the files
  stored on that branch (404 for an unknown repository or branch).
- Anything else: 404, recorded like the rest, so a test sees an endpoint it did not expect.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass
class Request:
    """One request as it arrived: method, path with its query, headers (names in lower case) and raw body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Repo:
    """A repository of the fake: its visibility and each branch's files (path -> bytes)."""

    visibility: str | None
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})


class FakeHub:
    """The fake Hub, served from a thread while used as a context manager; ``url`` is its ``HF_ENDPOINT``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.commits: list[dict[str, Any]] = []  # each commit's repo, revision, header and file paths
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's method name
                self._answer()

            def do_GET(self) -> None:  # noqa: N802
                self._answer()

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer()

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                hub.requests.append(request)
                status, answer = hub.handle(request)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request: Request) -> tuple[int, Any]:
        """The status and JSON answer for ``request`` (see the module's docstring)."""
        parts = [unquote(p) for p in urlsplit(request.path).path.strip("/").split("/")]
        if request.method != "POST":
            return 404, {"error": f"not faked: {request.method} {request.path}"}
        if parts == ["api", "repos", "create"]:
            payload = json.loads(request.body)
            repo_id = "/".join(p for p in (payload.get("organization"), payload["name"]) if p)
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            self.repos[repo_id] = Repo(payload.get("visibility"))
            return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}
        if parts == ["api", "validate-yaml"]:
            return 200, {"errors": [], "warnings": []}
        if len(parts) == 6 and parts[:2] == ["api", "models"]:
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], parts[5]
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": f"Repository not found: {repo_id}"}
            if action == "branch":
                if revision in repo.branches:
                    return 409, {"error": f"Branch {revision} already exists"}
                repo.branches[revision] = dict(repo.branches["main"])
                return 200, {}
            if revision not in repo.branches:
                return 404, {"error": f"Invalid rev id: {revision}"}
            if action == "preupload":
                files = json.loads(request.body)["files"]
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                       for f in files]}
            if action == "commit":
                return self._commit(repo_id, repo, revision, request.body)
        return 404, {"error": f"not faked: {request.method} {request.path}"}

    def _commit(self, repo_id: str, repo: Repo, revision: str, body: bytes) -> tuple[int, Any]:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        added = {}
        for line in lines:
            if line["key"] == "file":
                assert line["value"]["encoding"] == "base64", line["value"]["encoding"]
                added[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            elif line["key"] != "header":
                return 400, {"error": f"not faked: commit operation {line['key']}"}
        repo.branches[revision].update(added)
        oid = hashlib.sha1(body).hexdigest()
        self.commits.append({"repo_id": repo_id, "revision": revision, "header": header, "paths": sorted(added)})
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid}
