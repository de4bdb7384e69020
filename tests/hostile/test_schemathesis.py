"""The live gateway against its own OpenAPI document: schemathesis generates valid and invalid
requests for every operation and fails on any 5xx or any response the document does not describe."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.hostile.conftest import Hostile

# CPython 3.11.7's ast.parse raises this inside Hypothesis's lambda pretty-printer at a deep stack
# (python/cpython gh-106905, fixed in later 3.11 releases); schemathesis reports it as its own error
_TOOL_BUG = "AST constructor recursion depth mismatch"

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "ignored_auth",
])


def test_openapi_document_is_served_without_auth(hostile: Hostile) -> None:
    with urllib.request.urlopen(hostile.url + "/openapi.json", timeout=5) as r:
        doc = json.loads(r.read())
    assert doc["openapi"].startswith("3.1")
    assert {"/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/models/{model}",
            "/v1/usage"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_schemathesis_finds_no_5xx_and_no_schema_violation(hostile: Hostile, tmp_path: Path) -> None:
    # The "examples" phase is left out: with Python 3.11, schemathesis 4.32 trips over Hypothesis's
    # lambda pretty-printer on this schema's oneOf (an internal SystemError, not a finding). The
    # coverage phase still sends the documented examples and the boundary values of every field.
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st), "run", hostile.url + "/openapi.json", "--url", hostile.url,
        "-H", f"Authorization: Bearer {hostile.token('schemathesis')}",
        "--checks", CHECKS, "--max-examples", "25", "--phases", "coverage,fuzzing",
        "--workers", "2", "--seed", "7", "--max-time", "45", "--request-timeout", "10",
        "--generation-database", "none", "--no-color", "--suppress-health-check", "all",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        # findings are failures (ST1xx) or network errors; the only tolerated error is the tool's own
        assert "Failures:" not in out and "Network Error" not in out, out[-12000:]
        assert "=== ERRORS ===" in out, out[-12000:]
        errors = out.split("=== ERRORS ===", 1)[1].split("=== SUMMARY ===", 1)[0]
        blocks = [b for b in re.split(r"\n_{5,}[^\n]*_{5,}\n", errors) if b.strip().strip("=").strip()]
        for block in blocks:
            assert _TOOL_BUG in block, block[-4000:]
