"""The OpenAPI document against a real gateway: schemathesis (property-based, the ``schemathesis run`` CLI in a
subprocess while this process's gateway serves) finds no 5xx, and no response whose status, content type,
headers or body the document does not describe.

Operations that would change the shared cluster (deleting a model, creating, changing or deleting a
deployment) are left out: their shapes are the unit tests' and test_rest's. The rest run with positive
data (valid by the document), up to ``MAX_EXAMPLES`` cases each.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import pytest

from gateway.rest import openapi

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 20
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance")
DESTRUCTIVE = ("deleteModel", "createDeployment", "updateDeployment", "deleteDeployment")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


async def test_schemathesis_finds_no_server_error_and_no_response_off_the_document(running, tmp_path):
    base = f"http://127.0.0.1:{running.gateway.http_port}"
    report = tmp_path / "report.ndjson"
    args = [str(SCHEMATHESIS), "run", str(openapi.DOCUMENT_PATH), "--url", base,
            "-H", f"Authorization: Bearer {running.api.token}",
            "--checks", ",".join(CHECKS), "--mode", "positive", "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", str(MAX_EXAMPLES), "--seed", "7", "--workers", "2", "--request-timeout", "30",
            "--no-shrink", "--report", "ndjson", "--report-ndjson-path", str(report),
            "--suppress-health-check", "all"]
    for operation_id in DESTRUCTIVE:
        args += ["--exclude-operation-id", operation_id]
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""})
    async with asyncio.timeout(240):
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    Path(os.environ.get("WARMFLEET_SCHEMATHESIS_LOG", tmp_path / "schemathesis.log")).write_text(text)
    print(text)
    operations, cases = summary(text)
    print(f"schemathesis: {operations} operations, {cases} cases")
    assert proc.returncode == 0, text[-6000:]
    documented = sum(len(item) for item in openapi.build()["paths"].values())
    assert operations == documented - len(DESTRUCTIVE)
    assert cases >= operations * 3


def summary(text: str) -> tuple[int, int]:
    """(operations tested, test cases generated) from the CLI's summary."""
    operations = re.search(r"API Operations:.*?Tested: (\d+)", text, re.DOTALL)
    cases = re.search(r"Test cases:\s+(\d+) generated", text)
    assert operations and cases, text[-3000:]
    return int(operations.group(1)), int(cases.group(1))


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(summary(sys.stdin.read())))
