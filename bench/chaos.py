"""The chaos scenario: mixed predictions under load while the cluster's processes die, and what became of
every one of them.

Starts a two-node ``ray.cluster_utils.Cluster`` (head and one worker node, CPU only) in this process, and a
gateway joining it as a real process (``python -m warmfleet.cli up`` with ``WARMFLEET_RAY_ADDRESS`` set and
a fixed gRPC port, so a restarted gateway serves where the clients are). It serves the built-in echo, tiny
LLM and tiny SD as ``warmfleet up`` defines them, through a cluster config that asks for two instances of
echo and of the LLM (placement spreads them over both nodes, so the worker node's faults hit the load).
Worker threads create ``--predictions`` predictions at a steady pace (mostly ``warmfleet/echo`` with
delays, some ``warmfleet/tiny-llama`` generations, followed as streams, a few ``warmfleet/tiny-sd``
images), each with its own idempotent ``id``, so that a create whose answer was lost is sent again until
the gateway answers. After a warm-up, in turn: ``kill -9`` of the worker node's agent process, ``kill -9``
of the controller process, ``kill -9`` of the gateway and ``up`` again, a broken data stream (the gateway's
TCP connections to every agent's data server reset with ``ss -K``) and ``cluster.remove_node`` of the
worker node. Then it waits (bounded) for every accepted prediction to end, classifies them per fault
window, measures how soon the completion rate came back after each fault, and always brings everything
down.

    python -m bench.chaos --predictions 2000 --out bench/results
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.common import Report
from warmfleet.cli.defaults import TINY_LLAMA, TINY_SD
from warmfleet.v1 import predictions_pb2 as P
from warmfleet.v1 import predictions_pb2_grpc
from warmfleet.v1 import types_pb2 as T

ECHO = "warmfleet/echo"
KINDS = {"echo": ECHO, "llm": TINY_LLAMA, "image": TINY_SD}
MIX = {"echo": 0.88, "llm": 0.08, "image": 0.04}  # the share of each kind in the load
ECHO_DELAY_MS = (0, 300)
LLM_TOKENS = 32
IMAGE_SIZE, IMAGE_STEPS = 64, 2
# The built-in models the bench serves (the definitions `warmfleet up` serves by default, through a cluster
# config file), and how many instances of each: two echo and two LLM instances are spread over both nodes
# (placement spreads a route first), so the worker node's faults hit the load; the built-in upscaler,
# which the load does not use, is left out.
INSTANCES = {ECHO: 2, TINY_LLAMA: 2, TINY_SD: 1}
NODE_ARGS = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wise",
         "owls", "watch", "from", "old", "oak", "trees")

TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
FAILED = {"failed", "canceled", "aborted"}
# A create that ended with one of these may not have reached the gateway, or its answer was lost: it is
# sent again with the same id. Any other code is the gateway's answer (the prediction was refused).
TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL", "RESOURCE_EXHAUSTED",
             "ABORTED"}
CALL_TIMEOUT_S = 10.0
STREAM_TIMEOUT_S = 60.0  # a stream still open after this long is left to the poller
MAX_STREAMS = 64  # LLM streams open at once; past that, the poller follows the prediction
LATE_S = 60.0  # creates stop this long after the planned end of the load
RETRY_EVERY_S = 0.2
CREATE_GIVE_UP_S = 90.0  # a create still unanswered after this long is recorded as never accepted
POLL_EVERY_S = 0.5
GET_EVERY_S = 2.0  # a pending prediction missing from the newest page is asked for on its own this often
GONE_AFTER_S = 2.0  # NOT_FOUND for this long (two asks apart) counts as gone
# Capacity: completions (succeeded) per 1 s bin; the rate before a fault is the mean of the BEFORE_S bins
# before it; capacity is back at the first bin from which the mean of the next SPAN bins is >= FRACTION of it.
CAPACITY_BEFORE_S, CAPACITY_SPAN_S, CAPACITY_FRACTION = 5, 3, 0.8
GOAL_BACK_S = 10.0
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]


# Processes on this machine


def process_table() -> dict[int, tuple[int, str]]:
    """Every process: its parent and its command line (Ray titles an actor's process ``ray::<Class>``)."""
    table = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
                raw = (proc / "cmdline").read_bytes()
                cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, IndexError, ValueError):
                continue
            table[int(proc.name)] = (ppid, cmdline)
    return table


def descendants(root: int, table: dict[int, tuple[int, str]] | None = None) -> dict[int, str]:
    """The processes below ``root``, with their command lines."""
    table = process_table() if table is None else table

    def below(pid: int) -> bool:
        while pid > 1:
            pid = table.get(pid, (0, ""))[0]
            if pid == root:
                return True
        return False

    return {pid: cmd for pid, (_, cmd) in table.items() if below(pid)}


def titled(title: str, under: int) -> list[int]:
    """The actor processes ``ray::<title>`` below ``under`` (a raylet, or this process for all nodes)."""
    return sorted(pid for pid, cmd in descendants(under).items() if cmd.startswith(f"ray::{title}"))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The cluster: Ray's test cluster in this process, a gateway process joining it


@dataclass
class Rig:
    """What this run started, and how to reach and find it."""

    cluster: Any
    worker_node: Any
    home: Path
    env: dict[str, str]
    target: str
    gateway_pids: list[int] = field(default_factory=list)
    seen: dict[int, str] = field(default_factory=dict)  # every process of ours seen, for the cleanup

    @property
    def token(self) -> str:
        return (self.home / "admin_token").read_text().strip()

    @property
    def log_path(self) -> Path:
        return self.home / "logs" / "gateway.log"

    def worker_raylet(self) -> int:
        from ray._private import ray_constants

        return self.worker_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid

    def note_processes(self) -> None:
        self.seen.update(descendants(os.getpid()))
        for pid in self.gateway_pids:
            if alive(pid):
                self.seen[pid] = process_table().get(pid, (0, ""))[1]


def start_rig(home: Path) -> Rig:
    """The Ray cluster (head and one worker node), and this process connected to it as a driver (to ask
    the agents where their data servers listen). The gateway is started by ``gateway_up``."""
    import ray
    from ray.cluster_utils import Cluster

    with ray_address_file_kept():
        cluster = Cluster(initialize_head=True, head_node_args=dict(include_dashboard=False, **NODE_ARGS))
    try:
        worker = cluster.add_node(**NODE_ARGS)
        cluster.wait_for_nodes()
        # The head is preferred when several raylets share a host: the driver never sits on the worker node.
        ray.init(address=cluster.address, namespace="warmfleet", log_to_driver=False, configure_logging=False)
    except BaseException:
        with ray_address_file_kept():
            cluster.shutdown()
        raise
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARMFLEET_")}
    port = free_port()
    env.update(WARMFLEET_HOME=str(home), WARMFLEET_RAY_ADDRESS=cluster.address, WARMFLEET_GRPC_PORT=str(port),
               WARMFLEET_HTTP_PORT="0", WARMFLEET_CLUSTER_CONFIG=str(write_config(home)), HF_HUB_OFFLINE="1")
    return Rig(cluster, worker, home, env, f"127.0.0.1:{port}")


@contextlib.contextmanager
def ray_address_file_kept() -> Iterator[None]:
    """Ray's address file (``/tmp/ray/ray_current_cluster``) as it was before the block. Starting a test
    cluster writes its address there, where every ``ray.init()`` without an address on this machine (a
    `warmfleet up` without ``--address``, a test) would join it; shutting it down removes the file, which
    may be another cluster's."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    before = path.read_text() if path.exists() else None
    try:
        yield
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)


def write_config(home: Path) -> Path:
    """A cluster config serving the built-in echo, tiny LLM and tiny SD as ``default_models`` defines them
    (weights generated under the home on first use), with ``INSTANCES`` of each."""
    from warmfleet.cli.defaults import default_models
    from warmfleet.settings import Settings

    lines = ["[cluster]", "builtin_models = false", ""]
    for spec in default_models(Settings(home=home)):
        if spec.name in INSTANCES:
            lines += ["[[models]]", f"name = {json.dumps(spec.name)}", f"runner = {json.dumps(spec.runner)}",
                      f"weights = {json.dumps(spec.weights)}", f"options = {_toml(spec.options)}",
                      f"min_instances = {INSTANCES[spec.name]}", ""]
    home.mkdir(parents=True, exist_ok=True)
    path = home / "chaos-cluster.toml"
    path.write_text("\n".join(lines))
    return path


def _toml(value: Any) -> str:
    """A value as TOML (inline tables; JSON's strings and numbers are TOML's)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def cli(rig: Rig, *args: str, timeout_s: float = 240.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "warmfleet.cli", *args], env=rig.env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def gateway_up(rig: Rig) -> dict[str, Any]:
    """``warmfleet up`` (it returns once the gateway serves); the new gateway's pid, and how long it took."""
    started = time.monotonic()
    done = cli(rig, "up")
    took = round(time.monotonic() - started, 2)
    try:
        pid = json.loads((rig.home / "cluster.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        pid = None
    if pid is not None and pid not in rig.gateway_pids:
        rig.gateway_pids.append(pid)
    rig.note_processes()
    return {"rc": done.returncode, "pid": pid, "up_s": took,
            "output": (done.stdout + done.stderr).strip()[-600:] if done.returncode else ""}


def teardown(rig: Rig) -> dict[str, Any]:
    """``down``, the driver, ``cluster.shutdown()``; then any process of this run still there is killed
    (its command line checked first, so a reused pid is left alone) and reported."""
    import ray

    rig.note_processes()
    out: dict[str, Any] = {}
    try:
        down = cli(rig, "down", timeout_s=120)
        out["down"] = {"rc": down.returncode, "output": (down.stdout + down.stderr).strip()[-300:]}
    except subprocess.TimeoutExpired:
        out["down"] = {"rc": None, "output": "timed out after 120 s"}
    rig.note_processes()
    ray.shutdown()
    try:
        with ray_address_file_kept():
            rig.cluster.shutdown()
    except Exception as err:  # noqa: BLE001 - the leftovers are found and killed below all the same
        out["cluster_shutdown_error"] = repr(err)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(p) for p in rig.seen):
        time.sleep(0.5)
    table = process_table()
    left = {pid: cmd for pid, cmd in rig.seen.items() if pid in table and table[pid][1] == cmd and alive(pid)}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    out["left_after_cleanup"] = [{"pid": pid, "cmdline": cmd[:160]} for pid, cmd in sorted(left.items())]
    out["processes_of_the_run"] = len(rig.seen)
    return out


# What is sent, and what counts as the right output


def make_request(kind: str, i: int, rng: random.Random) -> tuple[P.CreatePredictionRequest, str]:
    """The i-th prediction's create request (without its id), and the output it must have (echo only)."""
    if kind == "echo":
        text = f"echo-{i}-{rng.randrange(1 << 30):08x}"
        value = T.PredictionInput(echo=T.EchoInput(text=text, delay_ms=rng.randint(*ECHO_DELAY_MS)))
        return P.CreatePredictionRequest(model=ECHO, input=value), text
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
    if kind == "llm":
        gen = T.TextGenerationInput(prompt=prompt, max_new_tokens=LLM_TOKENS, min_new_tokens=LLM_TOKENS,
                                    temperature=0.0, seed=i)
        return P.CreatePredictionRequest(model=TINY_LLAMA, input=T.PredictionInput(text_generation=gen)), ""
    image = T.ImageGenerationInput(prompt=prompt, width=IMAGE_SIZE, height=IMAGE_SIZE,
                                   num_inference_steps=IMAGE_STEPS, seed=i)
    return P.CreatePredictionRequest(model=TINY_SD, input=T.PredictionInput(image_generation=image)), ""


def output_ok(kind: str, expected: str, pb: T.Prediction) -> bool:
    """Echo: its text back. LLM: some text. Image: at least one file with bytes."""
    if kind == "image":
        return bool(pb.output.files) and all(f.data for f in pb.output.files)
    if not pb.output.HasField("value") or pb.output.value.WhichOneof("kind") != "string_value":
        return False
    text = pb.output.value.string_value
    return text == expected if kind == "echo" else bool(text)


def attempts_of(pb: T.Prediction) -> int:
    """Which run the prediction is on (``Prediction.attempt``): 2 once re-run."""
    return pb.attempt or 1


@dataclass
class Record:
    """One prediction of the run. Times are seconds since the load started."""

    id: str
    kind: str
    scheduled_s: float
    expected: str = field(default="", repr=False)
    created_s: float | None = None  # the first create call
    accepted_s: float | None = None  # the gateway's answer to a create (the prediction is stored)
    create_calls: int = 0
    create_errors: list[str] = field(default_factory=list)  # what the unanswered calls got (distinct)
    refused: str = ""  # why it was never accepted
    status: str = ""  # the last status seen
    error: str = ""
    error_code: str = ""
    completed_s: float | None = None  # the gateway's completed_at
    output_ok: bool | None = None
    attempts: int = 1  # Prediction.attempt: 2 once re-run
    streamed_chunks: int = 0  # output events an LLM stream delivered
    stream_error: str = ""  # why an LLM stream ended without its completed event (then it is polled)
    gone: bool = False  # NOT_FOUND where it was accepted
    not_found_since: float | None = field(default=None, repr=False)
    last_get: float = field(default=0.0, repr=False)
    streaming: bool = field(default=False, repr=False)

    @property
    def accepted(self) -> bool:
        return self.accepted_s is not None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def observe(self, pb: T.Prediction, t0: float) -> None:
        """Take in what the gateway says of it now."""
        self.status = T.Status.Name(pb.status).removeprefix("STATUS_").lower()
        self.error, self.error_code = pb.error, pb.error_code
        self.gone, self.not_found_since = False, None
        self.attempts = attempts_of(pb)
        if self.done:
            at = pb.completed_at.ToMicroseconds() / 1e6 if pb.HasField("completed_at") else time.time()
            self.completed_s = round(at - t0, 3)
            self.output_ok = output_ok(self.kind, self.expected, pb) if self.status == "succeeded" else None

    def to_json(self) -> dict[str, Any]:
        hidden = {"expected", "not_found_since", "last_get", "streaming"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in hidden}


def plan(count: int, rate_per_s: float, seed: int) -> tuple[list[Record], list[P.CreatePredictionRequest]]:
    """Every prediction of the run, its kind drawn by ``MIX``, its create time 1/rate after the last."""
    rng = random.Random(seed)
    run = f"{rng.randrange(1 << 24):06x}"
    records, requests = [], []
    for i in range(count):
        kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        request, expected = make_request(kind, i, rng)
        request.id = f"chaos-{run}-{i:05d}-{kind}"
        records.append(Record(request.id, kind, round(i / rate_per_s, 3), expected))
        requests.append(request)
    return records, requests


# The load: creates at a steady pace from a few threads, and a poller that follows what was accepted


class Load:
    """``workers`` threads take the planned predictions in order, each at its time, and create them with
    ``wait_s=0`` (the gateway answers once the prediction is stored); a create without an answer is sent
    again with the same id (``TRANSIENT`` codes) until the gateway answers, or ``CREATE_GIVE_UP_S`` passes,
    or the load is ``LATE_S`` past its planned end. An accepted LLM prediction is then streamed
    (``StreamPrediction``, on a thread of its own, as a client shows tokens); the poller
    (``ListPredictions``, then ``GetPrediction``) follows the rest, and a stream that broke."""

    def __init__(self, rig: Rig, records: list[Record], requests: list[P.CreatePredictionRequest],
                 workers: int, load_s: float) -> None:
        self.records, self._requests, self._load_s = records, requests, load_s
        self._streams = threading.BoundedSemaphore(MAX_STREAMS)
        self._channel = grpc.insecure_channel(rig.target, options=CHANNEL_OPTIONS)
        self._stub = predictions_pb2_grpc.PredictionsStub(self._channel)
        self._md = (("authorization", f"Bearer {rig.token}"),)
        self._next, self._lock = 0, threading.Lock()
        self._stop, self._calls = threading.Event(), set()
        self._workers = [threading.Thread(target=self._work, name=f"chaos-load-{n}", daemon=True)
                         for n in range(workers)]
        self._poller = threading.Thread(target=self._poll, name="chaos-poller", daemon=True)
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.time()
        for thread in (*self._workers, self._poller):
            thread.start()

    def now(self) -> float:
        return round(time.time() - self.t0, 3)

    def pending(self) -> list[Record]:
        """Accepted and not ended; the gone ones too (asked for again, in case they come back)."""
        return [r for r in self.records if r.accepted and not r.done]

    def settle(self, timeout_s: float) -> float:
        """Wait for the workers to create everything, then (within ``timeout_s``) for every accepted
        prediction to end; the seconds waited after the last create."""
        for thread in self._workers:
            thread.join()
        created = time.monotonic()
        while any(not r.gone for r in self.pending()) and time.monotonic() - created < timeout_s:
            time.sleep(POLL_EVERY_S)
        return round(time.monotonic() - created, 2)

    def stop(self) -> None:
        self._stop.set()
        for call in list(self._calls):
            call.cancel()
        self._poller.join(10)
        self._channel.close()

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= len(self.records) or self._stop.is_set():
                return None
            self._next += 1
            return self._next - 1

    def _late(self) -> bool:
        return time.time() > self.t0 + self._load_s + LATE_S

    def _work(self) -> None:
        while (i := self._take()) is not None:
            record = self.records[i]
            if self._stop.wait(max(0.0, self.t0 + record.scheduled_s - time.time())):
                return
            if self._late():
                record.refused = f"not sent: the load ran {LATE_S:.0f} s past its planned end"
                continue
            self._create(record, self._requests[i])
            if record.kind == "llm" and record.accepted and not record.done and self._streams.acquire(False):
                record.streaming = True
                threading.Thread(target=self._stream, args=(record,), name=f"chaos-{record.id}",
                                 daemon=True).start()

    def _again(self, record: Record, err: grpc.RpcError, since: float) -> bool:
        """After a create call got no answer: whether to send it again (and wait before)."""
        what = f"{err.code().name}: {err.details()}"
        if what not in record.create_errors and len(record.create_errors) < 5:
            record.create_errors.append(what)
        if err.code().name not in TRANSIENT or time.monotonic() - since > CREATE_GIVE_UP_S or self._late():
            record.refused = what
            return False
        return not self._stop.wait(RETRY_EVERY_S)

    def _create(self, record: Record, request: P.CreatePredictionRequest) -> None:
        since = time.monotonic()
        while True:
            record.create_calls += 1
            record.created_s = record.created_s if record.created_s is not None else self.now()
            try:
                reply = self._stub.CreatePrediction(request, metadata=self._md, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as err:
                if self._again(record, err, since):
                    continue
                return
            record.accepted_s = self.now()
            record.refused = ""
            record.observe(reply, self.t0)
            return

    def _stream(self, record: Record) -> None:
        """Follow an LLM prediction's events to its end; a stream that breaks leaves it to the poller."""
        call = self._stub.StreamPrediction(P.StreamPredictionRequest(id=record.id), metadata=self._md,
                                           timeout=STREAM_TIMEOUT_S)
        self._calls.add(call)
        try:
            for event in call:
                kind = event.WhichOneof("kind")
                record.streamed_chunks += kind == "output"
                if kind == "completed":
                    record.observe(event.completed, self.t0)
        except grpc.RpcError as err:
            record.stream_error = f"{err.code().name}: {err.details()}"
        finally:
            record.streaming = False
            self._calls.discard(call)
            self._streams.release()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_EVERY_S):
            pending = [r for r in self.pending() if not r.streaming]
            if pending:
                self._poll_once(pending)

    def _poll_once(self, pending: list[Record]) -> None:
        """The newest page (as deep as the oldest pending prediction), then, on its own, each pending one
        the page did not hold."""
        oldest = min(r.created_s or 0.0 for r in pending)
        depth = sum(1 for r in self.records if r.created_s is not None and r.created_s >= oldest)
        try:
            page = self._stub.ListPredictions(P.ListPredictionsRequest(page_size=min(300, depth + 20)),
                                              metadata=self._md, timeout=CALL_TIMEOUT_S)
            found = {p.id: p for p in page.predictions}
        except grpc.RpcError:
            found = {}
        for record in pending:
            if record.id in found:
                record.observe(found[record.id], self.t0)
            elif time.monotonic() - record.last_get >= GET_EVERY_S:
                record.last_get = time.monotonic()
                self._get(record)

    def _get(self, record: Record) -> None:
        try:
            record.observe(self._stub.GetPrediction(P.GetPredictionRequest(id=record.id), metadata=self._md,
                                                    timeout=CALL_TIMEOUT_S), self.t0)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                record.not_found_since = record.not_found_since or time.monotonic()
                record.gone = time.monotonic() - record.not_found_since >= GONE_AFTER_S


# Faults: each does its harm and says what it did; one that cannot be done says why


def kill_agent(rig: Rig) -> dict[str, Any]:
    """``kill -9`` of the node agent on the worker node (the actor process below that node's raylet)."""
    pids = titled("_RayNodeAgent", rig.worker_raylet())
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return {"killed": pids} if pids else {"skipped": "no _RayNodeAgent process below the worker's raylet"}


def kill_controller(rig: Rig) -> dict[str, Any]:
    """``kill -9`` of the controller actor's process (on whichever node it is)."""
    pids = titled("_RayController", os.getpid())
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return {"killed": pids} if pids else {"skipped": "no _RayController process in the cluster"}


def kill_gateway(rig: Rig) -> dict[str, Any]:
    """``kill -9`` of the gateway process, then ``warmfleet up`` again (it finds the running controller)."""
    try:
        pid = json.loads((rig.home / "cluster.json").read_text())["pid"]
    except (OSError, ValueError, KeyError) as err:
        return {"skipped": f"no gateway recorded in cluster.json: {err!r}"}
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    out: dict[str, Any] = {"killed": [pid], "restart": gateway_up(rig)}
    if out["restart"]["rc"] != 0:  # one more try: the run means nothing without a gateway
        out["restart_again"] = gateway_up(rig)
    return out


def data_servers() -> dict[str, str]:
    """Every running agent's data server address, by agent name, asked of the agents over Ray."""
    import ray

    from scheduler.ray_adapter import AGENT_PREFIX

    found = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(AGENT_PREFIX):
            try:
                handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
                found[actor["name"]] = ray.get(handle.data_plane.remote(), timeout=5)[0]
            except Exception as err:  # noqa: BLE001 - an agent killed earlier answers nothing: skipped
                found[actor["name"]] = f"unreachable: {type(err).__name__}"
    return found


def break_streams(rig: Rig) -> dict[str, Any]:
    """Reset the TCP connections of every data stream (gateway router -> agent data server) with
    ``ss -K``: both processes live on, and the stream breaks as a dropped connection would."""
    servers = data_servers()
    killed: dict[str, int] = {}
    for name, address in servers.items():
        if address.startswith("unreachable"):
            continue
        done = subprocess.run(["ss", "-K", "-tnH", "dst", address], capture_output=True, text=True,
                              timeout=10, check=False)
        if done.returncode != 0:
            why = done.stderr.strip()
            return {"skipped": f"ss -K failed (needs root and a kernel with SOCK_DESTROY): {why}",
                    "servers": servers}
        killed[name] = len([line for line in done.stdout.splitlines() if line.strip()])
    out = {"servers": servers, "connections_reset": killed}
    if not any(killed.values()):
        out["skipped"] = "no established connection to any data server was found to reset"
    return out


def remove_node(rig: Rig) -> dict[str, Any]:
    """``cluster.remove_node`` of the worker node: its raylet and every process on it go."""
    started = time.monotonic()
    rig.cluster.remove_node(rig.worker_node)
    return {"removed": rig.worker_node.node_id, "remove_node_s": round(time.monotonic() - started, 2)}


FAULTS: dict[str, tuple[str, Callable[[Rig], dict[str, Any]]]] = {
    "agent": ("kill -9 node agent (worker node)", kill_agent),
    "controller": ("kill -9 controller", kill_controller),
    "gateway": ("kill -9 gateway, up again", kill_gateway),
    "stream": ("break data streams (ss -K)", break_streams),
    "node": ("remove worker node", remove_node),
}


def run_faults(rig: Rig, load: Load, names: list[str], warmup_s: float, spacing_s: float
               ) -> list[dict[str, Any]]:
    """Each fault at its time (or as soon as the one before it returned), under the load."""
    faults = []
    for k, name in enumerate(names):
        label, harm = FAULTS[name]
        time.sleep(max(0.0, load.t0 + warmup_s + k * spacing_s - time.time()))
        rig.note_processes()
        where = placement(rig, timeout_s=2.0)  # what the fault can hit: the instances, by node
        at = load.now()
        print(f"  {at:6.1f} s  fault: {label}", flush=True)
        try:
            detail = harm(rig)
        except Exception as err:  # noqa: BLE001 - the run goes on; the report says the fault failed
            detail = {"error": repr(err)}
        rig.note_processes()
        faults.append({"name": name, "label": label, "at_s": at, "done_s": load.now(),
                       "instances_before": where, **detail})
        print(f"          {json.dumps(detail)[:300]}", flush=True)
    return faults


# What became of the predictions


def reason(record: Record) -> str:
    """A failure's reason with its ids and numbers taken out, so that alike failures group together."""
    text = record.error or record.refused or record.status
    ids = r"chaos-[0-9a-f]+-\d+-\w+|[0-9a-f]{8}-(cpu|gpu\d+)|\b[0-9a-f]{16,}\b|\b[a-z2-7]{24}\b"
    text = re.sub(ids, "<id>", text)
    return f"{record.kind}: " + re.sub(r"\d+(\.\d+)?", "N", text)[:160]


def classify(records: list[Record]) -> dict[str, Any]:
    """Accepted, succeeded, re-run, failed (by reason), lost (gone, or no terminal status: stuck), never
    accepted, and succeeded with a wrong output."""
    accepted = [r for r in records if r.accepted]
    failed = [r for r in accepted if r.status in FAILED]
    infra = [r for r in failed if r.error_code != "InvalidInput"]  # every input here is valid
    return {
        "created": len(records), "accepted": len(accepted),
        "succeeded": sum(r.status == "succeeded" for r in accepted),
        "rerun": sum(r.attempts > 1 for r in accepted),
        "failed": len(failed), "failed_infra": len(infra),
        "failed_by_reason": dict(Counter(reason(r) for r in failed).most_common()),
        "lost_gone": sum(r.gone and not r.done for r in accepted),
        "stuck": sum(not r.done and not r.gone for r in accepted),
        "never_accepted": sum(not r.accepted for r in records),
        "never_accepted_by_reason": dict(Counter(reason(r) for r in records if not r.accepted).most_common()),
        "wrong_output": sum(r.output_ok is False for r in accepted),
        "stream_broke": sum(bool(r.stream_error) for r in accepted),
    }


def completion_bins(records: list[Record], end_s: float) -> dict[str, list[int]]:
    """Per 1 s bin from the load's start: predictions that succeeded, that failed, and that were accepted."""
    bins = {"succeeded": [0] * (int(end_s) + 1), "failed": [0] * (int(end_s) + 1),
            "accepted": [0] * (int(end_s) + 1)}
    for r in records:
        if r.completed_s is not None and 0 <= r.completed_s <= end_s:
            bins["succeeded" if r.status == "succeeded" else "failed"][int(r.completed_s)] += 1
        if r.accepted_s is not None and 0 <= r.accepted_s <= end_s:
            bins["accepted"][int(r.accepted_s)] += 1
    return bins


def capacity_back(done: list[int], at_s: float, until_s: float, healthy: float) -> dict[str, Any]:
    """How soon the completion rate came back after a fault, for good: the seconds from the fault to the
    first bin b from which, up to ``until_s`` (the next fault, or the end of the load), the mean of every
    last ``CAPACITY_SPAN_S`` bins (none before b) is at least ``CAPACITY_FRACTION`` of the reference; None
    when there is no such b. The reference is the median of the ``CAPACITY_BEFORE_S`` bins before the
    fault, but never above the warm-up's (``healthy``: the load is steady, so more is held-up predictions
    ending at once), and the warm-up's when it is below the fraction of it (the cluster had not come back
    from the fault before)."""
    first, last = int(at_s), int(until_s) - 1
    rate = statistics.median(done[max(0, first - CAPACITY_BEFORE_S):first] or [0])
    recovered = rate >= CAPACITY_FRACTION * healthy
    reference, of = (min(rate, healthy), "before") if recovered else (healthy, "warm-up")

    floor = CAPACITY_FRACTION * reference

    def holds(b: int) -> bool:
        return all(statistics.mean(done[max(b, c - CAPACITY_SPAN_S + 1):c + 1]) >= floor
                   for c in range(b, last + 1))

    back = next((b for b in range(first, last + 1) if holds(b)), None)
    return {"rate_before_per_s": rate, "reference_per_s": reference, "reference": of,
            "back_s": None if back is None else round(max(0.0, back - at_s), 2)}


def in_window(records: list[Record], start: float, end: float) -> list[Record]:
    return [r for r in records if r.created_s is not None and start <= r.created_s < end]


def in_flight(records: list[Record], at: float) -> list[Record]:
    """Accepted before ``at`` and not ended by then."""
    return [r for r in records if r.accepted_s is not None and r.accepted_s <= at
            and (r.completed_s is None or r.completed_s > at)]


def fault_tables(records: list[Record], faults: list[dict[str, Any]], load_s: float,
                 bins: dict[str, list[int]], samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per window: before the first fault, then from each fault to the next (the last to the end,
    with the creates that were retried past the planned end of the load); by the predictions' created
    time. Each fault's row also has what was in flight at it, and how soon capacity came back."""
    starts = [("before faults", "warm-up (no fault)", 0.0)]
    starts += [(f["name"], f["label"], f["at_s"]) for f in faults]
    warm = bins["succeeded"][2:int(starts[1][2]) if len(starts) > 1 else None]  # past the first 2 s ramp
    healthy = statistics.median(warm or [0])
    rows = []
    for k, (name, label, start) in enumerate(starts):
        end = starts[k + 1][2] if k + 1 < len(starts) else float("inf")
        row: dict[str, Any] = {"window": name, "label": label, "from_s": start, "to_s": min(end, load_s),
                               **classify(in_window(records, start, end)),
                               # Other work on the machine stalls every process of the run alike.
                               "machine_loadavg_1m_max": max((x["loadavg_1m"] for x in samples
                                                              if start <= x["t_s"] < end), default=None)}
        if k:
            row["in_flight_at_fault"] = classify(in_flight(records, start))
            row["capacity"] = capacity_back(bins["succeeded"], start, min(end, load_s), healthy)
            row["skipped"] = faults[k - 1].get("skipped", "")
        rows.append(row)
    return rows


def goals(totals: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals, met or not, and two checks of the bench's own (outputs, creates answered)."""
    backs = {r["window"]: r["capacity"]["back_s"] for r in rows if "capacity" in r and not r["skipped"]}
    slow = {w: b for w, b in backs.items() if b is None or b > GOAL_BACK_S}

    def goal(text: str, value: Any, met: bool) -> dict[str, Any]:
        return {"goal": text, "value": value, "met": met}

    return {
        "lost": goal("0 lost (accepted, then not found)", totals["lost_gone"], totals["lost_gone"] == 0),
        "stuck": goal("0 stuck (accepted, no terminal status by the end)", totals["stuck"],
                      totals["stuck"] == 0),
        "failed_infra": goal("0 failed for infrastructure reasons", totals["failed_infra"],
                             totals["failed_infra"] == 0),
        "capacity_back": goal(f"capacity back within {GOAL_BACK_S:.0f} s of each fault", backs, not slow),
        "check_outputs": goal("every succeeded prediction has the right output", totals["wrong_output"],
                              totals["wrong_output"] == 0),
        "check_accepted": goal("every create answered (within the bench's retries)", totals["never_accepted"],
                               totals["never_accepted"] == 0),
    }


def print_table(rows: list[dict[str, Any]], totals: dict[str, Any], verdicts: dict[str, Any]) -> None:
    head = (f"{'window':<14} {'at s':>6} {'acc':>5} {'ok':>5} {'re-run':>6} {'failed':>6} {'lost':>4} "
            f"{'stuck':>5} {'no-acc':>6} {'wrong':>5} {'in flight':>9} {'back s':>7} {'load':>5}")
    print("\n" + head)
    for r in [*rows, {"window": "all", "from_s": None, **totals}]:
        flight = r.get("in_flight_at_fault", {})
        back = r.get("capacity", {}).get("back_s", "")
        flight_text = f"{flight['accepted']}/{flight['succeeded']}ok" if flight else ""
        at = f"{r['from_s']:6.1f}" if r["from_s"] is not None else " " * 6
        load = r.get("machine_loadavg_1m_max")
        print(f"{r['window']:<14} {at} {r['accepted']:>5} {r['succeeded']:>5} {r['rerun']:>6} "
              f"{r['failed']:>6} {r['lost_gone']:>4} {r['stuck']:>5} {r['never_accepted']:>6} "
              f"{r['wrong_output']:>5} {flight_text:>9} {'n/a' if back is None else back:>7} "
              f"{'' if load is None else f'{load:.1f}':>5}")
        for why, n in {**r["failed_by_reason"], **r["never_accepted_by_reason"]}.items():
            print(f"{'':<16}{n:>5} x {why}")
    for name, g in verdicts.items():
        print(f"goal {name}: {g['goal']}: {g['value']} -> {'MET' if g['met'] else 'NOT MET'}")


def plot(bins: dict[str, list[int]], faults: list[dict[str, Any]], rows: list[dict[str, Any]],
         verdicts: dict[str, Any], samples: list[dict[str, Any]], path: Path) -> None:
    """Completions per second over time, the faults as labelled vertical lines, the machine's CPU below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 5.2))
    xs = list(range(len(bins["succeeded"])))
    # The scale of the steady rate: a burst (held-up predictions ending at once) is cut there and labelled.
    top = max(5.0, 2 * statistics.median([n for n in bins["accepted"] if n] or [1]))

    def cut(kind: str) -> list[float]:
        return [min(n, top) for n in bins[kind]]

    ax.step(xs, cut("accepted"), where="post", color="silver", lw=1, label="accepted / s")
    ax.step(xs, cut("succeeded"), where="post", color="tab:blue", lw=1.6, label="succeeded / s")
    ax.bar(xs, cut("failed"), width=1.0, align="edge", color="tab:red", alpha=0.7, label="failed / s")
    labels = (("succeeded", "tab:blue", 0.86), ("failed", "tab:red", 0.96), ("accepted", "grey", 0.76))
    for kind, colour, y in labels:
        for x, n in enumerate(bins[kind]):
            if n > top:
                ax.text(x + 0.5, top * y, f"{n} {kind}", color=colour, va="top", fontsize="x-small",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    for fault, row in zip(faults, rows[1:]):
        ax.axvline(fault["at_s"], color="black" if not fault.get("skipped") else "grey", ls="--", lw=1)
        back = row["capacity"]["back_s"]
        note = "skipped" if fault.get("skipped") else ("not back" if back is None else f"back {back:.0f} s")
        ax.text(fault["at_s"] + 0.3, top * 1.02, f"{fault['label']}\n({note})", rotation=90, va="bottom",
                fontsize="x-small")
    ax.set(xlabel="seconds since the load started", ylabel="predictions per second (1 s bins)",
           ylim=(0, top * 1.8), xlim=(0, len(xs)))
    ax.legend(loc="upper right", fontsize="small")
    cpu = ax.twinx()
    cpu.plot([x["t_s"] for x in samples], [100 * x["machine_cpu_busy"] for x in samples], color="tab:green",
             lw=0.8, alpha=0.6)
    cpu.set(ylim=(0, 180), yticks=[0, 50, 100], ylabel="machine CPU busy %")
    cpu.yaxis.label.set_color("tab:green")
    verdict = "; ".join(f"{n}: {'met' if g['met'] else 'NOT met'}" for n, g in verdicts.items()
                        if not n.startswith("check"))
    ax.set_title(f"warmfleet chaos: completions under faults ({verdict})", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_excerpt(path: Path, most: int = 400) -> list[str]:
    """The gateway log's warnings and errors (both gateways of the run write to it)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    keep = [line[:400] for line in lines if re.search(r"WARNING|ERROR|CRITICAL|Traceback|Error:", line)]
    return keep if len(keep) <= most else keep[:most // 2] + ["..."] + keep[-most // 2:]


# The scenario


def warm_up(rig: Rig, timeout_s: float = 240.0) -> dict[str, float]:
    """One prediction of each kind until it succeeds (the instances may still be loading); seconds each."""
    rng, took = random.Random(0), {}
    with grpc.insecure_channel(rig.target, options=CHANNEL_OPTIONS) as channel:
        stub, md = predictions_pb2_grpc.PredictionsStub(channel), (("authorization", f"Bearer {rig.token}"),)
        deadline = time.monotonic() + timeout_s
        for kind, model in KINDS.items():
            started, last = time.monotonic(), "no answer"
            for n in range(10_000):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{model} does not answer after {timeout_s:.0f} s: {last}")
                request, _ = make_request(kind, n, rng)
                request.id, request.wait_s = f"chaos-warmup-{kind}-{n}", 30.0
                try:
                    reply = stub.CreatePrediction(request, metadata=md, timeout=40)
                    if reply.status == T.STATUS_SUCCEEDED:
                        break
                    last = f"{T.Status.Name(reply.status)}: {reply.error}"
                except grpc.RpcError as err:
                    last = f"{err.code().name}: {err.details()}"
                time.sleep(1.0)
            took[kind] = round(time.monotonic() - started, 2)
    return took


def node_of(rig: Rig, agent_id: str) -> str:
    """"head" or "worker" for an agent id (its Ray node id's first 8 digits, then its slot)."""
    nodes = {rig.cluster.head_node.node_id[:8]: "head", rig.worker_node.node_id[:8]: "worker"}
    return nodes.get(agent_id.split("-")[0], agent_id)


def placement(rig: Rig, timeout_s: float = 10.0) -> list[str] | str:
    """Each instance as "model@node:state:in_flight", or why the cluster could not say."""
    from warmfleet.v1 import cluster_pb2, cluster_pb2_grpc

    try:
        with grpc.insecure_channel(rig.target) as channel:
            found = cluster_pb2_grpc.ClusterStub(channel).ListInstances(
                cluster_pb2.ListInstancesRequest(), metadata=(("authorization", f"Bearer {rig.token}"),),
                timeout=timeout_s).instances
    except grpc.RpcError as err:
        return f"{err.code().name}: {err.details()}"[:200]
    return sorted(f"{i.model.rsplit('/', 1)[-1]}@{node_of(rig, i.node_id)}:{i.state}:{i.in_flight}"
                  for i in found)


class Sampler:
    """The instances as the cluster lists them, every second of the load: where the capacity was."""

    def __init__(self, rig: Rig, load: Load) -> None:
        self._rig, self._load = rig, load
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(15)
        return self.samples

    def _run(self) -> None:
        busy = _cpu_busy()
        while not self._stop.wait(1.0):
            at, before, busy = self._load.now(), busy, _cpu_busy()
            cpu = (busy[0] - before[0]) / max(1, busy[1] - before[1])
            # The machine's load too: other work on a small machine stalls every process of the cluster.
            self.samples.append({"t_s": at, "machine_cpu_busy": round(cpu, 2),
                                 "loadavg_1m": os.getloadavg()[0],
                                 "instances": placement(self._rig, timeout_s=2.0)})


def _cpu_busy() -> tuple[int, int]:
    """The machine's busy and total CPU ticks so far (``/proc/stat``)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def run(args: argparse.Namespace, home: Path, records: list[Record],
        requests: list[P.CreatePredictionRequest], load_s: float) -> dict[str, Any]:
    """Start it all, load it, do the faults, wait for the ends; always bring it all down."""
    out: dict[str, Any] = {}
    started = time.monotonic()
    rig = start_rig(home)
    try:
        out["gateway_up"] = gateway_up(rig)
        if out["gateway_up"]["rc"] != 0:
            raise RuntimeError(f"warmfleet up failed: {out['gateway_up']['output']}")
        out["warm_up_s"] = warm_up(rig)
        out["setup_s"] = round(time.monotonic() - started, 2)
        out["placement_before"] = placement(rig)
        print(f"cluster at {rig.cluster.address}, gateway {rig.target} (pid {rig.gateway_pids[0]}), "
              f"set up in {out['setup_s']} s; instances: {out['placement_before']}", flush=True)
        load = Load(rig, records, requests, args.workers, load_s)
        load.start()
        sampler = Sampler(rig, load)
        sampler.start()
        out["t0"] = load.t0
        try:
            out["faults"] = run_faults(rig, load, args.faults, args.warmup, args.spacing)
            out["waited_after_load_s"] = load.settle(args.final_wait)
            out["ended_s"] = load.now()
        finally:
            load.stop()
            out["instances_per_s"] = sampler.stop()
        out["placement_after"] = placement(rig)
    finally:
        out["gateway_pids"] = list(rig.gateway_pids)
        out["teardown"] = teardown(rig)
        out["gateway_log"] = log_excerpt(rig.log_path)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="chaos: mixed predictions while the cluster's processes die")
    parser.add_argument("--predictions", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="creates per second; 0: --predictions spread over the planned load time")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds of load before the first fault")
    parser.add_argument("--spacing", type=float, default=12.0, help="seconds between two faults")
    parser.add_argument("--tail", type=float, default=20.0, help="seconds of load after the last fault")
    parser.add_argument("--faults", type=lambda s: [f for f in s.split(",") if f], default=list(FAULTS),
                        help=f"comma-separated, in order, from: {','.join(FAULTS)}")
    parser.add_argument("--workers", type=int, default=8, help="threads creating predictions")
    parser.add_argument("--final-wait", type=float, default=120.0,
                        help="most seconds to wait after the load for every accepted prediction to end")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--keep-home", action="store_true",
                        help="keep the temporary home (its logs) and say where")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    unknown = [f for f in args.faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    return args


def settings_section(args: argparse.Namespace, load_s: float, rate: float) -> dict[str, Any]:
    return {
        "predictions": args.predictions, "rate_per_s": round(rate, 2), "planned_load_s": load_s,
        "warmup_s": args.warmup, "spacing_s": args.spacing, "tail_s": args.tail, "faults": args.faults,
        "workers": args.workers, "final_wait_s": args.final_wait, "seed": args.seed,
        "mix": MIX, "models": KINDS, "models_served": "the built-in tiny models (warmfleet up's defaults)",
        "inputs": {"echo_delay_ms": ECHO_DELAY_MS, "llm_tokens": LLM_TOKENS, "llm_follow": "StreamPrediction",
                   "image_size": IMAGE_SIZE, "image_steps": IMAGE_STEPS},
        "cluster": {"nodes": ["head", "worker"], "per_node": NODE_ARGS,
                    "gateway": "warmfleet up, WARMFLEET_RAY_ADDRESS: the cluster, a fixed gRPC port"},
        "retries": {"transient_codes": sorted(TRANSIENT), "every_s": RETRY_EVERY_S,
                    "give_up_s": CREATE_GIVE_UP_S},
        "capacity": {"bin_s": 1, "before_s": CAPACITY_BEFORE_S, "span_s": CAPACITY_SPAN_S,
                     "fraction": CAPACITY_FRACTION, "counts": "succeeded predictions by completed_at"},
        "windows": "by each prediction's first create call: from one fault to the next",
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = Report("chaos", argv)
    load_s = args.warmup + max(0, len(args.faults) - 1) * args.spacing + args.tail
    rate = args.rate or args.predictions / load_s
    records, requests = plan(args.predictions, rate, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="warmfleet-chaos-"))
    try:
        result = run(args, tmp / "home", records, requests, load_s)
    finally:
        if args.keep_home:
            print(f"kept the home: {tmp / 'home'}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    end_s = result.get("ended_s", load_s)
    bins = completion_bins(records, end_s)
    rows = fault_tables(records, result.get("faults", []), load_s, bins, result.get("instances_per_s", []))
    totals = classify(records)
    verdicts = goals(totals, rows)
    print_table(rows, totals, verdicts)
    report.write(args.out, settings={**settings_section(args, load_s, rate),
                                     "attempts": "Prediction.attempt (2 once re-run)"},
                 run={k: v for k, v in result.items() if k not in ("faults", "gateway_log")},
                 faults=result.get("faults", []), windows=rows, totals=totals, goals=verdicts,
                 bins_per_s=bins, gateway_log=result.get("gateway_log", []),
                 predictions=[r.to_json() for r in records])
    plot(bins, result.get("faults", []), rows, verdicts, result.get("instances_per_s", []),
         args.out / "chaos.png")
    print(f"wrote {args.out / 'chaos.json'} and {args.out / 'chaos.png'}")


if __name__ == "__main__":
    main()
