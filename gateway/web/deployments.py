"""Console pages: deployments. A list, a create form (admins: name, model, version, hardware from the
cluster's hardware, min and max instances; ``RouteService.create_deployment_as``, as the API) and a
deployment's page: its recent activity (``charts``) and its instances by state (setting up, idle,
processing), a part asked for again every ``REFRESH_S`` (``?part=1``), and for admins an update form
(a new release: version, hardware, sizes; an empty field keeps the current value) and a delete button."""

from __future__ import annotations

import time
from collections import Counter

from aiohttp import web

from gateway.deployments import Deployment, Scale
from gateway.web import charts
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


def _error(name: str, errors: dict[str, str]) -> str:
    if name not in errors:
        return ""
    return f'<p class="error" id="d-{name}-error" role="alert">{esc(errors[name])}</p>'


def _box(name: str, label: str, values: dict[str, str], errors: dict[str, str], kind: str = "text",
         **extra: str) -> str:
    bad = ' aria-invalid="true"' if name in errors else ""
    more = "".join(f' {k}="{esc(v)}"' for k, v in extra.items())
    return (f'<div class="field"><div class="label-line"><label for="d-{name}">{label}</label></div>'
            f'<input type="{kind}" id="d-{name}" name="{name}" value="{esc(values.get(name, ""))}"{more}{bad}>'
            f"{_error(name, errors)}</div>")


def _select(name: str, label: str, options: list[tuple[str, str]], values: dict[str, str],
            errors: dict[str, str]) -> str:
    chosen = values.get(name, "")
    opts = "".join(f'<option value="{esc(v)}"{" selected" if v == chosen else ""}>{esc(text)}</option>'
                   for v, text in options)
    return (f'<div class="field"><div class="label-line"><label for="d-{name}">{label}</label></div>'
            f'<select id="d-{name}" name="{name}">{opts}</select>{_error(name, errors)}</div>')


async def _sizing_fields(request: web.Request, values: dict[str, str], errors: dict[str, str]) -> str:
    """Version, hardware (from the cluster's nodes), min and max instances: a create's and an update's."""
    hardware = sorted({n.hardware for n in await console(request).controller.nodes()})
    return (_box("version", "Version (empty: the model's latest)", values, errors)
            + _select("hardware", "Hardware", [("", "any"), *((h, h) for h in hardware)], values, errors)
            + _box("min_instances", "Min instances", values, errors, "number", min="0", step="1")
            + _box("max_instances", "Max instances (empty: no limit)", values, errors, "number", min="1",
                   step="1"))


def _summary(errors: dict[str, str]) -> str:
    return "".join(f'<p class="error" role="alert">{esc(v)}</p>' for k, v in errors.items() if k == "")


async def _create_form(request: web.Request, values: dict[str, str], errors: dict[str, str]) -> str:
    ctx, principal = console(request), principal_of(request)
    models = [e.spec.name for e in ctx.catalog.visible_models(principal) if e.spec.has_version]
    return f"""<section aria-labelledby="new-h"><h2 id="new-h">New deployment</h2>
<form method="post" action="/deployments" class="run-form" novalidate>
{csrf_field(csrf_token(request))}{_summary(errors)}
{_box("name", "Name (owner/name)", values, errors, placeholder="acme/echo-prod")}
{_select("model", "Model", [(m, m) for m in models], values, errors)}
{await _sizing_fields(request, values, errors)}
<div class="actions"><button type="submit" class="primary">Create deployment</button></div>
</form></section>"""


async def _change_forms(request: web.Request, d: Deployment, values: dict[str, str] | None = None,
                        errors: dict[str, str] | None = None) -> str:
    """An admin's update form (prefilled with the deployment as it is) and its delete button."""
    spec, token = d.spec, csrf_field(csrf_token(request))
    values = values if values is not None else {
        "version": spec.version, "hardware": spec.hardware or "", "min_instances": str(spec.min_instances),
        "max_instances": "" if spec.max_instances is None else str(spec.max_instances)}
    return f"""<section aria-labelledby="change-h"><h2 id="change-h">Change</h2>
<form method="post" action="/deployments/{esc(spec.name)}" class="run-form" novalidate>
{token}{_summary(errors or {})}{await _sizing_fields(request, values, errors or {})}
<div class="actions"><button type="submit" class="primary">Update deployment</button></div></form>
<form method="post" action="/deployments/{esc(spec.name)}/delete" class="danger">{token}
<p>Deleting stops its instances; predictions still queued for it fail.</p>
<button type="submit" class="danger">Delete deployment</button></form></section>"""


def _count(text: str, field: str) -> int | None:
    if not text.strip():
        return None
    if not text.strip().isdigit():
        raise InvalidInput(field, f"must be a whole number, 0 or more; got {text[:20]!r}")
    return int(text)


def _scale(form: dict[str, str]) -> Scale:
    return Scale(_count(form.get("min_instances", ""), "min_instances"),
                 _count(form.get("max_instances", ""), "max_instances"), None, form.get("hardware") or None)


def _errors(err: InvalidInput) -> dict[str, str]:
    """An error by the form field it names ("" for the form's summary)."""
    fields = ("name", "model", "version", "hardware", "min_instances", "max_instances")
    return {err.field if err.field in fields else "": str(err)}


async def _admin_form(request: web.Request) -> dict[str, str]:
    form = {k: str(v) for k, v in (await request.post()).items()}
    check_csrf(request, form.get("csrf"))
    if not principal_of(request).is_admin:
        raise PermissionDenied("changing deployments needs an admin token")
    return form


@handler
async def create(request: web.Request) -> web.Response:
    ctx, principal = console(request), principal_of(request)
    form = await _admin_form(request)
    try:
        scale = _scale(form)
        name = form.get("name", "").strip()
        await ctx.routes.create_deployment_as(
            principal, name, form.get("model", ""), form.get("version", "").strip(), scale
        )
    except InvalidInput as err:
        body = "<h1>Deployments</h1>" + await _create_form(request, form, _errors(err))
        return html_response(
            page("Deployments", body, principal=principal, csrf=csrf_token(request), active="deployments"),
            422,
        )
    return redirect(f"/deployments/{name}")


async def _activity(request: web.Request, name: str) -> str:
    """The deployment's charts (``charts``), from the gateway's records of the caller's predictions."""
    now = time.time()
    preds, _ = await console(request).predictions.list(principal_of(request), 1000, "", now - charts.MINUTES * 60)
    return charts.activity_html([p for p in preds if p.deployment == name], now)


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
    name = _name(request)
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
<div id="instances" data-refresh="/deployments/{esc(name)}?part=1" data-every-s="{REFRESH_S}">{part}</div>
{await _change_forms(request, d) if principal.is_admin else ""}"""
    return html_response(
        page(name, body, principal=principal, csrf=csrf_token(request), active="deployments")
    )


def _name(request: web.Request) -> str:
    return f"{request.match_info['owner']}/{request.match_info['name']}"


@handler
async def update(request: web.Request) -> web.Response:
    ctx, principal = console(request), principal_of(request)
    form, name = await _admin_form(request), _name(request)
    try:
        # An empty version keeps the deployment's; "latest" follows the model's newest.
        await ctx.routes.update_deployment_as(principal, name, form.get("version", "").strip() or None,
                                              _scale(form))
    except InvalidInput as err:
        d = await ctx.routes.deployment(name)
        body = f"<h1>{esc(name)}</h1>" + await _change_forms(request, d, form, _errors(err))
        return html_response(page(name, body, principal=principal, csrf=csrf_token(request),
                                  active="deployments"), 422)
    return redirect(f"/deployments/{name}")


@handler
async def delete(request: web.Request) -> web.Response:
    await _admin_form(request)
    await console(request).routes.delete_deployment_as(principal_of(request), _name(request))
    return redirect("/deployments")


def _most(max_instances: int | None) -> str:
    return "no limit" if max_instances is None else str(max_instances)


def register(app: web.Application) -> None:
    app.router.add_get("/deployments", list_deployments)
    app.router.add_post("/deployments", create)
    app.router.add_get("/deployments/{owner}/{name}", deployment_page)
    app.router.add_post("/deployments/{owner}/{name}", update)
    app.router.add_post("/deployments/{owner}/{name}/delete", delete)
