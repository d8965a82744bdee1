"""Console pages: the caller's predictions (a list with a status filter) and a prediction's page (a
prediction's ``urls.web``): its status, output, progress, logs, metrics, input, a Cancel button and the
same input as code. While it runs, the page follows it live (``live``: Server-Sent Events); when it ends,
the result part is the very HTML ``result_html`` renders here, sent in the last event."""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web

from gateway.web.context import (
    base_url,
    check_csrf,
    console,
    csrf_token,
    handler,
    html_response,
    principal_of,
    redirect,
)
from gateway.web.html import badge, csrf_field, esc, esc_pre, page, table, when
from gateway.web.snippets import snippets
from warmfleet.domain import FileData, Prediction, Status
from warmfleet.errors import NotFound

PAGE_SIZE = 50
STATUSES = tuple(s.value for s in Status)


@handler
async def list_predictions(request: web.Request) -> web.Response:
    ctx, principal = console(request), principal_of(request)
    wanted = request.query.get("status", "")
    wanted = wanted if wanted in STATUSES else ""
    preds, cursor = await ctx.predictions.list(principal, PAGE_SIZE, request.query.get("cursor", ""))
    shown = [p for p in preds if not wanted or p.status.value == wanted]
    rows = [
        (
            f'<a href="/predictions/{esc(p.id)}"><code>{esc(p.id[:12])}</code></a>',
            f'<a href="/models/{esc(p.model)}">{esc(p.model)}</a>',
            badge(p.status.value),
            esc(when(p.created_at)),
            esc(_seconds(p.metrics.total_time_s)),
        )
        for p in shown
    ]
    options = "".join(
        f'<option value="{s}"{" selected" if s == wanted else ""}>{s}</option>' for s in STATUSES
    )
    more = ""
    if cursor:
        more = f'<p><a href="/predictions?{urlencode({"cursor": cursor, "status": wanted})}">Older</a></p>'
    body = f"""<h1>Predictions</h1>
<form class="filters" method="get" action="/predictions">
<label for="status-filter">Status</label>
<select id="status-filter" name="status"><option value="">any</option>{options}</select>
<button type="submit">Filter</button></form>
<div id="predictions">{
        table(
            ("Prediction", "Model", "Status", "Created", "Total time"),
            rows,
            empty="No predictions here yet: run a model from its page.",
        )
    }</div>{more}"""
    return html_response(
        page("Predictions", body, principal=principal, csrf=csrf_token(request), active="predictions")
    )


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f} s"


@handler
async def prediction_page(request: web.Request) -> web.Response:
    ctx, principal = console(request), principal_of(request)
    pred = await ctx.predictions.get(principal, request.match_info["id"])
    live = not pred.status.is_terminal
    cancel = (
        (
            f'<form method="post" action="/predictions/{esc(pred.id)}/cancel" id="cancel-form">'
            f'{csrf_field(csrf_token(request))}<button type="submit">Cancel</button></form>'
        )
        if live
        else ""
    )
    grpc_target = f"{request.url.host}:{ctx.grpc_port}"
    tabs = snippets(base_url(request), grpc_target, pred.model, pred.input)
    version = f" · version <code>{esc(pred.version[:16])}</code>" if pred.version else ""
    events = f' data-events="/predictions/{esc(pred.id)}/events"' if live else ""
    body = f"""<h1>Prediction <code>{esc(pred.id)}</code></h1>
<p class="meta">Model <a href="/models/{esc(pred.model)}">{esc(pred.model)}</a>{version}
· created {esc(when(pred.created_at))}</p>
<div id="live"{events}>
<div class="status-line"><span>Status</span> {badge(pred.status.value, "status")} {cancel}</div>
<div id="progress-box" hidden><label for="progress">Progress</label>
<progress id="progress" max="1" value="0"></progress> <span id="eta" aria-live="polite"></span></div>
{result_html(pred)}
<section aria-labelledby="logs-h"><h2 id="logs-h">Logs</h2>
<pre id="logs" class="logs" tabindex="0">{esc_pre(chr(10).join(pred.logs))}</pre></section>
</div>
<section aria-labelledby="input-h"><h2 id="input-h">Input</h2>{_input_table(pred.input)}</section>
<section aria-labelledby="code-h"><h2 id="code-h">Code</h2>{_tabs(tabs)}</section>"""
    return html_response(
        page(
            f"Prediction {pred.id}", body, principal=principal, csrf=csrf_token(request), active="predictions"
        )
    )


def result_html(pred: Prediction) -> str:
    """The result part of a prediction's page: output (text, images), error and metrics, as they are now."""
    out = pred.output
    text, images = "", []
    if out is not None:
        text = _text_of(out.value)
        images = [_file_html(pred.id, i, f) for i, f in enumerate(out.files)]
    error = f'<p class="error" id="prediction-error" role="alert">{esc(pred.error)}</p>' if pred.error else ""
    metrics = _metrics_html(pred) if pred.status.is_terminal else ""
    return f"""<section id="result" aria-labelledby="output-h" data-status="{esc(pred.status.value)}">
<h2 id="output-h">Output</h2>{error}
<pre id="output-text" class="output" aria-live="polite">{esc_pre(text)}</pre>
<div id="output-images" class="images">{"".join(images)}</div>{metrics}</section>"""


def _text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _file_html(prediction_id: str, index: int, f: FileData) -> str:
    url = f"/predictions/{esc(prediction_id)}/files/{index}"
    if f.content_type.startswith("image/"):
        size = f' width="{f.width}" height="{f.height}"' if f.width and f.height else ""
        return f'<a href="{url}"><img src="{url}" alt="output {index + 1}"{size}></a>'
    return f'<a href="{url}">output file {index + 1} ({esc(f.content_type or "bytes")})</a>'


def _metrics_html(pred: Prediction) -> str:
    figures = {k: v for k, v in dataclasses.asdict(pred.metrics).items() if v not in (None, {}, "")}
    for name, value in pred.metrics.custom.items():
        figures[name] = value
    figures.pop("custom", None)
    items = "".join(
        f"<dt>{esc(k.replace('_', ' '))}</dt><dd>{esc(_figure(v))}</dd>" for k, v in figures.items()
    )
    timeline = (("created", pred.created_at), ("started", pred.started_at), ("completed", pred.completed_at))
    times = "".join(f"<dt>{name}</dt><dd>{esc(when(at))}</dd>" for name, at in timeline if at)
    return (
        f'<h3>Metrics</h3><dl id="metrics" class="metrics">{items}</dl>'
        f'<h3>Timeline</h3><dl class="metrics">{times}</dl>'
    )


def _figure(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _input_table(input: dict[str, Any]) -> str:
    rows = [(f"<code>{esc(k)}</code>", _input_value(v)) for k, v in input.items()]
    return table(("Field", "Value"), rows, empty="No input.")


def _input_value(value: Any) -> str:
    if isinstance(value, FileData):
        return esc(
            f"a file: {value.name or 'unnamed'} ({value.content_type or 'bytes'}, {len(value.data)} bytes)"
        )
    if isinstance(value, str):
        return esc(value if len(value) <= 300 else value[:300] + f"… ({len(value)} characters)")
    return f"<code>{esc(orjson.dumps(value, default=str).decode())}</code>"


def _tabs(tabs: dict[str, str]) -> str:
    """Tabs of code: a tab list (buttons the script switches, arrow keys too) over one panel each."""
    buttons, panels = [], []
    for i, (name, code) in enumerate(tabs.items()):
        tid = f"tab-{i}"
        buttons.append(
            f'<button type="button" role="tab" id="{tid}" aria-controls="{tid}-panel" '
            f'aria-selected="{"true" if i == 0 else "false"}" tabindex="{0 if i == 0 else -1}">'
            f"{esc(name)}</button>"
        )
        panels.append(
            f'<div role="tabpanel" id="{tid}-panel" aria-labelledby="{tid}"{"" if i == 0 else " hidden"}>'
            f'<pre class="code" tabindex="0"><code>{esc(code)}</code></pre></div>'
        )
    tablist = f'<div role="tablist" aria-label="Code">{"".join(buttons)}</div>'
    return f'<div class="tabs">{tablist}{"".join(panels)}</div>'


@handler
async def cancel(request: web.Request) -> web.Response:
    ctx, principal = console(request), principal_of(request)
    form = await request.post()
    check_csrf(request, form.get("csrf"))
    pred = await ctx.predictions.cancel(principal, request.match_info["id"])
    return redirect(f"/predictions/{pred.id}")


@handler
async def output_file(request: web.Request) -> web.Response:
    ctx, principal = console(request), principal_of(request)
    pred = await ctx.predictions.get(principal, request.match_info["id"])
    files = pred.output.files if pred.output is not None else []
    index = request.match_info["index"]
    if not index.isdigit() or int(index) >= len(files):
        raise NotFound(f"prediction {pred.id!r} has no output file {index}")
    f = files[int(index)]
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    if not f.content_type.startswith("image/"):  # never rendered as a page of this origin
        headers["Content-Disposition"] = "attachment"
    return web.Response(
        body=f.data, content_type=f.content_type or "application/octet-stream", headers=headers
    )


def register(app: web.Application) -> None:
    app.router.add_get("/predictions", list_predictions)
    app.router.add_get("/predictions/{id}", prediction_page)
    app.router.add_post("/predictions/{id}/cancel", cancel)
    app.router.add_get("/predictions/{id}/files/{index}", output_file)
