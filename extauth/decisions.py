"""What a Check decides: `Allow` (with what to inject and strip) or `Deny` (with its `Reason`).

Vocabulary: made by `deciding`, turned into bytes by `responses`, counted by `metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Reason(StrEnum):
    """Why a request was denied; also the `error` field of the JSON body and a metric label."""

    MISSING = "missing_api_key"
    INVALID = "invalid_api_key"
    EXPIRED = "expired_api_key"
    MISSING_METADATA = "missing_required_metadata"
    NO_CONFIG = "no_auth_config"
    UNKNOWN_CONFIG = "unknown_auth_config"
    NOT_READY = "not_ready"
    INTERNAL = "internal_error"
    # The key parameter twice, or in a spelling Envoy would not strip (credentials.py).
    AMBIGUOUS = "ambiguous_api_key"
    # Allowing would push the request past Envoy's header limit (see MAX_REQUEST_HEADERS).
    TOO_MANY_HEADERS = "too_many_headers"
    # More query parameters than MAX_QUERY_PARAMETERS, on a config that reads the query.
    TOO_MANY_PARAMETERS = "too_many_query_parameters"
    # The route's ext_authz filter does not send a header the AuthConfig reads a key from
    # (its allowed_headers, passed in the context extension `allowed_headers`): a config
    # mismatch, not a client's missing key (deciding.unsent).
    KEY_SOURCE_NOT_SENT = "key_source_not_sent"


@dataclass(frozen=True, slots=True)
class Allow:
    config_id: str
    identity: str
    set_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]
    remove_query: tuple[str, ...]
    # The key's --usage-label value, for per-team metrics ("" when not counted).
    usage: str = ""
    # When the granting key expires (POSIX), if it does: a cached answer lasts until then.
    expires_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Deny:
    reason: Reason
    config_id: str | None
    # Where the key belongs ("the vanity-auth header"), for the 401 message.
    hint: str = ""


Decision = Allow | Deny
