"""Console pages: the models (a list with a search box) and a model's page: its description, versions and
a Run form made from the version's input schema (``forms``, ``widgets``). Running it creates the
prediction with ``PredictionService.create``, as the API does, and goes to its page; an input the core
refuses shows the form again with the error at its field."""

from __future__ import annotations

import re
from typing import Any, Mapping

from aiohttp import web

from gateway.catalog import CatalogEntry
from gateway.predictions import CreateRequest
from gateway.web.context import (
    check_csrf,
    console,
    csrf_token,
    handler,
    html_response,
    principal_of,
    redirect,
)
from gateway.web.forms import Upload, fields_of, form_name, input_of
from gateway.web.html import csrf_field, esc, page, table, when
from gateway.web.widgets import Values, render_fields
from warmfleet.errors import InvalidInput


@handler
async def list_models(request: web.Request) -> web.Response:
    ctx, principal = console(request), principal_of(request)
    query = request.query.get("q", "").strip()
    entries = [e for e in ctx.catalog.visible_models(principal) if _matches(e, query)]
    rows = [
        (
            f'<a href="/models/{esc(e.spec.name)}">{esc(e.spec.name)}</a>',
            esc(e.spec.description),
            esc(e.spec.runner),
            esc(e.spec.visibility),
        )
        for e in entries
    ]
    body = f"""<h1>Models</h1>
<form class="search" role="search" method="get" action="/models">
<label for="q">Search models</label>
<input type="search" id="q" name="q" value="{esc(query)}" placeholder="name or description">
<button type="submit">Search</button></form>
{
        table(
            ("Model", "Description", "Family", "Visibility"),
            rows,
            empty=f"No model matches {query!r}." if query else "No models yet.",
        )
    }"""
    return html_response(page("Models", body, principal=principal, csrf=csrf_token(request), active="models"))


def _matches(entry: CatalogEntry, query: str) -> bool:
    q = query.lower()
    return not q or q in entry.spec.name.lower() or q in entry.spec.description.lower()


def _name(request: web.Request) -> str:
    return f"{request.match_info['owner']}/{request.match_info['name']}"


def _entry(request: web.Request, version: str) -> CatalogEntry:
    ctx, principal = console(request), principal_of(request)
    name = _name(request)
    if version:
        return ctx.catalog.visible_version(principal, name, version)
    return ctx.catalog.visible(principal, name)


@handler
async def model_page(request: web.Request) -> web.Response:
    entry = _entry(request, request.query.get("version", ""))
    return html_response(_model_html(request, entry, None, {}))


def _model_html(
    request: web.Request, entry: CatalogEntry, values: Values | None, errors: Mapping[str, str]
) -> str:
    ctx, principal = console(request), principal_of(request)
    name, spec = _name(request), entry.spec
    versions = ctx.catalog.visible_versions(principal, name)
    latest = versions[0].spec.version if versions else ""
    rows = [
        (
            f'<a href="/models/{esc(name)}?version={esc(v.spec.version)}">{esc(v.spec.version[:16])}</a>'
            + (" (latest)" if v.spec.version == latest else "")
            + (' <strong aria-current="true">shown</strong>' if v.spec.version == spec.version else ""),
            esc(when(v.created_at)),
            esc(v.spec.runner),
        )
        for v in versions
    ]
    body = f"""<h1>{esc(name)}</h1>
<p class="description">{esc(spec.description) or "No description."}</p>
<p class="meta">Family <code>{esc(spec.runner)}</code> · {esc(spec.visibility)}</p>
<section aria-labelledby="versions-h"><h2 id="versions-h">Versions</h2>
{table(("Version", "Created", "Family"), rows, empty="No version yet: push one with warmfleet push.")}
</section>
<section aria-labelledby="run-h" class="run"><h2 id="run-h">Run</h2>
{_run_form(request, entry, latest, values, errors) if entry.validator else "<p>Push a version to run it.</p>"}
</section>"""
    return page(name, body, principal=principal, csrf=csrf_token(request), active="models")


def _run_form(
    request: web.Request, entry: CatalogEntry, latest: str, values: Values | None, errors: Mapping[str, str]
) -> str:
    fields = fields_of(entry.input_schema)
    known = {f.name for f in fields} | {i.name for f in fields for i in f.items}
    stray = [
        f"{k}: {v}" if k else v for k, v in errors.items() if re.sub(r"\.\d+\.", ".{i}.", k) not in known
    ]
    summary = "".join(f'<p class="error" role="alert">{esc(s)}</p>' for s in stray)
    if errors and not stray:
        summary = '<p class="error" role="alert">The input was refused: see the field marked below.</p>'
    version = entry.spec.version if entry.spec.version != latest else ""
    return f"""<form method="post" action="/models/{esc(_name(request))}/predictions"
enctype="multipart/form-data" class="run-form" novalidate>
{csrf_field(csrf_token(request))}<input type="hidden" name="version" value="{esc(version)}">
<div class="form-errors">{summary}</div>
{render_fields(fields, values, errors)}
<div class="actions"><button type="submit" class="primary">Run</button>
<button type="reset">Reset</button></div>
</form>"""


async def _posted(request: web.Request) -> dict[str, list[str | Upload]]:
    """The posted form as lists of values by name; files as ``Upload``."""
    out: dict[str, list[str | Upload]] = {}
    for key, value in (await request.post()).items():
        if isinstance(value, web.FileField):
            value = Upload(value.file.read(), value.content_type or "", value.filename or "")
        out.setdefault(key, []).append(value)
    return out


@handler
async def run(request: web.Request) -> web.Response:
    ctx, principal = console(request), principal_of(request)
    values = await _posted(request)
    check_csrf(request, _first(values, "csrf"))
    version = _first(values, "version")
    entry = _entry(request, version)
    try:
        input: dict[str, Any] = input_of(fields_of(entry.input_schema), values)
        input = await ctx.resolver.resolve(principal, input, entry.input_schema)
        target = {"version": entry.spec.version} if version else {"model": _name(request)}
        pred = await ctx.predictions.create(principal, CreateRequest(input=input, source="web", **target))
    except InvalidInput as err:
        errors = {form_name(err.field): err.rule if form_name(err.field) else str(err)}
        return html_response(_model_html(request, entry, values, errors), 422)
    return redirect(f"/predictions/{pred.id}")


def _first(values: Mapping[str, list[str | Upload]], name: str) -> str:
    found = [v for v in values.get(name, ()) if isinstance(v, str)]
    return found[0] if found else ""


def register(app: web.Application) -> None:
    app.router.add_get("/models", list_models)
    app.router.add_get("/models/{owner}/{name}", model_page)
    app.router.add_post("/models/{owner}/{name}/predictions", run)
