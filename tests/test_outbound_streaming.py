"""A streamed answer (requests ``stream=True``, httpx ``stream()``) is bounded by its call's
deadline until its body is consumed or closed — not only until it starts (issue 17, item 7).
The clock of the deadline is moved past it once the answer has started (no sleeping); reading
the rest of a 4 MB body must then fail with the client's own timeout error."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import httpx
import pytest
import requests

from propagation import Propagator
from propagation.bindings import Bindings
from propagation.caches.memory import MemoryTokenCache
from propagation.exchange.oauth import OAuthClient
from propagation.outbound import deadline as deadline_module

BODY = 4 * 1024 * 1024


class BigBody:
    """A loopback server answering every request with a 4 MB body (more than any buffer)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % BODY)
                conn.sendall(b"x" * BODY)
            except OSError:
                pass  # the client gave up: that is the point

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def __enter__(self) -> "BigBody":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.listener.close()


class Clock:
    """``time`` as the deadline module sees it: the real monotonic clock plus ``offset``."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(deadline_module, "time", fake)
    return fake


def engine(url: str) -> Propagator:
    return Propagator(
        environ={"destinations": json.dumps([{"name": "S4", "url": f"{url}/api", "Authentication": "NoAuthentication"}])},
        bindings=Bindings([]), cache=MemoryTokenCache(), oauth=OAuthClient(retries=0), call_deadline=60.0)


TIMEOUTS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, httpx.TimeoutException)


def test_requests_stream_is_bounded_until_its_body_is_read(clock: Clock) -> None:
    with BigBody() as server:
        e = engine(server.url)
        response = e.session("S4").get("big", stream=True)
        assert response.status_code == 200
        clock.offset = 61.0  # the call's deadline passes while the caller reads the body
        with pytest.raises(TIMEOUTS):
            for _ in response.iter_content(65536):
                pass
        response.close()
        e.close()


def test_httpx_stream_is_bounded_until_its_body_is_read(clock: Clock) -> None:
    with BigBody() as server:
        e = engine(server.url)
        with e.client("S4").stream("GET", "big") as response:
            assert response.status_code == 200
            clock.offset = 61.0
            with pytest.raises(httpx.ReadTimeout):
                for _ in response.iter_bytes():
                    pass
        e.close()


def test_async_httpx_stream_is_bounded_until_its_body_is_read(clock: Clock) -> None:
    async def scenario() -> None:
        with BigBody() as server:
            e = engine(server.url)
            async with e.async_client("S4").stream("GET", "big") as response:
                assert response.status_code == 200
                clock.offset = 61.0
                with pytest.raises(httpx.ReadTimeout):
                    async for _ in response.aiter_bytes():
                        pass
            await e.aclose()

    asyncio.run(scenario())


def test_a_streamed_body_read_within_the_deadline_is_whole(clock: Clock) -> None:
    with BigBody() as server:
        e = engine(server.url)
        response = e.session("S4").get("big", stream=True)
        assert sum(len(c) for c in response.iter_content(65536)) == BODY
        with e.client("S4").stream("GET", "big") as streamed:
            assert sum(len(c) for c in streamed.iter_bytes()) == BODY
        e.close()
