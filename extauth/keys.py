"""`extauth keys new`: a strong random key and the Secret manifest that holds it.

The key is printed once, on stderr, for the operator to hand to the team; the manifest
(stdout, so `> team.yaml` captures it) carries it base64-encoded as Kubernetes expects.
32 random bytes, URL-safe base64: 256 bits, header- and query-safe as is.
"""

from __future__ import annotations

import base64
import secrets

import yaml

from extauth.resources import API_KEY_ENTRY, APIKEY_SECRET_TYPE, Secret

DEFAULT_BYTES = 32


def new_key(nbytes: int = DEFAULT_BYTES) -> str:
    return secrets.token_urlsafe(nbytes)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def manifest(
    name: str,
    namespace: str,
    key: str,
    metadata: dict[str, str],
    labels: dict[str, str],
) -> str:
    """The Secret as YAML, validated by the same model the service uses."""
    document = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": APIKEY_SECRET_TYPE,
        "metadata": {
            "name": name,
            "namespace": namespace,
            **({"labels": labels} if labels else {}),
        },
        "data": {API_KEY_ENTRY: _b64(key), **{k: _b64(v) for k, v in metadata.items()}},
    }
    Secret.model_validate(document)  # raises ValidationError on a bad name or value
    return yaml.safe_dump(document, sort_keys=False)
