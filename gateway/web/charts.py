"""A deployment's recent activity, per minute over the last hour, as SVG charts drawn on the server.

Everything comes from the gateway's own records of predictions (``Prediction`` with its created,
started and completed times), with ``now`` passed in, so each series is a pure function that the unit
tests check with made-up records:

- ``status_counts``: predictions created in each minute, by status (succeeded, failed, other);
- ``latency_percentiles``: p50, p90 and p99 of the total time (created to completed) of the predictions
  that completed in each minute;
- ``queue_depth``: at the end of each minute, the predictions created by then that had not started (nor
  ended) by then: the depth of the queue as it was, read back from the records.

The SVG is a plain ``viewBox`` of ``WIDTH`` x ``HEIGHT`` that the style sheet stretches to the page's
width; each series carries its numbers in ``data-`` attributes and its summary in ``aria-label``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from gateway.web.html import esc
from warmfleet.domain import Prediction

MINUTES = 60
WIDTH, HEIGHT = 600, 100
STATUS_COLOURS = (("succeeded", "#1a7f37"), ("failed", "#b42318"), ("other", "#59636e"))
PERCENTILES = ((50, "#0b5cad"), (90, "#b35c00"), (99, "#b42318"))


def _minute(at: float, now: float) -> int | None:
    """The bucket (0 oldest, MINUTES - 1 the current minute) of a time, or None outside the hour."""
    back = int((now - at) // 60)
    return MINUTES - 1 - back if 0 <= back < MINUTES else None


def status_counts(preds: Sequence[Prediction], now: float) -> list[Counter]:
    counts = [Counter() for _ in range(MINUTES)]
    for p in preds:
        at = _minute(p.created_at, now)
        if at is not None:
            status = p.status.value if p.status.value in ("succeeded", "failed") else "other"
            counts[at][status] += 1
    return counts


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile (q in 0-100) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_percentiles(preds: Sequence[Prediction], now: float) -> dict[int, list[float | None]]:
    """Per percentile, per minute: the total time in seconds (None for a minute with no completion)."""
    times: list[list[float]] = [[] for _ in range(MINUTES)]
    for p in preds:
        if p.completed_at is not None:
            at = _minute(p.completed_at, now)
            if at is not None:
                times[at].append(p.completed_at - p.created_at)
    return {q: [percentile(t, q) if t else None for t in times] for q, _ in PERCENTILES}


def queue_depth(preds: Sequence[Prediction], now: float) -> list[int]:
    """Per minute: how many predictions were waiting at its end (the current minute's end is ``now``)."""
    ends = [now - (MINUTES - 1 - i) * 60 for i in range(MINUTES)]
    depth = [0] * MINUTES
    for p in preds:
        left = min(t for t in (p.started_at, p.completed_at, math.inf) if t is not None)
        for i, end in enumerate(ends):
            if p.created_at <= end < left:
                depth[i] += 1
    return depth


def _figure(svg_id: str, label: str, shapes: str, data: dict[str, str], legend: str) -> str:
    attrs = "".join(f' data-{k}="{esc(v)}"' for k, v in data.items())
    return (f'<figure class="chart"><svg id="{svg_id}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{esc(label)}" preserveAspectRatio="none"{attrs}>{shapes}</svg>'
            f"<figcaption>{esc(label)}. {legend}</figcaption></figure>")


def _legend(keys: Sequence[tuple[str, str]]) -> str:
    """Keys coloured by the style sheet (``.key-<name>``: the page's policy allows no inline style)."""
    return " ".join(f'<span class="key key-{esc(name)}">{esc(name)}</span>' for name, _ in keys)


def status_chart(counts: Sequence[Counter]) -> str:
    total = sum(sum(c.values()) for c in counts)
    top = max([sum(c.values()) for c in counts] + [1])
    step = WIDTH / MINUTES
    bars = []
    for i, c in enumerate(counts):
        y = float(HEIGHT)
        for status, colour in STATUS_COLOURS:
            h = HEIGHT * c.get(status, 0) / top
            if h:
                y -= h
                bars.append(f'<rect x="{i * step + 1:.1f}" y="{y:.1f}" width="{step - 2:.1f}" height="{h:.1f}" '
                            f'fill="{colour}"><title>{c[status]} {status}</title></rect>')
    label = f"Predictions per minute over the last hour: {total} in all, at most {top} in a minute"
    return _figure("activity", label, "".join(bars), {"total": str(total)}, _legend(STATUS_COLOURS))


def _polyline(values: Sequence[float | None], top: float, colour: str, name: str) -> str:
    step = WIDTH / MINUTES
    points = [(f"{(i + 0.5) * step:.1f}", f"{HEIGHT - HEIGHT * v / top:.1f}") for i, v in enumerate(values)
              if v is not None]
    if not points:
        return ""
    dots = "".join(f'<circle cx="{x}" cy="{y}" r="2" fill="{colour}"/>' for x, y in points)
    line = " ".join(f"{x},{y}" for x, y in points)
    return (f'<g class="series" data-series="{esc(name)}"><title>{esc(name)}</title>'
            f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>{dots}</g>')


def latency_chart(series: dict[int, list[float | None]]) -> str:
    known = [v for values in series.values() for v in values if v is not None]
    top = max(known + [1e-3])
    lines = "".join(_polyline(series[q], top, colour, f"p{q}") for q, colour in PERCENTILES)
    latest = {f"p{q}": next((f"{v:.3f}" for v in reversed(series[q]) if v is not None), "") for q, _ in PERCENTILES}
    label = (f"Latency per minute over the last hour (created to completed): highest {top:.3f} s"
             if known else "Latency per minute over the last hour: no prediction completed")
    return _figure("latency", label, lines, {"points": str(len(known) // len(PERCENTILES)), **latest},
                   _legend([(f"p{q}", colour) for q, colour in PERCENTILES]))


def queue_chart(depth: Sequence[int]) -> str:
    top = max(list(depth) + [1])
    line = _polyline(list(depth), top, "#0b5cad", "queued")
    label = f"Queue depth at each minute's end over the last hour: at most {max(depth, default=0)}, now {depth[-1]}"
    return _figure("queue", label, line, {"now": str(depth[-1]), "most": str(max(depth, default=0))},
                   _legend([("queued", "#0b5cad")]))


def activity_html(preds: Sequence[Prediction], now: float) -> str:
    """The three charts for a deployment's predictions (``preds`` already filtered to it)."""
    return (status_chart(status_counts(preds, now)) + latency_chart(latency_percentiles(preds, now))
            + queue_chart(queue_depth(preds, now)))
