"""What `warmfleet nodes`, `instances` and `top` show: rich tables of the cluster, and `top`'s frame.

`top` is a pure function, :func:`render`, over a :class:`Snapshot` (nodes, instances, the gateway's
queue figures, the time), so that a frame is tested without a cluster; :func:`take_snapshot` gathers
one from a client and the gateway's Prometheus text, and never raises for what the gateway does: an
error talking to it is kept in the snapshot and shown in the frame's header.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from warmfleet.client import Client, Instance, Node, WarmfleetClientError

GIB = 2**30
BAR_WIDTH = 10
TERMINAL_STATUSES = ("succeeded", "failed", "canceled", "aborted")


# Snapshots


@dataclass
class QueueFigures:
    """One model's load as the gateway's router counts it (from its /metrics)."""

    model: str
    queued: int = 0  # predictions waiting in the router's queue
    in_flight: int = 0  # dispatched to an instance and not ended
    ended: dict[str, int] = field(default_factory=dict)  # terminal status -> predictions
    latency_sum_s: float = 0.0
    latency_count: int = 0

    @property
    def mean_latency_s(self) -> float | None:
        return self.latency_sum_s / self.latency_count if self.latency_count else None


@dataclass(frozen=True)
class Snapshot:
    """One frame's worth of the cluster. ``queues`` is None when the gateway's metrics could not be
    read (``queues_note`` says why); ``error`` is what went wrong asking for nodes and instances."""

    target: str
    taken_at: datetime
    nodes: list[Node] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    queues: dict[str, QueueFigures] | None = None
    queues_note: str = "metrics not available"
    error: str = ""


def parse_queues(text: str) -> dict[str, QueueFigures]:
    """Per-model queue figures from the gateway's Prometheus exposition text (ValueError if malformed)."""
    queues: dict[str, QueueFigures] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            model = sample.labels.get("model")
            if model is None:
                continue
            figures = queues.setdefault(model, QueueFigures(model))
            _add_sample(figures, sample.name, sample.labels, sample.value)
    return queues


def _add_sample(q: QueueFigures, name: str, labels: dict[str, str], value: float) -> None:
    if name == "warmfleet_queue_depth":
        q.queued = int(value)
    elif name == "warmfleet_predictions_in_flight":
        q.in_flight = int(value)
    elif name == "warmfleet_predictions_total" and "status" in labels:
        q.ended[labels["status"]] = int(value)
    elif name == "warmfleet_prediction_latency_seconds_sum":
        q.latency_sum_s = value
    elif name == "warmfleet_prediction_latency_seconds_count":
        q.latency_count = int(value)


def fetch_metrics_text(url: str, timeout_s: float, ssl_context: ssl.SSLContext | None = None) -> str:
    """The exposition at ``url``; an https:// one verified with ``ssl_context`` (None: default roots)."""
    with urllib.request.urlopen(url, timeout=timeout_s, context=ssl_context) as reply:
        return reply.read().decode("utf-8")


def take_snapshot(client: Client, metrics_url: str, now: datetime, timeout_s: float = 2.0,
                  ssl_context: ssl.SSLContext | None = None) -> Snapshot:
    """Ask the gateway for nodes and instances and read its metrics (an HTTPS URL verified with
    ``ssl_context``); errors go into the snapshot."""
    nodes: list[Node] = []
    instances: list[Instance] = []
    error = ""
    try:
        nodes, instances = client.cluster.nodes(), client.cluster.instances()
    except WarmfleetClientError as err:  # shown in the header; the next frame asks again
        error = str(err)
    queues, note = read_queues(metrics_url, timeout_s, ssl_context)
    return Snapshot(client.target, now, nodes, instances, queues, note, error)


def read_queues(metrics_url: str, timeout_s: float, ssl_context: ssl.SSLContext | None = None
                ) -> tuple[dict[str, QueueFigures] | None, str]:
    """The queue figures at ``metrics_url``, or None and why not."""
    if not metrics_url:
        return None, "metrics not available (no metrics URL known for this gateway)"
    try:
        return parse_queues(fetch_metrics_text(metrics_url, timeout_s, ssl_context)), ""
    # URLError is an OSError, a reply cut short an HTTPException, a bad exposition a ValueError
    except (OSError, http.client.HTTPException, ValueError) as err:
        return None, f"metrics not available ({metrics_url}: {getattr(err, 'reason', err)})"


# Tables shared by `nodes`, `instances`, `status` and `top`


def nodes_table(nodes: Iterable[Node], bars: bool = False) -> Table:
    """The nodes: accelerator, memory, utilization, temperature and power, instances and the metrics
    note. With ``bars`` (for `top`) memory and utilization are bars and the notes go under the table,
    which keeps it narrow."""
    nodes = list(nodes)
    notes = "\n".join(f"{n.id}: {n.metrics_note}" for n in nodes if n.metrics_note)
    table = Table(title="nodes", title_justify="left", caption=notes if bars else None,
                  caption_justify="left")
    table.add_column("id", no_wrap=True)  # ids stay whole, for copying
    table.add_column("accelerator", overflow="fold", min_width=len("accelerator"))
    table.add_column("memory used", no_wrap=True)
    table.add_column("utilization", no_wrap=True)
    table.add_column("temp/power", no_wrap=True)
    table.add_column("instances", justify="right", no_wrap=True)
    if not bars:
        table.add_column("note", overflow="fold")
    for n in nodes:
        cells = [n.id, n.accelerator, _memory(n, bars), _utilization(n, bars), _thermals(n),
                 str(n.instance_count)]
        table.add_row(*cells, *([] if bars else [n.metrics_note]))
    return table


def _thermals(node: Node) -> str:
    # getattr: a gateway older than these figures leaves them out
    temperature_c, power_w = getattr(node, "temperature_c", None), getattr(node, "power_w", None)
    parts = [f"{temperature_c:.0f}°C" if temperature_c is not None else "",
             f"{power_w:.0f} W" if power_w is not None else ""]
    return " ".join(p for p in parts if p) or "-"


def _memory(node: Node, bars: bool) -> Text | str:
    if not node.memory_total_bytes:
        return "-"
    used, total = node.memory_used_bytes / GIB, node.memory_total_bytes / GIB
    if not bars:
        return f"{used:.1f} / {total:.1f} GiB"
    return bar(node.memory_used_bytes / node.memory_total_bytes) + f" {used:.1f}/{total:.1f} GiB"


def _utilization(node: Node, bars: bool) -> Text | str:
    if node.utilization_percent is None:
        return "-"
    percent = f"{node.utilization_percent:.0f}%"
    return bar(node.utilization_percent / 100) + f" {percent}" if bars else percent


def bar(fraction: float, width: int = BAR_WIDTH) -> Text:
    """A text bar, green to red as it fills: ``█████░░░░░``."""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    style = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    return Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim")


def instances_table(instances: Iterable[Instance]) -> Table:
    """One row per instance: model, version, node, state and in-flight predictions of its capacity."""
    table = Table(title="instances", title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("model", overflow="fold")
    table.add_column("version", no_wrap=True)
    table.add_column("node", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("in flight", justify="right", no_wrap=True)
    for i in instances:
        table.add_row(i.id, i.model, i.version[:12], i.node_id, i.state, f"{i.in_flight}/{i.max_concurrency}")
    return table


# `top`'s frame


def render(snapshot: Snapshot) -> RenderableType:
    """One frame of `warmfleet top`: header, nodes and GPUs, instances by model, queues by model."""
    return Group(_header(snapshot), nodes_table(snapshot.nodes, bars=True), models_table(snapshot.instances),
                 queues_table(snapshot))


def _header(s: Snapshot) -> Panel:
    states = Counter(i.state for i in s.instances)
    by_state = ", ".join(f"{count} {state}" for state, count in sorted(states.items())) or "none"
    gpus = sum(1 for n in s.nodes if n.accelerator not in ("", "cpu"))
    queued = "-" if s.queues is None else str(sum(q.queued for q in s.queues.values()))
    lines = [
        Text.assemble(("warmfleet top", "bold"), f"  gateway {s.target}  ",
                      (s.taken_at.strftime("%Y-%m-%d %H:%M:%S"), "cyan")),
        Text(f"nodes {len(s.nodes)} ({gpus} GPU)   instances {len(s.instances)}: {by_state}   "
             f"in flight {sum(i.in_flight for i in s.instances)}   queued {queued}"),
    ]
    if s.error:
        lines.append(Text(f"error: {s.error}", style="bold red"))
    return Panel(Group(*lines), expand=True)


def models_table(instances: Iterable[Instance]) -> Table:
    """Instances grouped by model: how many, in which states, and in-flight predictions of capacity."""
    by_model: dict[str, list[Instance]] = {}
    for i in instances:
        by_model.setdefault(i.model, []).append(i)
    table = Table(title="instances by model", title_justify="left")
    table.add_column("model", no_wrap=True)
    table.add_column("instances", justify="right")
    table.add_column("states")
    table.add_column("in flight / capacity", justify="right")
    for model, group in sorted(by_model.items()):
        states = Counter(i.state for i in group)
        table.add_row(model, str(len(group)), ", ".join(f"{n} {s}" for s, n in sorted(states.items())),
                      f"{sum(i.in_flight for i in group)}/{sum(i.max_concurrency for i in group)}")
    return table


def queues_table(snapshot: Snapshot) -> RenderableType:
    """The router's queue per model, or a line saying why there are no figures."""
    if snapshot.queues is None:
        return Text(f"queues: {snapshot.queues_note}", style="yellow")
    if not snapshot.queues:
        return Text("queues: no predictions yet")
    table = Table(title="queues", title_justify="left")
    table.add_column("model", no_wrap=True)
    for name in ("queued", "in flight", *TERMINAL_STATUSES, "mean latency"):
        table.add_column(name, justify="right")
    for model, q in sorted(snapshot.queues.items()):
        latency = "-" if q.mean_latency_s is None else f"{q.mean_latency_s * 1000:.1f} ms"
        ended = (str(q.ended.get(status, 0)) for status in TERMINAL_STATUSES)
        table.add_row(model, str(q.queued), str(q.in_flight), *ended, latency)
    return table
