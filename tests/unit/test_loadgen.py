"""The load generator (warmfleet.loadgen) and `warmfleet bench`'s flags, without a cluster: statistics on
made-up records, the Poisson schedule with a seeded RNG, the drivers on a fake clock and fake senders,
the client sender on a fake client, --compare's ratios, the report's JSON shape, and the CLI's errors."""

from __future__ import annotations

import json
import random
import sys
import threading
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest
from click.testing import CliRunner

from warmfleet import loadgen
from warmfleet.cli import bench as bench_cli, context as cli_context
from warmfleet.cli.commands import cli as warmfleet_cli
from warmfleet.client import Event, File, Model, OutputChunk, Prediction, Predictions, WarmfleetClientError
from warmfleet.loadgen import Load, Plan, RequestRecord, Target

WAIT_S = 10.0  # how long a threaded test waits for what must happen at once; never a timing assertion


# Fakes


class FakeClock:
    """A clock that moves only when slept on (or told to): the drivers' ``clock``."""

    def __init__(self, now: float = 100.0) -> None:
        self.t = now
        self.lock = threading.Lock()

    def now(self) -> float:
        with self.lock:
            return self.t

    def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.t += seconds


class InlineExecutor(Executor):
    """Runs each submitted call at once, in the caller's thread: the open loop made deterministic."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(err)
        return future


def record(index: int = 0, start: float = 0.0, end: float = 1.0, status: str = "succeeded", **kw: Any
           ) -> RequestRecord:
    return RequestRecord(index=index, scheduled_s=kw.pop("scheduled_s", start), start_s=start, end_s=end,
                         status=status, **kw)


def prediction(status: str = "succeeded", tokens: int | None = None, files: list[File] | None = None,
               error: str = "") -> Prediction:
    metrics: dict[str, float | int] = {"predict_time_s": 0.5}
    if tokens is not None:
        metrics["output_token_count"] = tokens
    return Prediction(id="p1", model="m/x", version="v1", status=status, input={}, output="x",
                      output_files=files or [], error=error, metrics=metrics)


class FakePredictions(Predictions):
    """``client.predictions`` answering from a script: the events a stream yields (the clock moving
    ``step_s`` before each), or the prediction a create returns; ``error`` raised after the events."""

    def __init__(self, clock: FakeClock, events: list[Event] | None = None, final: Prediction | None = None,
                 error: WarmfleetClientError | None = None, step_s: float = 0.01) -> None:
        self.clock, self.events, self.final, self.error = clock, events or [], final, error
        self.step_s = step_s
        self.calls: list[tuple[str, Mapping[str, Any], dict[str, Any]]] = []

    def create_and_stream(self, model: str = "", input: Mapping[str, Any] | None = None, **options: Any
                          ) -> Iterator[Event]:
        self.calls.append(("stream", input or {}, {"model": model, **options}))
        for event in self.events:
            self.clock.advance(self.step_s)
            yield event
        if self.error is not None:
            raise self.error

    def create(self, model: str = "", input: Mapping[str, Any] | None = None, **options: Any) -> Prediction:
        self.calls.append(("create", input or {}, {"model": model, **options}))
        self.clock.advance(self.step_s)
        if self.error is not None:
            raise self.error
        return self.final

    def wait(self, prediction: Prediction | str, timeout_s: float | None = None) -> Prediction:
        return prediction


class FakeModels:
    def __init__(self, runner: str = "echo", output_schema: dict[str, Any] | None = None) -> None:
        self.model = Model("m/x", "", runner, "v1", {}, output_schema or {"type": "string"})

    def get(self, name: str) -> Model:
        return self.model


class FakeClient:
    """What ClientSender and the CLI use of a client: its predictions, its models, its target."""

    target = "127.0.0.1:1"

    def __init__(self, predictions: FakePredictions, models: FakeModels | None = None) -> None:
        self.predictions, self.models = predictions, models or FakeModels()


def stream_events(chunks: int, tokens: int, files: list[File] | None = None) -> list[Event]:
    outputs = [Event("p1", i, "output", OutputChunk(value=f"t{i}")) for i in range(chunks)]
    return outputs + [Event("p1", chunks, "completed", prediction(tokens=tokens, files=files))]


# Percentiles


@pytest.mark.parametrize("values, q, expected", [
    ([1, 2, 3, 4], 50, 2.5), ([1, 2, 3, 4], 90, 3.7), ([1, 2, 3, 4], 99, 3.97), ([1, 2, 3, 4], 0, 1),
    ([1, 2, 3, 4], 100, 4), ([4, 1, 3, 2], 25, 1.75), ([7.0], 99, 7.0), ([10, 20], 10, 11.0),
])
def test_percentiles_interpolate_linearly_between_the_closest_ranks(values, q, expected) -> None:
    assert loadgen.percentile(values, q) == pytest.approx(expected)


def test_percentiles_agree_with_numpys_default() -> None:
    import numpy as np
    rng = random.Random(3)
    for n in (1, 2, 5, 17, 100, 1001):
        values = [rng.lognormvariate(0, 1) for _ in range(n)]
        for q in (0, 1, 10, 50, 90, 99, 99.9, 100):
            assert loadgen.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_a_percentile_of_nothing_is_none_and_q_must_be_within_0_and_100() -> None:
    assert loadgen.percentile([], 50) is None
    assert loadgen.distribution([]) == loadgen.Distribution(0, None, None, None, None, None, None)
    with pytest.raises(ValueError, match="q must be within"):
        loadgen.percentile([1.0], 101)


# Statistics over made-up records


def made_up_level() -> list[RequestRecord]:
    return [
        record(0, 0.0, 1.0, ttft_s=0.2, itl_s=[0.1, 0.3], output_tokens=10, images=0),
        record(1, 0.5, 2.5, ttft_s=0.4, itl_s=[0.2], output_tokens=30, images=2),
        record(2, 1.0, 1.5, ttft_s=0.1, itl_s=[], output_tokens=None, images=1),
        record(3, 1.0, 4.0, status="failed", ttft_s=0.05, itl_s=[9.0], output_tokens=99, message="oom"),
        record(4, 2.0, 2.1, status="error", error="RESOURCE_EXHAUSTED"),
        record(5, 2.0, 2.2, status="error", error="RESOURCE_EXHAUSTED"),
        record(6, 3.0, 3.5, status="canceled"),
    ]


def test_summarize_counts_requests_errors_and_rates_over_the_wall_time() -> None:
    stats = loadgen.summarize(made_up_level())
    assert (stats.requests, stats.succeeded) == (7, 3)
    assert stats.errors == {"RESOURCE_EXHAUSTED": 2, "canceled": 1, "failed": 1}
    assert stats.wall_s == 4.0  # the level's start to the end of its last request
    assert stats.throughput_rps == pytest.approx(3 / 4.0)
    assert (stats.output_tokens, stats.output_tokens_per_s) == (40, pytest.approx(10.0))  # succeeded only
    assert (stats.images, stats.images_per_s) == (3, pytest.approx(0.75))


def test_latency_ttft_and_itl_come_from_the_succeeded_requests_itl_pooled_over_them() -> None:
    stats = loadgen.summarize(made_up_level())
    assert stats.latency_s.count == 3
    assert (stats.latency_s.min, stats.latency_s.max) == (0.5, 2.0)
    assert stats.latency_s.mean == pytest.approx(3.5 / 3)
    assert stats.latency_s.p50 == pytest.approx(1.0)
    assert stats.ttft_s.p50 == pytest.approx(0.2) and stats.ttft_s.count == 3
    assert stats.itl_s.count == 3 and stats.itl_s.p50 == pytest.approx(0.2)  # 0.1, 0.2, 0.3 (not 9.0)
    # TPOT: (last chunk - first) / (tokens - 1): 0.4 / 9 and 0.2 / 29; the third counted no tokens
    assert stats.tpot_s.count == 2 and stats.tpot_s.max == pytest.approx(0.4 / 9)


def test_percentiles_are_ordered_and_within_the_extremes() -> None:
    rng = random.Random(11)
    starts = sorted(rng.random() for _ in range(200))
    records = [record(i, s, s + rng.expovariate(5)) for i, s in enumerate(starts)]
    d = loadgen.summarize(records).latency_s
    assert d.min <= d.p50 <= d.p90 <= d.p99 <= d.max
    assert d.min == min(r.latency_s for r in records) and d.max == max(r.latency_s for r in records)


def test_a_level_without_tokens_images_or_time_has_no_rates() -> None:
    stats = loadgen.summarize([record(0, 0.0, 0.0)])
    assert (stats.throughput_rps, stats.output_tokens, stats.output_tokens_per_s, stats.images_per_s) == (
        None, None, None, None)
    assert loadgen.summarize([]).requests == 0


# The Poisson schedule


def test_the_poisson_schedule_is_the_seeded_exponential_gaps_from_0() -> None:
    rng = random.Random(7)
    expected, t = [], 0.0
    for _ in range(50):
        expected.append(t)
        t += rng.expovariate(5.0)
    assert loadgen.poisson_schedule(5.0, random.Random(7), count=50) == expected
    assert loadgen.poisson_schedule(5.0, random.Random(7), count=50) == loadgen.poisson_schedule(
        5.0, random.Random(7), count=50)


def test_the_poisson_schedule_has_the_rate_asked_for() -> None:
    times = loadgen.poisson_schedule(20.0, random.Random(1), count=20_000)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 20.0, rel=0.03)
    assert all(gap >= 0 for gap in gaps)


def test_a_schedule_for_a_duration_stops_before_it_and_count_caps_it() -> None:
    times = loadgen.poisson_schedule(10.0, random.Random(2), duration_s=3.0)
    longer = loadgen.poisson_schedule(10.0, random.Random(2), count=len(times) + 1)
    assert times == longer[:-1] and max(times) < 3.0 <= longer[-1]
    assert len(loadgen.poisson_schedule(10.0, random.Random(2), count=4, duration_s=100.0)) == 4
    with pytest.raises(ValueError, match="count or duration_s"):
        loadgen.poisson_schedule(1.0, random.Random(0))


# Drivers


def test_the_open_loop_sends_each_request_at_its_arrival_on_the_clock() -> None:
    clock = FakeClock(now=50.0)
    schedule = loadgen.poisson_schedule(4.0, random.Random(5), count=30)
    sent_at: list[float] = []

    def send(index: int, input: Mapping[str, Any]) -> RequestRecord:
        sent_at.append(clock.now())
        return record(index, clock.now(), clock.now() + 0.01)

    records = loadgen.run_open_loop(send, [{"a": 1}], schedule, max_in_flight=8, clock=clock,
                                    executor=InlineExecutor())
    assert sent_at == pytest.approx([50.0 + t for t in schedule])
    assert [r.scheduled_s for r in records] == schedule
    assert [r.start_s for r in records] == pytest.approx(schedule)  # rebased to the level's start
    assert [r.index for r in records] == list(range(30))


def test_the_open_loop_never_has_more_than_max_in_flight() -> None:
    release, in_flight, most, lock = threading.Event(), [0], [0], threading.Lock()
    two_in = threading.Event()

    def send(index: int, input: Mapping[str, Any]) -> RequestRecord:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            if in_flight[0] == 2:
                two_in.set()
        assert release.wait(WAIT_S)
        with lock:
            in_flight[0] -= 1
        return record(index)

    result: list[list[RequestRecord]] = []
    runner = threading.Thread(target=lambda: result.append(loadgen.run_open_loop(
        send, [{}], [0.0] * 6, max_in_flight=2, clock=FakeClock())))
    runner.start()
    assert two_in.wait(WAIT_S)
    assert most[0] == 2  # the third waits for a slot
    release.set()
    runner.join(WAIT_S)
    assert most[0] == 2 and len(result[0]) == 6


def test_the_closed_loop_sends_each_index_once_with_its_input_round_robin() -> None:
    seen: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def send(index: int, input: Mapping[str, Any]) -> RequestRecord:
        with lock:
            seen.append((index, input["k"]))
        return record(index)

    records = loadgen.run_closed_loop(send, [{"k": "a"}, {"k": "b"}, {"k": "c"}], 4, requests=10)
    assert [r.index for r in records] == list(range(10))
    assert sorted(seen) == [(i, "abc"[i % 3]) for i in range(10)]


def test_the_closed_loop_keeps_concurrency_requests_in_flight_and_no_more() -> None:
    barrier = threading.Barrier(4, timeout=WAIT_S)  # breaks unless 4 are in flight together
    in_flight, most, lock = [0], [0], threading.Lock()

    def send(index: int, input: Mapping[str, Any]) -> RequestRecord:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        barrier.wait()
        with lock:
            in_flight[0] -= 1
        return record(index)

    assert len(loadgen.run_closed_loop(send, [{}], 4, requests=12)) == 12
    assert most[0] == 4


def test_the_closed_loop_for_a_duration_sends_until_it_passes() -> None:
    clock = FakeClock()

    def send(index: int, input: Mapping[str, Any]) -> RequestRecord:
        start = clock.now()
        clock.advance(1.0)
        return record(index, start, clock.now())

    records = loadgen.run_closed_loop(send, [{}], 1, duration_s=5.0, clock=clock)
    assert [(r.start_s, r.end_s) for r in records] == [(float(i), i + 1.0) for i in range(5)]


def test_a_sender_that_raises_stops_the_loop_and_the_error_comes_out() -> None:
    def send(index: int, input: Mapping[str, Any]) -> RequestRecord:
        raise KeyError("a bug")

    with pytest.raises(KeyError, match="a bug"):
        loadgen.run_closed_loop(send, [{}], 2, requests=100)


def test_a_level_warms_up_first_and_stops_when_every_request_is_the_callers_fault() -> None:
    calls: list[int] = []

    def send(index: int, input: Mapping[str, Any]) -> RequestRecord:
        calls.append(index)
        return record(index)

    plan = Plan(Target("m/x"), ({},), (Load("concurrency", 2),), requests=5, warmup=3)
    level = loadgen.run_level(plan, plan.loads[0], send)
    assert (len(level.warmup), len(level.records), len(calls)) == (3, 5, 8)

    def refused(index: int, input: Mapping[str, Any]) -> RequestRecord:
        return record(index, status="error", error="INVALID_ARGUMENT", message="input.text: required")

    with pytest.raises(loadgen.BenchAborted, match="INVALID_ARGUMENT: input.text: required"):
        loadgen.run_level(plan, plan.loads[0], refused)


def test_a_rate_level_uses_the_seeded_schedule() -> None:
    clock = FakeClock(now=0.0)

    def send(index: int, input: Mapping[str, Any]) -> RequestRecord:
        return record(index, clock.now(), clock.now())

    plan = Plan(Target("m/x"), ({},), (Load("rate", 3.0),), requests=20, seed=9)
    level = loadgen.run_level(plan, plan.loads[0], send, clock)
    assert [r.scheduled_s for r in level.records] == loadgen.poisson_schedule(3.0, random.Random(9), count=20)


# The client sender


def test_a_stream_is_timed_chunk_by_chunk() -> None:
    clock = FakeClock(now=0.0)
    image = File(b"\x89PNG", "image/png", "out.png")
    files = [image, File(b"{}", "application/json")]
    predictions = FakePredictions(clock, stream_events(chunks=4, tokens=8, files=files))
    send = loadgen.ClientSender(FakeClient(predictions), Target("m/x"), stream=True, clock=clock)
    r = send(3, {"prompt": "hi"})
    assert (r.index, r.status, r.prediction_id, r.output_tokens, r.images) == (3, "succeeded", "p1", 8, 1)
    assert r.ttft_s == pytest.approx(0.01) and r.itl_s == pytest.approx([0.01] * 3)
    assert (r.start_s, r.end_s) == (0.0, pytest.approx(0.05))
    assert predictions.calls == [("stream", {"prompt": "hi"}, {"model": "m/x", "timeout_s": 600.0})]


@pytest.mark.parametrize("error, events, code", [
    (WarmfleetClientError("RESOURCE_EXHAUSTED", "queue full"), [], "RESOURCE_EXHAUSTED"),
    (WarmfleetClientError("UNAVAILABLE", "gone"), [Event("p9", 0, "output", OutputChunk("a"))],
     "UNAVAILABLE"),
    (None, [Event("p9", 0, "output", OutputChunk("a"))], "STREAM_ENDED"),
])
def test_a_stream_that_fails_records_the_code_and_the_prediction(error, events, code) -> None:
    clock = FakeClock()
    send = loadgen.ClientSender(FakeClient(FakePredictions(clock, events, error=error)), Target("m/x"), True,
                                clock=clock)
    r = send(0, {})
    assert (r.status, r.error, r.error_key) == ("error", code, code)
    assert r.prediction_id == ("p9" if events else "")


def test_without_streaming_a_create_waits_for_the_prediction_and_targets_a_deployment() -> None:
    clock = FakeClock()
    predictions = FakePredictions(clock, final=prediction("failed", error="boom"))
    send = loadgen.ClientSender(FakeClient(predictions), Target(deployment="acme/app"), False, timeout_s=30,
                                clock=clock)
    r = send(0, {"text": "x"})
    assert (r.status, r.error_key, r.message, r.ttft_s, r.itl_s) == ("failed", "failed", "boom", None, [])
    assert predictions.calls[0][2] == {"model": "", "deployment": "acme/app", "wait_s": 30}


def test_text_models_stream_by_default() -> None:
    assert loadgen.streams_by_default("llm", {"type": "string"})
    assert loadgen.streams_by_default("cog", {"type": "array", "x-cog-array-type": "iterator"})
    assert not loadgen.streams_by_default("echo", {"type": "string"})
    assert not loadgen.streams_by_default("diffusion", {})


# The report and --compare


def made_up_report(latency_s: float = 1.0, errors: int = 0) -> dict:
    """Three requests at once per level, each ``latency_s`` long: throughput 3 / ``latency_s``."""
    plan = Plan(Target("m/x"), ({},), (Load("concurrency", 1), Load("concurrency", 4)), requests=3,
                stream=True)
    levels = []
    for load in plan.loads:
        recs = [record(i, 0.0, latency_s, ttft_s=0.1 * latency_s, itl_s=[0.01], output_tokens=5)
                for i in range(3)]
        recs += [record(3 + i, 0.0, 0.1, status="error", error="UNAVAILABLE") for i in range(errors)]
        levels.append(loadgen.LevelResult(load, recs, [record(99, prediction_id="w1")]))
    return loadgen.report_json(plan, levels, command="warmfleet bench m/x", gateway="h:1",
                               started_at="2026-01-01T00:00:00+00:00", wall_s=1.0)


def test_the_report_holds_the_command_target_time_summary_and_records() -> None:
    report = json.loads(json.dumps(made_up_report()))  # JSON through and through
    assert (report["format"], report["command"], report["target"], report["gateway"]) == (
        loadgen.SCHEMA, "warmfleet bench m/x", "m/x", "h:1")
    assert report["settings"]["levels"] == [1, 4] and report["settings"]["stream"] is True
    level = report["levels"][0]
    assert (level["load"], level["value"], level["label"], level["warmup_prediction_ids"]) == (
        "concurrency", 1, "c=1", ["w1"])
    assert set(level["summary"]) == {
        "requests", "succeeded", "errors", "wall_s", "throughput_rps", "latency_s", "ttft_s", "itl_s",
        "tpot_s", "output_tokens", "output_tokens_per_s", "images", "images_per_s"}
    assert set(level["summary"]["latency_s"]) == {"count", "mean", "min", "p50", "p90", "p99", "max"}
    assert len(level["records"]) == 3 and level["records"][0]["latency_s"] == pytest.approx(1.0)
    assert {"index", "prediction_id", "status", "error", "start_s", "end_s", "ttft_s", "itl_s",
            "output_tokens", "images"} <= set(level["records"][0])


def test_compare_gives_each_headline_ratio_and_flags_what_got_worse() -> None:
    earlier = made_up_report()
    same = loadgen.compare(earlier, earlier)
    assert same and all(c.ratio in (1.0, None) and not c.regression for c in same)
    worse = {(c.level, c.metric): c for c in loadgen.compare(made_up_report(2.0, errors=1), earlier)}
    assert worse[("c=1", "req/s")].ratio == pytest.approx(0.5) and worse[("c=1", "req/s")].regression
    for slower in ("latency p50", "latency p99", "TTFT p50", "TTFT p99"):
        assert worse[("c=4", slower)].ratio == pytest.approx(2.0) and worse[("c=4", slower)].regression
    assert worse[("c=1", "ITL p50")].ratio == pytest.approx(1.0) and not worse[("c=1", "ITL p50")].regression
    assert worse[("c=1", "output tokens/s")].ratio == pytest.approx(0.5)
    assert worse[("c=1", "errors")].regression and worse[("c=1", "errors")].ratio is None
    assert ("c=1", "images/s") not in worse  # neither run made images


def test_compare_has_a_tolerance_and_better_is_no_regression() -> None:
    earlier = made_up_report()
    slightly = {c.metric: c for c in loadgen.compare(made_up_report(1 / 0.95), earlier, tolerance=0.1)
                if c.level == "c=1"}
    assert slightly["req/s"].ratio == pytest.approx(0.95) and not slightly["req/s"].regression
    assert slightly["latency p50"].ratio == pytest.approx(1 / 0.95) and not slightly["latency p50"].regression
    strict = {c.metric: c for c in loadgen.compare(made_up_report(1 / 0.95), earlier, tolerance=0.01)}
    assert strict["req/s"].regression and strict["latency p50"].regression
    better = loadgen.compare(made_up_report(0.5), earlier)
    assert not any(c.regression for c in better)


def test_compare_refuses_what_is_not_a_bench_report() -> None:
    with pytest.raises(ValueError, match="not a `warmfleet bench --json` report"):
        loadgen.compare(made_up_report(), {"scenario": "llm"})


def test_the_tables_show_each_level() -> None:
    from rich.console import Console

    levels = [loadgen.LevelResult(Load("concurrency", 2), made_up_level())]
    console = Console(width=200, record=True)
    console.print(loadgen.summary_table(levels, "bench"))
    text = console.export_text()
    assert "c=2" in text and "4 (RESOURCE_EXHAUSTED 2, canceled 1, failed 1)" in text and "TTFT" in text
    console.print(loadgen.comparison_table(loadgen.compare(made_up_report(2.0), made_up_report()), "vs"))
    assert "REGRESSION" in console.export_text()


def test_plot_writes_a_png(tmp_path: Path) -> None:
    loadgen.plot(made_up_report(), tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# The CLI's flags


def invoke(*args: str) -> Any:
    return CliRunner().invoke(warmfleet_cli, list(args))


@pytest.mark.parametrize("args, message", [
    (["-c", "0,4"], "Invalid value for '-c' / '--concurrency': every level must be above 0, got '0,4'"),
    (["-c", "1,x"], "Invalid value for '-c' / '--concurrency': expected comma-separated numbers, got '1,x'"),
    (["--rate", "-1"], "Invalid value for '--rate': every level must be above 0"),
    (["--duration", "5q"], "Invalid value for '--duration': expected a duration above 0 such as 30s"),
    (["--duration", "0s"], "Invalid value for '--duration'"),
    (["-n", "0"], "Invalid value for '-n' / '--requests'"),
    (["-i", "novalue"], "Invalid value for '-i' / '--input': expected key=value, got 'novalue'"),
    (["--input", "{not json"], "Invalid value for '-i' / '--input': not a JSON object"),
    (["-i", "text=a", "--input", '{"text": "b"}'], "'text' is given twice"),
    (["-c", "2", "--rate", "5"], "--concurrency and --rate do not go together"),
    (["--compare", "/no/such.json"], "Invalid value for '--compare'"),
])
def test_a_bad_flag_is_a_usage_error_naming_it(args: list[str], message: str) -> None:
    result = invoke("bench", "warmfleet/echo", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize("text, seconds", [("30s", 30.0), ("2m", 120.0), ("500ms", 0.5), ("1.5", 1.5),
                                           ("1h", 3600.0)])
def test_durations_take_units(text: str, seconds: float) -> None:
    assert bench_cli.Duration().convert(text, None, None) == seconds


def test_an_input_file_line_that_is_no_object_is_named(tmp_path: Path) -> None:
    lines = tmp_path / "inputs.jsonl"
    lines.write_text('{"text": "a"}\n\n[1, 2]\n')
    result = invoke("bench", "warmfleet/echo", "--input-file", str(lines))
    assert result.exit_code == 2 and f"{lines} line 3: not a JSON object" in result.output


def test_the_command_line_in_the_report_hides_the_token() -> None:
    assert bench_cli.command_line(["--token", "wf_secret", "bench", "m/x", "--token=wf_2"]) == (
        "warmfleet --token '***' bench m/x '--token=***'")


@pytest.fixture
def fake_cluster(monkeypatch: pytest.MonkeyPatch) -> FakePredictions:
    predictions = FakePredictions(FakeClock(), stream_events(chunks=3, tokens=6), step_s=0.0)
    client = FakeClient(predictions, FakeModels(runner="llm"))
    monkeypatch.setattr(cli_context, "Client", lambda **kwargs: client)
    return predictions


def test_bench_runs_the_sweep_and_writes_the_json(fake_cluster: FakePredictions, tmp_path: Path) -> None:
    lines = tmp_path / "inputs.jsonl"
    lines.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    out = tmp_path / "out.json"
    result = invoke("bench", "m/x", "--input-file", str(lines), "-i", "max_new_tokens=4", "-c", "1,2",
                    "-n", "4", "--warmup", "1", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "c=1" in result.stdout and "c=2" in result.stdout and "TTFT" in result.stdout  # llm: streamed
    report = json.loads(out.read_text())
    assert [lv["summary"]["requests"] for lv in report["levels"]] == [4, 4]
    assert [lv["summary"]["output_tokens"] for lv in report["levels"]] == [24, 24]
    assert len(fake_cluster.calls) == 10 and {c[0] for c in fake_cluster.calls} == {"stream"}
    assert {c[1]["prompt"] for c in fake_cluster.calls} == {"a", "b"}
    assert all(c[1]["max_new_tokens"] == 4 for c in fake_cluster.calls)
    assert report["command"].startswith("warmfleet ") and report["settings"]["warmup"] == 1


def test_compare_with_fail_on_regression_exits_1(fake_cluster: FakePredictions, tmp_path: Path) -> None:
    earlier = made_up_report(latency_s=1e-9)  # an earlier run far faster than anything
    earlier["target"] = "m/x"
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    result = invoke("bench", "m/x", "-c", "1", "-n", "2", "--compare", str(tmp_path / "earlier.json"),
                    "--fail-on-regression")
    assert result.exit_code == 1, result.output
    assert "REGRESSION" in result.stdout


def test_plot_without_matplotlib_is_a_clear_error_before_any_load(fake_cluster: FakePredictions,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = invoke("bench", "m/x", "-n", "2", "--plot", str(tmp_path / "p.png"))
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: --plot needs matplotlib: pip install 'warmfleet[bench]'"
    assert fake_cluster.calls == []
