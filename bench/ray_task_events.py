"""Why the controller and the agents keep no Ray task events: how much Ray's GCS grows with actor calls,
with and without them. One local Ray, one actor, ``--calls`` calls (in rounds of 1,000), gcs_server's
RSS before and after; then the same with ``enable_task_events=False`` on the actor. Writes
``ray_task_events.json``.

    python -m bench.ray_task_events --calls 20000 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Report


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def _gcs_pid() -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if b"gcs_server" in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]:
                    return int(entry)
            except OSError:
                continue
    raise RuntimeError("no gcs_server process")


def one(events: bool, calls: int) -> dict:
    """In this process: a local Ray and one actor, ``calls`` calls; the GCS's RSS before and after."""
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False)

    @ray.remote
    class Echo:
        def ping(self) -> int:
            return 1

    actor = Echo.options(enable_task_events=events).remote()
    ray.get(actor.ping.remote())
    gcs = _gcs_pid()
    before = _rss_mib(gcs)
    for _ in range(max(1, calls // 1000)):
        ray.get([actor.ping.remote() for _ in range(1000)])
    time.sleep(3.0)  # the last events reach the GCS
    after = _rss_mib(gcs)
    ray.shutdown()
    return {"task_events": events, "calls": calls, "gcs_rss_before_mib": round(before, 1),
            "gcs_rss_after_mib": round(after, 1), "growth_mib": round(after - before, 1),
            "kib_per_call": round((after - before) * 1024 / calls, 2)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--one", choices=("on", "off"), help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one == "on", args.calls)))
        return
    report = Report("ray_task_events", argv)
    runs = []
    for mode in ("on", "off"):  # each in a fresh process: a Ray of its own
        done = subprocess.run([sys.executable, "-m", "bench.ray_task_events", "--one", mode, "--calls",
                               str(args.calls)], capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(runs[-1])
    report.write(args.out, runs=runs)


if __name__ == "__main__":
    main(sys.argv[1:])
