"""`extauth keys new`: a strong random key and the Secret manifest that holds it.

The key is printed once, on stderr, for the operator to hand to the team; the manifest
(stdout, so `> team.yaml` captures it) carries it base64-encoded as Kubernetes expects,
or, with --hashed, only its SHA-256 (`api-key-hash`), so the Secret alone is useless to
whoever reads it.
32 random bytes, URL-safe base64: 256 bits, header- and query-safe as is.
"""

from __future__ import annotations

import base64
import hashlib
import secrets

import yaml

from extauth.resources import API_KEY_ENTRY, API_KEY_HASH_ENTRY, APIKEY_SECRET_TYPE, Secret

DEFAULT_BYTES = 32


def new_key(nbytes: int = DEFAULT_BYTES) -> str:
    return secrets.token_urlsafe(nbytes)


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
