"""A mock OpenAI-compatible upstream for the demo and compose stack.

`POST /v1/chat/completions` answers a chat completion whose text says which team it
served, and the response carries `received_headers`: what arrived from Envoy, with the
`Authorization` value masked (enough to see that Envoy injected the provider key, not
enough to reuse it). `GET /healthz` is for readiness checks.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("extauth.demo.upstream")

_SENSITIVE = ("authorization", "vanity-auth", "api-key", "x-api-key")


def mask(value: str) -> str:
    """`Bearer sk-demo-abcdef` -> `Bearer sk-d... (15 chars, masked)`."""
    scheme, sep, credential = value.partition(" ")
    if not sep:
        scheme, credential = "", value
    shown = credential[:4] if len(credential) > 12 else ""
    prefix = f"{scheme} " if scheme else ""
    return f"{prefix}{shown}... ({len(credential)} chars, masked)"


def completion(body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    team = headers.get("x-org", "(no x-org)")
    messages = body.get("messages") or [{}]
    question = str(messages[-1].get("content", ""))[:200] if isinstance(messages, list) else ""
    text = f"Hello {team}! This is the mock upstream; you said: {question!r}"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(body.get("model", "mock-model")),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "received_headers": {
            name: mask(value) if name in _SENSITIVE else value for name, value in headers.items()
        },
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "mock-llm/1"
    # Keep-alive: Envoy reuses upstream connections instead of opening one per request.
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, indent=2).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        if self.path.split("?")[0] != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send(400, {"error": {"message": "body is not JSON"}})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._send(200, completion(body if isinstance(body, dict) else {}, headers))

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mock OpenAI-compatible upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ThreadingHTTPServer.request_queue_size = 128  # the default backlog of 5 drops bursts
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((args.host, args.port), _Handler)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    log.info("mock upstream on %s:%d", args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
