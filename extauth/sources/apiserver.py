"""The few calls extauth makes to a Kubernetes API server, over urllib3.

The official client imports every model class of the API in its package `__init__`: ~22 MB
of resident memory in the serving process before the first request (BENCHMARKS.md). The
source needs five calls (list, watch, get a Secret, read the CRD, patch an AuthConfig's
status), all on raw JSON, so they are made here.

Errors keep the meaning the watch, relist and backoff logic reads: an answer that is not
2xx raises `ApiError` with its HTTP status and reason phrase; the body is read to free the
connection and dropped, because a refusal can quote the object (a Secret's data).
Connection failures and timeouts are urllib3's own exceptions (`watching.reason_of` sorts
them). A 401 fetches the credential again (a rotated token, an exec plugin run anew) and
tries once more. No token, key or body is in any exception, log line or repr.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import urllib3
from urllib3.exceptions import InsecureRequestWarning
from urllib3.response import BaseHTTPResponse

from extauth.sources import kubeconfig
from extauth.sources.kubeconfig import Target

log = logging.getLogger(__name__)

Timeout = float | tuple[float, float]
# One watch per kind and namespace, the heartbeat, the status writer, the rereader: a pool
# this size keeps each of them a connection of its own.
POOL_SIZE = 16
# A watch event or list page is one JSON document on one line; a Secret is at most ~1.5 MB
# in etcd. A line longer than this is not an event: the watch fails and starts over.
MAX_LINE = 64 * 1024 * 1024


class ApiError(Exception):
    """A non-2xx answer: its status and reason phrase, never its body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.reason}"


def path_of(
    group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    """`/api/v1/...` for the core group (""), `/apis/group/version/...` otherwise."""
    parts = ["/api/v1"] if not group else ["/apis", quote(group, safe=""), quote(version, safe="")]
    if namespace:
        parts += ["namespaces", quote(namespace, safe="")]
    parts.append(plural)
    if name is not None:
        parts.append(quote(name, safe=""))
    return "/".join(parts)


class ApiServer:
    """One API server: its settings (`kubeconfig.Target`) and a pool of connections."""

    def __init__(self, target: Target) -> None:
        self.target = target
        split = urlsplit(target.server)
        self._prefix = split.path.rstrip("/")
        self._lock = threading.Lock()
        self._pool: urllib3.HTTPConnectionPool | None = None
        self._pool_cert = -1

    def __repr__(self) -> str:
        return f"ApiServer({self.target.server!r})"

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Its connections closed now (a new request opens new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _connections(self) -> urllib3.HTTPConnectionPool:
        target = self.target
        with self._lock:
            version = target.cert_version
            if self._pool is not None and self._pool_cert == version:
                return self._pool
            old = self._pool
            split = urlsplit(target.server)
            options: dict[str, Any] = {"maxsize": POOL_SIZE, "retries": 0}
            if split.scheme == "https":
                options["ssl_context"] = kubeconfig.ssl_context(target)
                if target.insecure:
                    options["cert_reqs"] = "CERT_NONE"
                    options["assert_hostname"] = False
                    # Said once here, not by urllib3 on every request of every watch.
                    warnings.filterwarnings("ignore", category=InsecureRequestWarning)
                    log.warning(
                        "kubernetes: %s: insecure-skip-tls-verify: the API server's "
                        "certificate is not checked",
                        target.where,
                    )
                elif target.tls_server_name:
                    options["server_hostname"] = target.tls_server_name
                    options["assert_hostname"] = target.tls_server_name
            self._pool = urllib3.connection_from_url(target.server, **options)
            self._pool_cert = version
        if old is not None:
            old.close()
        return self._pool

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool | None] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: Timeout = 10.0,
        stream: bool = False,
    ) -> BaseHTTPResponse:
        """The answer, 2xx (else ApiError). With `stream`, its body is not read yet: the
        caller reads it (`.data`, `lines`) and releases the connection."""
        pairs = {
            k: ("true" if v is True else "false" if v is False else str(v))
            for k, v in (query or {}).items()
            if v is not None
        }
        url = self._prefix + path + (f"?{urlencode(pairs)}" if pairs else "")
        payload = None if body is None else json.dumps(body).encode()
        if isinstance(timeout, tuple):
            limits = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        else:
            limits = urllib3.Timeout(connect=timeout, read=timeout)
        for attempt in (1, 2):
            headers = {"Accept": "application/json", "User-Agent": "extauth"}
            if payload is not None:
                headers["Content-Type"] = content_type
            token = self.target.bearer()
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            response = self._connections().urlopen(
                method,
                url,
                body=payload,
                headers=headers,
                timeout=limits,
                preload_content=False,
                redirect=False,
                retries=0,
            )
            if 200 <= response.status < 300:
                if not stream:
                    response.data  # noqa: B018 - read whole (and kept) now, so the
                    response.release_conn()  # connection goes back to the pool
                return response
            status, reason = response.status, response.reason or ""
            _discard(response)
            if status == 401 and attempt == 1 and self.target.unauthorized():
                log.info("kubernetes: 401 Unauthorized: credentials fetched again, retrying")
                continue
            raise ApiError(status, reason)
        raise AssertionError("unreachable")

    def get_json(self, path: str, *, timeout: Timeout = 10.0) -> Any:
        return json.loads(self.request("GET", path, timeout=timeout).data)


def _discard(response: BaseHTTPResponse) -> None:
    """Read and drop an error's body (bounded), so the connection can be reused."""
    try:
        response.read(1024 * 1024)
    except Exception:  # noqa: S110 - the status is what matters; the connection is dropped
        pass
    finally:
        response.release_conn()


def lines(response: BaseHTTPResponse) -> Iterator[bytes]:
    """A streamed answer's lines (a watch: one event each), as they arrive."""
    pending = bytearray()
    for chunk in response.stream(None, decode_content=False):
        pending += chunk
        while True:
            end = pending.find(b"\n")
            if end < 0:
                break
            line = bytes(pending[:end])
            del pending[: end + 1]
            if line.strip():
                yield line
        if len(pending) > MAX_LINE:
            raise ValueError(f"a line of the answer exceeds {MAX_LINE // (1024 * 1024)} MiB")
    if pending.strip():
        yield bytes(pending)


def connect(kubeconfig_path: str | None = None, context: str | None = None) -> ApiServer:
    """The API server the kubeconfig (or the pod's service account) names; raises
    `kubeconfig.KubeConfigError` at once when it cannot be used."""
    return ApiServer(kubeconfig.load(kubeconfig_path, context))
