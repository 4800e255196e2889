"""HTTP plumbing shared by the fake servers: a threaded loopback server and its handler.

Why a module of its own: serving HTTP/1.1 keep-alive on loopback, tracking open
connections so ``stop()`` can drop them, sleeping in a way ``stop()`` can interrupt,
and writing replies (or a TCP reset) have nothing to do with OAuth or getpaid's API.
The servers built on it (:mod:`.token_server`, :mod:`.fake_getpaid`) only implement
:meth:`LoopbackServer._route`.

Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import sys
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

__all__ = ["Handler", "LoopbackServer", "ReplyError"]

_S = TypeVar("_S", bound="LoopbackServer")


class ReplyError(Exception):
    """Abort request handling with a ready-made response."""

    def __init__(
        self,
        status: int,
        body: Any,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = dict(headers or {})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    allow_reuse_address = True
    owner: LoopbackServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up (or our own stop() closing its socket) is routine here.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class Handler(BaseHTTPRequestHandler):
    """Reads the body (plain or chunked) and hands every request to the owner's ``_route``."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeGetpaid/1.0"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle plus the
    # client's delayed ACK adds ~40 ms to every keep-alive response on loopback.
    disable_nagle_algorithm = True
    timeout = 60  # idle keep-alive connections do not pin a thread forever
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr logging."""

    def setup(self) -> None:
        super().setup()
        self.server.owner._track_connection(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track_connection(self.connection, add=False)

    # Every method goes through one dispatcher so unknown methods get proper 405s.
    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self.send(400, {"error": "invalid_request", "error_description": "Bad body"})
            return
        try:
            self.server.owner._route(self, urlsplit(self.path).path, body)
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def send(
        self,
        status: int,
        body: Any,
        *,
        content_type: str = "application/json",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        """Write a whole response; ``body`` is bytes, text, or JSON-serialisable data.

        ``headers`` may be ``(name, value)`` pairs, which can repeat a name.
        """
        if isinstance(body, bytes):
            payload = body
        elif isinstance(body, str):
            payload = body.encode("utf-8")
        else:
            payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        for name, value in pairs:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)  # no do_HEAD: HEAD gets 501 before reaching here
        self.wfile.flush()

    def reset_connection(self) -> None:
        """Drop the TCP connection with an RST and no HTTP response at all."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


class LoopbackServer:
    """A threaded HTTP server in a daemon thread; subclasses answer requests in ``_route``.

    Use as a context manager (or ``start()``/``stop()``). ``_lock`` guards the
    subclasses' state as well; ``_sleep`` waits but returns at once when stopping.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.RLock()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _route(self, handler: Handler, path: str, body: bytes) -> None:
        """Answer one request (``path`` without the query string) with ``handler.send``."""
        raise NotImplementedError

    def start(self: _S) -> _S:
        """Bind and serve in a daemon thread; returns ``self`` for chaining."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        server_cls = _Server6 if ":" in self.host else _Server
        server = server_cls((self.host, self.port), Handler)
        server.owner = self
        self._stopping.clear()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and drop open keep-alive connections."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()  # wakes handlers sleeping on latency / timeout faults
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is bound and serving."""
        return self._server is not None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (only valid while running)."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not running; call start() first")
        # typeshed allows a bytes host; ours is always bound to a str host.
        host, port = cast("tuple[str, int]", self._server.server_address[:2])
        if ":" in str(host):
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _sleep(self, seconds: float) -> None:
        if seconds and seconds > 0:
            self._stopping.wait(seconds)


class FaultQueue:
    """Faults queued for an endpoint's next requests, served first in, first out.

    Shared by the token endpoint and the API emulation: each checks ``kind`` against its
    own list of kinds. Thread-safe (the servers answer each request in its own thread).
    """

    def __init__(self, kinds: tuple[str, ...], what: str) -> None:
        self.kinds = kinds
        self.what = what  # names the kind in errors, e.g. "API fault kind"
        self._queue: deque[tuple[str, int | None]] = deque()
        self._lock = threading.Lock()

    def add(self, kind: str, count: int = 1, retry_after: int | None = None) -> None:
        if kind not in self.kinds:
            raise ValueError(f"unknown {self.what} {kind!r}; expected one of {self.kinds}")
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._queue.extend([(kind, retry_after)] * count)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()

    def next(self) -> tuple[str, int | None] | None:
        """The fault for this request, or None when none is queued."""
        with self._lock:
            return self._queue.popleft() if self._queue else None
