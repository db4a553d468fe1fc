"""An authenticating HTTPS front for kube-lite, which authenticates no one.

It does what kube-apiserver's authentication does, and no more: a request presenting an
accepted bearer token or a client certificate (signed by its CA, with an accepted common
name) is forwarded to kube-lite unchanged and its answer sent back; any other gets 401
with a Status whose message quotes the token it was sent (a body the client must never
show). It records how each request authenticated, so a test sees what was sent.
Requests only, not watches (their answers are read whole before they are sent on).
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests import certs


class AuthProxy:
    def __init__(
        self, upstream_port: int, upstream_ca: Path, server: certs.Pair, client_ca: certs.Pair
    ) -> None:
        self.tokens: set[str] = set()
        self.names: set[str] = set()  # accepted client certificate common names
        self.seen: list[str] = []  # per request: "token", "cert:<CN>" or "refused"
        proxy = self
        upstream = ssl.create_default_context(cafile=str(upstream_ca))

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _identity(self) -> str | None:
                peer = self.connection.getpeercert()
                if peer:
                    subject = dict(pair[0] for pair in peer.get("subject", ()))
                    if subject.get("commonName") in proxy.names:
                        return f"cert:{subject['commonName']}"
                header = self.headers.get("Authorization", "")
                if header.startswith("Bearer ") and header[7:] in proxy.tokens:
                    return "token"
                return None

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                who = self._identity()
                proxy.seen.append(who or "refused")
                if who is None:
                    sent = self.headers.get("Authorization", "")
                    message = {"kind": "Status", "code": 401, "message": f"Unauthorized: {sent}"}
                    self._answer(401, json.dumps(message).encode())
                    return
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", upstream_port, context=upstream, timeout=30
                )
                try:
                    headers = {"Accept": "application/json"}
                    if body is not None:
                        headers["Content-Type"] = self.headers.get("Content-Type", "")
                    connection.request(self.command, self.path, body=body, headers=headers)
                    answer = connection.getresponse()
                    self._answer(answer.status, answer.read())
                finally:
                    connection.close()

            def _answer(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _handle

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(server.cert), str(server.key))
        context.load_verify_locations(str(client_ca.cert))
        context.verify_mode = ssl.CERT_OPTIONAL
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
