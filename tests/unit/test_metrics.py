"""The gateway's Prometheus metrics: what the exposition says after some predictions, and the cluster
gauges from a fake controller (cached, and left out when the controller fails)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client.parser import text_string_to_metric_families

from gateway.http import build_app
from gateway.metrics import GatewayMetrics, PredictionMetrics
from scheduler.ports import ControllerClient, RoutingTable
from warmfleet.domain import InstanceInfo, Metrics, RouteSpec, NodeInfo, Prediction, Status
from warmfleet.cluster_state import read_state, write_state
from warmfleet.settings import Settings

GPU_NODE = NodeInfo("host1-gpu3", "ray1", "10.0.0.1", accelerator="NVIDIA H100 80GB HBM3",
                    memory_total_bytes=80 * 2**30, memory_used_bytes=20 * 2**30, utilization_percent=75.0,
                    hardware="gpu-nvidia-h100-80gb", gpu_index=3, gpu_uuid="GPU-5d2c0f0e-h100",
                    temperature_c=61.0, power_w=412.5)
T4_NODE = NodeInfo("host3-gpu0", "ray3", "10.0.0.3", accelerator="Tesla T4", memory_total_bytes=15 * 2**30,
                   memory_used_bytes=2**30, hardware="gpu-nvidia-t4-16gb", gpu_index=0, gpu_uuid="GPU-t4",
                   utilization_percent=0.0)  # a board that reports neither temperature nor power
LOST_NODE = NodeInfo("host4-gpu1", "ray4", "10.0.0.4", accelerator="gpu", hardware="gpu-unknown", gpu_index=1,
                     metrics_note="NVML read failed: NVMLError_GpuIsLost: GPU is lost")
CPU_NODE = NodeInfo("host2-cpu", "ray2", "10.0.0.2", memory_total_bytes=64 * 2**30,
                    memory_used_bytes=8 * 2**30, metrics_note="cpu node: no accelerator assigned")
INSTANCES = [
    InstanceInfo("i1", "acme/echo", "v1", GPU_NODE.id, "idle", 8),
    InstanceInfo("i2", "acme/echo", "v1", GPU_NODE.id, "processing", 8),
    InstanceInfo("i3", "acme/echo", "v1", CPU_NODE.id, "processing", 8),
    InstanceInfo("i4", "acme/llm", "v2", CPU_NODE.id, "starting", 1),
]


class FakeController(ControllerClient):
    """Answers nodes and instances from lists; counts the calls; can fail or hang."""

    def __init__(self, error: BaseException | None = None, hang: bool = False) -> None:
        self.calls = 0
        self.error = error
        self.hang = hang

    async def models(self) -> list[RouteSpec]:
        return []

    async def routing_table(self, since_revision: int, max_wait_s: float) -> RoutingTable:
        return RoutingTable(0)

    async def nodes(self) -> list[NodeInfo]:
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.error:
            raise self.error
        return [GPU_NODE, CPU_NODE, T4_NODE, LOST_NODE]

    async def instances(self) -> list[InstanceInfo]:
        return INSTANCES


class FakeQueues:
    def __init__(self, lengths: dict[str, int]) -> None:
        self.lengths = lengths

    def queue_length(self, model: str) -> int:
        return self.lengths.get(model, 0)


def prediction(model: str, status: Status = Status.STARTING, **metrics) -> Prediction:
    return Prediction(id="p", model=model, version="v", input={}, owner="o", created_at=0.0, status=status,
                      metrics=Metrics(**metrics))


async def scrape(metrics: GatewayMetrics) -> dict[tuple[str, frozenset], float]:
    """Every sample of the exposition, by (sample name, labels)."""
    body, content_type = await metrics.exposition()
    assert content_type.startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def at(samples, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples) -> set[str]:
    return {name for name, _ in samples}


async def test_ended_predictions_move_the_counters_and_land_in_the_right_buckets():
    metrics = GatewayMetrics(FakeController(), FakeQueues({}))
    tally = metrics.predictions
    for model in ("acme/llm", "acme/llm", "acme/llm", "acme/sd"):
        tally.observe_created(prediction(model))
    tally.observe_finished(prediction("acme/llm", Status.SUCCEEDED, total_time_s=0.3, queue_time_s=0.004,
                                      predict_time_s=0.29, time_to_first_token_s=0.05, output_token_count=7))
    tally.observe_finished(prediction("acme/llm", Status.SUCCEEDED, total_time_s=700.0, queue_time_s=1.5,
                                      predict_time_s=698.0, time_to_first_token_s=0.02, output_token_count=3))
    tally.observe_finished(prediction("acme/llm", Status.FAILED, total_time_s=0.02, queue_time_s=0.02))
    tally.observe_finished(prediction("acme/sd", Status.CANCELED, total_time_s=0.01, image_count=None))
    s = await scrape(metrics)

    assert at(s, "warmfleet_prediction_created_total", model="acme/llm") == 3
    assert at(s, "warmfleet_prediction_created_total", model="acme/sd") == 1
    assert at(s, "warmfleet_predictions_total", model="acme/llm", status="succeeded") == 2
    assert at(s, "warmfleet_predictions_total", model="acme/llm", status="failed") == 1
    assert at(s, "warmfleet_predictions_total", model="acme/llm", status="canceled") == 0  # present from 0
    assert at(s, "warmfleet_predictions_total", model="acme/sd", status="canceled") == 1
    latency = "warmfleet_prediction_latency_seconds"
    assert at(s, f"{latency}_count", model="acme/llm") == 3
    assert at(s, f"{latency}_sum", model="acme/llm") == pytest.approx(700.32)
    # Cumulative buckets, upper bounds inclusive: 0.02 is in le=0.025, 0.3 in le=0.5, 700 only in +Inf.
    assert at(s, f"{latency}_bucket", model="acme/llm", le="0.01") == 0
    assert at(s, f"{latency}_bucket", model="acme/llm", le="0.025") == 1
    assert at(s, f"{latency}_bucket", model="acme/llm", le="0.25") == 1
    assert at(s, f"{latency}_bucket", model="acme/llm", le="0.5") == 2
    assert at(s, f"{latency}_bucket", model="acme/llm", le="600.0") == 2
    assert at(s, f"{latency}_bucket", model="acme/llm", le="+Inf") == 3
    assert at(s, f"{latency}_bucket", model="acme/sd", le="0.01") == 1  # the bound itself is inside
    queue = "warmfleet_prediction_queue_seconds"
    assert at(s, f"{queue}_bucket", model="acme/llm", le="0.005") == 1
    assert at(s, f"{queue}_bucket", model="acme/llm", le="0.025") == 2
    assert at(s, f"{queue}_count", model="acme/llm") == 3
    assert at(s, f"{queue}_count", model="acme/sd") == 0  # canceled while queued: it never started
    assert at(s, "warmfleet_prediction_compute_seconds_count", model="acme/llm") == 2  # the failed one had none
    assert at(s, "warmfleet_time_to_first_token_seconds_bucket", model="acme/llm", le="0.025") == 1
    assert at(s, "warmfleet_time_to_first_token_seconds_bucket", model="acme/llm", le="0.05") == 2
    assert at(s, "warmfleet_output_tokens_total", model="acme/llm") == 10
    assert at(s, "warmfleet_images_total", model="acme/sd") == 0


async def test_images_are_counted_and_a_negative_queue_time_counts_as_zero():
    tally = PredictionMetrics()
    tally.observe_created(prediction("acme/sd"))
    # Queue time spans the gateway's and the node's clocks, which may disagree by a few milliseconds.
    tally.observe_finished(prediction("acme/sd", Status.SUCCEEDED, queue_time_s=-0.003, image_count=4))
    s = {(x.name, frozenset(x.labels.items())): x.value for f in tally.collect() for x in f.samples}
    assert at(s, "warmfleet_prediction_queue_seconds_bucket", model="acme/sd", le="0.005") == 1
    assert at(s, "warmfleet_prediction_queue_seconds_sum", model="acme/sd") == 0.0
    assert at(s, "warmfleet_images_total", model="acme/sd") == 4


async def test_queue_depth_comes_from_the_router_and_in_flight_is_the_rest_of_what_is_active():
    queues = FakeQueues({"acme/llm": 2})
    metrics = GatewayMetrics(FakeController(), queues)
    for _ in range(5):
        metrics.predictions.observe_created(prediction("acme/llm"))
    metrics.predictions.observe_finished(prediction("acme/llm", Status.SUCCEEDED))
    s = await scrape(metrics)
    assert at(s, "warmfleet_queue_depth", model="acme/llm") == 2
    assert at(s, "warmfleet_predictions_in_flight", model="acme/llm") == 2  # 5 created - 1 ended - 2 queued
    queues.lengths["acme/llm"] = 0
    s = await scrape(metrics)
    assert at(s, "warmfleet_queue_depth", model="acme/llm") == 0
    assert at(s, "warmfleet_predictions_in_flight", model="acme/llm") == 4


async def test_cluster_gauges_show_instances_by_state_and_each_gpu():
    s = await scrape(GatewayMetrics(FakeController()))
    assert at(s, "warmfleet_instances", model="acme/echo", state="processing") == 2
    assert at(s, "warmfleet_instances", model="acme/echo", state="idle") == 1
    assert at(s, "warmfleet_instances", model="acme/llm", state="starting") == 1
    assert at(s, "warmfleet_node_info", node="host1-gpu3", hardware="gpu-nvidia-h100-80gb") == 1
    assert at(s, "warmfleet_node_info", node="host2-cpu", hardware="cpu") == 1
    assert at(s, "warmfleet_node_info", node="host4-gpu1", hardware="gpu-unknown") == 1
    gpu = {"node": "host1-gpu3", "gpu": "3"}  # labelled by the GPU's NVML index
    assert at(s, "warmfleet_gpu_info", **gpu, uuid="GPU-5d2c0f0e-h100", accelerator="NVIDIA H100 80GB HBM3") == 1
    assert at(s, "warmfleet_gpu_utilization_ratio", **gpu) == 0.75
    assert at(s, "warmfleet_gpu_memory_used_bytes", **gpu) == 20 * 2**30
    assert at(s, "warmfleet_gpu_memory_total_bytes", **gpu) == 80 * 2**30
    assert at(s, "warmfleet_gpu_temperature_celsius", **gpu) == 61.0
    assert at(s, "warmfleet_gpu_power_watts", **gpu) == 412.5
    assert at(s, "warmfleet_cluster_scrape_errors_total") == 0


async def test_gpu_series_only_for_gpus_nvml_read_and_only_the_figures_they_report():
    s = await scrape(GatewayMetrics(FakeController()))
    gpu_nodes = {dict(labels)["node"] for name, labels in s if name.startswith("warmfleet_gpu_")}
    assert gpu_nodes == {"host1-gpu3", "host3-gpu0"}  # not the CPU node, not the GPU NVML lost
    t4 = {"node": "host3-gpu0", "gpu": "0"}
    assert at(s, "warmfleet_gpu_utilization_ratio", **t4) == 0.0  # a reported 0 is kept
    series_of_t4 = {name for name, labels in s if dict(labels).get("node") == "host3-gpu0"}
    assert not series_of_t4 & {"warmfleet_gpu_temperature_celsius", "warmfleet_gpu_power_watts"}


async def test_the_controller_is_asked_at_most_once_per_max_age_even_by_concurrent_scrapes():
    controller = FakeController()
    metrics = GatewayMetrics(controller)
    now = [100.0]
    metrics.cluster._clock = lambda: now[0]
    await asyncio.gather(*(metrics.exposition() for _ in range(5)))
    now[0] += 0.5
    await metrics.exposition()
    assert controller.calls == 1
    now[0] += 0.6
    await metrics.exposition()
    assert controller.calls == 2


@pytest.mark.parametrize("controller", [FakeController(error=ConnectionError("controller gone")),
                                        FakeController(hang=True)], ids=["fails", "hangs"])
async def test_a_failing_controller_costs_the_cluster_gauges_not_the_scrape(controller):
    metrics = GatewayMetrics(controller, FakeQueues({}), cluster_timeout_s=0.05)
    metrics.predictions.observe_created(prediction("acme/echo"))
    s = await asyncio.wait_for(scrape(metrics), 2.0)
    assert at(s, "warmfleet_cluster_scrape_errors_total") == 1
    assert at(s, "warmfleet_prediction_created_total", model="acme/echo") == 1
    assert not names(s) & {"warmfleet_instances", "warmfleet_node_info", "warmfleet_gpu_memory_used_bytes"}


async def test_metrics_and_healthz_routes():
    why = [""]
    app = build_app(GatewayMetrics(FakeController()), lambda: why[0])

    async def get(path: str, accept: str = ""):
        request = make_mocked_request("GET", path, headers={"Accept": accept}, app=app)
        match = await app.router.resolve(request)
        return await match.handler(request)

    assert (await get("/healthz")).status == 200
    why[0] = "the prediction store cannot write: database or disk is full"
    answer = await get("/healthz")
    assert answer.status == 503
    assert json.loads(answer.body) == {"status": "not serving", "reason": why[0]}
    text = await get("/metrics")
    assert text.status == 200 and text.content_type == "text/plain"
    assert b"warmfleet_node_info{" in text.body
    open_metrics = await get("/metrics", "application/openmetrics-text; version=1.0.0")
    assert open_metrics.content_type == "application/openmetrics-text" and open_metrics.body.endswith(b"# EOF\n")


def test_the_cluster_state_records_the_metrics_url(tmp_path):
    settings = Settings(home=tmp_path, http_host="127.0.0.1")
    write_state(settings, 50051, 8123)
    state = read_state(settings)
    assert state.grpc_target == "127.0.0.1:50051" and state.metrics_url == "http://127.0.0.1:8123/metrics"
    write_state(settings, 50051, None)  # the gateway could not bind its HTTP port
    assert read_state(settings).metrics_url == ""
