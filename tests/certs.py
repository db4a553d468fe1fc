"""Certificates made at test time with the `openssl` command: a CA and leaves it signs.

Nothing is committed: every TLS test gets fresh keys in its own temporary directory.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def _san(names: tuple[str, ...]) -> str:
    def one(name: str) -> str:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return f"DNS:{name}"
        return f"IP:{name}"

    return ",".join(one(n) for n in names)


def ca(directory: Path, name: str = "test-ca") -> Pair:
    """A self-signed CA (also what a "self-signed server" is: a CA nobody trusts)."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", f"/CN={name}", "-keyout", pair.key, "-out", pair.cert,
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return pair


def leaf(directory: Path, name: str, issuer: Pair, *sans: str) -> Pair:
    """A certificate for `sans` (DNS names or IPs), signed by `issuer`, good for TLS
    servers and clients alike."""
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(
        f"subjectAltName={_san(sans or (name,))}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", f"/CN={name}", "-keyout", pair.key, "-out", csr,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", issuer.cert, "-CAkey", issuer.key,
        "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", pair.cert,
    )  # fmt: skip
    return pair


def relocate(config: Any, prefix: str, directory: Path) -> None:
    """Point every `filename` under `prefix` (a committed config's cert paths) into
    `directory`, keeping the file name."""
    if isinstance(config, dict):
        filename = config.get("filename")
        if isinstance(filename, str) and filename.startswith(prefix):
            config["filename"] = str(directory / Path(filename).name)
        for value in config.values():
            relocate(value, prefix, directory)
    elif isinstance(config, list):
        for item in config:
            relocate(item, prefix, directory)
