"""Pydantic models of the two resources extauth reads: `AuthConfig` and API-key `Secret`.

The models are strict on purpose (`extra="forbid"`, no type coercion): a typo such as
`headerNmae` or a YAML `yes` where a string belongs would otherwise pass silently and
change who gets in. Validation errors carry the field path; `manifests.py` turns that
path into `file:line` for the user.

Secret values are decoded here (base64) but never appear in a repr or an error message:
`data` and `stringData` are excluded from reprs, and error messages name entries, not values.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from extauth import boolexpr, hosts
from extauth.apikeys import (
    API_KEY_ENTRY,
    API_KEY_HASH_ENTRY,
    EXPIRES_AT_ENTRY,
    KEY_ENTRIES,
    NEXT_KEY_ENTRY,
    NEXT_KEY_HASH_ENTRY,
    OWS,
    parse_expiry,
)

APIKEY_SECRET_TYPE = "extauth.solo.io/apikey"  # noqa: S105 (a type name, not a secret)
AUTHCONFIG_API_VERSION = "extauth.solo.io/v1"
_HASH_RE = re.compile(r"^sha256:[0-9a-fA-F]{64}$")

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Control characters but TAB: what Envoy refuses in a header value.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SECRET_ENTRY_RE = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
# RFC 9110 token characters: what Envoy accepts as a header name.
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Header names extauth must never set or strip: routing and framing belong to Envoy.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"}
)


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        hide_input_in_errors=True,
    )


def _quoted(value: str) -> str:
    """A name from the input in a message: quoted, and only when short, so that a
    message stays one line whatever was written."""
    return repr(value) if len(value) <= 100 else "(a value of over 100 characters)"


def _matching(pattern: re.Pattern[str], what: str, rule: str) -> Callable[[str], str]:
    """Names and namespaces are checked alike and differ only in the rule they follow."""

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{_quoted(value)} is not a valid {what} ({rule})")
        return value

    return check


check_name = _matching(
    _NAME_RE, "resource name", "lowercase letters, digits, '-' and '.', at most 253 characters"
)
check_namespace = _matching(
    _NAMESPACE_RE, "namespace", "lowercase letters, digits and '-', at most 63 characters"
)


def check_header_name(value: str) -> str:
    """Normalise a header name to lowercase (HTTP/2 form) and refuse unusable ones."""
    if not _HEADER_NAME_RE.match(value):
        raise ValueError(f"{_quoted(value)} is not a valid HTTP header name")
    lowered = value.lower()
    if lowered in _RESERVED_HEADERS:
        raise ValueError(f"header {value!r} is managed by Envoy and cannot be used here")
    return lowered


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot be sent as an HTTP header value, or None when it can.

    Envoy rejects control characters in header values; leading or trailing whitespace
    is stripped in transit, so a key or metadata value carrying it could never match
    or would arrive altered.
    """
    if _CONTROL_RE.search(value):
        return "contains control characters (CR, LF, NUL, ...) not allowed in HTTP headers"
    if value != value.strip(OWS):
        return "has leading or trailing whitespace, which HTTP strips in transit"
    return None


# Kubernetes label syntax: a name of at most 63 characters, alphanumeric at both ends with
# '-', '_' and '.' inside, optionally after a DNS-subdomain prefix and '/'; values are such a
# name or empty. Anything else an API server refuses, so a file must not accept it either.
_LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_LABEL_PREFIX_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Refuse label keys and values a Kubernetes API server would refuse."""
    for key, value in labels.items():
        prefix, slash, name = key.rpartition("/")
        if (
            not name
            or not _LABEL_NAME_RE.match(name)
            or (slash and (len(prefix) > 253 or not _LABEL_PREFIX_RE.match(prefix)))
        ):
            raise ValueError(
                f"label key {key!r} is not valid (at most 63 letters, digits, '-', '_' or "
                "'.', starting and ending with a letter or digit, optionally after a "
                "DNS-subdomain prefix and '/')"
            )
        if not _LABEL_NAME_RE.match(value):
            raise ValueError(
                f"label {key!r} has an invalid value (at most 63 letters, digits, '-', '_' "
                "or '.', starting and ending with a letter or digit, or empty)"
            )
    return labels


ResourceName = Annotated[str, AfterValidator(check_name)]
Namespace = Annotated[str, AfterValidator(check_namespace)]
HeaderName = Annotated[str, AfterValidator(check_header_name)]


class ObjectMeta(_Model):
    """Kubernetes object metadata. Server-set fields are accepted so that objects read
    back from a cluster (`kubectl get -o yaml`) validate; they are not used."""

    name: ResourceName
    namespace: Namespace = "default"
    labels: Annotated[dict[str, str], AfterValidator(check_labels)] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: Any = None
    resource_version: Any = None
    generation: Any = None
    creation_timestamp: Any = None
    deletion_timestamp: Any = None
    deletion_grace_period_seconds: Any = None
    generate_name: Any = None
    self_link: Any = None
    managed_fields: Any = None
    finalizers: Any = None
    owner_references: Any = None


def decode_base64(value: str) -> bytes:
    """A `data` entry as Kubernetes decodes it: Go's encoding/json reads []byte with
    base64.StdEncoding, which skips CR and LF anywhere (line-wrapped base64 is valid)
    and refuses every other character outside the alphabet, and missing padding.
    Raises binascii.Error (a ValueError)."""
    if "\n" in value or "\r" in value:
        value = value.replace("\n", "").replace("\r", "")
    return base64.b64decode(value, validate=True)


def _check_base64(value: str) -> str:
    try:
        decode_base64(value)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
    return value


Base64Text = Annotated[str, AfterValidator(_check_base64)]


class Secret(_Model):
    """A Secret of type `extauth.solo.io/apikey`: entry `api-key` is the key, every other
    entry is metadata about its holder (e.g. `x-org`). The holder's identity is the
    Secret's name. `stringData` entries win over `data` entries, as in Kubernetes."""

    api_version: Literal["v1"]
    kind: Literal["Secret"]
    metadata: ObjectMeta
    type: Literal["extauth.solo.io/apikey"]
    data: dict[str, Base64Text] = Field(default_factory=dict, repr=False)
    string_data: dict[str, str] = Field(default_factory=dict, repr=False)
    immutable: bool | None = None

    @model_validator(mode="after")
    def _check_entries(self) -> Secret:
        check_entry_names((*self.data, *self.string_data))
        check_entries(self.entries())  # entries() raises on undecodable entries
        return self

    def entries(self) -> dict[str, str]:
        """All entries decoded as text, `stringData` over `data`."""
        merged: dict[str, str] = {}
        for entry, encoded in self.data.items():
            try:
                merged[entry] = decode_base64(encoded).decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"entry {entry!r} is not UTF-8 text") from None
        merged.update(self.string_data)
        return merged


def check_entry_names(names: Iterable[str]) -> None:
    for entry in names:
        if not _SECRET_ENTRY_RE.match(entry):
            raise ValueError(
                f"entry name {_quoted(entry)} is not a valid Secret key "
                "(letters, digits, '-', '_' and '.', at most 253)"
            )


def check_entries(entries: Mapping[str, str]) -> None:
    """Raise ValueError unless a Secret's decoded entries make a usable key holder; the
    error names every bad entry, not only the first, so one edit fixes them all.

    Shared by the model and the fast loader (`secretscan`), so both accept the same.
    """
    found: list[str] = []
    for plain, hashed in (
        (API_KEY_ENTRY, API_KEY_HASH_ENTRY),
        (NEXT_KEY_ENTRY, NEXT_KEY_HASH_ENTRY),
    ):
        if plain in entries and hashed in entries:
            found.append(f"give '{plain}' or '{hashed}', not both")
    if API_KEY_ENTRY not in entries and API_KEY_HASH_ENTRY not in entries:
        found.append(
            f"an {APIKEY_SECRET_TYPE} Secret needs an '{API_KEY_ENTRY}' "
            f"(or '{API_KEY_HASH_ENTRY}') entry"
        )
    for entry, value in entries.items():
        if entry in KEY_ENTRIES and not value:
            found.append(f"entry {entry!r} is empty")
        elif entry in (API_KEY_HASH_ENTRY, NEXT_KEY_HASH_ENTRY) and not _HASH_RE.match(value):
            found.append(f"entry {entry!r} must be 'sha256:' and 64 hex digits")
        else:
            problem = header_value_problem(value)
            if problem:
                found.append(f"entry {entry!r} {problem}")
    if EXPIRES_AT_ENTRY in entries:
        try:
            parse_expiry(entries[EXPIRES_AT_ENTRY])
        except ValueError as exc:
            found.append(str(exc))
    if found:
        raise ValueError("; ".join(found))


class SecretRef(_Model):
    name: ResourceName
    namespace: Namespace | None = None


class MetadataEntry(_Model):
    """Which Secret entry fills an injected header, and whether a key lacking it is denied."""

    name: str
    required: bool = False


def _selector(value: Any) -> Any:
    """Accept both Solo's plain label map and the Kubernetes `{matchLabels: {...}}` form."""
    if isinstance(value, dict) and set(value) == {"matchLabels"}:
        return value["matchLabels"]
    return value


def _check_selector(value: dict[str, str]) -> dict[str, str]:
    if not value:
        raise ValueError(
            "an empty label selector would admit every API key; list the labels to match"
        )
    return value


# Both spellings are unwrapped here, in the type, so every labelSelector field takes them.
LabelSelector = Annotated[
    dict[str, str], BeforeValidator(_selector), AfterValidator(_check_selector)
]


class K8sSecretApikeyStorage(_Model):
    label_selector: LabelSelector | None = None
    api_key_secret_refs: list[SecretRef] = Field(default_factory=list)


class KeySource(_Model):
    """One place to look for the key (extension): exactly one of header, query, cookie."""

    header: HeaderName | None = None
    query: str | None = None
    cookie: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> KeySource:
        given = [v for v in (self.header, self.query, self.cookie) if v is not None]
        if len(given) != 1:
            raise ValueError("a key source names exactly one of header, query or cookie")
        if not given[0]:
            raise ValueError("a key source name cannot be empty")
        return self


class ApiKeyAuth(_Model):
    """Solo's `apiKeyAuth` block, plus the documented extensions `keySources`,
    `forwardCredential` and `clientIdHeader`."""

    header_name: HeaderName = "api-key"
    # Explicit alias: the camel-case generator would spell it k8SSecretApikeyStorage.
    k8s_secret_apikey_storage: K8sSecretApikeyStorage | None = Field(
        default=None, alias="k8sSecretApikeyStorage"
    )
    # Deprecated in Solo's API in favour of k8sSecretApikeyStorage; still honoured.
    label_selector: LabelSelector | None = None
    api_key_secret_refs: list[SecretRef] = Field(default_factory=list)
    headers_from_metadata_entry: dict[HeaderName, MetadataEntry] = Field(default_factory=dict)
    # Deprecated in Solo's API in favour of headersFromMetadataEntry; still honoured.
    headers_from_metadata: dict[HeaderName, MetadataEntry] = Field(default_factory=dict)
    key_sources: list[KeySource] | None = None
    forward_credential: bool = False
    client_id_header: HeaderName | None = None
    # Strict: a key is required. Optional: no key passes anonymously (identity headers
    # removed); a wrong key is still a 401.
    mode: Literal["Strict", "Optional"] = "Strict"
    # Admit only keys whose Secret stores a hash (api-key-hash), never the key itself.
    require_hashed_keys: bool = False
    # Label selectors match Secrets in every namespace (true), or only in the
    # AuthConfig's own (false, the default: a tenant with rights in another namespace
    # cannot add keys to this config by labelling a Secret of its own).
    all_namespaces: bool = False

    @model_validator(mode="after")
    def _check(self) -> ApiKeyAuth:
        storage = self.k8s_secret_apikey_storage
        if not (
            self.label_selector
            or self.api_key_secret_refs
            or (storage and (storage.label_selector or storage.api_key_secret_refs))
        ):
            raise ValueError(
                "apiKeyAuth admits no keys: set k8sSecretApikeyStorage.apiKeySecretRefs "
                "and/or k8sSecretApikeyStorage.labelSelector"
            )
        if self.key_sources is not None:
            if "header_name" in self.model_fields_set:
                raise ValueError("set either headerName or keySources, not both")
            if not self.key_sources:
                raise ValueError("keySources cannot be empty")
        both = set(self.headers_from_metadata_entry) & set(self.headers_from_metadata)
        if both:
            raise ValueError(
                f"header(s) {sorted(both)} set by both headersFromMetadataEntry "
                "and headersFromMetadata"
            )
        injected = set(self.headers_from_metadata_entry) | set(self.headers_from_metadata)
        if self.client_id_header is not None:
            if self.client_id_header in injected:
                raise ValueError(
                    f"clientIdHeader {self.client_id_header!r} is also set from metadata"
                )
            injected.add(self.client_id_header)
        clash = injected & {s.header for s in self.sources() if s.header}
        if clash:
            raise ValueError(f"header(s) {sorted(clash)} are both a key source and injected")
        return self

    def sources(self) -> list[KeySource]:
        """Where the key is read from, in order: `keySources`, else `headerName`."""
        if self.key_sources is not None:
            return self.key_sources
        return [KeySource(header=self.header_name)]

    def metadata_headers(self) -> dict[str, MetadataEntry]:
        return {**self.headers_from_metadata, **self.headers_from_metadata_entry}

    def secret_refs(self, default_namespace: str) -> list[tuple[str, str]]:
        """(namespace, name) of every referenced Secret; namespace defaults to the config's."""
        refs = list(self.api_key_secret_refs)
        if self.k8s_secret_apikey_storage:
            refs += self.k8s_secret_apikey_storage.api_key_secret_refs
        return [(r.namespace or default_namespace, r.name) for r in refs]

    def selectors(self) -> list[dict[str, str]]:
        found = [self.label_selector]
        if self.k8s_secret_apikey_storage:
            found.append(self.k8s_secret_apikey_storage.label_selector)
        return [s for s in found if s]


_SUPPORTED_CONFIG_FIELDS = frozenset({"name", "apiKeyAuth", "api_key_auth"})


class AuthConfigEntry(_Model):
    """One entry of `spec.configs`; every entry must pass for a request to be allowed."""

    name: str | None = None
    api_key_auth: ApiKeyAuth

    @model_validator(mode="before")
    @classmethod
    def _only_api_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            other = sorted(str(k) for k in data if k not in _SUPPORTED_CONFIG_FIELDS)
            if other:
                raise ValueError(
                    f"unsupported auth config {', '.join(map(repr, other))}: "
                    "extauth implements apiKeyAuth only"
                )
        return data


def _check_hosts(value: list[str]) -> list[str]:
    hosts.normalize_all(value)  # raises HostPatternError (a ValueError) naming the pattern
    return value


# Host patterns (extension, as Authorino's spec.hosts): a Check whose route names no
# config_id picks the AuthConfig claiming the request's host (extauth/hosts.py).
HostPatterns = Annotated[list[str], AfterValidator(_check_hosts)]
MAX_HOSTS = 256


class AuthConfigSpec(_Model):
    configs: list[AuthConfigEntry] = Field(min_length=1)
    # Over the entries' names, e.g. "teamkeys || partnerkeys"; without it all must pass.
    boolean_expr: str | None = None
    hosts: HostPatterns | None = Field(default=None, max_length=MAX_HOSTS)

    @model_validator(mode="after")
    def _check_expr(self) -> AuthConfigSpec:
        if self.boolean_expr is None:
            return self
        try:
            expr = boolexpr.parse(self.boolean_expr)
        except boolexpr.ExprError as exc:
            raise ValueError(str(exc)) from None
        names = [entry.name for entry in self.configs]
        if any(name is None for name in names):
            raise ValueError("with booleanExpr, every entry of configs needs a name")
        if len(set(names)) != len(names):
            raise ValueError("configs entry names must be unique")
        unknown = sorted(expr.names - set(map(str, names)))
        if unknown:
            raise ValueError(f"booleanExpr names {unknown} that no configs entry has")
        unused = sorted(set(map(str, names)) - expr.names)
        if unused:
            raise ValueError(f"configs entries {unused} are not used in booleanExpr")
        return self


class AuthConfig(_Model):
    api_version: Literal["extauth.solo.io/v1"]
    kind: Literal["AuthConfig"]
    metadata: ObjectMeta
    spec: AuthConfigSpec
    # Written by a controller in a cluster; read back objects carry it. Not used.
    status: Any = None

    @property
    def config_id(self) -> str:
        """How Envoy routes name this config: `<namespace>.<name>`."""
        return f"{self.metadata.namespace}.{self.metadata.name}"
