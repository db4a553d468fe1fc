"""A TCP proxy between extauth and the API server, whose faults a test turns on and off.

It forwards bytes and knows nothing of HTTP or TLS (extauth talks TLS to kube-lite through
it, unchanged). Faults, as an API server or the network between shows them:
- `hang()`: nothing moves any more, in either direction, on old and new connections alike
  (a stopped process, a black-holed route); `resume()` lets the held bytes through;
- `refuse()`: new connections are closed at once (a crashed API server); `resume()` ends it;
- `drop()`: every open connection is reset;
- `slow(seconds)`: every chunk waits that long before it is forwarded.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from pathlib import Path


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._moving = threading.Condition()
        self._held = False
        self._refusing = False
        self._delay = 0.0
        self._sockets: set[socket.socket] = set()
        self._dropped: set[socket.socket] = set()
        self._closed = False
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def kubeconfig(self, original: Path, into: Path) -> Path:
        """`original`, pointing at the proxy instead of the API server."""
        into.write_text(
            original.read_text().replace(f"127.0.0.1:{self._target[1]}", f"127.0.0.1:{self.port}")
        )
        return into

    def hang(self) -> None:
        with self._moving:
            self._held = True

    def refuse(self) -> None:
        self._refusing = True
        self.drop()

    def slow(self, seconds: float) -> None:
        self._delay = seconds

    def resume(self) -> None:
        self._refusing = False
        self._delay = 0.0
        with self._moving:
            self._held = False
            self._moving.notify_all()

    def drop(self) -> None:
        with self._moving:
            sockets = list(self._sockets)
            self._dropped.update(sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: closed with a reset, as a crashed peer's kernel does. A
                # close alone would not wake the pump blocked reading it (Linux); a
                # read-side shutdown does, and sends nothing.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD)

    def close(self) -> None:
        self._closed = True
        self.resume()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.drop()

    def _accept(self) -> None:
        while not self._closed:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                with contextlib.suppress(OSError):
                    downstream.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    downstream.close()
                continue
            self.connections += 1
            threading.Thread(target=self._connect, args=(downstream,), daemon=True).start()

    def _connect(self, downstream: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:
            downstream.close()
            return
        upstream.settimeout(None)
        with self._moving:
            self._sockets.update((downstream, upstream))
        for source, sink in ((downstream, upstream), (upstream, downstream)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                with self._moving:
                    while self._held and not self._closed:
                        self._moving.wait()
                if self._delay:
                    time.sleep(self._delay)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with self._moving:
                self._sockets.discard(source)
                reset = source in self._dropped or sink in self._dropped
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    if reset:
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        sock.close()
                    else:
                        sock.shutdown(socket.SHUT_RDWR)
            source.close()  # each socket is the source of one pump: closed once
