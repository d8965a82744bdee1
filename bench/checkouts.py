"""Two checkouts under one bench: the echo scenario run in a checkout of ``--before`` and one of
``--after`` (HEAD by default: committed code only), alternating (before, after, before, after ...), so
both share the machine's noise. Each run's cluster is
compared against the bare grpc.aio baseline measured in that same run; those ratios (cluster/baseline)
are what is compared between the checkouts, since absolute figures move with the machine's load.

    python -m bench.checkouts --before 64ce916 --after HEAD --rounds 2 --out bench/results

Writes ``echo_checkouts.json`` under ``--out``: per checkout and concurrency, the median over rounds of
the throughput ratio and of the p50 overhead (cluster p50 - baseline p50, ms), and after/before.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_echo(checkout: Path, out: Path, echo_args: list[str]) -> dict[str, Any]:
    """``python -m bench.echo`` with ``checkout``'s code first on the path (for every process it starts:
    the gateway, Ray's workers), writing its report under ``out``."""
    env = dict(os.environ, PYTHONPATH=str(checkout), HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "bench.echo", "--out", str(out), *echo_args], cwd=checkout, env=env,
                   check=True)
    return json.loads((out / "echo.json").read_text())


def figures(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per concurrency: cluster throughput over baseline's, and cluster p50 minus baseline's (ms)."""
    base, cluster = report["summary"]["baseline"], report["summary"]["cluster"]
    return {c: {"throughput_ratio": cluster[c]["throughput_rps"] / base[c]["throughput_rps"],
                "p50_overhead_ms": cluster[c]["p50_ms"] - base[c]["p50_ms"],
                "cluster_rps": cluster[c]["throughput_rps"]}
            for c in cluster}


def medians(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {c: {key: statistics.median(r[c][key] for r in rounds) for key in rounds[0][c]} for c in rounds[0]}


def _resolve(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the echo bench in two checkouts, alternating")
    parser.add_argument("--before", required=True, help="the git revision to compare against")
    parser.add_argument("--after", default="HEAD", help="the git revision measured against it")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each checkout")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args, echo_args = parser.parse_known_args(argv)
    started = time.time()
    revisions = {label: _resolve(rev) for label, rev in (("before", args.before), ("after", args.after))}
    with tempfile.TemporaryDirectory(prefix="warmfleet-checkouts-") as tmp:
        checkouts = {label: Path(tmp) / label for label in revisions}
        for label, rev in revisions.items():
            subprocess.run(["git", "worktree", "add", "--detach", str(checkouts[label]), rev], cwd=ROOT,
                           check=True)
        try:
            results: dict[str, list[dict[str, dict[str, float]]]] = {"before": [], "after": []}
            for k in range(args.rounds):
                for label, checkout in checkouts.items():
                    report = run_echo(checkout, Path(tmp) / f"{label}-{k}", echo_args)
                    results[label].append(figures(report))
        finally:
            for checkout in checkouts.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=ROOT, check=False)
    summary = {label: medians(rounds) for label, rounds in results.items()}
    change = {c: {key: summary["after"][c][key] / summary["before"][c][key] for key in summary["after"][c]}
              for c in summary["after"]}
    report = {"scenario": "echo_checkouts",
              "command": "python -m bench.checkouts " + " ".join(sys.argv[1:] if argv is None else argv),
              "before": revisions["before"], "after": revisions["after"],
              "started_at": started, "wall_s": time.time() - started, "summary": summary,
              "after_over_before": change, "rounds": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "echo_checkouts.json").write_text(json.dumps(report, indent=2))
    for c in sorted(change, key=int):
        b, a = summary["before"][c], summary["after"][c]
        print(f"c={c:>3}: throughput/baseline {b['throughput_ratio']:.3f} -> {a['throughput_ratio']:.3f} "
              f"(x{change[c]['throughput_ratio']:.2f}); p50 overhead {b['p50_overhead_ms']:.2f} -> "
              f"{a['p50_overhead_ms']:.2f} ms")


if __name__ == "__main__":
    main()
