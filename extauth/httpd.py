"""A minimal HTTP/1.1 endpoint for operators: `/metrics`, `/healthz`, `/readyz`, and the
status page at `/` (statuspage.py; off with `--no-status-page`).

It is deliberately tiny (asyncio streams, GET only, one request per connection) so the
service needs no web framework; Prometheus and kubelet probes are its only clients.
`/readyz` turns 503 before shutdown drains, so a load balancer stops sending first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from http import HTTPStatus

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

_MAX_REQUEST_LINE = 8192


class StatusServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        is_ready: Callable[[], bool],
        problems: Callable[[], list[str]] = list,
        page: Callable[[str], bytes] | None = None,
    ) -> None:
        self._registry = registry
        self._page = page  # the status page for a query string; None: 404
        self._is_ready = is_ready
        self._problems = problems
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    async def start(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._server = await asyncio.start_server(self._handle, host, int(port))
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving /metrics, /healthz, /readyz on %s (port %d)", address, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _route(self, method: str, path: str, accept: str = "") -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        path = path.partition("?")[0]
        if path == "/metrics":
            # OpenMetrics (`# EOF`, typed `_total` counters) when the scraper asks for it
            # (Prometheus does by default); the classic text format otherwise.
            encode, content_type = choose_encoder(accept)
            return 200, content_type, encode(self._registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            # Problems that do not stop serving the last good state (a Kubernetes API
            # server that does not answer) are said, not made a 503: see README.
            said = "".join(f"{p}\n" for p in self._problems()).encode()
            if self._is_ready():
                return 200, "text/plain", b"ready\n" + said
            return 503, "text/plain", b"not ready\n" + said
        return 404, "text/plain", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            method = ""
            if len(line) > _MAX_REQUEST_LINE:
                status, kind, body = 414, "text/plain", b"request line too long\n"
            else:
                parts = line.decode("latin-1").split()
                method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
                accept = await _accept_header(reader)
                page, _, query = path.partition("?")
                if page == "/" and self._page is not None and method in ("GET", "HEAD"):
                    # In a thread: the first render after a policy change works out who
                    # every AuthConfig admits, which must not hold up Checks meanwhile.
                    status, kind = 200, _HTML
                    body = await asyncio.to_thread(self._page, query)
                else:
                    status, kind, body = self._route(method, path, accept)
            extra = _PAGE_HEADERS if kind == _HTML else ""
            head = (
                f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: {kind}\r\n"
                f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


_MAX_HEADERS = 100
_HTML = "text/html; charset=utf-8"
# The page has no script and loads nothing: a browser is told to run and fetch nothing,
# so a value that escaped escaping still could not act.
_PAGE_HEADERS = (
    "content-security-policy: default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'\r\n"
    "x-content-type-options: nosniff\r\ncache-control: no-store\r\n"
    "referrer-policy: no-referrer\r\n"
)


async def _accept_header(reader: asyncio.StreamReader) -> str:
    """Drain the request's headers (at most 100, each within the stream's line limit);
    only Accept matters here (the /metrics format)."""
    accept: list[str] = []
    for _ in range(_MAX_HEADERS):
        line = await asyncio.wait_for(reader.readline(), 5)
        if line in (b"\r\n", b"\n", b""):
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if sep and name.strip().lower() == "accept":
            accept.append(value.strip())
    else:
        raise ValueError("too many headers")
    return ",".join(accept)[:_MAX_REQUEST_LINE]
