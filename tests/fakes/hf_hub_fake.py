"""A tiny loopback fake of the Hugging Face Hub, for `xiaoai models fetch` (no network in the tests).

It serves what `huggingface_hub.snapshot_download` asks of a hub or a mirror (`HF_ENDPOINT`), as the
installed huggingface_hub requests it:

  GET  /api/models/<repo>/revision/<rev>          repo info: the commit sha (+ file list)
  GET  /api/models/<repo>/tree/<rev>[/<path>]     the file listing (`?recursive=true`), one page
  HEAD /<repo>/resolve/<rev>/<file>               metadata: X-Repo-Commit, ETag, Content-Length
  GET  /<repo>/resolve/<rev>/<file>               the bytes; honours `Range: bytes=N-` (resume)

    with HubFake({"org/model": {"config.json": b"{}", "weights.bin": data}}) as hub:
        env["HF_ENDPOINT"] = hub.url
        hub.cut_after["org/model/weights.bin"] = 1000   # the first download of it breaks off there
        hub.fail["org/model/config.json"] = 1            # its next GET answers 500
        ...
        hub.requests   # (method, path, Range header) of every request, in order

Unknown repos answer 404 with the hub's `X-Error-Code: RepoNotFound`.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubFake:
    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.commits = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}
        self.requests: list[tuple[str, str, str | None]] = []
        self.cut_after: dict[str, int] = {}  # "<repo>/<file>" -> bytes sent before the first GET breaks off
        self.fail: dict[str, int] = {}  # "<repo>/<file>" -> how many GETs of it answer 500 (hub trouble)
        self.slow: set[str] = set()  # "<repo>/<file>" served at about 64 KiB a second (a long download)
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> HubFake:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app(), log_level="warning", log_config=None, access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake hub did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def downloads(self, name: str) -> list[str | None]:
        """The Range header of every GET of the file `name` (None: from the start)."""
        return [rng for method, path, rng in self.requests if method == "GET" and "/resolve/" in path
                and path.endswith("/" + name)]

    # ------------------------------------------------------------------ app
    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/models/{org}/{name}/revision/{rev:path}", self._revision),
            Route("/api/models/{org}/{name}/tree/{rest:path}", self._tree),
            Route("/{org}/{name}/resolve/{rev}/{file:path}", self._resolve, methods=["GET", "HEAD"]),
        ])

    def _log(self, request: Request) -> None:
        self.requests.append((request.method, request.url.path, request.headers.get("range")))

    def _repo(self, request: Request) -> str | None:
        repo = f"{request.path_params['org']}/{request.path_params['name']}"
        return repo if repo in self.repos else None

    @staticmethod
    def _not_found() -> Response:
        return JSONResponse({"error": "Repository not found"}, status_code=404,
                            headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})

    async def _revision(self, request: Request) -> Response:
        self._log(request)
        repo = self._repo(request)
        if repo is None:
            return self._not_found()
        return JSONResponse({
            "id": repo, "modelId": repo, "sha": self.commits[repo], "private": False, "disabled": False,
            "gated": False, "tags": [], "siblings": [{"rfilename": f} for f in sorted(self.repos[repo])],
        })

    async def _tree(self, request: Request) -> Response:
        self._log(request)
        repo = self._repo(request)
        if repo is None:
            return self._not_found()
        files = self.repos[repo]
        entries: list[dict[str, Any]] = []
        folders = sorted({"/".join(f.split("/")[:i]) for f in files for i in range(1, f.count("/") + 1)})
        entries += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                    for d in folders]
        entries += [{"type": "file", "oid": git_blob_id(data), "size": len(data), "path": f}
                    for f, data in sorted(files.items())]
        return JSONResponse(entries)

    async def _resolve(self, request: Request) -> Response:
        self._log(request)
        repo = self._repo(request)
        if repo is None:
            return self._not_found()
        name = request.path_params["file"]
        data = self.repos[repo].get(name)
        if data is None:
            return JSONResponse({"error": "Entry not found"}, status_code=404,
                                headers={"X-Error-Code": "EntryNotFound"})
        headers = {"X-Repo-Commit": self.commits[repo], "ETag": f'"{git_blob_id(data)}"',
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if request.method == "HEAD":
            return Response(b"", headers={**headers, "Content-Length": str(len(data))})
        if self.fail.get(f"{repo}/{name}", 0) > 0:
            self.fail[f"{repo}/{name}"] -= 1
            return JSONResponse({"error": "Internal Error"}, status_code=500)
        start = 0
        rng = request.headers.get("range", "")
        if rng.startswith("bytes=") and rng[6:].split("-")[0].isdigit():
            start = int(rng[6:].split("-")[0])
        body = data[start:]
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if f"{repo}/{name}" in self.slow:
            async def trickle() -> AsyncIterator[bytes]:
                for i in range(0, len(body), 16 * 1024):
                    yield body[i:i + 16 * 1024]
                    await asyncio.sleep(0.25)

            return StreamingResponse(trickle(), status_code=status,
                                     headers={**headers, "Content-Length": str(len(body))})
        cut = self.cut_after.pop(f"{repo}/{name}", None)
        if cut is None:
            return Response(body, status_code=status, headers=headers)

        async def broken() -> AsyncIterator[bytes]:  # the connection drops part-way, as on a bad network
            yield body[:cut]
            raise ConnectionResetError("fake hub: connection cut")

        return StreamingResponse(broken(), status_code=status, headers={**headers, "Content-Length": str(len(body))})
