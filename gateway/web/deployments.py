"""Console pages: deployments. A list, a create form (admins: name, model, version, hardware from the
cluster's hardware, min and max instances; ``RouteService.create_deployment_as``, as the API) and a
deployment's page with its instances by state (setting up, idle, processing), its ``#instances`` part
asked for again every ``REFRESH_S`` (``?part=1``)."""

from __future__ import annotations

import time
from collections import Counter

from aiohttp import web

from gateway.deployments import Scale
from gateway.web.context import (
    check_csrf,
    console,
    csrf_token,
    handler,
    html_response,
    principal_of,
    redirect,
)
from gateway.web.html import csrf_field, esc, page, table, when
from warmfleet.errors import InvalidInput, PermissionDenied

REFRESH_S = 1
STATES = (("starting", "Setting up"), ("idle", "Idle"), ("processing", "Processing"))


@handler
async def list_deployments(request: web.Request) -> web.Response:
    ctx, principal = console(request), principal_of(request)
    shown = [d for d in await ctx.routes.deployments() if principal.may_see(d.spec)]
    rows = [
        (
            f'<a href="/deployments/{esc(d.spec.name)}">{esc(d.spec.name)}</a>',
            esc(d.spec.model),
            f"<code>{esc(d.spec.version[:16])}</code>",
            esc(d.spec.hardware or "any"),
            esc(f"{d.spec.min_instances} to {_most(d.spec.max_instances)}"),
            esc(d.spec.release),
        )
        for d in shown
    ]
    listed = table(
        ("Deployment", "Model", "Version", "Hardware", "Instances", "Release"),
        rows,
        empty="No deployments yet.",
    )
    body = f"<h1>Deployments</h1>{listed}" + (
        await _create_form(request, {}, {}) if principal.is_admin else ""
    )
    return html_response(
        page("Deployments", body, principal=principal, csrf=csrf_token(request), active="deployments")
    )


async def _create_form(request: web.Request, values: dict[str, str], errors: dict[str, str]) -> str:
    ctx, principal = console(request), principal_of(request)
    models = [e.spec.name for e in ctx.catalog.visible_models(principal) if e.spec.has_version]
    hardware = sorted({n.hardware for n in await ctx.controller.nodes()})

    def err(name: str) -> str:
        return (
            f'<p class="error" id="d-{name}-error" role="alert">{esc(errors[name])}</p>'
            if name in errors
            else ""
        )

    def box(name: str, label: str, kind: str = "text", **extra: str) -> str:
        bad = ' aria-invalid="true"' if name in errors else ""
        more = "".join(f' {k}="{esc(v)}"' for k, v in extra.items())
        return (
            f'<div class="field"><div class="label-line"><label for="d-{name}">{label}</label></div>'
            f'<input type="{kind}" id="d-{name}" name="{name}"'
            f' value="{esc(values.get(name, ""))}"{more}{bad}>'
            f"{err(name)}</div>"
        )

    model_opts = "".join(
        f"<option{' selected' if m == values.get('model') else ''}>{esc(m)}</option>" for m in models
    )
    hw_opts = '<option value="">any</option>' + "".join(
        f"<option{' selected' if h == values.get('hardware') else ''}>{esc(h)}</option>" for h in hardware
    )
    summary = "".join(f'<p class="error" role="alert">{esc(v)}</p>' for k, v in errors.items() if k == "")
    return f"""<section aria-labelledby="new-h"><h2 id="new-h">New deployment</h2>
<form method="post" action="/deployments" class="run-form" novalidate>
{csrf_field(csrf_token(request))}{summary}
{box("name", "Name (owner/name)", placeholder="acme/echo-prod")}
<div class="field"><div class="label-line"><label for="d-model">Model</label></div>
<select id="d-model" name="model">{model_opts}</select>{err("model")}</div>
{box("version", "Version (empty: the model's latest)")}
<div class="field"><div class="label-line"><label for="d-hardware">Hardware</label></div>
<select id="d-hardware" name="hardware">{hw_opts}</select>{err("hardware")}</div>
{box("min_instances", "Min instances", "number", min="0", step="1")}
{box("max_instances", "Max instances (empty: no limit)", "number", min="1", step="1")}
<div class="actions"><button type="submit" class="primary">Create deployment</button></div>
</form></section>"""


def _count(text: str, field: str) -> int | None:
    if not text.strip():
        return None
    if not text.strip().isdigit():
        raise InvalidInput(field, f"must be a whole number, 0 or more; got {text[:20]!r}")
    return int(text)


@handler
async def create(request: web.Request) -> web.Response:
    ctx, principal = console(request), principal_of(request)
    form = {k: str(v) for k, v in (await request.post()).items()}
    check_csrf(request, form.get("csrf"))
    if not principal.is_admin:
        raise PermissionDenied("creating a deployment needs an admin token")
    try:
        scale = Scale(
            _count(form.get("min_instances", ""), "min_instances"),
            _count(form.get("max_instances", ""), "max_instances"),
            None,
            form.get("hardware") or None,
        )
        name = form.get("name", "").strip()
        await ctx.routes.create_deployment_as(
            principal, name, form.get("model", ""), form.get("version", "").strip(), scale
        )
    except InvalidInput as err:
        errors = {
            err.field
            if err.field in ("name", "model", "version", "hardware", "min_instances", "max_instances")
            else "": str(err)
        }
        body = "<h1>Deployments</h1>" + await _create_form(request, form, errors)
        return html_response(
            page("Deployments", body, principal=principal, csrf=csrf_token(request), active="deployments"),
            422,
        )
    return redirect(f"/deployments/{name}")


CHART_MINUTES = 60
CHART_STATUSES = (("succeeded", "#1a7f37"), ("failed", "#b42318"), ("other", "#59636e"))


async def _activity(request: web.Request, name: str) -> str:
    """Predictions per minute by status over the last hour, as an SVG bar chart drawn here (from the
    gateway's own records of the caller's predictions through this deployment)."""
    now = time.time()
    preds, _ = await console(request).predictions.list(
        principal_of(request), 1000, "", now - CHART_MINUTES * 60
    )
    counts = [Counter() for _ in range(CHART_MINUTES)]
    for p in preds:
        if p.deployment == name:
            minute = min(int((now - p.created_at) // 60), CHART_MINUTES - 1)
            status = p.status.value if p.status.value in ("succeeded", "failed") else "other"
            counts[CHART_MINUTES - 1 - minute][status] += 1
    total = sum(sum(c.values()) for c in counts)
    top = max([sum(c.values()) for c in counts] + [1])
    bars = []
    for i, c in enumerate(counts):
        y = 100.0
        for status, colour in CHART_STATUSES:
            h = 100.0 * c.get(status, 0) / top
            if h:
                y -= h
                bars.append(
                    f'<rect x="{i * 10 + 1}" y="{y:.1f}" width="8" height="{h:.1f}" fill="{colour}">'
                    f"<title>{c[status]} {status}</title></rect>"
                )
    label = f"Predictions per minute over the last hour: {total} in all, at most {top} in a minute"
    legend = " ".join(f'<span class="key key-{status}">{status}</span>' for status, _ in CHART_STATUSES)
    return (
        f'<figure class="chart"><svg id="activity" viewBox="0 0 600 100" role="img" aria-label="{esc(label)}"'
        f' data-total="{total}" preserveAspectRatio="none">{"".join(bars)}</svg>'
        f"<figcaption>{esc(label)}. {legend}</figcaption></figure>"
    )


async def _instances_part(request: web.Request, name: str) -> str:
    instances = [i for i in await console(request).controller.instances() if i.model == name]
    counts = Counter(str(i.state) for i in instances)
    cells = "".join(
        f'<div class="count"><span class="n" id="count-{state}">{counts.get(state, 0)}</span> {label}</div>'
        for state, label in STATES
    )
    rows = [
        (
            f"<code>{esc(i.id)}</code>",
            f'<span class="badge">{esc(str(i.state))}</span>',
            esc(f"{i.in_flight} / {i.max_concurrency}"),
            f"<code>{esc(i.node_id)}</code>",
        )
        for i in instances
    ]
    activity = "<h2>Recent activity</h2>" + await _activity(request, name)
    return (
        activity
        + f'<h2>Instances</h2><div class="counts">{cells}</div>'
        + table(("Instance", "State", "In flight", "Node"), rows, empty="No instance yet.")
    )


@handler
async def deployment_page(request: web.Request) -> web.Response:
    ctx, principal = console(request), principal_of(request)
    name = f"{request.match_info['owner']}/{request.match_info['name']}"
    d = await ctx.routes.deployment(name)
    if not principal.may_see(d.spec):
        raise PermissionDenied("not yours to see")
    part = await _instances_part(request, name)
    if request.query.get("part"):
        return html_response(part)
    spec = d.spec
    body = f"""<h1>{esc(name)}</h1>
<p class="meta">Model <a href="/models/{esc(spec.model)}">{esc(spec.model)}</a> · version
<code>{esc(spec.version[:16])}</code> · hardware {esc(spec.hardware or "any")} · release {esc(spec.release)}
({esc(when(d.released_at))})</p>
<p class="meta">Instances: {esc(spec.min_instances)} to {esc(_most(spec.max_instances))};
the autoscaler wants {esc(d.target_instances)} now.</p>
<div id="instances" data-refresh="/deployments/{esc(name)}?part=1" data-every-s="{REFRESH_S}">{part}</div>"""
    return html_response(
        page(name, body, principal=principal, csrf=csrf_token(request), active="deployments")
    )


def _most(max_instances: int | None) -> str:
    return "no limit" if max_instances is None else str(max_instances)


def register(app: web.Application) -> None:
    app.router.add_get("/deployments", list_deployments)
    app.router.add_post("/deployments", create)
    app.router.add_get("/deployments/{owner}/{name}", deployment_page)
