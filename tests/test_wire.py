"""Our proto subset against Envoy's official messages (xds-protos), loaded side by side.

Three proofs: every field we declare matches the official field (number, name, type,
cardinality, and the official message it stands for); bytes cross both ways; and the
committed generated module is what the .proto compiles to today.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.protobuf import descriptor, descriptor_pb2
from grpc_tools import protoc

from extauth import decisions, responses
from extauth.wire import ext_authz_pb2 as pb
from extauth.wire import generate

OURS_TO_OFFICIAL = {
    "extauth.wire.v1.CheckRequest": "envoy.service.auth.v3.CheckRequest",
    "extauth.wire.v1.AttributeContext": "envoy.service.auth.v3.AttributeContext",
    "extauth.wire.v1.AttributeContext.Peer": "envoy.service.auth.v3.AttributeContext.Peer",
    "extauth.wire.v1.AttributeContext.Request": "envoy.service.auth.v3.AttributeContext.Request",
    "extauth.wire.v1.AttributeContext.HttpRequest": (
        "envoy.service.auth.v3.AttributeContext.HttpRequest"
    ),
    "extauth.wire.v1.HeaderValue": "envoy.config.core.v3.HeaderValue",
    "extauth.wire.v1.HeaderMap": "envoy.config.core.v3.HeaderMap",
    "extauth.wire.v1.HeaderValueOption": "envoy.config.core.v3.HeaderValueOption",
    "extauth.wire.v1.HeaderValueOption.HeaderAppendAction": (
        "envoy.config.core.v3.HeaderValueOption.HeaderAppendAction"
    ),
    "extauth.wire.v1.QueryParameter": "envoy.config.core.v3.QueryParameter",
    "extauth.wire.v1.StatusCode": "envoy.type.v3.StatusCode",
    "extauth.wire.v1.HttpStatus": "envoy.type.v3.HttpStatus",
    "extauth.wire.v1.RpcStatus": "google.rpc.Status",
    "extauth.wire.v1.DeniedHttpResponse": "envoy.service.auth.v3.DeniedHttpResponse",
    "extauth.wire.v1.OkHttpResponse": "envoy.service.auth.v3.OkHttpResponse",
    "extauth.wire.v1.CheckResponse": "envoy.service.auth.v3.CheckResponse",
}

OFFICIAL_POOL = external_auth_pb2.DESCRIPTOR.pool


def _our_messages() -> list[descriptor.Descriptor]:
    found: list[descriptor.Descriptor] = []
    stack = list(pb.DESCRIPTOR.message_types_by_name.values())
    while stack:
        message = stack.pop()
        if not message.GetOptions().map_entry:
            found.append(message)
        stack.extend(message.nested_types)
    return found


def _type_name(field: descriptor.FieldDescriptor) -> str | None:
    if field.message_type is not None:
        if field.message_type.GetOptions().map_entry:
            entry = field.message_type
            return "map<{},{}>".format(*(_type_name(f) or f.type for f in entry.fields))
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    return None


def test_package_stays_off_official_names() -> None:
    assert pb.DESCRIPTOR.package == "extauth.wire.v1"
    # Both sets of messages are loaded in this process without a descriptor clash.
    assert external_auth_pb2.CheckRequest.DESCRIPTOR.full_name.startswith("envoy.")


@pytest.mark.parametrize("ours", _our_messages(), ids=lambda d: d.full_name)
def test_every_field_matches_the_official_message(ours: descriptor.Descriptor) -> None:
    official = OFFICIAL_POOL.FindMessageTypeByName(OURS_TO_OFFICIAL[ours.full_name])
    for field in ours.fields:
        match = official.fields_by_number.get(field.number)
        assert match is not None, f"{ours.full_name}.{field.name}: no field {field.number}"
        assert match.name == field.name
        assert match.type == field.type, f"{field.name}: wire type differs"
        assert match.is_repeated == field.is_repeated
        our_type, their_type = _type_name(field), _type_name(match)
        if our_type is None:
            assert their_type is None
        elif our_type.startswith(("google.protobuf.", "map<")):
            assert our_type == their_type
        else:
            assert OURS_TO_OFFICIAL[our_type] == their_type
        our_oneof = field.containing_oneof.name if field.containing_oneof else None
        their_oneof = match.containing_oneof.name if match.containing_oneof else None
        assert our_oneof == their_oneof


@pytest.mark.parametrize(
    "ours",
    [*pb.DESCRIPTOR.enum_types_by_name.values(), pb.HeaderValueOption.DESCRIPTOR.enum_types[0]],
)
def test_enum_values_match(ours: descriptor.EnumDescriptor) -> None:
    official = OFFICIAL_POOL.FindEnumTypeByName(OURS_TO_OFFICIAL[ours.full_name])
    for value in ours.values:
        assert official.values_by_number[value.number].name == value.name


def _official_request() -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    attrs = request.attributes
    attrs.source.address.socket_address.address = "10.0.0.1"  # a field we do not declare
    attrs.source.principal = "spiffe://client"
    attrs.destination.service = "api"
    attrs.context_extensions["config_id"] = "ns.name"
    attrs.tls_session.sni = "example.com"  # a field we do not declare
    http = attrs.request.http
    http.id = "req-1"
    http.method = "POST"
    http.headers["vanity-auth"] = "team1-key"
    http.headers["x-org"] = "spoof"
    http.path = "/v1/chat?x=1"
    http.host = "api.example.com"
    http.body = "{}"  # a field we do not declare
    http.header_map.headers.add(key="raw", raw_value=b"\xffbytes")
    http.size = 2
    return request


def test_official_request_parses_as_ours() -> None:
    ours = pb.CheckRequest.FromString(_official_request().SerializeToString())
    http = ours.attributes.request.http
    assert dict(http.headers) == {"vanity-auth": "team1-key", "x-org": "spoof"}
    assert http.path == "/v1/chat?x=1"
    assert http.method == "POST"
    assert http.header_map.headers[0].raw_value == b"\xffbytes"
    assert dict(ours.attributes.context_extensions) == {"config_id": "ns.name"}
    assert ours.attributes.source.principal == "spiffe://client"


def test_our_request_parses_as_official() -> None:
    ours = pb.CheckRequest()
    ours.attributes.request.http.headers["a"] = "b"
    ours.attributes.request.http.path = "/p"
    ours.attributes.context_extensions["config_id"] = "ns.n"
    official = external_auth_pb2.CheckRequest.FromString(ours.SerializeToString())
    assert official.attributes.request.http.headers["a"] == "b"
    assert official.attributes.context_extensions["config_id"] == "ns.n"


def test_allow_response_parses_as_official_with_overwrite_semantics() -> None:
    allow = decisions.Allow(
        config_id="ns.cfg",
        identity="team1",
        set_headers=(("x-org", "developers"),),
        remove_headers=("vanity-auth",),
        remove_query=("api_key",),
    )
    official = external_auth_pb2.CheckResponse.FromString(responses.encode(allow))
    assert official.status.code == 0
    assert official.WhichOneof("http_response") == "ok_response"
    (header,) = official.ok_response.headers
    assert header.header.key == "x-org"
    assert header.header.value == "developers"
    assert header.HasField("append")
    assert header.append.value is False
    assert header.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert list(official.ok_response.headers_to_remove) == ["vanity-auth"]
    assert list(official.ok_response.query_parameters_to_remove) == ["api_key"]
    assert official.dynamic_metadata.fields["identity"].string_value == "team1"


def test_deny_response_parses_as_official() -> None:
    raw = responses.encode(decisions.Deny(decisions.Reason.MISSING, "ns.cfg", "the x header"))
    official = external_auth_pb2.CheckResponse.FromString(raw)
    assert official.status.code == 16  # UNAUTHENTICATED
    denied = official.denied_response
    assert denied.status.code == 401
    headers = {h.header.key: h.header.value for h in denied.headers}
    assert headers["www-authenticate"].startswith("APIKey")
    assert headers["x-ext-auth-reason"] == "missing_api_key"
    assert '"missing_api_key"' in denied.body


def test_official_response_parses_as_ours() -> None:
    official = external_auth_pb2.CheckResponse()
    official.status.code = 0
    option = official.ok_response.headers.add()
    option.header.key = "k"
    option.header.value = "v"
    option.append.value = False
    option.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    official.ok_response.headers_to_remove.append("gone")
    ours = pb.CheckResponse.FromString(official.SerializeToString())
    assert ours.ok_response.headers[0].header.key == "k"
    assert (
        ours.ok_response.headers[0].append_action == pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )
    assert list(ours.ok_response.headers_to_remove) == ["gone"]


def test_attribute_context_module_is_the_official_one() -> None:
    # Guards the mapping above: the official AttributeContext really is where we look.
    assert (
        attribute_context_pb2.AttributeContext.DESCRIPTOR.full_name
        == OURS_TO_OFFICIAL["extauth.wire.v1.AttributeContext"]
    )


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    out = tmp_path / "set.pb"
    code = protoc.main(generate.protoc_args(f"--descriptor_set_out={out}"))
    assert code == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    # The Python generator drops json_name from the descriptor it embeds; nothing else.
    messages = list(compiled.message_type)
    while messages:
        message = messages.pop()
        for field in message.field:
            field.ClearField("json_name")
        messages.extend(message.nested_type)
    assert compiled == committed, "protos/ changed: run `make protos` and commit the result"
