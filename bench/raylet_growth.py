"""Whether Ray's raylet grows with no warmfleet at all: a bare local Ray (one idle actor, the driver
asleep) for ``--minutes``, first alone, then with ``--burners`` processes spinning on the CPU beside it (the
soak's machine is that busy), the raylet's RSS and anonymous RSS sampled every ``--interval-s``. The slope
after ``--warmup-minutes`` is fitted as in ``bench/soak.py``. Writes ``raylet_growth.json``.

Why: under the soak's load the raylet grows about 7 MiB/h while its event counters (its
``debug_state.txt``) show no work that depends on the load (no leases, no objects, no worker messages):
warmfleet's predictions never reach it. This measures the raylet on its own, idle and on a busy machine.

    python -m bench.raylet_growth --minutes 10 --out bench/results
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

from bench.common import Report
from bench.soak import least_squares


def _status_mib(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["RssAnon"].split()[0]) / 1024


def _raylet_pid() -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/raylet"):
                    if os.getppid() in _ancestors(int(entry)) or os.getpid() in _ancestors(int(entry)):
                        return int(entry)
            except OSError:
                continue
    raise RuntimeError("no raylet of this process's Ray")


def _ancestors(pid: int) -> set[int]:
    found = set()
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        found.add(pid)
    return found


def _burn(stop: multiprocessing.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def phase(name: str, seconds: float, interval_s: float, warmup_s: float, burners: int) -> dict:
    stop = multiprocessing.Event()
    procs = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(burners)]
    for p in procs:
        p.start()
    raylet, samples, start = _raylet_pid(), [], time.monotonic()
    try:
        while (now := time.monotonic() - start) < seconds:
            samples.append((now, *_status_mib(raylet)))
            time.sleep(interval_s)
    finally:
        stop.set()
        for p in procs:
            p.join(5)
    fit = [s for s in samples if s[0] >= warmup_s]
    hours = [s[0] / 3600 for s in fit]
    result = {"phase": name, "burners": burners, "seconds": seconds, "samples": len(samples),
              "rss_start_mib": round(samples[0][1], 2), "rss_end_mib": round(samples[-1][1], 2),
              "anon_start_mib": round(samples[0][2], 2), "anon_end_mib": round(samples[-1][2], 2),
              "rss_slope_mib_per_h": round(least_squares(hours, [s[1] for s in fit])[0], 2),
              "anon_slope_mib_per_h": round(least_squares(hours, [s[2] for s in fit])[0], 2)}
    print(result, flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--warmup-minutes", type=float, default=3.0)
    parser.add_argument("--interval-s", type=float, default=5.0)
    parser.add_argument("--burners", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    import ray

    report = Report("raylet_growth", argv)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)

    @ray.remote
    class Idle:
        def ping(self) -> int:
            return 1

    actor = Idle.options(enable_task_events=False).remote()
    ray.get(actor.ping.remote())
    seconds, warmup_s = args.minutes * 60, args.warmup_minutes * 60
    phases = [phase("alone", seconds, args.interval_s, warmup_s, 0),
              phase("busy machine", seconds, args.interval_s, warmup_s, args.burners)]
    ray.shutdown()
    report.write(args.out, phases=phases)


if __name__ == "__main__":
    main(sys.argv[1:])
