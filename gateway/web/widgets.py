"""The Run form's fields as HTML (``forms.Field`` to labelled inputs), with the values a re-shown form
keeps and the errors at their fields. Every field has a ``<label for>``; its help text is its
``aria-describedby``; an error is ``aria-invalid`` and said beside it."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import orjson

from gateway.web.forms import Field, Upload
from gateway.web.html import attrs, esc

Values = Mapping[str, Sequence["str | Upload"]]
TEMPLATE_INDEX = "__i__"  # the row index of an "add one" template, replaced by the script


def field_id(name: str) -> str:
    return "in-" + name.replace(".", "-").replace("{i}", TEMPLATE_INDEX)


def render_fields(
    fields: Sequence[Field], values: Values | None = None, errors: Mapping[str, str] | None = None
) -> str:
    """The fields' HTML: ``values`` (what was posted) over the defaults; ``errors`` by form name."""
    return "\n".join(render_field(f, f.name, values, errors or {}) for f in fields)


def render_field(f: Field, name: str, values: Values | None, errors: Mapping[str, str]) -> str:
    fid = field_id(name)
    error = errors.get(name, "")
    described = " ".join(x for x in (f"{fid}-help" if f.help else "", f"{fid}-error" if error else "") if x)
    common = {
        "id": fid,
        "name": name,
        "aria-describedby": described or None,
        "aria-invalid": "true" if error else None,
        "required": f.required and f.kind != "checkbox",
    }
    if f.kind == "objects":
        return _objects(f, name, values, errors)
    if f.kind == "object":
        return _object(f, name, values, errors)
    control = _CONTROLS[f.kind](f, name, _shown(f, name, values), common)
    # The mark is outside the label: the field's name is its label alone (``required`` says the rest).
    mark = ' <span class="req" aria-hidden="true" title="required">*</span>' if f.required else ""
    label = f'<div class="label-line"><label for="{fid}">{esc(f.label)}</label>{mark}</div>'
    if f.kind == "checkbox":
        label, control = "", f'{control} <label for="{fid}">{esc(f.label)}</label>'
    parts = [f'<div class="field field-{f.kind}" data-field="{esc(name)}">', label, control]
    if f.help:
        parts.append(f'<p class="help" id="{fid}-help">{esc(f.help)}</p>')
    parts.append(f'<p class="error" id="{fid}-error" role="alert">{esc(error)}</p>' if error else "")
    parts.append("</div>")
    return "".join(parts)


def _shown(f: Field, name: str, values: Values | None) -> Any:
    """What the control shows: the value posted (a re-shown form), else the default."""
    if values is not None:
        texts = [v for v in values.get(name, ()) if isinstance(v, str)]
        if f.kind == "checkbox":
            return bool(texts) and texts[-1] == "true"
        return texts[-1] if texts else ""
    if f.default is None:
        return False if f.kind == "checkbox" else ""
    if f.kind in ("lines", "numbers") and isinstance(f.default, list):
        return "\n".join(map(str, f.default))
    if f.kind == "json" or f.kind == "select":
        return f.default
    return f.default


def _text(f: Field, name: str, value: Any, common: dict) -> str:
    return f'<input type="text"{attrs(common, value=str(value))}>'


def _textarea(f: Field, name: str, value: Any, common: dict) -> str:
    rows = 4 if f.kind == "textarea" else 3
    return f'<textarea rows="{rows}"{attrs(common)}>{esc(str(value))}</textarea>'


def _number(f: Field, name: str, value: Any, common: dict) -> str:
    num = {"min": f.minimum, "max": f.maximum, "step": f.step if f.step is not None else "any"}
    box = f'<input type="number" inputmode="decimal"{attrs(common, value=_num(value), **num)}>'
    if not f.has_range:
        return box
    start = value if value not in ("", None) else f.minimum
    slider = {
        "id": common["id"] + "-range",
        "aria-label": f"{f.label} (slider)",
        "data-sync": common["id"],
        "tabindex": "-1",
    }
    return (
        f'<span class="range"><input type="range"{attrs(slider, value=_num(start), **num)}>{box}'
        f'<span class="bounds">{_num(f.minimum)} to {_num(f.maximum)}</span></span>'
    )


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def _select(f: Field, name: str, value: Any, common: dict) -> str:
    shown = (
        value if isinstance(value, str) and value.startswith(('"', "[", "{")) or value == "" else _json(value)
    )
    options = [] if f.required and f.default is not None else ['<option value="">(none)</option>']
    for opt in f.options:
        encoded = _json(opt)
        selected = " selected" if encoded == shown else ""
        options.append(f'<option value="{esc(encoded)}"{selected}>{esc(str(opt))}</option>')
    return f"<select{attrs(common)}>{''.join(options)}</select>"


def _checkbox(f: Field, name: str, value: Any, common: dict) -> str:
    # The hidden "false" goes first: an unticked box sends nothing, and a default of true must be undone.
    return (
        f'<input type="hidden" name="{esc(name)}" value="false">'
        f'<input type="checkbox"{attrs(common, value="true", checked=bool(value))}>'
    )


def _file(f: Field, name: str, value: Any, common: dict) -> str:
    url = {**common, "id": common["id"] + "-url", "aria-label": f"{f.label}: or a URL", "required": False}
    return (
        f'<input type="file" data-preview="{common["id"]}-preview"{attrs(common, accept=f.accept or None)}>'
        f'<input type="url" class="file-url" placeholder="or an http(s):// URL"'
        f"{attrs(url, value=str(value) if value else '')}>"
        f'<img class="preview" id="{common["id"]}-preview" alt="" hidden>'
    )


def _json_area(f: Field, name: str, value: Any, common: dict) -> str:
    text = (
        value
        if isinstance(value, str) and value.strip()[:1] in ("[", "{", '"') or value == ""
        else _json(value)
    )
    return f'<textarea rows="3" class="mono"{attrs(common)}>{esc(text)}</textarea>'


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


_CONTROLS = {
    "text": _text,
    "textarea": _textarea,
    "lines": _textarea,
    "numbers": _textarea,
    "integer": _number,
    "number": _number,
    "select": _select,
    "checkbox": _checkbox,
    "file": _file,
    "json": _json_area,
}


def _objects(f: Field, name: str, values: Values | None, errors: Mapping[str, str]) -> str:
    """An array of objects: a fieldset per row, an "Add one" button cloning the template row, "Remove"."""
    fid = field_id(name)
    rows = _posted_rows(name, values)
    body = [_row(f, name, i, values, errors) for i in rows]
    template = _row(f, name, TEMPLATE_INDEX, None, {})
    help_ = f'<p class="help" id="{fid}-help">{esc(f.help)}</p>' if f.help else ""
    error = errors.get(name, "")
    err = f'<p class="error" id="{fid}-error" role="alert">{esc(error)}</p>' if error else ""
    limit = f' data-max="{f.max_items}"' if f.max_items else ""
    return (
        f'<fieldset class="field field-objects" id="{fid}" data-field="{esc(name)}"{limit}>'
        f'<legend>{esc(f.label)}</legend>{help_}{err}<div class="rows">{"".join(body)}</div>'
        f"<template>{template}</template>"
        f'<button type="button" class="add-row" data-next="{len(rows) and max(rows) + 1}">'
        f"Add one to {esc(f.label.lower())}</button></fieldset>"
    )


def _object(f: Field, name: str, values: Values | None, errors: Mapping[str, str]) -> str:
    """One object: a fieldset of its fields, named under it ("outpaint.left")."""
    fid = field_id(name)
    inner = "".join(render_field(item, f"{name}.{item.name.rsplit('.', 1)[-1]}", values, errors) for item in f.items)
    help_ = f'<p class="help" id="{fid}-help">{esc(f.help)}</p>' if f.help else ""
    return (f'<fieldset class="field field-object" id="{fid}" data-field="{esc(name)}">'
            f"<legend>{esc(f.label)}</legend>{help_}{inner}</fieldset>")


def _row(f: Field, name: str, index: int | str, values: Values | None, errors: Mapping[str, str]) -> str:
    inner = "".join(
        render_field(item, item.name.replace("{i}", str(index)), values, errors) for item in f.items
    )
    return (
        f'<fieldset class="row"><legend>{esc(f.label)} {index if isinstance(index, str) else index + 1}'
        f'</legend>{inner}<button type="button" class="remove-row">Remove</button></fieldset>'
    )


def _posted_rows(name: str, values: Values | None) -> list[int]:
    if not values:
        return []
    prefix = name + "."
    return sorted(
        {
            int(k[len(prefix) :].split(".", 1)[0])
            for k in values
            if k.startswith(prefix) and k[len(prefix) :].split(".", 1)[0].isdigit()
        }
    )
