"""Which Secrets some AuthConfig can select, so that the others cost a few bytes.

A Secret of type extauth.solo.io/apikey that no AuthConfig references or selects admits
nothing, yet its entries (up to `--kube-max-secret-bytes`) would be held all the same: 220
such Secrets of ~1 MB held a replica above its memory limit. So the Kubernetes source keeps
of an unselected Secret only what it needs to notice that a selector starts matching it
(identity, resourceVersion, interned labels; no key material), and reads it again (a
targeted GET, or a list of what a new selector matches) when that happens.

`Selection` is the union of what every AuthConfig in effect selects, by the rules the
policy admits keys with (`policy.KeyRule.admits`, less `requireHashedKeys`): its
`apiKeySecretRefs`, and its label selectors, in the AuthConfig's namespace unless
`allNamespaces`. Erring towards "selected" only costs memory; so a rejected AuthConfig's
last good version keeps selecting, and the union over every version seen in one update
is what counts until the next.

Thread-safe: AuthConfig translators update it, Secret translators ask it, each from its
own watcher thread.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from extauth.apikeys import Owner
from extauth.resources import AuthConfig

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Selects:
    """What one AuthConfig selects."""

    refs: frozenset[Owner]
    # (namespace or None for every namespace, the labels that must all match)
    selectors: frozenset[tuple[str | None, Labels]]

    @staticmethod
    def of(config: AuthConfig) -> Selects:
        namespace = config.metadata.namespace
        refs: set[Owner] = set()
        selectors: set[tuple[str | None, Labels]] = set()
        for entry in config.spec.configs:
            auth = entry.api_key_auth
            refs.update(auth.secret_refs(namespace))
            scope = None if auth.all_namespaces else namespace
            for selector in auth.selectors():
                selectors.add((scope, tuple(sorted(selector.items()))))
        return Selects(frozenset(refs), frozenset(selectors))

    def matches(self, owner: Owner, labels: Mapping[str, str]) -> bool:
        if owner in self.refs:
            return True
        return any(
            (scope is None or scope == owner[0]) and all(labels.get(k) == v for k, v in wanted)
            for scope, wanted in self.selectors
        )


EMPTY = Selects(frozenset(), frozenset())
# Where an empty selector (every Secret in its scope; the models refuse one) is indexed.
_NO_LABELS = ("", "")


class Selection:
    """The union of every AuthConfig's `Selects`, indexed for a per-Secret question."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._configs: dict[tuple[str, Owner], Selects] = {}  # (source, owner) -> selects
        self._refs: dict[Owner, int] = {}
        # One label pair of each selector -> the selectors holding it (with a count), so
        # a Secret is checked against the selectors its own labels could satisfy only.
        self._by_pair: dict[tuple[str, str], dict[tuple[str | None, Labels], int]] = {}
        self.version = 0  # bumped by every update

    def selects(self, owner: Owner, labels: Mapping[str, str]) -> bool:
        with self._lock:
            if owner in self._refs:
                return True
            for pair in (*labels.items(), _NO_LABELS):
                for scope, wanted in self._by_pair.get(pair, ()):
                    if (scope is None or scope == owner[0]) and all(
                        labels.get(k) == v for k, v in wanted
                    ):
                        return True
            return False

    def update(self, source: str, owner: Owner, selects: Selects) -> bool:
        """Set what the AuthConfig `owner` from `source` selects (EMPTY: nothing, it is
        gone); whether that changed anything (then Secrets may move either way)."""
        with self._lock:
            before = self._configs.pop((source, owner), EMPTY)
            if selects is not EMPTY:
                self._configs[(source, owner)] = selects
            self._count(before, -1)
            self._count(selects, +1)
            self.version += 1
        return selects != before

    def _count(self, selects: Selects, step: int) -> None:
        for ref in selects.refs:
            left = self._refs.get(ref, 0) + step
            if left:
                self._refs[ref] = left
            else:
                del self._refs[ref]
        for selector in selects.selectors:
            pair = selector[1][0] if selector[1] else _NO_LABELS
            holders = self._by_pair.setdefault(pair, {})
            left = holders.get(selector, 0) + step
            if left:
                holders[selector] = left
            else:
                del holders[selector]
                if not holders:
                    del self._by_pair[pair]
