"""The pooled httpx client of the translator and moderation calls, against servers on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import json

import pytest

from bot.prompts.devtools import ChatCompletionsServer, Reply
from bot.prompts.httpclient import MAX_RESPONSE_BYTES, HttpConnectionError, HttpTimeout, HttpxClient


class _KeepAliveServer:
    """A tiny HTTP/1.1 server that counts the TCP connections it accepts and answers every request on a
    connection (keep-alive) with `body`."""

    def __init__(self, body: bytes = b'{"ok": true}', delay_s: float = 0.0) -> None:
        self.body = body
        self.delay_s = delay_s
        self.connections = 0
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/x"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                await reader.readexactly(length)
                self.requests += 1
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(self.body) + self.body)  # fmt: skip
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_sequential_requests_share_one_pooled_connection() -> None:
    client = HttpxClient()

    async def run() -> _KeepAliveServer:
        server = _KeepAliveServer()
        async with server as url:
            for i in range(3):
                resp = await client.post_json(url, {"i": i}, headers={}, timeout_s=2.0)
                assert resp.status == 200 and json.loads(resp.body) == {"ok": True}
            await client.aclose()
        return server

    server = asyncio.run(run())
    assert server.requests == 3 and server.connections == 1


def test_the_same_client_works_from_a_second_event_loop() -> None:
    """An httpx pool belongs to one loop; the client starts a new pool when called from another."""
    client = HttpxClient()
    with ChatCompletionsServer() as server:
        server.push(Reply(content="one"), Reply(content="two"))
        for _ in range(2):
            resp = asyncio.run(client.post_json(server.base_url + "/chat/completions", {}, headers={}, timeout_s=2))
            assert resp.status == 200
    assert len(server.requests) == 2


def test_a_huge_answer_is_cut_at_the_limit() -> None:
    async def run() -> int:
        async with _KeepAliveServer(body=b"x" * (MAX_RESPONSE_BYTES + 4096)) as url:
            client = HttpxClient()
            resp = await client.post_json(url, {}, headers={}, timeout_s=5.0)
            await client.aclose()
            return len(resp.body)

    assert asyncio.run(run()) == MAX_RESPONSE_BYTES


def test_loopback_never_goes_through_an_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # the discard port: nothing answers there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    async def run() -> int:
        async with _KeepAliveServer() as url:
            client = HttpxClient()
            resp = await client.post_json(url, {}, headers={}, timeout_s=2.0)
            await client.aclose()
            return resp.status

    assert asyncio.run(run()) == 200


def test_errors_map_to_timeout_and_connection_error() -> None:
    async def run() -> None:
        client = HttpxClient()
        async with _KeepAliveServer(delay_s=1.0) as url:
            with pytest.raises(HttpTimeout):
                await client.post_json(url, {}, headers={}, timeout_s=0.2)
        with pytest.raises(HttpConnectionError):
            await client.post_json(url, {}, headers={}, timeout_s=0.5)  # the server is gone
        await client.aclose()

    asyncio.run(run())


def test_pipeline_closes_the_pool_it_made() -> None:
    from bot.prompts import PromptPipeline, PromptSettings

    with ChatCompletionsServer() as server:
        settings = PromptSettings.model_validate({"translator": "openai", "fallback": [], "enhance": {"enabled": False},
                                                  "openai": {"base_url": server.base_url, "timeout_s": 2}})

        async def run() -> str:
            pipe = PromptPipeline.from_settings(settings, environ={})
            prepared = await pipe.prepare("一只猫")
            own = pipe._own_http
            assert own is not None and own._clients  # a pooled client was opened
            await pipe.aclose()
            assert not own._clients
            injected = HttpxClient()
            other = PromptPipeline.from_settings(settings, environ={}, http_client=injected)
            await other.aclose()  # an injected client belongs to its owner: left alone
            return prepared.final_prompt

        assert asyncio.run(run()).startswith("translated: ")  # the fake echo: the request went out
