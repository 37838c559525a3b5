"""Run the real TypeScript puppet-service server (`tests/ts_puppet/server.mjs`) from the tests.

`ensure_ts_puppet()` installs the pinned npm packages once (`npm ci` from `package-lock.json` into
the git-ignored `tests/ts_puppet/node_modules`) and skips, with the reason shown, only when Node is
not installed. `TsPuppetServer` starts the script on 127.0.0.1, sends it JSON-line commands and
collects what the mock puppet was asked to send.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

TS_DIR = Path(__file__).parent / "ts_puppet"


def ensure_ts_puppet() -> str:
    """Path of `node`, after making sure the npm packages are installed."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js/npm not installed: the TypeScript puppet-service interop tests need them")
    marker = TS_DIR / "node_modules" / "wechaty-puppet-service" / "package.json"
    if not marker.is_file():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=TS_DIR, capture_output=True, text=True, timeout=600
        )
        if result.returncode != 0:
            raise RuntimeError(f"npm ci failed in {TS_DIR}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return node


class TsPuppetServer:
    def __init__(self, node: str, port: int, token: str) -> None:
        self.node, self.port, self.token = node, port, token
        self.events: list[dict[str, Any]] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stderr: list[str] = []

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60.0) -> TsPuppetServer:
        env = {**os.environ, "WECHATY_LOG": "warn", "WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_SERVER": "true"}
        for name in ("TOKEN", "ENDPOINT", "token", "endpoint"):
            env.pop(name, None)
        self._proc = await asyncio.create_subprocess_exec(
            self.node, "server.mjs", str(self.port), self.token,
            cwd=TS_DIR, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=16 * 1024 * 1024,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read(self._proc))
        asyncio.create_task(self._drain_stderr(self._proc))
        await self.wait_event(lambda e: e["event"] == "ready", timeout, start=len(self.events))
        return self

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            text = line.decode("utf-8", "replace").strip()
            if text.startswith("{"):
                self.events.append(json.loads(text))

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            self._stderr.append(line.decode("utf-8", "replace").rstrip())
            del self._stderr[:-200]

    async def wait_event(self, predicate: Any, timeout: float = 20.0, *, start: int = 0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in self.events[start:]:
                if predicate(event):
                    return event
            if self._proc is not None and self._proc.returncode is not None:
                raise RuntimeError("ts puppet server exited:\n" + "\n".join(self._stderr[-30:]))
            if loop.time() > deadline:
                raise TimeoutError(f"no such event; events: {self.events[-10:]}; stderr: {self._stderr[-10:]}")
            await asyncio.sleep(0.02)

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    async def command(self, cmd: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        start = len(self.events)
        self._proc.stdin.write((json.dumps(cmd, ensure_ascii=False) + "\n").encode())
        await self._proc.stdin.drain()
        event = await self.wait_event(lambda e: e["event"] in ("ack", "error") and e.get("cmd") == cmd["cmd"],
                                      start=start)  # fmt: skip
        if event["event"] == "error":
            raise RuntimeError(f"ts puppet server refused {cmd['cmd']}: {event['message']}")

    async def say(self, message_id: str, sender: str, text: str, *, room: str | None = None,
                  mentions: tuple[str, ...] = ()) -> None:  # fmt: skip
        cmd: dict[str, Any] = {"cmd": "say", "id": message_id, "from": sender, "text": text, "mentions": list(mentions)}
        if room:
            cmd["room"] = room
        await self.command(cmd)

    async def image(self, message_id: str, sender: str, data: bytes, *, room: str | None = None,
                    name: str = "photo.jpg") -> None:  # fmt: skip
        cmd: dict[str, Any] = {"cmd": "image", "id": message_id, "from": sender, "name": name,
                               "b64": base64.b64encode(data).decode()}  # fmt: skip
        if room:
            cmd["room"] = room
        await self.command(cmd)

    async def repeat(self, message_id: str) -> None:
        await self.command({"cmd": "repeat", "id": message_id})

    async def kill(self) -> None:
        """SIGKILL, like a crashed gateway."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=2)

    async def stop(self) -> None:
        await self.kill()
