"""Generated protobuf messages (from protos/) and the gRPC method path they serve.

This package is the only place generated code lives; `make protos` regenerates it.
"""

# The method Envoy calls. Our messages live in package extauth.wire.v1, so the service
# name is spelled out here instead of being taken from a generated service stub.
AUTHORIZATION_SERVICE = "envoy.service.auth.v3.Authorization"
CHECK_METHOD = "Check"
