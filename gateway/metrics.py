"""Prometheus metrics of one gateway: predictions as they end, the router's queues, and the cluster's nodes,
GPUs and instances, for ``GET /metrics``.

Names follow Ray Serve's and Triton's style: a ``warmfleet_`` prefix, base units in the name (seconds,
bytes, ratio), and the labels ``model``, ``status``, ``node``, ``gpu`` (its NVML index), ``hardware`` (a
SKU), ``state``. Each ``Gateway`` has its own ``CollectorRegistry``, so several gateways in one process (the
tests) keep separate figures.

The hot path is one call when a prediction is created and one when it ends. Both only add to plain
per-model tallies; the exposition is built from the tallies when Prometheus scrapes (custom collectors, the
prometheus_client way for figures kept elsewhere). Everything runs on the gateway's event loop, scrapes
included, so the tallies need no lock: about 1 µs per finished prediction, where prometheus_client's own
``Counter``/``Histogram`` objects take a lock per increment and cost about 6 µs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections import Counter
from typing import Callable, Iterable, Iterator, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from scheduler.ports import ControllerClient
from warmfleet.domain import TERMINAL, InstanceInfo, NodeInfo, Prediction

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the latency histograms: from an echo's few milliseconds to a long diffusion job.
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0,
                     600.0)
_LE = tuple(floatToGoString(b) for b in LATENCY_BUCKETS_S) + ("+Inf",)
_TERMINAL_NAMES = tuple(sorted(s.value for s in TERMINAL))


class _Histogram:
    """Counts per bucket (not cumulative) and the sum; Prometheus's cumulative form is built at scrape."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(_LE)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        if value < 0.0:  # queue time spans two hosts' clocks, which may disagree by a little
            value = 0.0
        self.counts[bisect_left(LATENCY_BUCKETS_S, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        total, out = 0, []
        for le, count in zip(_LE, self.counts):
            total += count
            out.append((le, total))
        return out


class _ModelTally:
    """Everything counted about one model's predictions."""

    __slots__ = ("created", "finished", "latency", "queue", "compute", "ttft", "output_tokens", "images",
                 "reruns")

    def __init__(self) -> None:
        self.created = 0
        self.finished = dict.fromkeys(_TERMINAL_NAMES, 0)  # every status from zero, so rate() sees the first
        self.latency, self.queue, self.compute, self.ttft = _Histogram(), _Histogram(), _Histogram(), _Histogram()
        self.output_tokens = 0
        self.images = 0
        self.reruns = 0

    @property
    def active(self) -> int:
        """Created and not yet ended: queued, or dispatched to an instance."""
        return self.created - sum(self.finished.values())


class QueueView(Protocol):
    """What the metrics read from the router: how many predictions wait in a model's queue."""

    def queue_length(self, model: str) -> int: ...


class PredictionMetrics:
    """Tallies of the predictions this gateway created and ended, and the collector that exports them.

    ``queues`` (the router) gives the queue depth; in flight is what was created, has not ended and is not
    queued, that is dispatched to an instance (on its way, or running there).
    """

    def __init__(self, queues: QueueView | None = None) -> None:
        self._queues = queues
        self._models: dict[str, _ModelTally] = {}

    def _tally(self, model: str) -> _ModelTally:
        tally = self._models.get(model)
        if tally is None:
            tally = self._models[model] = _ModelTally()
        return tally

    def observe_created(self, pred: Prediction) -> None:
        self._tally(pred.model).created += 1

    def observe_rerun(self, pred: Prediction) -> None:
        """Count a prediction queued to run again after its run was lost (``Requeued``)."""
        self._tally(pred.model).reruns += 1

    def observe_finished(self, pred: Prediction) -> None:
        """Count a prediction that reached its terminal status, with its metrics."""
        tally = self._tally(pred.model)
        tally.finished[pred.status.value] += 1
        m = pred.metrics
        if m.total_time_s is not None:
            tally.latency.observe(m.total_time_s)
        if m.queue_time_s is not None:
            tally.queue.observe(m.queue_time_s)
        if m.predict_time_s is not None:
            tally.compute.observe(m.predict_time_s)
        if m.time_to_first_token_s is not None:
            tally.ttft.observe(m.time_to_first_token_s)
        if m.output_token_count:
            tally.output_tokens += m.output_token_count
        if m.image_count:
            tally.images += m.image_count

    def collect(self) -> Iterator[Metric]:
        models = sorted(self._models.items())
        yield _counter("warmfleet_prediction_created", "Predictions created (accepted into a queue).",
                       [((model,), t.created) for model, t in models])
        done = CounterMetricFamily("warmfleet_predictions", "Predictions ended, by terminal status.",
                                   labels=("model", "status"))
        for model, t in models:
            for status, count in t.finished.items():
                done.add_metric((model, status), count)
        yield done
        for name, attr, doc in _HISTOGRAMS:
            family = HistogramMetricFamily(name, doc, labels=("model",))
            for model, t in models:
                hist = getattr(t, attr)
                family.add_metric((model,), hist.buckets(), hist.sum)
            yield family
        yield _counter("warmfleet_output_tokens", "Tokens generated by ended predictions.",
                       [((model,), t.output_tokens) for model, t in models])
        yield _counter("warmfleet_images", "Images produced by ended predictions.",
                       [((model,), t.images) for model, t in models])
        yield _counter("warmfleet_prediction_reruns", "Predictions run again after their node or the gateway "
                       "stopped while they ran.", [((model,), t.reruns) for model, t in models])
        yield from self._load(models)

    def _load(self, models: list[tuple[str, _ModelTally]]) -> Iterator[Metric]:
        depth = GaugeMetricFamily("warmfleet_queue_depth", "Predictions waiting in the router's queue.",
                                  labels=("model",))
        flight = GaugeMetricFamily("warmfleet_predictions_in_flight",
                                   "Predictions dispatched to an instance and not ended.", labels=("model",))
        for model, t in models:
            queued = self._queues.queue_length(model) if self._queues else 0
            depth.add_metric((model,), queued)
            flight.add_metric((model,), max(0, t.active - queued))
        yield depth
        yield flight


_HISTOGRAMS = (
    ("warmfleet_prediction_latency_seconds", "latency",
     "Prediction total time, from creation to its terminal status (seconds)."),
    ("warmfleet_prediction_queue_seconds", "queue", "Time a prediction waited before it started (seconds)."),
    ("warmfleet_prediction_compute_seconds", "compute", "Time a prediction ran on its instance (seconds)."),
    ("warmfleet_time_to_first_token_seconds", "ttft",
     "Time from a text prediction's start to its first output token (seconds)."),
)


def _counter(name: str, doc: str, samples: Iterable[tuple[tuple[str, ...], float]],
             labels: tuple[str, ...] = ("model",)) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


class ClusterMetrics:
    """Gauges of the cluster's nodes, GPUs and instances, from the controller.

    ``refresh`` asks the controller at most once per ``max_age_s``, and waits at most ``timeout_s``: a scrape
    never waits long on the control plane. When the controller does not answer, the cluster gauges are left
    out of that scrape (stale figures would look live) and ``warmfleet_cluster_scrape_errors_total`` counts it.
    """

    def __init__(self, controller: ControllerClient, max_age_s: float = 1.0, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._controller = controller
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._taken_at: float | None = None
        self._nodes: list[NodeInfo] | None = None
        self._instances: list[InstanceInfo] | None = None
        self.errors = 0

    async def refresh(self) -> None:
        async with self._lock:  # concurrent scrapes share one controller call
            if self._taken_at is not None and self._clock() - self._taken_at < self._max_age_s:
                return
            try:
                async with asyncio.timeout(self._timeout_s):
                    nodes, instances = await asyncio.gather(self._controller.nodes(),
                                                            self._controller.instances())
            except Exception as err:  # TimeoutError, NodeLost, a Ray error: serve the rest
                log.warning("metrics: could not read nodes and instances from the controller: %r", err)
                self.errors += 1
                nodes = instances = None
            self._nodes, self._instances, self._taken_at = nodes, instances, self._clock()

    def collect(self) -> Iterator[Metric]:
        yield _counter("warmfleet_cluster_scrape_errors",
                       "Scrapes whose request to the controller for nodes and instances failed or timed out.",
                       [((), self.errors)], labels=())
        if self._nodes is None or self._instances is None:
            return
        states = Counter((i.model, i.state) for i in self._instances)
        instances = GaugeMetricFamily("warmfleet_instances", "Model instances, by state.",
                                      labels=("model", "state"))
        for (model, state), count in sorted(states.items()):
            instances.add_metric((model, state), count)
        yield instances
        yield from _node_families(self._nodes)


def _node_families(nodes: list[NodeInfo]) -> Iterator[Metric]:
    """One ``warmfleet_node_info`` per agent, labelled with its hardware SKU, and each GPU's NVML figures.

    A GPU is labelled by its NVML index (``gpu``, unique within its ``node``); ``warmfleet_gpu_info`` joins
    that to the board's UUID and name, which is how DCGM's exporter names the same GPU.
    """
    info = GaugeMetricFamily("warmfleet_node_info", "A node agent and the hardware SKU it runs on (always 1).",
                             labels=("node", "hardware"))
    gpu = ("node", "gpu")
    gpu_info = GaugeMetricFamily("warmfleet_gpu_info", "A node agent's GPU: its NVML UUID and name (always 1).",
                                 labels=("node", "gpu", "uuid", "accelerator"))
    util = GaugeMetricFamily("warmfleet_gpu_utilization_ratio", "GPU busy time, 0 to 1 (NVML).", labels=gpu)
    used = GaugeMetricFamily("warmfleet_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=gpu)
    total = GaugeMetricFamily("warmfleet_gpu_memory_total_bytes", "GPU memory in all (NVML).", labels=gpu)
    temperature = GaugeMetricFamily("warmfleet_gpu_temperature_celsius", "GPU temperature (NVML).", labels=gpu)
    power = GaugeMetricFamily("warmfleet_gpu_power_watts", "GPU power draw (NVML).", labels=gpu)
    for node in sorted(nodes, key=lambda n: n.id):
        info.add_metric((node.id, node.hardware), 1)
        if node.gpu_index is None or not node.memory_total_bytes:  # CPU node, or NVML could not read it
            continue
        labels = (node.id, str(node.gpu_index))
        gpu_info.add_metric((*labels, node.gpu_uuid, node.accelerator), 1)
        used.add_metric(labels, node.memory_used_bytes)
        total.add_metric(labels, node.memory_total_bytes)
        # A figure the board does not report has no sample, rather than a 0 that reads as idle or cold.
        if node.utilization_percent is not None:
            util.add_metric(labels, node.utilization_percent / 100.0)
        if node.temperature_c is not None:
            temperature.add_metric(labels, node.temperature_c)
        if node.power_w is not None:
            power.add_metric(labels, node.power_w)
    yield from (info, gpu_info, util, used, total, temperature, power)


class GatewayMetrics:
    """The registry of one gateway, with its prediction tallies and its cluster gauges."""

    def __init__(self, controller: ControllerClient, queues: QueueView | None = None,
                 cluster_max_age_s: float = 1.0, cluster_timeout_s: float = 2.0) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.predictions = PredictionMetrics(queues)
        self.cluster = ClusterMetrics(controller, cluster_max_age_s, cluster_timeout_s)
        self.registry.register(self.predictions)
        self.registry.register(self.cluster)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total and friends: the gateway's loop

    async def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics in the format ``accept`` asks for (Prometheus text, or OpenMetrics), and its type."""
        await self.cluster.refresh()
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
