"""The incremental PolicyBuilder against its rules, over random sequences of changes.

The builder keeps its Secrets in a flat, partly implicit form (no claim list per digest,
no owner set) for the sake of a million keys; this checks that, whatever the order of
definitions, redefinitions and removals across sources, what it publishes obeys the
rules stated in policy.py, computed here from scratch: of a Secret's definitions, the one
from the lexically first source is in effect; each digest is held by the Secret in
effect of lowest rank (source, then document) that claims it; every refusal (duplicate or
conflict) is reported, and only those, naming both places. And the result depends only
on what is defined: a fresh builder fed the same definitions in any order publishes the
same policy.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extauth.apikeys import ApiKey, digest
from extauth.building import PolicyBuilder
from extauth.changes import Change, Removal
from extauth.origins import Origin
from extauth.policy import Policy

OWNERS = ("n0", "n1", "n2")
SOURCES = ("f1.yaml", "f0.yaml", "f2.yaml")
KEYSETS = (("k0",), ("k1",), ("k0", "k1"), ("k1", "k0"))

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

_Defs = dict[tuple[str, str], tuple[tuple[str, ...], ApiKey]]  # (name, source) -> keys


def _document(name: str) -> int:
    # Each Secret has its own document in every file, so that ranks differ in one file.
    return OWNERS.index(name) + 1


def _key(name: str, source: str, keys: tuple[str, ...], flavour: bool) -> ApiKey:
    entries = {"api-key": keys[0], "x-org": "b" if flavour else "a"}
    if len(keys) > 1:
        entries["api-key-next"] = keys[1]
    return ApiKey.from_entries("ns", name, {}, entries, Origin(source, 1, _document(name)))


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_builder_obeys_its_rules_after_any_sequence(ops: list[tuple[object, ...]], rnd) -> None:  # type: ignore[no-untyped-def]
    builder = PolicyBuilder()
    defs: _Defs = {}
    for op in ops:
        if op[0] == "define":
            _, name, source, keys, flavour = op
            assert isinstance(name, str)
            assert isinstance(source, str)
            assert isinstance(keys, tuple)
            key = _key(name, source, keys, bool(flavour))
            builder.apply(Change(upserted=(key,)))
            defs[(name, source)] = (keys, key)
        else:
            _, name, source = op
            assert isinstance(name, str)
            assert isinstance(source, str)
            builder.apply(Change(removed=(Removal("Secret", ("ns", name), source),)))
            defs.pop((name, source), None)
        policy = builder.build()
        _check(policy, defs)
    # History does not matter: the same definitions, in another order, in one change or
    # one change each, give the same policy.
    present = [key for _, key in defs.values()]
    rnd.shuffle(present)
    at_once = PolicyBuilder()
    at_once.apply(Change(upserted=tuple(present)))
    one_by_one = PolicyBuilder()
    for key in reversed(present):
        one_by_one.apply(Change(upserted=(key,)))
    for other in (at_once.build(), one_by_one.build()):
        assert _summary(other) == _summary(policy)


def _summary(policy: Policy) -> tuple[dict[bytes, tuple[str, str]], list[str], int]:
    return (
        {d: (k.name, k.path) for d, k in policy.keys.items()},
        sorted(str(p) for p in policy.problems),
        policy.key_count,
    )


def _check(policy: Policy, defs: _Defs) -> None:
    # Of each Secret's definitions, the lexically first source's is in effect.
    in_effect: dict[str, tuple[str, tuple[str, ...]]] = {}
    for (name, source), (keys, _) in sorted(defs.items(), key=lambda item: item[0][1]):
        in_effect.setdefault(name, (source, keys))
    # Each digest goes to its lowest-ranked claimant among the Secrets in effect.
    holders: dict[bytes, tuple[str, str]] = {}
    by_rank = sorted(in_effect.items(), key=lambda item: (item[1][0], _document(item[0])))
    for name, (source, keys) in by_rank:
        for k in keys:
            holders.setdefault(digest(k), (name, source))
    assert {d: (k.name, k.path) for d, k in policy.keys.items()} == holders
    assert policy.key_count == len(set(holders.values()))
    # Refusals, each reported once, naming the loser's place and the winner's.
    texts = sorted(str(p) for p in policy.problems)
    wanted = [
        f"{source}:1: Secret ns/{name} is already defined at {in_effect[name][0]}:1, which "
        "comes first; this definition is refused"
        for (name, source) in defs
        if in_effect[name][0] != source
    ]
    for name, (source, keys) in in_effect.items():
        for k in keys:
            holder, place = holders[digest(k)]
            if holder != name:
                wanted.append(
                    f"{source}:1: Secret ns/{name} holds the same API key as Secret "
                    f"ns/{holder} ({place}:1), which comes first; refused"
                )
    assert texts == sorted(wanted)
