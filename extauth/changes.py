"""What sources publish: keys and AuthConfigs defined, redefined or gone (`Change`).

Each definition carries its `Origin`; `origin.path` names the definition's source (a file,
or `kubernetes:Secret/ns/name`), so the same Secret defined in two places is two
definitions, and removing one leaves the other. No I/O, no YAML, no pydantic: the
AuthConfig model is named for type checking only, and read by the policy builder.

A `Source` (`extauth.sources`) publishes them: an async iterator of changes whose first
item is its complete initial state (the service is ready once every source's has
arrived) and whose later items say what was defined, redefined or removed. The protocol
is here, with what it carries, so that the server is given sources without importing
any (`cli.sources_for` wires them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from extauth.apikeys import ApiKey, Owner
from extauth.origins import Origin

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from extauth.policy import Policy
    from extauth.resources import AuthConfig
    from extauth.sourcehealth import SourceHealth


@dataclass(frozen=True, slots=True, eq=False)
class PlacedAuthConfig:
    config: AuthConfig
    origin: Origin

    @property
    def owner(self) -> Owner:
        return (self.config.metadata.namespace, self.config.metadata.name)

    @property
    def path(self) -> str:
        """The source it was defined in (as `ApiKey.path`)."""
        return self.origin.path


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


class Source(Protocol):
    # How the source is doing now (the status page and `extauth_source_*` read it).
    health: SourceHealth

    def changes(self) -> AsyncIterator[Change]: ...

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Add this source's own metrics to `registry` (called once, before serving)."""

    def problems(self) -> list[str]:
        """What keeps this source from being current now, for /readyz (empty: nothing)."""

    def policy_published(self, policy: Policy) -> None:
        """What the newly published policy made of this source's objects (hosts refused
        to an AuthConfig, for its status); called after every publish."""
