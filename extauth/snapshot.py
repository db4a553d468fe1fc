"""What sources publish: keys and AuthConfigs defined, redefined or gone (`Change`).

A key's plaintext is hashed the moment its Secret is read and then dropped: from here
on the service only holds SHA-256 digests, so neither a change, a policy, a log line nor
a crash dump can reveal a key.

Each definition carries its `Origin`; `origin.path` names the definition's source (a file,
or `kubernetes:Secret/ns/name`), so the same Secret defined in two places is two
definitions, and removing one leaves the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from extauth.manifests import Origin
from extauth.resources import API_KEY_ENTRY, AuthConfig, Secret

Owner = tuple[str, str]  # (namespace, name)


def digest(key: str) -> bytes:
    """The form in which keys are held and compared."""
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True, eq=False)
class ApiKey:
    """One key: who holds it (the Secret) and what is known about them.

    Compared by identity: a redefinition is a new object, and policies and caches can
    tell "the same definition" from "an equal one" in O(1).
    """

    namespace: str
    name: str
    labels: Mapping[str, str]
    digest: bytes
    metadata: Mapping[str, str]
    origin: Origin

    @property
    def owner(self) -> Owner:
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


@dataclass(frozen=True, slots=True, eq=False)
class PlacedAuthConfig:
    config: AuthConfig
    origin: Origin

    @property
    def owner(self) -> Owner:
        return (self.config.metadata.namespace, self.config.metadata.name)


Definition = ApiKey | PlacedAuthConfig


@dataclass(frozen=True, slots=True)
class Removal:
    """A definition that is gone: `source` is the `origin.path` it was defined with."""

    kind: Literal["Secret", "AuthConfig"]
    owner: Owner
    source: str


@dataclass(frozen=True, slots=True)
class Change:
    """Definitions added or replaced, and definitions removed, in the order to apply them.

    A source's first change is its complete initial state.
    """

    upserted: tuple[Definition, ...] = ()
    removed: tuple[Removal, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.upserted and not self.removed


def removal_of(definition: Definition) -> Removal:
    kind: Literal["Secret", "AuthConfig"] = (
        "Secret" if isinstance(definition, ApiKey) else "AuthConfig"
    )
    return Removal(kind, definition.owner, definition.origin.path)
