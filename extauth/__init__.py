"""extauth: an Envoy ext_authz service for API-key AuthConfigs.

Data flows one way: sources (files, Kubernetes) -> changes -> incremental policy ->
Check decision -> serialized response. See README.md for the module map.
"""

__version__ = "0.1.0"
