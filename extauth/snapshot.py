"""The immutable state a source publishes: every API key and AuthConfig it currently sees.

A key's plaintext is hashed the moment its Secret is read and then dropped: from here
on the service only holds SHA-256 digests, so neither a snapshot, a log line nor a crash
dump can reveal a key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from extauth.manifests import Origin
from extauth.resources import API_KEY_ENTRY, AuthConfig, Secret


def digest(key: str) -> bytes:
    """The form in which keys are held and compared."""
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One admitted key: who holds it (the Secret) and what is known about them."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    digest: bytes
    metadata: Mapping[str, str]
    origin: Origin

    @property
    def owner(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @classmethod
    def from_secret(cls, secret: Secret, origin: Origin) -> ApiKey:
        entries = secret.entries()
        key = entries.pop(API_KEY_ENTRY)
        return cls(
            namespace=secret.metadata.namespace,
            name=secret.metadata.name,
            labels=MappingProxyType(dict(secret.metadata.labels)),
            digest=digest(key),
            metadata=MappingProxyType(entries),
            origin=origin,
        )

    def __repr__(self) -> str:
        # The digest is not secret, but nothing about a key needs to be in a log.
        return f"ApiKey({self.namespace}/{self.name} from {self.origin})"


@dataclass(frozen=True, slots=True)
class PlacedAuthConfig:
    config: AuthConfig
    origin: Origin

    @property
    def owner(self) -> tuple[str, str]:
        return (self.config.metadata.namespace, self.config.metadata.name)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one source sees at one moment, in a stable order."""

    keys: tuple[ApiKey, ...] = ()
    authconfigs: tuple[PlacedAuthConfig, ...] = ()
