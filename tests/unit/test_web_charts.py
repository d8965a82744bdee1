"""The deployment page's charts: each series from made-up prediction records, with the clock passed in."""

from __future__ import annotations

import re

from gateway.web import charts
from warmfleet.domain import Prediction, Status

NOW = 1_800_000_000.0


def pred(created_ago_s: float, status: Status = Status.SUCCEEDED, started_after_s: float | None = 0.1,
         total_s: float | None = 1.0) -> Prediction:
    created = NOW - created_ago_s
    return Prediction(
        id=f"p{created_ago_s}", model="m", version="v", input={}, owner="a", created_at=created, status=status,
        started_at=None if started_after_s is None else created + started_after_s,
        completed_at=None if total_s is None else created + total_s)


def test_counts_go_to_the_minute_each_prediction_was_created_in_by_status():
    preds = [pred(5), pred(10, Status.FAILED), pred(65), pred(70, Status.CANCELED), pred(3601)]
    counts = charts.status_counts(preds, NOW)
    assert len(counts) == charts.MINUTES
    assert counts[-1] == {"succeeded": 1, "failed": 1}
    assert counts[-2] == {"succeeded": 1, "other": 1}
    assert sum(sum(c.values()) for c in counts) == 4  # the one of an hour ago is out


def test_latency_is_the_nearest_rank_percentile_of_the_predictions_completed_in_each_minute():
    preds = [pred(30 + k, total_s=float(k + 1)) for k in range(10)]  # 1 s to 10 s, all completed just now
    series = charts.latency_percentiles(preds, NOW)
    assert series[50][-1] == 5.0 and series[90][-1] == 9.0 and series[99][-1] == 10.0
    assert all(v is None for q in (50, 90, 99) for v in series[q][:-1])
    assert charts.percentile([3.0], 99) == 3.0


def test_running_or_queued_predictions_have_no_latency_yet():
    series = charts.latency_percentiles([pred(5, Status.PROCESSING, total_s=None)], NOW)
    assert series[50] == [None] * charts.MINUTES


def test_queue_depth_counts_what_waited_at_each_minute_end():
    preds = [
        pred(150, started_after_s=100, total_s=101),  # waited 100 s: queued at the end of the minute 2 back
        pred(30, Status.STARTING, started_after_s=None, total_s=None),  # still queued now
        pred(200, Status.ABORTED, started_after_s=None, total_s=190),  # queued, aborted 10 s ago
        pred(20),  # started at once
    ]
    depth = charts.queue_depth(preds, NOW)
    # Minute ends: NOW (index -1), NOW - 60, NOW - 120, NOW - 180...
    assert depth[-1] == 1  # only the one still queued
    assert depth[-2] == 2  # the aborted one and the one that started 50 s ago
    assert depth[-3] == 2
    assert depth[-4] == 1  # the aborted one only: the other came 150 s ago
    assert depth[-5] == 0


def test_the_charts_carry_their_numbers_and_a_summary():
    preds = [pred(5, total_s=0.5), pred(6, total_s=1.5), pred(7, Status.STARTING, None, None)]
    html = charts.activity_html(preds, NOW)
    assert re.search(r'<svg id="activity"[^>]* data-total="3"', html)
    assert re.search(r'<svg id="latency"[^>]* data-points="1" data-p50="0.500" data-p90="1.500"', html)
    assert re.search(r'<svg id="queue"[^>]* data-now="1"', html)
    assert html.count('class="series"') == 4  # three percentiles and the queue
    assert "style=" not in html  # the console's policy allows no inline style
