"""Regenerate the protobuf module from protos/ (`make protos`), and its type stubs.

The module is committed rather than built at install time so that installing extauth needs
no compiler; tests/test_wire.py recompiles the .proto and fails if the committed descriptor
differs, so the two cannot drift apart unnoticed. The stubs (`--stubs`) serve mypy alone,
which runs only where grpcio-tools is installed too, so `make test` makes them from the
.proto instead: a generated file kept out of git cannot go stale in it.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
PROTO_FILES = ("extauth/wire/ext_authz.proto",)


def protoc_args(*outputs: str) -> list[str]:
    """Arguments shared by generation and the staleness test."""
    well_known = str(resources.files("grpc_tools") / "_proto")
    return ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", *outputs, *PROTO_FILES]


def main(argv: list[str] | None = None) -> int:
    stubs_only = (sys.argv[1:] if argv is None else argv) == ["--stubs"]
    outputs = [f"--pyi_out={ROOT}"] if stubs_only else [f"--python_out={ROOT}", f"--pyi_out={ROOT}"]
    code = protoc.main(protoc_args(*outputs))
    if code != 0:
        print("protoc failed", file=sys.stderr)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
