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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from extauth.manifests import Loaded, Origin
from extauth.resources import (
    API_KEY_ENTRY,
    API_KEY_HASH_ENTRY,
    EXPIRES_AT_ENTRY,
    KEY_ENTRIES,
    NEXT_KEY_ENTRY,
    NEXT_KEY_HASH_ENTRY,
    AuthConfig,
    Secret,
    parse_expiry,
)

Owner = tuple[str, str]  # (namespace, name)


def digest(key: str) -> bytes:
    """The form in which keys are held and compared."""
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True, eq=False)
class ApiKey:
    """One key holder (a Secret): its key digests and what is known about it.

    `digests` holds the key and, during a rotation, the next key (`api-key-next`); both
    identify the same holder. `hashed` is true when the Secret stored only hashes
    (`api-key-hash`), so a leaked Secret does not leak a usable key.

    Compared by identity: a redefinition is a new object, and policies and caches can
    tell "the same definition" from "an equal one" in O(1).
    """

    namespace: str
    name: str
    labels: Mapping[str, str]
    digests: tuple[bytes, ...]
    metadata: Mapping[str, str]
    origin: Origin
    hashed: bool = False
    expires_at: float | None = None

    @property
    def owner(self) -> Owner:
        return (self.namespace, self.name)

    @classmethod
    def from_secret(cls, secret: Secret, origin: Origin) -> ApiKey:
        entries = secret.entries()
        digests: list[bytes] = []
        hashed = True
        for plain, stored_hash in (
            (API_KEY_ENTRY, API_KEY_HASH_ENTRY),
            (NEXT_KEY_ENTRY, NEXT_KEY_HASH_ENTRY),
        ):
            if plain in entries:
                digests.append(digest(entries[plain]))
                hashed = False
            elif stored_hash in entries:
                digests.append(bytes.fromhex(entries[stored_hash].removeprefix("sha256:")))
        expiry = entries.get(EXPIRES_AT_ENTRY)
        metadata = {k: v for k, v in entries.items() if k not in KEY_ENTRIES}
        return cls(
            namespace=secret.metadata.namespace,
            name=secret.metadata.name,
            labels=MappingProxyType(dict(secret.metadata.labels)),
            digests=tuple(dict.fromkeys(digests)),
            metadata=MappingProxyType(metadata),
            origin=origin,
            hashed=hashed,
            expires_at=parse_expiry(expiry) if expiry else None,
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


def definitions(loaded: Iterable[Loaded]) -> tuple[Definition, ...]:
    """Validated resources as definitions: a Secret's key is hashed here, once."""
    found: list[Definition] = []
    for item in loaded:
        if isinstance(item.resource, AuthConfig):
            found.append(PlacedAuthConfig(item.resource, item.origin))
        else:
            found.append(ApiKey.from_secret(item.resource, item.origin))
    return tuple(found)


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
