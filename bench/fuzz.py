"""Hostile input at length: the fuzzers of the test suite (``tests/integration/test_grpc_fuzz.py`` for
every gRPC method, schemathesis over the OpenAPI document in positive and negative modes, the OpenAI
routes included) with many more cases, against a `warmfleet up` cluster of its own serving the built-in
models. Goal: 0 answers that are 5xx or INTERNAL/UNKNOWN. Writes ``fuzz.json``: cases per method and
the statuses seen, and schemathesis's operations and cases per mode.

    python -m bench.fuzz --grpc-examples 300 --http-examples 150 --out bench/results
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from bench.common import Report, private_home, running_cluster
from tests.integration import test_grpc_fuzz, test_openapi_conformance as conformance
from warmfleet.cluster_state import read_state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grpc-examples", type=int, default=300, help="generated requests per gRPC method")
    parser.add_argument("--http-examples", type=int, default=150, help="schemathesis --max-examples")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    report = Report("fuzz", argv)
    with private_home() as settings, running_cluster(settings) as target:
        token = target.token_file.read_text().strip()
        state = read_state(settings)
        failures: list[str] = []
        try:
            codes = test_grpc_fuzz.fuzz(target.address, token, args.grpc_examples)
        except AssertionError as err:  # the first INTERNAL or UNKNOWN stops a method's run: it is kept
            failures.append(str(err)[:2000])
            codes = {}
        grpc_by_method: dict[str, dict[str, int]] = defaultdict(dict)
        for (method, code), count in sorted(codes.items()):
            grpc_by_method[method][code] = count
        http = {mode: schemathesis(f"http://{state.http_target}", token, mode, args.http_examples)
                for mode in ("positive", "negative")}
    grpc_cases = sum(codes.values())
    http_cases = sum(run["cases"] for run in http.values())
    server_errors = len(failures) + sum(len(run["failures"]) for run in http.values())
    goal = {"goal": "0 answers 5xx or INTERNAL/UNKNOWN, over at least 10,000 cases",
            "cases": grpc_cases + http_cases, "server_errors": server_errors,
            "met": server_errors == 0 and grpc_cases + http_cases >= 10_000}
    report.write(args.out, goal=goal, grpc={"cases": grpc_cases, "by_method": grpc_by_method,
                                           "failures": failures}, http=http)
    print(f"gRPC: {grpc_cases} cases over {len(grpc_by_method)} methods; HTTP: "
          + ", ".join(f"{m} {r['operations']} operations {r['cases']} cases rc={r['returncode']}"
                      for m, r in http.items()))
    print(f"goal: {goal}")


def schemathesis(base: str, token: str, mode: str, examples: int) -> dict:
    """One schemathesis run (the test suite's command line) in ``mode``: what it says of itself."""
    checks = conformance.CHECKS if mode == "positive" else ("not_a_server_error",)
    with tempfile.TemporaryDirectory(prefix="warmfleet-fuzz-") as tmp:
        args = conformance.cli_args(base, token, mode, checks, examples, Path(tmp) / "report.ndjson")
        done = subprocess.run(args, cwd=tmp, capture_output=True, text=True, timeout=3600,
                              env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""})
    text = done.stdout + done.stderr
    try:
        operations, cases = conformance.summary(text)
    except AssertionError:
        operations, cases = 0, 0
    # A non-zero exit with no failed check is schemathesis's own runtime error (see the test suite's
    # ``schemathesis``): kept, with the output's tail, but not counted against the server.
    return {"operations": operations, "cases": cases, "returncode": done.returncode, "checks": list(checks),
            "failures": conformance.failures(text), "runtime_error": "Runtime Error" in text,
            "tail": text[-3000:] if done.returncode else ""}


if __name__ == "__main__":
    main(sys.argv[1:])
