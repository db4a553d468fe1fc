"""The incremental PolicyBuilder against its rules, over random sequences of changes.

The builder keeps its Secrets in a flat, partly implicit form (no claim list per digest,
no owner set) for the sake of a million keys; this checks that, whatever the order of
definitions, redefinitions and removals across sources, what it publishes still obeys
the rules stated in policy.py: the first definition of a Secret is in effect, every key
in effect is admitted, each digest is held by one Secret in effect, and every refusal
(duplicate or conflict) is reported, and only those.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extauth.manifests import Origin
from extauth.policy import PolicyBuilder
from extauth.snapshot import ApiKey, Change, Removal, digest

OWNERS = ("n0", "n1", "n2")
SOURCES = ("f0.yaml", "f1.yaml")
KEYSETS = (("k0",), ("k1",), ("k0", "k1"), ("k2",))

_op = st.one_of(
    st.tuples(
        st.just("define"),
        st.sampled_from(OWNERS),
        st.sampled_from(SOURCES),
        st.sampled_from(KEYSETS),
        st.booleans(),  # new metadata, same keys
    ),
    st.tuples(st.just("remove"), st.sampled_from(OWNERS), st.sampled_from(SOURCES)),
)


def _key(name: str, source: str, keys: tuple[str, ...], flavour: bool) -> ApiKey:
    entries = {"api-key": keys[0], "x-org": "b" if flavour else "a"}
    if len(keys) > 1:
        entries["api-key-next"] = keys[1]
    return ApiKey.from_entries("ns", name, {}, entries, Origin(source, 1, 1))


@settings(max_examples=400, deadline=None)
@given(st.lists(_op, min_size=1, max_size=25))
def test_builder_obeys_its_rules_after_any_sequence(ops: list[tuple[object, ...]]) -> None:
    builder = PolicyBuilder()
    # The reference: each Secret's definitions in arrival order, a source's redefinition
    # replacing its earlier one in place.
    defs: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for op in ops:
        if op[0] == "define":
            _, name, source, keys, flavour = op
            assert isinstance(name, str)
            assert isinstance(source, str)
            assert isinstance(keys, tuple)
            builder.apply(Change(upserted=(_key(name, source, keys, bool(flavour)),)))
            listed = defs.setdefault(name, [])
            for i, (existing, _) in enumerate(listed):
                if existing == source:
                    listed[i] = (source, keys)
                    break
            else:
                listed.append((source, keys))
        else:
            _, name, source = op
            assert isinstance(name, str)
            assert isinstance(source, str)
            builder.apply(Change(removed=(Removal("Secret", ("ns", name), source),)))
            kept = [d for d in defs.get(name, []) if d[0] != source]
            if kept:
                defs[name] = kept
            else:
                defs.pop(name, None)
        _check(builder, defs)


def _check(builder: PolicyBuilder, defs: dict[str, list[tuple[str, tuple[str, ...]]]]) -> None:
    policy = builder.build()
    in_effect = {name: listed[0] for name, listed in defs.items()}
    # Every admitted digest is held by a Secret in effect, from its source, with that key.
    for key_digest, key in policy.keys.items():
        source, keys = in_effect[key.name]
        assert key.origin.path == source
        assert key_digest in {digest(k) for k in keys}
    # Every key in effect is admitted (by its own Secret or by another that holds it).
    wanted = {digest(k) for _, keys in in_effect.values() for k in keys}
    assert set(policy.keys) == wanted
    holding = {key.name for key in policy.keys.values()}
    assert policy.key_count == len(holding)
    # Refusals, each reported: later definitions, and keys in effect held by another.
    texts = [str(p) for p in policy.problems]
    duplicates = sum(len(listed) - 1 for listed in defs.values())
    assert sum("is already defined at" in t for t in texts) == duplicates
    conflicts = sum(
        1
        for name, (_, keys) in in_effect.items()
        for k in keys
        if policy.keys[digest(k)].name != name
    )
    assert sum("holds the same API key as" in t for t in texts) == conflicts
