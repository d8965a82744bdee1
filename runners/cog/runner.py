"""The ``cog`` runner family: a user's own Cog model, run unchanged on Cog's own runtime (coglet).

A version is a pushed bundle (``warmfleet.bundle``) with the OpenAPI document Cog's inspector gave at
push (``runners.cog.schema``) in its options. An instance is one coglet process (``runners.cog.process``):
``load`` fetches the bundle (once per node), installs its packages (once per node, ``runners.cog.env``),
writes the schema where coglet enforces it (``.cog/openapi_schema.json``) and waits for ``setup()``.
A prediction is one ``POST /predictions``; its log lines stream from coglet's output as they are printed,
and an iterator's items through webhooks. A crashed
process fails the predictions it ran, naming why, and the instance starts a new one before the next.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import json
import logging
import mimetypes
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any, AsyncIterator

from runners.base import AsyncPredictGenerator, Cancelled, NodeResources, PredictContext, Runner, RunnerPolicy
from warmfleet.bundle import extract_bundle
from warmfleet.jsonvalues import files_as_data_urls
from runners.cog.config import read_config
from runners.cog.env import ensure_environment
from runners.cog.process import CogProcess, ProcessGone, ProcessSpec
from runners.cog.schema import input_json_schema, output_json_schema
from runners.cog.webhooks import receiver
from runners.schema import SECRET_MASK
from warmfleet.domain import FileData, LogLine, MetricsUpdate, RouteSpec, Output, OutputChunk

log = logging.getLogger(__name__)

FAMILY = "cog"
SETUP_TIMEOUT_S = 600.0
CANCEL_GRACE_S = 10.0  # how long a canceled prediction may take to stop before its slot is given back
END_LINE_WAIT_S = 1.0  # most a finished prediction waits for its last log lines (coglet's "ended" line)
_DATA_URL = re.compile(r"^data:([^;,]*)((?:;[^;,=]+=[^;,]*)*)(;base64)?,", re.DOTALL)
READY_STATES = ("READY", "BUSY")
# While a prediction runs, its coglet is asked every WATCH_INTERVAL_S with no news; HUNG_AFTER_MISSES
# health checks in a row without an answer within HEALTH_TIMEOUT_S mean it hung.
WATCH_INTERVAL_S = 1.0
HEALTH_TIMEOUT_S = 1.0
HUNG_AFTER_MISSES = 3


class PredictionFailed(Exception):
    """The predictor raised, or its process failed it; the message is Cog's error."""


class CogRunner(Runner):
    family = FAMILY
    loads_in_process = False  # the model loads in its own process: other loads on this node go on

    def __init__(self, spec: RouteSpec, device: str = "cpu", node: NodeResources | None = None) -> None:
        super().__init__(spec, device, node)
        self._process: CogProcess | None = None
        self._restart: asyncio.Task | None = None
        self._kill_reason = ""  # why the agent killed the process, for the predictions that die with it
        self._setup_untold = False
        # Read once from the version's document, not once a prediction.
        self._output = self.output_schema(spec)
        self._secrets = secret_fields(spec.options["openapi_schema"])
        self.setup_logs = ""

    # The version's schema

    @classmethod
    def input_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        return input_json_schema(spec.options["openapi_schema"])

    @classmethod
    def output_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        return output_json_schema(spec.options["openapi_schema"])

    @classmethod
    def policy(cls, spec: RouteSpec) -> RunnerPolicy:
        return RunnerPolicy(max_concurrency=int(spec.options.get("max_concurrency", 1)))

    # Life

    def load(self) -> None:
        if self.node is None or self.node.bundles is None:
            raise RuntimeError("this node has no bundle source; Cog models need one (see NodeResources)")
        root = self.node.cache_dir / "cog"
        options = self.spec.options
        bundle_dir = materialize_bundle(self.node, options["bundle"], options["openapi_schema"])
        config = read_config(bundle_dir)
        env_dir = ensure_environment(config, root / "envs", bundle_dir)
        environment = dict(config.environment)
        if self.device.startswith("cuda"):
            environment["WARMFLEET_DEVICE"] = self.device
        self._spec_for_process = ProcessSpec(
            bundle_dir=bundle_dir, predict=config.predict, env_dir=env_dir,
            max_concurrency=self.policy(self.spec).max_concurrency, environment=tuple(environment.items()),
        )
        self._start_process()

    def _start_process(self) -> None:
        process = CogProcess(self._spec_for_process)
        process.start()
        try:
            self.setup_logs = process.wait_ready(SETUP_TIMEOUT_S)
        except BaseException:
            process.kill()
            raise
        self._process = process
        self._setup_untold = True  # the first prediction on it (the one that waited for the boot) shows them

    def unload(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def process_ids(self) -> list[int]:
        """coglet's server (its worker is its child)."""
        pid = self._process.pid if self._process is not None else None
        return [pid] if pid is not None else []

    # Predictions

    async def predict(self, input: dict[str, Any], ctx: PredictContext) -> AsyncPredictGenerator:
        process = await self._healthy_process()
        if self._setup_untold:
            self._setup_untold = False
            for line in self.setup_logs.splitlines():
                yield LogLine(f"setup: {line}")
        pid = ctx.prediction_id
        stream = _Stream(self._output, [str(input[name]) for name in self._secrets if input.get(name)])
        # ("log", line) from coglet's output, ("output", body) from webhooks, ("end", None) at the end
        updates: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        process.output.watch(pid, lambda line: loop.call_soon_threadsafe(
            updates.put_nowait, ("log", line) if line is not None else ("end", None)))
        hooks = await receiver() if stream.streams_output else None
        if hooks is not None:
            hooks.open(pid, updates)
        call = asyncio.create_task(process.predict(pid, _to_cog(input),
                                                   hooks.webhook_for(pid) if hooks else ""))
        try:
            async for event in self._follow(process, call, updates, stream):
                yield event
            final = await self._final(call)
            rest = await _rest(updates, stream)
            for event in [*rest, *stream.update(final), *stream.finish(final.get("logs"))]:
                yield event
        except asyncio.CancelledError:
            await process.cancel(pid)
            await asyncio.wait({call}, timeout=CANCEL_GRACE_S)
            raise
        finally:
            process.output.unwatch(pid)
            if hooks is not None:
                hooks.close(pid)
        status = final.get("status")
        if status == "canceled":
            raise Cancelled()
        if status != "succeeded":
            error = stream.scrub(str(final.get("error") or f"the prediction ended {status}"))
            if self._restart_if_unhealthy():
                error += " (the model's process failed with it; the instance restarts)"
            raise PredictionFailed(error)
        custom = _custom_metrics(final.get("metrics"))
        if custom:
            yield MetricsUpdate({"custom": custom})
        yield stream.output(final.get("output"))

    async def _follow(self, process: CogProcess, call: asyncio.Task, updates: asyncio.Queue,
                      stream: _Stream) -> AsyncIterator[Any]:
        """The prediction's events while it runs; a process that stops answering is killed."""
        watchdog = _Watchdog(process)
        while not call.done():
            update = asyncio.create_task(updates.get())
            done, _ = await asyncio.wait({call, update}, timeout=WATCH_INTERVAL_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if update.done():
                for event in stream.take(*update.result()):
                    yield event
            else:
                update.cancel()
            if not done and await watchdog.hung():
                self._kill_reason = (f"the Cog process did not answer its health check for "
                                     f"{watchdog.silent_s:.0f} s (hung); it was killed")
                await asyncio.to_thread(process.kill)

    async def _final(self, call: asyncio.Task) -> dict[str, Any]:
        try:
            return call.result()
        except ProcessGone:
            code = self._process.exit_code() if self._process else None
            reason = self._kill_reason or f"the Cog process died (exit code {code})"
            self._kill_reason = ""
            self._begin_restart()
            raise PredictionFailed(f"{reason} while running this prediction; the instance restarts") from None

    def _restart_if_unhealthy(self) -> bool:
        """A failed prediction may have taken coglet's worker with it (coglet then reports itself
        unhealthy and serves no more): restart the process. Says whether it restarts."""
        health = self._process.health(timeout_s=1.0) if self._process else None
        if (health or {}).get("status") in READY_STATES:
            return False
        self._begin_restart()
        return True

    def _begin_restart(self) -> None:
        if self._restart is None or self._restart.done():
            log.warning("restarting the Cog process of %s", self.spec.name)
            self._restart = asyncio.create_task(asyncio.to_thread(self._restart_process))

    def _restart_process(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process = None
        self._start_process()

    async def _healthy_process(self) -> CogProcess:
        """The process to send to: after a restart that is under way (or needed) has finished."""
        if self._process is None or self._process.exit_code() is not None:
            self._begin_restart()
        if self._restart is not None and not self._restart.done():
            await asyncio.shield(self._restart)
        if self._restart is not None and self._restart.exception() is not None:
            raise PredictionFailed(f"the Cog process could not restart: {self._restart.exception()}")
        assert self._process is not None
        return self._process



class _Watchdog:
    """Notices a coglet that stopped answering while a prediction runs. coglet's HTTP side answers its
    health check at once even while the predictor computes, so silence means the process is wedged
    (stopped, deadlocked, swapping), not busy."""

    def __init__(self, process: CogProcess) -> None:
        self._process = process
        self._misses = 0
        self.silent_s = 0.0

    async def hung(self) -> bool:
        started = time.monotonic()
        if await self._process.answers_health_check(HEALTH_TIMEOUT_S):
            self._misses, self.silent_s = 0, 0.0
            return False
        self._misses += 1
        self.silent_s += WATCH_INTERVAL_S + time.monotonic() - started
        return self._misses >= HUNG_AFTER_MISSES


class _Stream:
    """One prediction's events, once each: log lines as coglet prints them, and output items from
    coglet's snapshots (webhooks and the final answer carry the whole output so far, in any order)."""

    def __init__(self, output_schema: dict[str, Any], secrets: list[str]) -> None:
        # Longest first, so a secret that begins with another is masked whole; a secret of several lines
        # is also masked line by line (coglet prints one line a message).
        parts = {line for value in secrets for line in value.splitlines() if len(line) >= 4}
        self._secrets = sorted(set(secrets) | parts, key=len, reverse=True)
        self._schema = output_schema
        self._iterator = output_schema.get("x-cog-array-type") == "iterator"
        self._joinable = output_schema.get("x-cog-array-display") == "concatenate"
        self._items = output_schema.get("items", {}) if self._iterator else {}
        self._sent_lines = 0
        self._sent_items = 0
        self.ended = False

    @property
    def streams_output(self) -> bool:
        """Whether output comes in items worth streaming (an iterator), so webhooks are wanted."""
        return self._iterator

    def scrub(self, text: str) -> str:
        for value in self._secrets:
            text = text.replace(value, SECRET_MASK)
        return text

    def take(self, kind: str, body: Any) -> list[Any]:
        """The events of one update: ``("log", line)``, ``("output", snapshot)``, or ``("end", None)``
        (coglet's line that the prediction ended: no line of it comes after)."""
        if kind == "end":
            self.ended = True
            return []
        return self.log(body) if kind == "log" else self.update(body)

    def log(self, line: str) -> list[LogLine]:
        self._sent_lines += 1
        return [LogLine(self.scrub(line))]

    def update(self, doc: dict[str, Any]) -> list[Any]:
        """The output items of a snapshot that were not sent yet."""
        output = doc.get("output")
        events: list[Any] = []
        if self._iterator and isinstance(output, list) and len(output) > self._sent_items:
            for item in output[self._sent_items:]:
                events.append(_chunk(item, self._items, self._sent_items, self._joinable))
                self._sent_items += 1
        return events

    def finish(self, logs: Any) -> list[LogLine]:
        """The lines of coglet's final ``logs`` that did not come as they were printed (the reader hands
        each over as coglet writes it; one written just as the prediction ended may come after)."""
        lines = self.scrub(logs).splitlines() if isinstance(logs, str) else []
        rest = lines[self._sent_lines:]
        self._sent_lines += len(rest)
        return [LogLine(line) for line in rest]

    def output(self, value: Any) -> Output:
        """The final output: file values (``format: uri``) as files, the rest as the JSON value."""
        return _output(value, self._schema)


async def _rest(updates: asyncio.Queue, stream: _Stream) -> list[Any]:
    """The events still on their way once coglet answered: its answer can overtake the last lines the
    predictor printed (coglet's final ``logs`` misses them after a failure), so wait for coglet's own
    line that the prediction ended, which follows them, for up to ``END_LINE_WAIT_S``."""
    events: list[Any] = []
    deadline = asyncio.get_running_loop().time() + END_LINE_WAIT_S
    while not stream.ended and (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            events += stream.take(*await asyncio.wait_for(updates.get(), left))
        except TimeoutError:
            break
    while not updates.empty():  # webhooks that came with the answer
        events += stream.take(*updates.get_nowait())
    return events


def _custom_metrics(metrics: Any) -> dict[str, float]:
    """The figures the predictor recorded (``self.record_metric``), beside coglet's own predict_time
    (the agent measures that itself)."""
    found: dict[str, float] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, dict):  # "timing.inference" is recorded as {"timing": {"inference": ...}}
            for key, inner in value.items():
                walk(inner, f"{name}.{key}" if name else str(key))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and name != "predict_time":
            found[name] = float(value)

    walk(metrics if isinstance(metrics, dict) else {}, "")
    return found


def _is_file_schema(schema: dict[str, Any]) -> bool:
    return schema.get("format") == "uri"


def _chunk(item: Any, schema: dict[str, Any], index: int, joinable: bool) -> OutputChunk:
    if _is_file_schema(schema) and isinstance(item, str):
        return OutputChunk(file=_file_from_url(item, index))
    return OutputChunk(value=item, joinable=joinable)


def _output(value: Any, schema: dict[str, Any]) -> Output:
    if _is_file_schema(schema) and isinstance(value, str) and _DATA_URL.match(value):
        return Output(value=None, files=[_file_from_url(value, 0)])
    items = schema.get("items", {})
    if schema.get("type") == "array" and _is_file_schema(items) and isinstance(value, list):
        return Output(value=None, files=[_file_from_url(v, i) for i, v in enumerate(value)])
    return Output(value=value)


def _file_from_url(url: str, index: int) -> FileData:
    """A file coglet returned as a data URL (its default for Path outputs)."""
    match = _DATA_URL.match(url)
    if match is None:
        return FileData(data=url.encode(), content_type="text/uri-list", name=f"output-{index}.url")
    content_type = match.group(1) or "application/octet-stream"
    payload = url[match.end():]
    data = base64.b64decode(payload) if match.group(3) else urllib.parse.unquote_to_bytes(payload)
    ext = mimetypes.guess_extension(content_type) or ".bin"
    return FileData(data=data, content_type=content_type, name=f"output-{index}{ext}")


def _to_cog(value: Any) -> Any:
    """The input as coglet takes it: files as data URLs."""
    return files_as_data_urls(value)


def secret_fields(openapi: dict[str, Any]) -> list[str]:
    """The inputs Cog types as ``Secret``."""
    props = openapi.get("components", {}).get("schemas", {}).get("Input", {}).get("properties", {})
    return [name for name, prop in props.items() if prop.get("x-cog-secret")]


def materialize_bundle(node: NodeResources, digest: str, openapi: dict[str, Any]) -> Path:
    """The bundle unpacked in the node's cache (fetched and checked against its digest the first time),
    with Cog's schema file written where coglet reads it. One fetch per node, however many instances."""
    root = node.cache_dir / "cog" / "bundles"
    root.mkdir(parents=True, exist_ok=True)
    target = root / digest
    if (target / ".cog" / "openapi_schema.json").exists():
        return target
    with (root / f"{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".cog" / "openapi_schema.json").exists():
            return target
        archive = root / f"{digest}.tar.part"
        assert node.bundles is not None
        node.bundles.fetch(digest, archive)
        with archive.open("rb") as f:
            got = hashlib.file_digest(f, "sha256").hexdigest()
        if got != digest:
            archive.unlink(missing_ok=True)
            raise RuntimeError(f"the bundle fetched for {digest} has digest {got}: refusing it")
        extract_bundle(archive, target)
        archive.unlink()
        (target / ".cog").mkdir(exist_ok=True)
        staging = target / ".cog" / "openapi_schema.json.tmp"
        staging.write_text(json.dumps(openapi))
        staging.rename(target / ".cog" / "openapi_schema.json")  # written last: marks the bundle complete
    return target
