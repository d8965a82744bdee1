"""`warmfleet top`'s frame, rendered from snapshots without a cluster, and the reading of the gateway's
Prometheus text into queue figures."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime

import pytest
from rich.console import Console

from warmfleet.client import Client, Cluster, Instance, Node, PermissionDeniedError
from warmfleet.cli.top import (
    QueueFigures,
    Snapshot,
    instances_table,
    nodes_table,
    parse_queues,
    read_queues,
    render,
    take_snapshot,
)

GIB = 2**30
NOW = datetime(2026, 3, 14, 15, 9, 26)


def node(**figures) -> Node:
    """A Node with the given figures; fields this client version lacks are left out, others None."""
    names = {f.name for f in dataclasses.fields(Node)}
    return Node(**{name: figures.get(name) for name in names})


GPU_NODE = node(id="host1-gpu0", ray_node_id="r1", address="10.0.0.1", accelerator="NVIDIA H100 80GB HBM3",
                memory_total_bytes=80 * GIB, memory_used_bytes=40 * GIB, utilization_percent=70.0,
                metrics_note="", instance_count=2, hardware="gpu-nvidia-h100-80gb", temperature_c=41.0,
                power_w=312.0)
CPU_NODE = node(id="host2-cpu", ray_node_id="r2", address="10.0.0.2", accelerator="cpu", memory_total_bytes=0,
                memory_used_bytes=0, utilization_percent=None,
                metrics_note="cpu node: no accelerator assigned", instance_count=1, hardware="cpu")
INSTANCES = [
    Instance("acme-echo-1", "acme/echo", "0123456789abcdef", GPU_NODE.id, "idle", 0, 8),
    Instance("acme-echo-2", "acme/echo", "0123456789abcdef", GPU_NODE.id, "processing", 3, 8),
    Instance("acme-llm-1", "acme/llm", "fedcba9876543210", CPU_NODE.id, "starting", 0, 1),
]
QUEUES = {"acme/echo": QueueFigures("acme/echo", queued=2, in_flight=3, ended={"succeeded": 10, "failed": 1},
                                    latency_sum_s=0.5, latency_count=10)}

EXPOSITION = """\
# HELP warmfleet_predictions_total Predictions ended, by terminal status.
# TYPE warmfleet_predictions_total counter
warmfleet_predictions_total{model="acme/echo",status="succeeded"} 10.0
warmfleet_predictions_total{model="acme/echo",status="failed"} 1.0
warmfleet_predictions_total{model="acme/llm",status="succeeded"} 0.0
# HELP warmfleet_prediction_latency_seconds Prediction total time (seconds).
# TYPE warmfleet_prediction_latency_seconds histogram
warmfleet_prediction_latency_seconds_bucket{le="0.1",model="acme/echo"} 10.0
warmfleet_prediction_latency_seconds_bucket{le="+Inf",model="acme/echo"} 11.0
warmfleet_prediction_latency_seconds_count{model="acme/echo"} 11.0
warmfleet_prediction_latency_seconds_sum{model="acme/echo"} 0.55
# HELP warmfleet_queue_depth Predictions waiting in the router's queue.
# TYPE warmfleet_queue_depth gauge
warmfleet_queue_depth{model="acme/echo"} 4.0
warmfleet_queue_depth{model="acme/llm"} 7.0
# HELP warmfleet_predictions_in_flight Predictions dispatched to an instance and not ended.
# TYPE warmfleet_predictions_in_flight gauge
warmfleet_predictions_in_flight{model="acme/echo"} 2.0
warmfleet_predictions_in_flight{model="acme/llm"} 1.0
# HELP warmfleet_node_info A node agent and the hardware it runs on (always 1).
# TYPE warmfleet_node_info gauge
warmfleet_node_info{hardware="cpu",node="host2-cpu"} 1.0
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 57.0
"""


def text_of(renderable, width: int = 120) -> str:
    console = Console(record=True, width=width)
    console.print(renderable)
    return console.export_text()


def cells(text: str, key: str, after: str = "") -> list[str]:
    """The cells of the first table row whose first cell is ``key``, below the line ``after``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == after) if after else 0
    for line in lines[start:]:
        parts = [p.strip() for p in line.strip().strip("│").split("│")]
        if parts[0] == key:
            return parts
    raise AssertionError(f"no row {key!r} below {after!r} in:\n{text}")


def test_a_frame_shows_the_nodes_gpus_instances_and_queues():
    text = text_of(render(Snapshot("10.0.0.9:50051", NOW, [GPU_NODE, CPU_NODE], INSTANCES, QUEUES)))

    assert "gateway 10.0.0.9:50051" in text and "2026-03-14 15:09:26" in text
    assert "nodes 2 (1 GPU)" in text
    assert "instances 3: 1 idle, 1 processing, 1 starting" in text
    assert "in flight 3" in text and "queued 2" in text
    gpu = cells(text, "host1-gpu0", after="nodes")
    assert gpu[1:4] == ["NVIDIA H100 80GB HBM3", "█████░░░░░ 40.0/80.0 GiB", "███████░░░ 70%"]
    assert gpu[-1] == "2"
    assert cells(text, "host2-cpu", after="nodes")[2:4] == ["-", "-"]
    assert "host2-cpu: cpu node: no accelerator assigned" in text
    assert cells(text, "acme/echo", after="instances by model")[1:] == ["2", "1 idle, 1 processing", "3/16"]
    assert cells(text, "acme/llm", after="instances by model")[1:] == ["1", "1 starting", "0/1"]
    assert cells(text, "acme/echo", after="queues")[1:] == ["2", "3", "10", "1", "0", "0", "50.0 ms"]


def test_a_gpu_shows_its_temperature_and_power():
    text = text_of(render(Snapshot("t", NOW, [GPU_NODE, CPU_NODE], INSTANCES, QUEUES)))
    assert cells(text, "host1-gpu0", after="nodes")[4] == "41°C 312 W"
    assert cells(text, "host2-cpu", after="nodes")[4] == "-"


def test_without_metrics_the_frame_says_so_and_still_shows_the_fleet():
    note = "metrics not available (http://x/metrics: refused)"
    snapshot = Snapshot("t", NOW, [GPU_NODE], INSTANCES[:1], None, note)
    text = text_of(render(snapshot))
    assert "queues: metrics not available (http://x/metrics: refused)" in text
    assert "queued -" in text
    assert cells(text, "acme/echo", after="instances by model")[1:] == ["1", "1 idle", "0/8"]


def test_an_error_is_shown_in_the_header():
    text = text_of(render(Snapshot("t", NOW, error="no gateway at t: is `warmfleet up` running?")))
    assert "error: no gateway at t: is `warmfleet up` running?" in text
    assert "nodes 0 (0 GPU)" in text and "instances 0: none" in text


def test_the_plain_tables_show_every_figure():
    nodes = text_of(nodes_table([GPU_NODE, CPU_NODE]), width=160)
    gpu = cells(nodes, "host1-gpu0")
    assert gpu[2:4] == ["40.0 / 80.0 GiB", "70%"]
    assert cells(nodes, "host2-cpu")[-1] == "cpu node: no accelerator assigned"
    instances = text_of(instances_table(INSTANCES), width=160)
    assert cells(instances, "acme-echo-2")[1:] == [
        "acme/echo", "0123456789ab", "host1-gpu0", "processing", "3/8"]


def test_the_metrics_text_becomes_queue_figures_per_model():
    queues = parse_queues(EXPOSITION)
    assert set(queues) == {"acme/echo", "acme/llm"}  # process_* and node_info have no model label
    echo, llm = queues["acme/echo"], queues["acme/llm"]
    assert (echo.queued, echo.in_flight, echo.ended) == (4, 2, {"succeeded": 10, "failed": 1})
    assert echo.mean_latency_s == pytest.approx(0.05)
    assert (llm.queued, llm.in_flight, llm.ended, llm.mean_latency_s) == (7, 1, {"succeeded": 0}, None)


def test_unreadable_metrics_give_no_figures_and_a_reason():
    no_url = "metrics not available (no metrics URL known for this gateway)"
    assert read_queues("", timeout_s=1.0) == (None, no_url)
    with pytest.raises(ValueError):
        parse_queues("warmfleet_queue_depth{model=\"acme/echo\" 4\n")


class FakeCluster(Cluster):
    """Answers nodes and instances from lists, or fails."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def nodes(self) -> list[Node]:
        if self.error:
            raise self.error
        return [GPU_NODE, CPU_NODE]

    def instances(self) -> list[Instance]:
        return INSTANCES


class FakeClient(Client):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    @property
    def target(self) -> str:
        return "10.0.0.9:50051"


def test_a_snapshot_keeps_what_the_gateway_said_or_its_error():
    ok = take_snapshot(FakeClient(FakeCluster()), "", NOW)
    assert (ok.target, ok.taken_at, ok.nodes, ok.instances, ok.error) == (
        "10.0.0.9:50051", NOW, [GPU_NODE, CPU_NODE], INSTANCES, "")
    assert ok.queues is None and "no metrics URL" in ok.queues_note
    error = PermissionDeniedError("PERMISSION_DENIED", "needs admin")
    denied = take_snapshot(FakeClient(FakeCluster(error)), "", NOW)
    assert (denied.nodes, denied.instances, denied.error) == ([], [], "needs admin")
    assert re.search(r"error: needs admin", text_of(render(denied)))
