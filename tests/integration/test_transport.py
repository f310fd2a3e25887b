"""The wall-clock deadline over real sockets: a provider that trickles its answer is cut off.

A raw loopback server plays the provider, so the answer can trickle at the byte level (headers
or body) the way no HTTP framework would send it.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from export_poller.providers import errors
from export_poller.providers.base import Provider
from tests.unit.providers.helpers import make

pytestmark = pytest.mark.integration

Handler = Callable[[socket.socket, threading.Event], None]
BODY = b'{"id": 123, "status": "processing", "message": "Export is being processed"}'


class RawServer:
    """Accept connections and hand each to `handler` in its own thread until stopped."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # OSError: the client hung up, as it should
            while conn.recv(65536):  # one answer per request, on a keep-alive connection
                self.handler(conn, self.stop)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def _trickle(data: bytes, every: float) -> Handler:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        for byte in data:
            if stop.wait(every):
                return
            conn.sendall(bytes([byte]))

    return handler


def _headers(body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode()


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], Provider]]:
    servers: list[RawServer] = []

    def start(handler: Handler) -> Provider:
        server = RawServer(handler)
        servers.append(server)
        return make(
            "cometly",
            base_url=f"http://127.0.0.1:{server.port}",
            http_read_timeout=1.0,
            http_total_timeout=1.5,
        )

    yield start
    for server in servers:
        server.close()


def _timed_fetch(provider: Provider) -> tuple[float, Exception | None]:
    started = time.monotonic()
    try:
        provider.fetch("123")
    except errors.ProviderError as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def test_headers_that_trickle_are_cut_at_the_deadline(serve: Callable[[Handler], Provider]) -> None:
    provider = serve(_trickle(_headers(BODY) + BODY, every=0.2))
    took, exc = _timed_fetch(provider)
    assert isinstance(exc, errors.TransportError)
    assert "did not answer within 1.5 s" in str(exc)
    assert took < 4.0  # ~170 bytes at 0.2 s each would take over 30 s


def test_a_body_that_trickles_is_cut_at_the_deadline(serve: Callable[[Handler], Provider]) -> None:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(_headers(BODY))
        _trickle(BODY, every=0.2)(conn, stop)

    took, exc = _timed_fetch(serve(handler))
    assert isinstance(exc, errors.TransportError)
    assert took < 4.0


def test_the_connection_is_usable_again_after_a_cut(serve: Callable[[Handler], Provider]) -> None:
    calls: list[int] = []

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        calls.append(1)
        if len(calls) == 1:
            _trickle(_headers(BODY) + BODY, every=0.2)(conn, stop)
        else:
            conn.sendall(_headers(BODY) + BODY)

    provider = serve(handler)
    _, first = _timed_fetch(provider)
    assert isinstance(first, errors.TransportError)
    assert provider.fetch("123").state == "running"


def test_a_prompt_answer_is_not_cut(serve: Callable[[Handler], Provider]) -> None:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(_headers(BODY) + BODY)

    provider = serve(handler)
    for _ in range(20):  # the same pooled connection, well past one deadline in all
        assert provider.fetch("123").state == "running"


def test_a_gzip_bomb_is_refused_by_its_decoded_size(serve: Callable[[Handler], Provider]) -> None:
    bomb = gzip.compress(gzip.compress(b"{" + b" " * (64 * 1024 * 1024) + b"}"))

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(_headers(bomb, "Content-Encoding: gzip, gzip\r\n") + bomb)

    _, exc = _timed_fetch(serve(handler))
    assert isinstance(exc, errors.BadResponse)
    assert "over" in str(exc)
