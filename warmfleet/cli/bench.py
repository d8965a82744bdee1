"""`warmfleet bench`: load a model or a deployment of the cluster the CLI talks to and report what it
measured. The flags become a :class:`warmfleet.loadgen.Plan`; the load, the statistics and the report
are :mod:`warmfleet.loadgen`'s."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import click

from warmfleet import loadgen
from warmfleet.cli.inputs import parse_input
from warmfleet.cli.context import CliContext, CliError, pass_cli, print_renderable
from warmfleet.client import Client

DEFAULT_DURATION_S = 10.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


# Flag types


class BenchInput(click.ParamType):
    """An -i/--input value: a JSON object, or key=value (key=@path: a file) as `warmfleet predict` takes."""

    name = "JSON|key=value"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (dict, tuple)):
            return value
        if value.lstrip().startswith("{"):
            try:
                obj = json.loads(value)
            except ValueError as err:
                self.fail(f"not a JSON object: {err}", param, ctx)
            if not isinstance(obj, dict):
                self.fail("not a JSON object", param, ctx)
            return obj
        try:
            return parse_input(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


def merge_inputs(ctx: click.Context, param: click.Parameter, values: tuple[Any, ...]) -> dict[str, Any]:
    """The -i values as one input: JSON objects and key=value pairs merged; a key given twice is an error."""
    merged: dict[str, Any] = {}
    for value in values:
        for key, item in (value.items() if isinstance(value, dict) else [value]):
            if key in merged:
                raise click.BadParameter(f"{key!r} is given twice", ctx, param)
            merged[key] = item
    return merged


class Levels(click.ParamType):
    """Comma-separated numbers above 0: the levels of a sweep ("1,4,16")."""

    def __init__(self, kind: Callable[[str], float]) -> None:
        self.kind = kind
        self.name = "N[,N...]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        try:
            levels = [self.kind(part) for part in value.split(",")]
        except ValueError:
            self.fail(f"expected comma-separated numbers, got {value!r}", param, ctx)
        if not all(level > 0 for level in levels):
            self.fail(f"every level must be above 0, got {value!r}", param, ctx)
        return levels


class Duration(click.ParamType):
    """A duration above 0: "30s", "2m", "500ms", "1h", or plain seconds ("30")."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        match = _DURATION.match(str(value))
        seconds = float(match.group(1)) * _DURATION_UNITS_S[match.group(2)] if match else 0.0
        if not seconds > 0:
            self.fail(f"expected a duration above 0 such as 30s, 2m or 500ms, got {value!r}", param, ctx)
        return seconds


def read_inputs_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSON Lines file of inputs, one JSON object a line (blank lines skipped)."""
    inputs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as err:
            raise click.BadParameter(f"{path} line {number}: not JSON: {err}",
                                     param_hint="'--input-file'") from err
        if not isinstance(value, dict):
            raise click.BadParameter(f"{path} line {number}: not a JSON object", param_hint="'--input-file'")
        inputs.append(value)
    if not inputs:
        raise click.BadParameter(f"{path} holds no input", param_hint="'--input-file'")
    return inputs


# The command


@click.command(short_help="Load a model or deployment; report throughput and latency.")
@click.argument("target")
@click.option("--deployment", "is_deployment", is_flag=True, help="TARGET names a deployment.")
@click.option("-i", "--input", "inputs", type=BenchInput(), multiple=True, callback=merge_inputs,
              help="The input: a JSON object ('{\"prompt\": \"hi\"}'), or key=value as `predict` takes "
                   "(JSON if it parses, key=@path a file). Repeatable: merged.")
@click.option("--input-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON Lines, one input object a line, used round-robin; -i values are added to each.")
@click.option("-c", "--concurrency", type=Levels(int),
              help="Closed loop: requests in flight, each sent when one ends; a comma list sweeps (1,4,16). "
                   "Default 1.")
@click.option("--rate", type=Levels(float),
              help="Open loop: requests/s with Poisson arrivals; a comma list sweeps (5,10,20).")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=64, show_default=True,
              help="With --rate: the most requests in flight; one due beyond it waits for one to end.")
@click.option("--duration", "duration_s", type=Duration(),
              help=f"How long each level sends requests: 30s, 2m, 500ms (default {DEFAULT_DURATION_S:g}s, "
                   "unless --requests).")
@click.option("-n", "--requests", type=click.IntRange(min=1), help="Requests per level (with --duration: "
              "whichever ends first).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Requests of the same load before each level, not counted.")
@click.option("--stream/--no-stream", default=None, help="Stream each prediction, timing its output chunks "
              "(TTFT, ITL). Default: for text models (the llm runner, Cog iterators).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=600.0,
              show_default=True, help="Seconds one request may take before it counts as DEADLINE_EXCEEDED.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the Poisson arrivals.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every number, the command, the target, the time and every request's record here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw throughput and latency percentiles against the levels into this PNG (matplotlib).")
@click.option("--compare", "compare_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An earlier run's --json: print each headline number's ratio to it, flagging regressions.")
@click.option("--tolerance", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="With --compare: how much worse (a fraction) counts as a regression.")
@click.option("--fail-on-regression", is_flag=True, help="With --compare: exit 1 if anything regressed.")
@pass_cli
def bench(obj: CliContext, target: str, is_deployment: bool, inputs: dict[str, Any],
          input_file: Path | None, concurrency: list[int] | None, rate: list[float] | None,
          max_in_flight: int, duration_s: float | None, requests: int | None, warmup: int,
          stream: bool | None, timeout_s: float, seed: int,
          json_path: Path | None, plot_path: Path | None, compare_path: Path | None, tolerance: float,
          fail_on_regression: bool) -> None:
    """Load TARGET (a model, "owner/name" or "owner/name:version", or a deployment with --deployment)
    with predictions and report, per level: requests, errors, throughput, latency p50/p90/p99, TTFT and
    inter-token latency when streaming, output tokens/s and images/s.

    \b
      warmfleet bench warmfleet/tiny-llama -i prompt=hi -i max_new_tokens=64 -c 1,4,16 -n 64
      warmfleet bench acme/app --deployment --input-file inputs.jsonl --rate 5 --duration 30s
    """
    if concurrency and rate:
        raise click.UsageError("--concurrency and --rate do not go together: a sweep is of one or the other")
    earlier = _read_report(compare_path) if compare_path else None
    if plot_path is not None:
        _check(loadgen.require_matplotlib)
    given = tuple(_inputs(inputs, input_file))  # every flag checked before the gateway is asked anything
    aim = loadgen.Target(deployment=target) if is_deployment else loadgen.Target(model=target)
    client = obj.client()
    plan = loadgen.Plan(
        aim, given, _loads(concurrency, rate), requests,
        duration_s if duration_s is not None or requests is not None else DEFAULT_DURATION_S, warmup,
        _streams(client, aim) if stream is None else stream, max_in_flight, seed, timeout_s)
    report, levels = _measure(plan, client)
    print_renderable(loadgen.summary_table(levels, f"warmfleet bench {aim.describe()} at {client.target}"))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}", err=True)
    if plot_path is not None:
        _check(lambda: loadgen.plot(report, plot_path))
        click.echo(f"wrote {plot_path}", err=True)
    if earlier is not None:
        _compare(report, earlier, compare_path, tolerance, fail_on_regression)


def _compare(report: dict[str, Any], earlier: dict[str, Any], path: Path | None, tolerance: float,
             fail_on_regression: bool) -> None:
    """Print the ratios to the earlier report; exit 1 on a regression if asked to."""
    changes = _check(lambda: loadgen.compare(report, earlier, tolerance))
    if earlier.get("target") != report["target"]:
        click.echo(f"note: {path} measured {earlier.get('target')}, not {report['target']}", err=True)
    print_renderable(loadgen.comparison_table(changes, f"against {path} ({earlier['started_at']})"))
    if fail_on_regression and any(c.regression for c in changes):
        raise click.exceptions.Exit(1)


def _check(step: Callable[[], Any]) -> Any:
    """``step()``, its known failures as one-line errors."""
    try:
        return step()
    except (loadgen.PlotUnavailable, loadgen.BenchAborted, ValueError) as err:
        raise CliError(str(err)) from err


def _read_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except ValueError as err:
        raise click.BadParameter(f"{path}: not JSON: {err}", param_hint="'--compare'") from err
    if not isinstance(report, dict) or report.get("format") != loadgen.SCHEMA:
        raise click.BadParameter(f"{path}: not a `warmfleet bench --json` report", param_hint="'--compare'")
    return report


def _inputs(given: dict[str, Any], input_file: Path | None) -> list[dict[str, Any]]:
    if input_file is None:
        return [given]
    return [{**line, **given} for line in read_inputs_jsonl(input_file)]


def _loads(concurrency: list[int] | None, rate: list[float] | None) -> tuple[loadgen.Load, ...]:
    if rate:
        return tuple(loadgen.Load("rate", r) for r in rate)
    return tuple(loadgen.Load("concurrency", c) for c in concurrency or [1])


def _streams(client: Client, target: loadgen.Target) -> bool:
    """Whether the target's model makes text piece by piece (its runner, or a Cog iterator's schema)."""
    if target.deployment:
        deployment = client.deployments.get(target.deployment)
        model = client.models.get(deployment.model)
        return loadgen.streams_by_default(deployment.runner or model.runner, model.output_schema)
    model = client.models.get(target.model.partition(":")[0])
    return loadgen.streams_by_default(model.runner, model.output_schema)


def _measure(plan: loadgen.Plan, client: Client) -> tuple[dict[str, Any], list[loadgen.LevelResult]]:
    """Run the plan with a progress bar on stderr; the report and the levels."""
    started, start, load_at_start = datetime.now(timezone.utc), time.monotonic(), os.getloadavg()[0]
    send = loadgen.ClientSender(client, plan.target, plan.stream, plan.timeout_s)
    levels = _check(lambda: _with_progress(plan, send))
    report = loadgen.report_json(plan, levels, command=command_line(sys.argv[1:]), gateway=client.target,
                                 started_at=started.isoformat(), wall_s=time.monotonic() - start)
    report["client"] = {"warmfleet": _version(), "python": platform.python_version(), "nproc": os.cpu_count(),
                        "loadavg_1m_at_start": load_at_start}  # what else ran here skews what it measured
    return report, levels


def _version() -> str:
    try:
        return importlib.metadata.version("warmfleet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _with_progress(plan: loadgen.Plan, send: loadgen.Sender) -> list[loadgen.LevelResult]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    by_count = plan.requests is not None
    columns = [TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn() if by_count else TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
               TextColumn("{task.fields[done]} done, {task.fields[errors]} errors"), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True)) as progress:

        def on_level(load: loadgen.Load) -> Callable[[loadgen.RequestRecord], None]:
            task = progress.add_task(load.label(), total=plan.requests or plan.duration_s, done=0, errors=0)
            tally = {"done": 0, "errors": 0}

            def on_record(record: loadgen.RequestRecord) -> None:
                tally["done"] += 1
                tally["errors"] += 0 if record.succeeded else 1
                done = tally["done"] if by_count else min(record.end_s, plan.duration_s or 0.0)
                progress.update(task, completed=done, **tally)

            return on_record

        return loadgen.run_plan(plan, send, on_level=on_level)


def command_line(args: list[str]) -> str:
    """The command as run, for the report, with a --token's value hidden."""
    shown, hide = [], False
    for arg in args:
        shown.append("***" if hide else "--token=***" if arg.startswith("--token=") else arg)
        hide = arg == "--token"
    return shlex.join(["warmfleet", *shown])
