"""Console page (admins only): the fleet, ``warmfleet top`` in a browser. Nodes (hardware, GPU
utilisation, memory, temperature, power), instances (by state, per route) and the router's queues, from
the controller and this gateway's router; the page asks for its ``#fleet`` part again every
``REFRESH_S`` (``?part=1``: that part alone) and puts it in place."""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from gateway.web.context import console, csrf_token, handler, html_response, principal_of, require_admin
from gateway.web.html import esc, page, table
from warmfleet.domain import InstanceInfo, NodeInfo

REFRESH_S = 2
GIB = 2**30


def _node_row(n: NodeInfo) -> tuple[str, ...]:
    used = (
        f"{n.memory_used_bytes / GIB:.1f} / {n.memory_total_bytes / GIB:.1f} GiB"
        if n.memory_total_bytes
        else ""
    )
    util = "" if n.utilization_percent is None else f"{n.utilization_percent:.0f}%"
    meter = (
        f'<meter min="0" max="100" value="{n.utilization_percent:.0f}" aria-label="utilisation"></meter> '
        if n.utilization_percent is not None
        else ""
    )
    temp = "" if n.temperature_c is None else f"{n.temperature_c:.0f} °C"
    power = "" if n.power_w is None else f"{n.power_w:.0f} W"
    return (
        f"<code>{esc(n.id)}</code>",
        esc(n.hardware),
        esc(n.accelerator),
        meter + esc(util),
        esc(used),
        esc(temp),
        esc(power),
        esc(n.instance_count),
        esc(n.metrics_note),
    )


def _instances(instances: list[InstanceInfo]) -> str:
    by_route: dict[str, Counter] = {}
    for i in instances:
        by_route.setdefault(i.model, Counter())[str(i.state)] += 1
    rows = [
        (esc(route), *(esc(c.get(s, 0)) for s in ("starting", "idle", "processing", "draining", "failed")))
        for route, c in sorted(by_route.items())
    ]
    detail = [
        (
            f"<code>{esc(i.id)}</code>",
            esc(i.model),
            f'<span class="badge">{esc(str(i.state))}</span>',
            esc(f"{i.in_flight} / {i.max_concurrency}"),
            f"<code>{esc(i.node_id)}</code>",
        )
        for i in instances
    ]
    return table(
        ("Route", "Setting up", "Idle", "Processing", "Draining", "Failed"),
        rows,
        caption="Instances by state",
        empty="No instances.",
    ) + table(("Instance", "Route", "State", "In flight", "Node"), detail, caption="Instances")


async def _part(request: web.Request) -> str:
    ctx = console(request)
    nodes, instances = await ctx.controller.nodes(), await ctx.controller.instances()
    queues = [
        (esc(e.spec.name), esc(ctx.queue_length(e.spec.name)))
        for e in ctx.catalog.entries()
        if ctx.queue_length(e.spec.name)
    ]
    return (
        "<h2>Nodes</h2>"
        + table(
            (
                "Node",
                "Hardware",
                "Accelerator",
                "Utilisation",
                "Memory",
                "Temperature",
                "Power",
                "Instances",
                "Note",
            ),
            [_node_row(n) for n in nodes],
            empty="No nodes.",
        )
        + f"<h2>Instances</h2>{_instances(instances)}"
        + "<h2>Queues</h2>"
        + table(("Route", "Queued"), queues, empty="No prediction is queued.")
    )


@handler
async def fleet(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_admin(principal)
    part = await _part(request)
    if request.query.get("part"):
        return html_response(part)
    body = (
        f'<h1>Fleet</h1><p class="meta">Updates every {REFRESH_S} s.</p>'
        f'<div id="fleet" data-refresh="/fleet?part=1" data-every-s="{REFRESH_S}" aria-live="off">'
        f"{part}</div>"
    )
    return html_response(page("Fleet", body, principal=principal, csrf=csrf_token(request), active="fleet"))


def register(app: web.Application) -> None:
    app.router.add_get("/fleet", fleet)
