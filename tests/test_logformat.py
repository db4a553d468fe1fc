"""--log-format json|text: one record per line, whatever a file name or a client sends.

The formatters alone (records with newlines, huge values, an exception that quotes a key),
then a real `extauth serve` in both formats: a rejected file whose name holds a newline
and a forged log line, and Checks whose request id and path hold the same, never make a
line of their own; with json every line is an object with the documented keys."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from extauth import cli, logformat
from tests.builders import secret
from tests.harness import Extauth, wait_until
from tests.test_metrics import CONFIG

FORGED = "2026-01-01 00:00:00,000 ERROR extauth: forged"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TEXT_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("extauth.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def _raised() -> logging.LogRecord:
    try:
        raise ValueError("the key eak_SECRET was wrong\n" + FORGED)
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    return record


def test_json_lines_are_one_bounded_object_each() -> None:
    json_format = logformat.JsonFormatter()
    line = json_format.format(_record("config: rejected %s", "a\n" + FORGED + "\u2028.yaml"))
    assert "\n" not in line
    assert "\u2028" not in line
    found = json.loads(line)
    assert set(found) == {"time", "level", "logger", "message"}
    assert RFC3339_UTC.match(found["time"])
    assert found["level"] == "WARNING"
    assert found["logger"] == "extauth.test"
    assert found["message"] == "config: rejected a\n" + FORGED + "\u2028.yaml"  # escaped, intact

    fields = {"config": "ns.cfg", "path": "/x\n" + FORGED, "huge": "y" * 100_000, "time": "no"}
    found = json.loads(json_format.format(_record("{...}", fields=fields, brief="decision")))
    assert found["message"] == "decision"
    assert found["config"] == "ns.cfg"
    assert found["path"] == "/x\n" + FORGED
    assert len(found["huge"]) < 1100  # bounded, and says how long it was
    assert found["huge"].endswith("(100000 chars)")
    assert found["time"] != "no"  # a field never takes over a reserved key

    found = json.loads(json_format.format(_record("x" * 100_000)))
    assert len(found["message"]) < logformat.MESSAGE_LIMIT + 50

    line = json_format.format(_raised())
    found = json.loads(line)
    assert found["traceback"].startswith("ValueError at ")
    assert "test_logformat.py" in found["traceback"]
    assert "eak_SECRET" not in line  # the exception's message may quote a key
    assert "forged" not in line


def test_text_lines_escape_control_characters_and_indent_tracebacks() -> None:
    text_format = logformat.TextFormatter()
    line = text_format.format(_record("config: rejected %s", "a\n" + FORGED + "\r.yaml"))
    assert "\n" not in line
    assert "\r" not in line
    assert "a\\x0a2026-01-01" in line
    assert TEXT_START.match(line)
    lines = text_format.format(_raised()).split("\n")
    assert TEXT_START.match(lines[0])
    assert all(line.startswith("    ") for line in lines[1:])
    assert "eak_SECRET" not in "\n".join(lines)
    text_format.worker = 3
    assert "WARNING [worker 3] extauth.test: x" in text_format.format(_record("x"))


def test_the_format_comes_from_the_flag_or_the_environment() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["serve", "--log-format", "json"]).log_format == "json"
    assert parser.parse_args(["--log-format", "json", "validate", "x"]).log_format == "json"
    assert parser.parse_args(["validate", "x"]).log_format is None  # then the environment
    code = cli.main(["serve", "--config-dir", "nowhere"], {"EXTAUTH_LOG_FORMAT": "yaml"})
    assert code == 2


def _check(address: str, request_id: str, path: str, key: str | None) -> None:
    message = external_auth_pb2.CheckRequest()
    message.attributes.context_extensions["config_id"] = "ns.cfg"
    http = message.attributes.request.http
    http.path, http.headers["x-request-id"] = path, request_id
    if key is not None:
        http.headers["x-key"] = key
    with grpc.insecure_channel(address) as channel:
        external_auth_pb2_grpc.AuthorizationStub(channel).Check(message, timeout=5)


@pytest.mark.parametrize("kind", ["json", "text"])
def test_a_running_service_writes_one_record_per_line(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "team.yaml").write_text("---\n".join([secret("a", "key-a-SECRET"), CONFIG]))
    (config / f"bad\n{FORGED}.yaml").write_text("kind: Secret\nmetadata: [\n")
    if kind == "json":
        monkeypatch.setenv("EXTAUTH_LOG_FORMAT", "json")  # the environment's default
    extra = ["--decision-log"] + (["--log-format", "text"] if kind == "text" else [])
    service = Extauth(config, tmp_path / "extauth.log", *extra)
    try:
        service.wait_ready()
        _check(service.address, f"id\n{FORGED}", f"/p\n{FORGED}?k=key-a-SECRET", "key-a-SECRET")
        _check(service.address, "id2", "/q", "wrong\nkey")
        wait_until(lambda: True if "id2" in service.log() else None, 10, "the decision lines")
    finally:
        service.stop()
    log = service.log()
    assert "SECRET" not in log
    lines = log.splitlines()
    assert not any(line.startswith(FORGED) or line.startswith("forged") for line in lines)
    if kind == "text":
        assert all(TEXT_START.match(line) or line.startswith("    ") for line in lines), log
        assert any("bad\\x0a2026-01-01" in line for line in lines)
        return
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
        assert RFC3339_UTC.match(record["time"])
    rejected = [r for r in records if "rejected" in r["message"]]
    assert any(f"bad\n{FORGED}.yaml" in r["message"] for r in rejected)
    decisions = [r for r in records if r["logger"] == "extauth.decisions"]
    assert [d["result"] for d in decisions] == ["allow", "deny"]
    assert decisions[0]["message"] == "decision"
    assert decisions[0]["request_id"] == f"id\n{FORGED}"[:64]
    assert decisions[0]["path"] == f"/p\n{FORGED}"  # the query string (a key) cut
    assert decisions[0]["identity"] == "a"
    assert decisions[1]["reason"] == "invalid_api_key"
