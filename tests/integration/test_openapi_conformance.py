"""The OpenAPI document against a real gateway: schemathesis (property-based, the ``schemathesis run`` CLI in a
subprocess while this process's gateway serves) finds no 5xx, and no response whose status, content type,
headers or body the document does not describe; and with data the document refuses (negative mode), no
5xx either.

Operations that would change the shared cluster (creating, changing or deleting a model, creating,
changing or deleting a deployment) are left out: their shapes are the unit tests', test_rest's and
test_replicate_conformance's. The rest run with positive
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
DESTRUCTIVE = ("createModel", "updateModel", "deleteModel", "createDeployment", "updateDeployment",
               "deleteDeployment")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


async def test_schemathesis_finds_no_server_error_and_no_response_off_the_document(running, tmp_path):
    operations, cases = await schemathesis(running, tmp_path, "positive", CHECKS)
    documented = sum(len(item) for item in openapi.build()["paths"].values())
    assert operations == documented - len(DESTRUCTIVE)
    assert cases >= operations * 3


async def test_schemathesis_with_invalid_data_finds_no_server_error(running, tmp_path):
    """Negative mode: every operation with data its document refuses (wrong types, values out of
    range, missing fields, extra ones). Each answer must be a client error, never a 5xx."""
    operations, cases = await schemathesis(running, tmp_path, "negative", ("not_a_server_error",))
    assert operations >= 10 and cases >= operations * 3


async def schemathesis(running, tmp_path: Path, mode: str, checks: tuple[str, ...]) -> tuple[int, int]:
    """Run the ``schemathesis run`` CLI against the gateway in ``mode`` with ``checks``; assert it passed;
    (operations tested, cases generated)."""
    args = cli_args(f"http://127.0.0.1:{running.gateway.http_port}", running.api.token, mode, checks,
                    MAX_EXAMPLES, tmp_path / f"report-{mode}.ndjson")
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""})
    async with asyncio.timeout(240):
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    Path(os.environ.get("WARMFLEET_SCHEMATHESIS_LOG", tmp_path / f"schemathesis-{mode}.log")).write_text(text)
    print(text)
    operations, cases = summary(text)
    print(f"schemathesis ({mode}): {operations} operations, {cases} cases")
    assert not failures(text), text[-6000:]
    # Otherwise only schemathesis's own runtime errors may end it badly: its coverage phase sometimes
    # trips on Python's ast recursion check ("AST constructor recursion depth mismatch"), the server's
    # answers aside.
    assert proc.returncode == 0 or "Runtime Error" in text, text[-6000:]
    return operations, cases


def failures(text: str) -> list[str]:
    """The failed checks the CLI's summary lists ("ST102 Server error on ...: 1"), none when it passed."""
    block = re.search(r"\nFailures:\n(.*?)\n\n", text, re.DOTALL)
    return [line.strip() for line in block.group(1).splitlines() if line.strip()] if block else []


def cli_args(base: str, token: str, mode: str, checks: tuple[str, ...], max_examples: int,
             report: Path) -> list[str]:
    """The ``schemathesis run`` command line against the gateway at ``base`` (the non-destructive
    operations, every phase, a fixed seed); the bench's fuzz scenario runs it with more examples."""
    args = [str(SCHEMATHESIS), "run", str(openapi.DOCUMENT_PATH), "--url", base,
            "-H", f"Authorization: Bearer {token}",
            "--checks", ",".join(checks), "--mode", mode, "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", str(max_examples), "--seed", "7", "--workers", "2", "--request-timeout", "30",
            "--no-shrink", "--report", "ndjson", "--report-ndjson-path", str(report),
            "--suppress-health-check", "all"]
    for operation_id in DESTRUCTIVE:
        args += ["--exclude-operation-id", operation_id]
    return args


def summary(text: str) -> tuple[int, int]:
    """(operations tested, test cases generated) from the CLI's summary."""
    operations = re.search(r"API Operations:.*?Tested: (\d+)", text, re.DOTALL)
    cases = re.search(r"Test cases:\s+(\d+) generated", text)
    assert operations and cases, text[-3000:]
    return int(operations.group(1)), int(cases.group(1))


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(summary(sys.stdin.read())))
