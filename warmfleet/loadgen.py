"""The load generator behind `warmfleet bench` and the bench/ scenarios: predictions sent through a
:class:`~warmfleet.client.Client` at a closed-loop concurrency or an open-loop Poisson rate, one record
per request, and the statistics and report made from those records.

    from warmfleet import Client, loadgen

    with Client() as client:
        send = loadgen.ClientSender(client, loadgen.Target(model="warmfleet/tiny-llama"), stream=True)
        records = loadgen.run_closed_loop(send, [{"prompt": "hi"}], concurrency=4, requests=32)
    stats = loadgen.summarize(records)  # stats.ttft_s.p50, stats.output_tokens_per_s, ...

Three layers, each usable alone: a *sender* makes one prediction and returns its
:class:`RequestRecord` (:class:`ClientSender` over the gRPC client; a test passes a function); the
*drivers* (:func:`run_closed_loop`, :func:`run_open_loop`, :func:`run_plan`) decide when requests go,
with the clock passed in; the *statistics* (:func:`summarize`, :func:`compare`) are pure functions over
records and reports. Times are seconds from the start of a level, on the clock's scale.

Definitions, one each:

- Percentile: linear interpolation between the closest ranks (numpy's default, "linear"; Hyndman and
  Fan's type 7). For ``n`` sorted values ``x[0..n-1]`` the ``q``-th percentile is at rank
  ``h = (n - 1) * q / 100``: ``x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])``.
- Latency: from sending the request to its final answer (the "completed" event when streaming); over
  the succeeded requests. TTFT: from sending to the first output chunk. ITL: the gaps between a
  request's consecutive output chunks, pooled over all requests (as vLLM's serving benchmark does).
  TPOT: per request, (last chunk - first chunk) / (output tokens - 1), from ``output_token_count``.
- Wall time of a level: from its start to the end of its last request. Throughput: succeeded requests
  / wall time; output tokens/s: the succeeded predictions' ``output_token_count`` summed / wall time;
  images/s: output files whose content type is ``image/*`` / wall time.
- Errors, by key: a prediction's final status when not "succeeded" ("failed", "canceled", "aborted"),
  else the gRPC status name of a call that failed ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", ...).
"""

from __future__ import annotations

import math
import random
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from warmfleet.client import Client, Prediction, WarmfleetClientError

SCHEMA = "warmfleet-bench/1"  # the "format" of a report's JSON; --compare refuses any other
STREAMING_RUNNERS = frozenset({"llm"})  # runner families whose output is text streamed as it is made
CALLER_ERRORS = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED"})


# What is sent, and what one request gives


@dataclass(frozen=True)
class Target:
    """What the load goes to: a model ("owner/name" or "owner/name:version") or a deployment."""

    model: str = ""
    deployment: str = ""

    def describe(self) -> str:
        return f"deployment {self.deployment}" if self.deployment else self.model

    def create_args(self) -> dict[str, str]:
        """The keyword arguments of ``client.predictions.create`` that name this target."""
        return {"model": "", "deployment": self.deployment} if self.deployment else {"model": self.model}


@dataclass(frozen=True)
class Load:
    """One level of a sweep. ``kind`` "concurrency": a closed loop, ``value`` requests in flight, each
    sent when one ends; "rate": an open loop, Poisson arrivals at ``value`` requests/s."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("concurrency", "rate"):
            raise ValueError(f"load kind: expected 'concurrency' or 'rate', got {self.kind!r}")
        if not self.value > 0:
            raise ValueError(f"{self.kind}: must be above 0, got {self.value:g}")

    def label(self) -> str:
        return f"c={self.value:g}" if self.kind == "concurrency" else f"{self.value:g} req/s"


@dataclass
class RequestRecord:
    """One request, as the load generator saw it. ``scheduled_s`` is when it was due (open loop: its
    arrival; closed loop: when it went), ``start_s`` when it was sent, ``end_s`` when its answer came;
    ``status`` the prediction's final status, or "error" when the call failed with the gRPC status
    ``error``. ``ttft_s`` and ``itl_s`` exist when streaming; ``output_tokens`` when the prediction's
    metrics count them."""

    index: int
    scheduled_s: float
    start_s: float
    end_s: float
    status: str
    prediction_id: str = ""
    error: str = ""
    message: str = ""
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int | None = None
    images: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def latency_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def error_key(self) -> str:
        """How it counts among the errors: its status, or a failed call's gRPC code; "" if it succeeded."""
        return "" if self.succeeded else (self.error or "UNKNOWN") if self.status == "error" else self.status


Sender = Callable[[int, Mapping[str, Any]], RequestRecord]
"""Makes request ``index`` with an input and returns its record, times on the driver's clock."""


class Clock(Protocol):
    """Where the drivers read the time and wait: :class:`MonotonicClock`, or a test's fake."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """``time.perf_counter`` and ``time.sleep``."""

    def now(self) -> float:
        return time.perf_counter()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


def streams_by_default(runner: str, output_schema: Mapping[str, Any]) -> bool:
    """Whether a model's output is text made piece by piece (an LLM, a Cog iterator), worth streaming."""
    return runner in STREAMING_RUNNERS or output_schema.get("x-cog-array-type") == "iterator"


class ClientSender:
    """A :data:`Sender` over the gRPC client: ``CreateAndStreamPrediction`` when ``stream`` (timing each
    output chunk), else ``CreatePrediction`` held open up to 60 s, then followed to its end. One client
    serves every thread: its channel is thread-safe."""

    def __init__(self, client: Client, target: Target, stream: bool, timeout_s: float = 600.0,
                 clock: Clock | None = None) -> None:
        self.client, self.target, self.stream, self.timeout_s = client, target, stream, timeout_s
        self.clock = clock or MonotonicClock()

    def __call__(self, index: int, input: Mapping[str, Any]) -> RequestRecord:
        start = self.clock.now()
        if self.stream:
            return self._streamed(index, input, start)
        prediction_id = ""
        try:
            created = self.client.predictions.create(input=input, wait_s=min(self.timeout_s, 60.0),
                                                     **self.target.create_args())
            prediction_id = created.id
            left_s = max(self.timeout_s - (self.clock.now() - start), 0.001)
            final = self.client.predictions.wait(created, timeout_s=left_s)
        except WarmfleetClientError as err:
            return failed_call(index, start, self.clock.now(), err, prediction_id)
        return record_of(index, start, self.clock.now(), final, [])

    def _streamed(self, index: int, input: Mapping[str, Any], start: float) -> RequestRecord:
        arrivals: list[float] = []
        prediction_id = ""
        events = self.client.predictions.create_and_stream(input=input, timeout_s=self.timeout_s,
                                                           **self.target.create_args())
        try:
            for event in events:
                prediction_id = event.prediction_id or prediction_id
                if event.kind == "output":
                    arrivals.append(self.clock.now())
                elif event.kind == "completed":
                    return record_of(index, start, self.clock.now(), event.data, arrivals)
        except WarmfleetClientError as err:
            return failed_call(index, start, self.clock.now(), err, prediction_id)
        ended = WarmfleetClientError("STREAM_ENDED", "the event stream ended before the prediction did")
        return failed_call(index, start, self.clock.now(), ended, prediction_id)


def record_of(index: int, start: float, end: float, prediction: Prediction, arrivals: list[float]
              ) -> RequestRecord:
    """The record of a prediction that ended, its output chunks having come at ``arrivals``."""
    tokens = prediction.metrics.get("output_token_count")
    return RequestRecord(
        index=index, scheduled_s=start, start_s=start, end_s=end, status=prediction.status,
        prediction_id=prediction.id, message=prediction.error[:200],
        ttft_s=arrivals[0] - start if arrivals else None,
        itl_s=[b - a for a, b in zip(arrivals, arrivals[1:])],
        output_tokens=int(tokens) if tokens is not None else None,
        images=sum(1 for f in prediction.output_files if f.content_type.startswith("image/")),
        metrics={k: float(v) for k, v in prediction.metrics.items() if isinstance(v, (int, float))})


def failed_call(index: int, start: float, end: float, err: WarmfleetClientError, prediction_id: str = ""
                ) -> RequestRecord:
    return RequestRecord(index, start, start, end, "error", prediction_id, err.code, err.message[:200])


# Drivers: when requests go


def poisson_schedule(rate_rps: float, rng: random.Random, *, count: int | None = None,
                     duration_s: float | None = None) -> list[float]:
    """Arrival times, in seconds from 0, of a Poisson process of ``rate_rps``: the first at 0, then gaps
    drawn from the exponential distribution of mean 1 / ``rate_rps``; ``count`` of them, or as many as
    fall before ``duration_s`` (whichever ends first when both are given)."""
    if count is None and duration_s is None:
        raise ValueError("poisson_schedule: give count or duration_s")
    times: list[float] = []
    t = 0.0
    while (count is None or len(times) < count) and (duration_s is None or t < duration_s):
        times.append(t)
        t += rng.expovariate(rate_rps)
    return times


class _Tickets:
    """Request indices for the workers of a closed loop, until ``requests`` are given out or the
    deadline passes (a request sent before it runs to its end)."""

    def __init__(self, requests: int | None, deadline: float | None, clock: Clock) -> None:
        self._next, self._requests, self._deadline, self._clock = 0, requests, deadline, clock
        self._lock = threading.Lock()
        self.closed = False

    def take(self) -> int | None:
        with self._lock:
            full = self._requests is not None and self._next >= self._requests
            late = self._deadline is not None and self._clock.now() >= self._deadline
            if self.closed or full or late:
                return None
            self._next += 1
            return self._next - 1


def _rebase(record: RequestRecord, t0: float, scheduled: float | None = None) -> RequestRecord:
    """The record with its times counted from ``t0``; ``scheduled`` (already from ``t0``) when given."""
    return replace(record, scheduled_s=record.start_s - t0 if scheduled is None else scheduled,
                   start_s=record.start_s - t0, end_s=record.end_s - t0)


def run_closed_loop(send: Sender, inputs: Sequence[Mapping[str, Any]], concurrency: int, *,
                    requests: int | None = None, duration_s: float | None = None, clock: Clock | None = None,
                    on_record: Callable[[RequestRecord], None] | None = None) -> list[RequestRecord]:
    """``concurrency`` workers, each sending its next request when its last one ended, until
    ``requests`` have been sent or ``duration_s`` has passed (whichever first). Request ``i`` takes
    ``inputs[i % len(inputs)]``. Returns the records in index order; an exception a sender raises
    (a bug, not a failed call) stops the loop and is raised here."""
    if requests is None and duration_s is None:
        raise ValueError("run_closed_loop: give requests or duration_s")
    clock = clock or MonotonicClock()
    t0 = clock.now()
    tickets = _Tickets(requests, None if duration_s is None else t0 + duration_s, clock)
    records: list[RequestRecord] = []
    lock = threading.Lock()

    def worker() -> None:
        while (index := tickets.take()) is not None:
            record = _rebase(send(index, inputs[index % len(inputs)]), t0)
            with lock:
                records.append(record)
            if on_record is not None:
                on_record(record)

    with ThreadPoolExecutor(concurrency, thread_name_prefix="loadgen") as pool:
        _wait_all([pool.submit(worker) for _ in range(concurrency)], tickets)
    return sorted(records, key=lambda r: r.index)


def _wait_all(futures: list[Future], tickets: _Tickets | None = None) -> list[Any]:
    """Every future's result; on the first error (or Ctrl-C) no further request is given out."""
    try:
        return [f.result() for f in futures]
    except BaseException:
        if tickets is not None:
            tickets.closed = True
        raise


def run_open_loop(send: Sender, inputs: Sequence[Mapping[str, Any]], schedule: Sequence[float],
                  max_in_flight: int, *, clock: Clock | None = None, executor: Executor | None = None,
                  on_record: Callable[[RequestRecord], None] | None = None) -> list[RequestRecord]:
    """Send request ``i`` at ``schedule[i]`` seconds after the start (see :func:`poisson_schedule`),
    whether or not earlier ones have ended, but never more than ``max_in_flight`` at once: one due
    while that many are in flight goes when one ends, and its record keeps when it was due
    (``scheduled_s``) beside when it went (``start_s``). ``executor`` runs the sends (default: a pool
    of ``max_in_flight`` threads)."""
    clock = clock or MonotonicClock()
    slots = threading.BoundedSemaphore(max_in_flight)
    t0 = clock.now()

    def one(index: int, due: float) -> RequestRecord:
        try:
            record = _rebase(send(index, inputs[index % len(inputs)]), t0, due)
        finally:
            slots.release()
        if on_record is not None:
            on_record(record)
        return record

    pool = executor or ThreadPoolExecutor(max_in_flight, thread_name_prefix="loadgen")
    futures = []
    try:
        for index, due in enumerate(schedule):
            clock.sleep(t0 + due - clock.now())
            slots.acquire()
            futures.append(pool.submit(one, index, due))
        return _wait_all(futures)
    finally:
        if executor is None:
            pool.shutdown(wait=True, cancel_futures=True)


# A sweep


@dataclass(frozen=True)
class Plan:
    """A whole `warmfleet bench` run: the levels in turn, each for ``requests`` requests or
    ``duration_s`` seconds (whichever ends first), after ``warmup`` requests of the same load that do
    not count."""

    target: Target
    inputs: tuple[Mapping[str, Any], ...]
    loads: tuple[Load, ...]
    requests: int | None = None
    duration_s: float | None = None
    warmup: int = 0
    stream: bool = False
    max_in_flight: int = 64
    seed: int = 0
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise ValueError("a plan needs requests or duration_s per level")
        if not self.inputs or not self.loads:
            raise ValueError("a plan needs at least one input and one load")

    def settings(self) -> dict[str, Any]:
        """The plan as JSON-ready data (the inputs counted, not copied: they may hold files)."""
        return {"target": asdict(self.target), "load": self.loads[0].kind,
                "levels": [load.value for load in self.loads], "requests": self.requests,
                "duration_s": self.duration_s, "warmup": self.warmup, "stream": self.stream,
                "max_in_flight": self.max_in_flight, "seed": self.seed, "timeout_s": self.timeout_s,
                "inputs": len(self.inputs)}


@dataclass
class LevelResult:
    """One level's records, and those of its warm-up (sent, not counted)."""

    load: Load
    records: list[RequestRecord]
    warmup: list[RequestRecord] = field(default_factory=list)

    @property
    def stats(self) -> LevelStats:
        return summarize(self.records)


class BenchAborted(Exception):
    """Every request of a level failed for the caller's reason (a bad input, an unknown model, the
    token): the rest of the sweep would fail the same way."""


def run_level(plan: Plan, load: Load, send: Sender, clock: Clock | None = None,
              on_record: Callable[[RequestRecord], None] | None = None) -> LevelResult:
    """The warm-up, then the measured run, of one level (see :class:`Plan`)."""
    clock = clock or MonotonicClock()
    warmup = _drive(plan, load, send, clock, None, requests=plan.warmup, duration_s=None) if plan.warmup \
        else []
    _abort_if_callers_fault(warmup)
    records = _drive(plan, load, send, clock, on_record, requests=plan.requests, duration_s=plan.duration_s)
    _abort_if_callers_fault(records)
    return LevelResult(load, records, warmup)


def run_plan(plan: Plan, send: Sender, clock: Clock | None = None,
             on_level: Callable[[Load], Callable[[RequestRecord], None] | None] | None = None
             ) -> list[LevelResult]:
    """Every level in turn; ``on_level(load)`` is told each one as it begins and may return a callback
    for its records (a progress bar's)."""
    return [run_level(plan, load, send, clock, on_level(load) if on_level else None) for load in plan.loads]


def _drive(plan: Plan, load: Load, send: Sender, clock: Clock, on_record: Any, *, requests: int | None,
           duration_s: float | None) -> list[RequestRecord]:
    if load.kind == "concurrency":
        return run_closed_loop(send, plan.inputs, int(load.value), requests=requests, duration_s=duration_s,
                               clock=clock, on_record=on_record)
    schedule = poisson_schedule(load.value, random.Random(plan.seed), count=requests, duration_s=duration_s)
    return run_open_loop(send, plan.inputs, schedule, plan.max_in_flight, clock=clock, on_record=on_record)


def _abort_if_callers_fault(records: list[RequestRecord]) -> None:
    if records and all(r.status == "error" and r.error in CALLER_ERRORS for r in records):
        raise BenchAborted(f"every request failed: {records[0].error}: {records[0].message}")


# Statistics: pure functions over records


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0 to 100) by linear interpolation between the closest ranks (numpy's
    default); None when there are no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile: q must be within [0, 100], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    h = (len(ordered) - 1) * q / 100
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


@dataclass(frozen=True)
class Distribution:
    """Count, mean, extremes and percentiles of some values (seconds); all None but count when empty."""

    count: int
    mean: float | None
    min: float | None
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None


def distribution(values: Sequence[float]) -> Distribution:
    if not values:
        return Distribution(0, None, None, None, None, None, None)
    return Distribution(len(values), sum(values) / len(values), min(values), percentile(values, 50),
                        percentile(values, 90), percentile(values, 99), max(values))


@dataclass(frozen=True)
class LevelStats:
    """What a level measured (see the module's definitions). Rates are None when the wall time is 0;
    ``output_tokens`` is None when no prediction counted its tokens."""

    requests: int
    succeeded: int
    errors: dict[str, int]
    wall_s: float
    throughput_rps: float | None
    latency_s: Distribution
    ttft_s: Distribution
    itl_s: Distribution
    tpot_s: Distribution
    output_tokens: int | None
    output_tokens_per_s: float | None
    images: int
    images_per_s: float | None


def summarize(records: Sequence[RequestRecord]) -> LevelStats:
    """The statistics of one level's records."""
    ok = [r for r in records if r.succeeded]
    wall_s = max((r.end_s for r in records), default=0.0)
    counted = [r.output_tokens for r in ok if r.output_tokens is not None]
    tokens = sum(counted) if counted else None
    images = sum(r.images for r in ok)
    errors: dict[str, int] = {}
    for r in records:
        if r.error_key:
            errors[r.error_key] = errors.get(r.error_key, 0) + 1

    def rate(amount: float | None) -> float | None:
        return amount / wall_s if amount is not None and wall_s > 0 else None

    return LevelStats(
        requests=len(records), succeeded=len(ok), errors=dict(sorted(errors.items())), wall_s=wall_s,
        throughput_rps=rate(len(ok)), latency_s=distribution([r.latency_s for r in ok]),
        ttft_s=distribution([r.ttft_s for r in ok if r.ttft_s is not None]),
        itl_s=distribution([gap for r in ok for gap in r.itl_s]), tpot_s=distribution(_tpots(ok)),
        output_tokens=tokens, output_tokens_per_s=rate(tokens), images=images,
        images_per_s=rate(images) if images else None)


def _tpots(records: Sequence[RequestRecord]) -> list[float]:
    """Time per output token after the first, of each streamed request that made two or more."""
    return [sum(r.itl_s) / (r.output_tokens - 1) for r in records
            if r.ttft_s is not None and r.output_tokens is not None and r.output_tokens > 1]


# The report: JSON, comparison, table, plot


def report_json(plan: Plan, levels: Sequence[LevelResult], *, command: str, gateway: str, started_at: str,
                wall_s: float) -> dict[str, Any]:
    """Everything a run measured as JSON-ready data: the command line, the target, when, the plan, and
    per level the summary, the warm-up's prediction ids and every request's record."""
    return {
        "format": SCHEMA, "command": command, "gateway": gateway, "target": plan.target.describe(),
        "started_at": started_at, "wall_s": wall_s, "settings": plan.settings(),
        "levels": [{"load": lv.load.kind, "value": lv.load.value, "label": lv.load.label(),
                    "summary": asdict(lv.stats),
                    "warmup_prediction_ids": [r.prediction_id for r in lv.warmup],
                    "records": [_record_json(r) for r in lv.records]} for lv in levels],
    }


def _record_json(record: RequestRecord) -> dict[str, Any]:
    data = asdict(record)
    data["latency_s"] = record.latency_s
    data["itl_s"] = [round(gap, 6) for gap in record.itl_s]
    return data


@dataclass(frozen=True)
class Headline:
    """A number `--compare` sets against an earlier run's: its path in a level's summary."""

    path: str
    label: str
    higher_is_better: bool


HEADLINES = (
    Headline("throughput_rps", "req/s", True), Headline("latency_s.p50", "latency p50", False),
    Headline("latency_s.p90", "latency p90", False), Headline("latency_s.p99", "latency p99", False),
    Headline("latency_s.mean", "latency mean", False), Headline("ttft_s.p50", "TTFT p50", False),
    Headline("ttft_s.p99", "TTFT p99", False), Headline("itl_s.p50", "ITL p50", False),
    Headline("itl_s.p99", "ITL p99", False), Headline("output_tokens_per_s", "output tokens/s", True),
    Headline("images_per_s", "images/s", True),
)


@dataclass(frozen=True)
class Change:
    """A headline number of one level, now and in the earlier run; ``ratio`` is now / earlier (None
    when earlier was 0); a regression is a change for the worse beyond the tolerance, or more errors."""

    level: str
    metric: str
    earlier: float
    current: float
    ratio: float | None
    regression: bool


def compare(current: Mapping[str, Any], earlier: Mapping[str, Any], tolerance: float = 0.1) -> list[Change]:
    """Each headline number (and the error count) of the levels both reports ran, current against
    earlier. A number that either run lacks (no stream: no TTFT) is left out."""
    for name, report in (("current", current), ("earlier", earlier)):
        if report.get("format") != SCHEMA:
            raise ValueError(f"the {name} report is not a `warmfleet bench --json` report "
                             f"(format {report.get('format')!r}, expected {SCHEMA!r})")
    before = {(lv["load"], lv["value"]): lv for lv in earlier["levels"]}
    changes = []
    for level in current["levels"]:
        old = before.get((level["load"], level["value"]))
        if old is not None:
            changes += _level_changes(level["label"], level["summary"], old["summary"], tolerance)
    return changes


def _level_changes(label: str, now: Mapping[str, Any], then: Mapping[str, Any], tolerance: float
                   ) -> list[Change]:
    changes = []
    for h in HEADLINES:
        a, b = _at(then, h.path), _at(now, h.path)
        if a is None or b is None:
            continue
        ratio = b / a if a else None
        worse = ratio is not None and (ratio < 1 - tolerance if h.higher_is_better else ratio > 1 + tolerance)
        changes.append(Change(label, h.label, a, b, ratio, worse))
    errors_then, errors_now = sum(then["errors"].values()), sum(now["errors"].values())
    changes.append(Change(label, "errors", errors_then, errors_now,
                          errors_now / errors_then if errors_then else None, errors_now > errors_then))
    return changes


def _at(summary: Mapping[str, Any], path: str) -> float | None:
    value: Any = summary
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value if isinstance(value, (int, float)) else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _errors(stats: LevelStats) -> str:
    total = sum(stats.errors.values())
    return f"{total} (" + ", ".join(f"{k} {n}" for k, n in stats.errors.items()) + ")" if total else "0"


def summary_table(levels: Sequence[LevelResult], title: str) -> Any:
    """A rich table, a row per level; the TTFT, ITL, tokens and images columns only when measured."""
    from rich.table import Table

    rows = [(lv.load.label(), lv.stats) for lv in levels]
    columns: list[tuple[str, Callable[[LevelStats], str]]] = [
        ("requests", lambda s: str(s.requests)), ("errors", _errors),
        ("req/s", lambda s: _rate(s.throughput_rps)),
        ("latency ms p50/p90/p99", lambda s: _triple(s.latency_s)),
        ("mean ms", lambda s: _ms(s.latency_s.mean)),
    ]
    if any(s.ttft_s.count for _, s in rows):
        columns += [("TTFT ms p50/p90/p99", lambda s: _triple(s.ttft_s)),
                    ("ITL ms p50/p90/p99", lambda s: _triple(s.itl_s))]
    if any(s.output_tokens is not None for _, s in rows):
        columns.append(("output tok/s", lambda s: _rate(s.output_tokens_per_s)))
    if any(s.images for _, s in rows):
        columns.append(("images/s", lambda s: _rate(s.images_per_s)))
    table = Table(title=title, title_justify="left")
    table.add_column("level", no_wrap=True)
    for name, _ in columns:
        table.add_column(name, justify="right")
    for label, stats in rows:
        table.add_row(label, *(cell(stats) for _, cell in columns))
    return table


def _triple(d: Distribution) -> str:
    return "-" if not d.count else f"{_ms(d.p50)} / {_ms(d.p90)} / {_ms(d.p99)}"


def comparison_table(changes: Sequence[Change], title: str) -> Any:
    """A rich table of :func:`compare`'s changes, regressions marked."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for name in ("level", "metric", "earlier", "now", "now/earlier", ""):
        table.add_column(name, justify="left" if name in ("level", "metric", "") else "right")
    for c in changes:
        seconds = c.metric.startswith(("latency", "TTFT", "ITL"))
        shown = (f"{_ms(c.earlier)} ms", f"{_ms(c.current)} ms") if seconds else \
            (f"{c.earlier:.4g}", f"{c.current:.4g}")
        ratio = "-" if c.ratio is None else f"{c.ratio:.2f}x"
        table.add_row(c.level, c.metric, *shown, ratio, "[bold red]REGRESSION[/]" if c.regression else "")
    return table


X_LABELS = {"concurrency": "concurrency (closed loop)", "rate": "rate (requests/s, Poisson arrivals)"}


class PlotUnavailable(Exception):
    """matplotlib is not installed (it comes with the ``bench`` extra)."""


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'warmfleet[bench]'") from err


def plot(report: Mapping[str, Any], path: Path) -> None:
    """Throughput (requests/s, and output tokens/s and images/s when measured) and the latency
    percentiles (and TTFT when streamed) against the levels of a :func:`report_json` report, as a PNG."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    levels = report["levels"]
    xs = [lv["value"] for lv in levels]
    summaries = [lv["summary"] for lv in levels]
    rates = [(key, label) for key, label in RATE_PANELS if any(s[key] for s in summaries)]
    fig, axes = plt.subplots(1, len(rates) + 1, figsize=(5.2 * (len(rates) + 1), 4.6), squeeze=False)
    for axis, (key, label) in zip(axes[0], rates):
        axis.plot(xs, [s[key] or 0 for s in summaries], "o-", color="tab:blue")
        axis.set(ylabel=label, title=label, ylim=(0, None))
    _plot_latency(axes[0][-1], xs, summaries)
    for axis in axes[0]:
        axis.set_xlabel(X_LABELS[levels[0]["load"] if levels else "concurrency"])
        if len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 8:
            axis.set_xscale("log")
            axis.xaxis.set_minor_locator(NullLocator())
        axis.set_xticks(xs, [f"{x:g}" for x in xs])
        axis.grid(alpha=0.3)
    fig.suptitle(f"warmfleet bench {report['target']} at {report['gateway']} ({report['started_at'][:19]})",
                 fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


RATE_PANELS = (("throughput_rps", "requests/s"), ("output_tokens_per_s", "output tokens/s"),
               ("images_per_s", "images/s"))


def _plot_latency(axis: Any, xs: list[float], summaries: list[Mapping[str, Any]]) -> None:
    lines = [("latency_s", "p50", "tab:blue", "-"), ("latency_s", "p90", "tab:orange", "-"),
             ("latency_s", "p99", "tab:red", "-"), ("ttft_s", "p50", "tab:purple", "--"),
             ("ttft_s", "p99", "tab:pink", "--")]
    for key, p, colour, style in lines:
        ys = [s[key][p] for s in summaries]
        if any(y is not None for y in ys):
            axis.plot(xs, [math.nan if y is None else y * 1e3 for y in ys], "o" + style, color=colour,
                      label=f"{key.removesuffix('_s').replace('ttft', 'TTFT')} {p}")
    axis.set(ylabel="milliseconds", title="latency percentiles", ylim=(0, None))
    axis.legend(fontsize="small")
