"""`extauth keys new`: a strong random key and the Secret manifest that holds it.

The key is printed once, on stderr, for the operator to hand to the team; the manifest
(stdout, so `> team.yaml` captures it) carries it base64-encoded as Kubernetes expects,
or, with --hashed, only its SHA-256 (`api-key-hash`), so the Secret alone is useless to
whoever reads it.
32 random bytes, URL-safe base64: 256 bits, header- and query-safe as is. Every key starts
with `eak_` (extauth API key) so that secret scanners can recognise a leaked one: the whole
key matches `eak_[A-Za-z0-9_-]{43}` at the default size.

With `--output FILE` the manifest is written only once it is complete and valid, by a
rename from a temporary file beside it (a watched config directory never sees a partial
or empty file), readable by its owner only, and never over an existing file unless asked.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import tempfile
from pathlib import Path

import yaml

from extauth.apikeys import API_KEY_ENTRY, API_KEY_HASH_ENTRY
from extauth.resources import APIKEY_SECRET_TYPE, Secret

DEFAULT_BYTES = 32
# What secret scanners look for (GitHub's custom patterns, gitleaks, trufflehog rules).
KEY_PREFIX = "eak_"


def new_key(nbytes: int = DEFAULT_BYTES) -> str:
    return KEY_PREFIX + secrets.token_urlsafe(nbytes)


def write_new(path: Path, text: str, *, force: bool = False) -> None:
    """Write `text` to `path` whole or not at all, mode 0600.

    Raises FileExistsError when `path` exists and `force` is false, OSError on any
    other failure, leaving nothing behind.
    """
    if not force and path.exists():
        raise FileExistsError(path)
    fd, temporary = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if force:
            Path(temporary).replace(path)
        else:
            # link() fails if the name was taken meanwhile: never overwrite by a race.
            os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            Path(temporary).unlink()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def key_hash(key: str) -> str:
    """What `api-key-hash` holds: the key's SHA-256, so the Secret never holds the key."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def manifest(
    name: str,
    namespace: str,
    key: str,
    metadata: dict[str, str],
    labels: dict[str, str],
    *,
    hashed: bool = False,
) -> str:
    """The Secret as YAML, validated by the same model the service uses."""
    entry, value = (API_KEY_HASH_ENTRY, key_hash(key)) if hashed else (API_KEY_ENTRY, key)
    meta: dict[str, object] = {"name": name, "namespace": namespace}
    if labels:
        meta["labels"] = labels
    document = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": APIKEY_SECRET_TYPE,
        "metadata": meta,
        "data": {entry: _b64(value), **{k: _b64(v) for k, v in metadata.items()}},
    }
    Secret.model_validate(document)  # raises ValidationError on a bad name or value
    return yaml.safe_dump(document, sort_keys=False)
