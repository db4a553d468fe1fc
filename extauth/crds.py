"""The AuthConfig CustomResourceDefinition, generated from the pydantic models (`make crd`).

The API server prunes every field its schema does not declare, silently, when a client
skips validation (GitOps tools and client libraries do): a hand-kept schema that lags the
models loses settings such as `requireHashedKeys` or `booleanExpr` while extauth reports
the AuthConfig Accepted. So the schema is walked out of `resources.py`: a field the models
gain is in the CRD at the next `make crd`, and tests/kube/test_crd.py fails until the
committed file is regenerated.

What a structural schema cannot say, CEL rules (`x-kubernetes-validations`) say, next to
the model whose validator they mirror and with its message: the API server refuses such an
object with a 422 before extauth ever sees it. extauth still validates everything itself
(an older CRD, a cluster without CEL): the rules are a first line, not the only one.

Defaults are not written into the schema: the API server would store them, and an object
read back would differ from what was sent. Each description states the default instead.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from extauth import hosts as hosts_module
from extauth import resources
from extauth.resources import (
    ApiKeyAuth,
    AuthConfigEntry,
    AuthConfigSpec,
    K8sSecretApikeyStorage,
    KeySource,
    LabelSelector,
    MetadataEntry,
    SecretRef,
)

ROOT = Path(__file__).resolve().parents[1]
CRD_FILE = Path("deploy/kubernetes/base/crd.yaml")
CRD_PATH = ROOT / CRD_FILE
GROUP, VERSION, KIND, PLURAL = "extauth.solo.io", "v1", "AuthConfig", "authconfigs"
NAME = f"{PLURAL}.{GROUP}"

# Bounds CEL needs to estimate a rule's cost; far above any real AuthConfig.
MAX_CONFIGS = 32
MAX_EXPR = 2048
MAX_NAME = 253
# What boolexpr.py reads as an entry name.
_EXPR_NAME = r"[A-Za-z0-9_.\\-]+"

DESCRIPTIONS: dict[tuple[type[BaseModel], str], str] = {
    (AuthConfigSpec, "configs"): (
        "The checks a request must pass. Without booleanExpr, every entry must pass."
    ),
    (AuthConfigSpec, "boolean_expr"): (
        "How entries combine, by name: `a || (b && !c)`. Every entry then needs a unique "
        "name, and every name must be used. Default: every entry must pass."
    ),
    (AuthConfigSpec, "hosts"): (
        "Extension: the request hosts this AuthConfig serves when the route names no "
        "config_id (Istio's CUSTOM authorization sends none): exact (api.example.com, "
        "optionally with :port; [::1]:8080) or one leading wildcard label (*.example.com, "
        "not example.com itself). Case-insensitive; a trailing dot is ignored; ASCII only "
        "(write an IDN in its xn-- form). host:port is looked up first, then host; an "
        "exact pattern beats a wildcard, a longer wildcard a shorter one. A pattern "
        "another AuthConfig claimed first (files first, then the oldest object) stays "
        "with it. Precedence: config_id, then hosts, then --default-config."
    ),
    (AuthConfigEntry, "name"): "The entry's name, as booleanExpr refers to it.",
    (AuthConfigEntry, "api_key_auth"): "Admit requests that carry a known API key.",
    (ApiKeyAuth, "header_name"): (
        "The request header holding the key; stripped before the request goes upstream. "
        "Default: api-key. Not together with keySources."
    ),
    (ApiKeyAuth, "k8s_secret_apikey_storage"): (
        "Which Secrets (type extauth.solo.io/apikey) hold the admitted keys."
    ),
    (ApiKeyAuth, "label_selector"): (
        "Deprecated: use k8sSecretApikeyStorage.labelSelector. Still honoured."
    ),
    (ApiKeyAuth, "api_key_secret_refs"): (
        "Deprecated: use k8sSecretApikeyStorage.apiKeySecretRefs. Still honoured."
    ),
    (ApiKeyAuth, "headers_from_metadata_entry"): (
        "Headers to set on the upstream request from the key's Secret: header name to "
        "Secret entry. A client-sent header of the same name never survives."
    ),
    (ApiKeyAuth, "headers_from_metadata"): (
        "Deprecated: use headersFromMetadataEntry. Still honoured."
    ),
    (ApiKeyAuth, "key_sources"): (
        "Where to look for the key, in order (header, query parameter or cookie); the "
        "first present wins. Not together with headerName."
    ),
    (ApiKeyAuth, "forward_credential"): (
        "Keep the key on the upstream request instead of stripping it. Default: false."
    ),
    (ApiKeyAuth, "client_id_header"): (
        "A header to set on the upstream request to the key's identity (the Secret's name)."
    ),
    (ApiKeyAuth, "mode"): (
        "Strict: a key is required. Optional: a request without a key passes anonymously "
        "(identity headers removed); a wrong key is still refused. Default: Strict."
    ),
    (ApiKeyAuth, "all_namespaces"): (
        "Let the label selectors match Secrets in every namespace extauth watches. "
        "Default: false, only in the AuthConfig's own namespace, so that whoever may "
        "create Secrets in another namespace cannot add keys to this AuthConfig. "
        "apiKeySecretRefs name their namespace and are not affected."
    ),
    (ApiKeyAuth, "require_hashed_keys"): (
        "Admit only keys whose Secret stores a hash (api-key-hash), never the key itself, "
        "so a leaked Secret leaks no usable key. Default: false."
    ),
    (K8sSecretApikeyStorage, "label_selector"): (
        "Admit the keys of every Secret with these labels (label: value pairs, or "
        "{matchLabels: {...}}). Must not be empty: that would admit every key."
    ),
    (K8sSecretApikeyStorage, "api_key_secret_refs"): "Admit the keys of these Secrets.",
    (SecretRef, "name"): "The Secret's name.",
    (SecretRef, "namespace"): "The Secret's namespace. Default: the AuthConfig's.",
    (MetadataEntry, "name"): "The Secret entry whose value the header gets.",
    (MetadataEntry, "required"): (
        "Deny a key whose Secret lacks the entry (instead of omitting the header). Default: false."
    ),
    (KeySource, "header"): "Read the key from this request header.",
    (KeySource, "query"): "Read the key from this query parameter.",
    (KeySource, "cookie"): "Read the key from this cookie.",
}

MODEL_DESCRIPTIONS: dict[type[BaseModel], str] = {
    AuthConfigSpec: "What requests routed to this AuthConfig (config_id namespace.name) need.",
    AuthConfigEntry: "One check. extauth implements apiKeyAuth only.",
    ApiKeyAuth: "API keys held in Secrets of type extauth.solo.io/apikey.",
    K8sSecretApikeyStorage: "Secrets to take keys from: by label, by name, or both.",
    SecretRef: "A Secret, by name.",
    MetadataEntry: "A Secret entry to copy into a header.",
    KeySource: "One place to look for the key: exactly one of header, query or cookie.",
}


def _rule(rule: str, message: str) -> dict[str, str]:
    return {"rule": rule, "message": message}


# What hosts.normalize accepts, roughly (it checks label lengths and the port's range):
# a name (optionally after `*.`) or an IPv6 address in brackets, then an optional port.
# `*` alone passes here so that the rule below refuses it with its message.
HOST_PATTERN = (
    r"^\*$|^((\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$"
)
EVERY_HOST = "host '*' would claim every host; use --default-config for a catch-all"
EMPTY_SELECTOR = "an empty label selector would admit every API key; list the labels to match"
MAX_MAP = 64
MAX_HEADER = 256


def _has_keys(prefix: str) -> str:
    return (
        f"has({prefix}labelSelector) || "
        f"(has({prefix}apiKeySecretRefs) && size({prefix}apiKeySecretRefs) > 0)"
    )


# Each model validator's rules, with its message (see resources.py).
RULES: dict[type[BaseModel], list[dict[str, str]]] = {
    ApiKeyAuth: [
        _rule(
            f"{_has_keys('self.')} || (has(self.k8sSecretApikeyStorage) && "
            f"({_has_keys('self.k8sSecretApikeyStorage.')}))",
            "apiKeyAuth admits no keys: set k8sSecretApikeyStorage.apiKeySecretRefs "
            "and/or k8sSecretApikeyStorage.labelSelector",
        ),
        _rule(
            "!has(self.headerName) || !has(self.keySources)",
            "set either headerName or keySources, not both",
        ),
        _rule("!has(self.keySources) || size(self.keySources) > 0", "keySources cannot be empty"),
        _rule(
            "!has(self.headersFromMetadataEntry) || !has(self.headersFromMetadata) || "
            "!self.headersFromMetadataEntry.exists(h, h in self.headersFromMetadata)",
            "a header is set by both headersFromMetadataEntry and headersFromMetadata",
        ),
    ],
    KeySource: [
        _rule(
            "(has(self.header) ? 1 : 0) + (has(self.query) ? 1 : 0) + "
            "(has(self.cookie) ? 1 : 0) == 1",
            "a key source names exactly one of header, query or cookie",
        ),
    ],
    AuthConfigSpec: [
        _rule(
            "!has(self.booleanExpr) || self.configs.all(c, has(c.name))",
            "with booleanExpr, every entry of configs needs a name",
        ),
        _rule(
            "!has(self.booleanExpr) || self.configs.all(c, !has(c.name) || "
            "self.configs.exists_one(d, has(d.name) && d.name == c.name))",
            "configs entry names must be unique",
        ),
        _rule(
            f"!has(self.booleanExpr) || self.booleanExpr.findAll('{_EXPR_NAME}').all("
            "n, self.configs.exists(c, has(c.name) && c.name == n))",
            "booleanExpr names an entry that no configs entry has",
        ),
        _rule(
            "!has(self.booleanExpr) || self.configs.all(c, !has(c.name) || "
            f"c.name in self.booleanExpr.findAll('{_EXPR_NAME}'))",
            "a configs entry is not used in booleanExpr",
        ),
    ],
}


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _string(annotation: Any) -> dict[str, Any]:
    """A string, with the pattern its validator enforces where one is known."""
    schema: dict[str, Any] = {"type": "string"}
    validators = {getattr(m, "func", None) for m in getattr(annotation, "__metadata__", ())}
    if resources.check_header_name in validators:
        schema["pattern"] = resources._HEADER_NAME_RE.pattern
        schema["maxLength"] = MAX_HEADER
    if resources.check_name in validators:
        schema["pattern"] = resources._NAME_RE.pattern
        schema["maxLength"] = MAX_NAME
    if resources.check_namespace in validators:
        schema["pattern"] = resources._NAMESPACE_RE.pattern
        schema["maxLength"] = 63
    return schema


def schema_of(annotation: Any) -> dict[str, Any]:
    """The structural schema of a model field's type."""
    annotation = _strip_optional(annotation)
    if annotation == LabelSelector:
        # Two shapes: a plain map, or {matchLabels: map}. No structural schema holds
        # both, and CEL cannot see fields a schema does not declare: the plain form's
        # labels are kept as unknown fields (extauth checks their values), minProperties
        # refuses the empty map, and a rule the empty matchLabels.
        return {
            "type": "object",
            "minProperties": 1,
            "maxProperties": MAX_MAP,
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                "matchLabels": {
                    "type": "object",
                    "description": "label: value pairs, all of which a Secret must have.",
                    "maxProperties": MAX_MAP,
                    "additionalProperties": {"type": "string"},
                    "x-kubernetes-validations": [_rule("size(self) > 0", EMPTY_SELECTOR)],
                }
            },
        }
    base = get_origin(annotation)
    if base is typing.Annotated:
        inner = get_args(annotation)[0]
        if inner is str:
            return _string(annotation)
        return schema_of(inner)
    if annotation is str:
        return {"type": "string"}
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer"}
    if base is Literal:
        return {"type": "string", "enum": list(get_args(annotation))}
    if base is list:
        return {"type": "array", "maxItems": MAX_MAP, "items": schema_of(get_args(annotation)[0])}
    if base is dict:
        return {
            "type": "object",
            "maxProperties": MAX_MAP,
            "additionalProperties": schema_of(get_args(annotation)[1]),
        }
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_schema(annotation)
    raise TypeError(f"no schema for {annotation!r}: teach extauth/crds.py")


def _alias(name: str, field: FieldInfo) -> str:
    return field.alias or name


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "description": MODEL_DESCRIPTIONS[model]}
    properties: dict[str, Any] = {}
    required = []
    for name, field in model.model_fields.items():
        prop = schema_of(_annotated(field))
        prop["description"] = DESCRIPTIONS[(model, name)]
        properties[_alias(name, field)] = prop
        if field.is_required():
            required.append(_alias(name, field))
        if field.metadata:
            for constraint in field.metadata:
                if getattr(constraint, "min_length", None) is not None:
                    prop["minItems"] = constraint.min_length
    if model is AuthConfigSpec:
        properties["configs"]["maxItems"] = MAX_CONFIGS
        properties["booleanExpr"]["maxLength"] = MAX_EXPR
        properties["booleanExpr"]["pattern"] = r"^[A-Za-z0-9_.\-\s&|!()]*$"
        hosts = properties["hosts"]
        hosts["maxItems"] = resources.MAX_HOSTS
        # Exact repeats refused by the API server; repeats by case or a trailing dot
        # by extauth (a Rejected status).
        hosts["x-kubernetes-list-type"] = "set"
        hosts["items"] = {
            "type": "string",
            "minLength": 1,
            "maxLength": hosts_module.MAX_REQUEST_HOST,
            "pattern": HOST_PATTERN,
            "x-kubernetes-validations": [_rule("self != '*'", EVERY_HOST)],
        }
    if model is AuthConfigEntry:
        properties["name"]["maxLength"] = MAX_NAME
    if model is KeySource:
        for prop in properties.values():
            prop["minLength"] = 1
    schema["properties"] = properties
    if required:
        schema["required"] = required
    if model in RULES:
        schema["x-kubernetes-validations"] = RULES[model]
    return schema


def _annotated(field: FieldInfo) -> Any:
    """The field's type with the validators pydantic moved out of it put back."""
    validators = [m for m in field.metadata if hasattr(m, "func")]
    if validators:
        return typing.Annotated[(field.annotation, *validators)]
    return field.annotation


def field_paths(model: type[BaseModel] = AuthConfigSpec, prefix: str = "spec") -> Iterator[str]:
    """Every field the models accept, as dotted paths (`[]` for list items, `{}` for map
    values): what an installed CRD must declare for nothing to be pruned."""
    for name, field in model.model_fields.items():
        path = f"{prefix}.{_alias(name, field)}"
        yield path
        yield from _paths_of(_strip_optional(field.annotation), path)


def _paths_of(annotation: Any, path: str) -> Iterator[str]:
    annotation = _strip_optional(annotation)
    base = get_origin(annotation)
    if base is typing.Annotated:
        yield from _paths_of(get_args(annotation)[0], path)
    elif base is list:
        yield from _paths_of(get_args(annotation)[0], f"{path}[]")
    elif base is dict:
        yield from _paths_of(get_args(annotation)[1], f"{path}{{}}")
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from field_paths(annotation, path)


def pruned_by(root: dict[str, Any]) -> list[str]:
    """The model fields an installed CRD's schema (its openAPIV3Schema) would prune.

    The API server drops a field unless its object declares it under `properties`, or
    keeps unknown fields (`additionalProperties`, `x-kubernetes-preserve-unknown-fields`).
    """
    pruned = []
    for path in field_paths():
        if _declared(root, path) is None:
            pruned.append(path)
    return pruned


def _declared(root: dict[str, Any], path: str) -> dict[str, Any] | None:
    schema: Any = root
    for segment in path.replace("[]", ".[]").replace("{}", ".{}").split("."):
        if not isinstance(schema, dict):
            return None
        if segment == "[]":
            schema = schema.get("items")
        elif segment == "{}":
            schema = schema.get("additionalProperties")
        elif isinstance(schema.get("properties"), dict) and segment in schema["properties"]:
            schema = schema["properties"][segment]
        elif schema.get("x-kubernetes-preserve-unknown-fields") or isinstance(
            schema.get("additionalProperties"), dict
        ):
            return {"x-kubernetes-preserve-unknown-fields": True}  # kept, below too
        else:
            return None
        if (
            isinstance(schema, dict)
            and schema.get("x-kubernetes-preserve-unknown-fields")
            and not schema.get("properties")
        ):
            return schema
    return schema if isinstance(schema, dict) else None


STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "What extauth made of the AuthConfig (written by every replica alike).",
    "properties": {
        "state": {
            "type": "string",
            "enum": ["Accepted", "Rejected"],
            "description": "Accepted: in force. Rejected: not loaded (see reason); the last "
            "good version, if any, keeps serving.",
        },
        "reason": {
            "type": "string",
            "description": "Why it was rejected; if accepted, what it was refused (hosts "
            "another AuthConfig claimed first) or that the CRD is outdated, else empty.",
        },
        "observedGeneration": {
            "type": "integer",
            "description": "The metadata.generation this status is about.",
        },
        "conditions": {
            "type": "array",
            "description": "The same as a standard condition, type Accepted.",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
            "items": {
                "type": "object",
                "description": "A standard condition (metav1.Condition).",
                "required": ["type", "status", "reason", "message", "lastTransitionTime"],
                "properties": {
                    "type": {"type": "string", "description": "Accepted."},
                    "status": {
                        "type": "string",
                        "enum": ["True", "False", "Unknown"],
                        "description": "True when the AuthConfig is in force.",
                    },
                    "reason": {"type": "string", "description": "Accepted or Rejected."},
                    "message": {"type": "string", "description": "Why, in words."},
                    "observedGeneration": {
                        "type": "integer",
                        "description": "The metadata.generation this condition is about.",
                    },
                    "lastTransitionTime": {
                        "type": "string",
                        "format": "date-time",
                        "description": "When status last changed.",
                    },
                },
            },
        },
    },
}


def build() -> dict[str, Any]:
    spec = model_schema(AuthConfigSpec)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["ac"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "State", "type": "string", "jsonPath": ".status.state"},
                        {
                            "name": "Reason",
                            "type": "string",
                            "jsonPath": ".status.reason",
                            "priority": 1,
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Who may call the routes that name this "
                            "AuthConfig (config_id: namespace.name), read by extauth.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "extauth.solo.io/v1",
                                },
                                "kind": {"type": "string", "description": "AuthConfig"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": STATUS_SCHEMA,
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = (
        "# Generated by `make crd` from extauth/resources.py (via extauth/crds.py): edit\n"
        "# those, not this. A malformed AuthConfig (wrong types, a broken cross-field rule)\n"
        "# is refused by the API server with 422 and the rule's message; extauth validates\n"
        "# everything again and reports the rest in status (state, reason, conditions).\n"
    )
    return header + yaml.safe_dump(build(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    path = CRD_PATH
    text = render()
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(f"stale: {CRD_FILE} (run `make crd`)", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {CRD_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
