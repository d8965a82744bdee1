"""The console's HTML: escaping, attributes, the page layout (header, navigation, sign-out) and the
small pieces every page uses. Pages are Python strings built here and in each page module; every value
that did not come from this code goes through ``esc``."""

from __future__ import annotations

import html
import time
from typing import Any, Iterable

from gateway.auth import Principal

STATIC = "/static/console"  # the console's script and style sheet (``gateway/web/static``)
NAV = (
    ("models", "/models", "Models"),
    ("predictions", "/predictions", "Predictions"),
    ("deployments", "/deployments", "Deployments"),
)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def shown_text(value: str) -> str:
    """Text as a page can hold it: HTML has no NUL (its parser drops it, and ``&#0;`` is U+FFFD), so it
    is U+FFFD in the page's HTML and in what the page's live stream appends alike."""
    return value.replace("\x00", "\ufffd")


def esc_pre(value: str) -> str:
    """Text for a ``<pre>``, kept exactly as the page's script would append it: the parser drops one
    newline right after ``<pre>`` (so one is always put there) and turns a carriage return into a
    newline unless it is a character reference."""
    return "\n" + esc(shown_text(value)).replace("\r", "&#13;")


def attrs(base: dict[str, Any] | None = None, **more: Any) -> str:
    """HTML attributes: None and False left out, True as a bare attribute (`` required``)."""
    out = []
    for key, value in {**(base or {}), **more}.items():
        if value is None or value is False:
            continue
        key = "class" if key == "class_" else key.replace("_", "-")
        out.append(f" {key}" if value is True else f' {key}="{esc(value)}"')
    return "".join(out)


def when(at: float | None) -> str:
    """A time as UTC, to the second ("2026-12-01 17:30:05 UTC"); "" for none."""
    if not at:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(token)}">'


def page(
    title: str, body: str, *, principal: Principal | None, csrf: str, active: str = "", status: int = 200
) -> str:
    """A whole page: the header (navigation and sign-out when signed in) over ``body``."""
    nav = ""
    if principal is not None:
        items = list(NAV) + ([("fleet", "/fleet", "Fleet")] if principal.is_admin else [])
        current = ' aria-current="page"'
        links = "".join(
            f'<a href="{href}"{current if key == active else ""}>{label}</a>' for key, href, label in items
        )
        nav = (
            f'<nav aria-label="Main">{links}</nav>'
            f'<form class="signout" method="post" action="/signout">{csrf_field(csrf)}'
            f'<span class="who">{esc(principal.name)} ({esc(principal.role.value)})</span>'
            f'<button type="submit">Sign out</button></form>'
        )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · warmfleet</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{STATIC}.css">
<script src="{STATIC}.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header><a class="brand" href="/models">warmfleet</a>{nav}</header>
<main id="main">
{body}
</main>
</body>
</html>"""


def table(
    headers: Iterable[str], rows: Iterable[Iterable[str]], caption: str = "", empty: str = "None."
) -> str:
    """A table of already-escaped cells, scrolling sideways by itself (not the page) where it is wider
    than the window; the scrolling box takes the focus, so a keyboard can scroll it too."""
    rows = list(rows)
    if not rows:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<div class="table-scroll" tabindex="0"><table>{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def badge(status: str, id_: str = "") -> str:
    ident = f' id="{id_}"' if id_ else ""
    return f'<span class="badge status-{esc(status)}"{ident}>{esc(status)}</span>'
