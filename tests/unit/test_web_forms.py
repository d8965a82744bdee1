"""The console's Run form from input schemas (``gateway.web.forms``, ``widgets``): every family's schema
and a Cog model's (``allOf`` and ``nullable`` wrappers, ``x-order``) make the same kinds of fields, and a
posted form comes back as the input the core validates."""

from __future__ import annotations

import pytest

from gateway.web.forms import Upload, fields_of, flatten, form_name, input_of
from gateway.web.widgets import render_fields
from runners.registry import runner_class
from warmfleet.domain import RouteSpec
from warmfleet.errors import InvalidInput


def schema_of(runner: str, **options) -> dict:
    return runner_class(runner).input_schema(RouteSpec(f"t/{runner}", runner, options=options))


def by_name(fields) -> dict:
    return {f.name: f for f in fields}


def test_every_family_gives_a_field_per_property_and_no_generic_json_where_a_widget_fits():
    for runner, options in (
        ("echo", {}),
        ("llm", {}),
        ("diffusion", {"controlnets": {"canny": "/x"}}),
        ("upscale", {}),
    ):
        schema = schema_of(runner, **options)
        fields = by_name(fields_of(schema))
        assert set(fields) == set(schema["properties"]), runner
        # JSON only for an object of no fixed fields (a JSON Schema, a logit bias): no widget fits those.
        free = {name for name, prop in schema["properties"].items()
                if prop.get("type") == "object" and "properties" not in prop}
        assert {f.name for f in fields.values() if f.kind == "json"} == free, runner


def test_diffusion_fields_have_sliders_steps_selects_files_and_controlnet_rows():
    fields = by_name(fields_of(schema_of("diffusion", controlnets={"canny": "/x"})))
    assert fields["prompt"].kind == "textarea" and fields["prompt"].required
    width = fields["width"]
    assert (width.kind, width.minimum, width.maximum, width.step, width.has_range) == (
        "integer",
        64,
        2048,
        8,
        True,
    )
    assert fields["guidance_scale"].step == pytest.approx(0.5)  # (max - min) / 100: no multipleOf
    assert not fields["seed"].has_range  # 0 to 2^32: a slider could not point at one seed
    assert fields["scheduler"].kind == "select" and "Euler a" in fields["scheduler"].options
    assert fields["scheduler"].default == "DPM++ 2M"
    assert fields["image"].kind == "file" and fields["image"].accept == "image/*"
    units = fields["controlnets"]
    assert units.kind == "objects"
    assert {i.name: i.kind for i in units.items}["controlnets.{i}.image"] == "file"
    assert {i.name: i.kind for i in units.items}["controlnets.{i}.type"] == "select"
    assert fields["guess_mode"].kind == "checkbox"


def test_llm_fields_messages_are_rows_and_stop_sequences_lines():
    fields = by_name(fields_of(schema_of("llm")))
    assert fields["messages"].kind == "objects" and fields["messages"].max_items == 1000
    assert fields["stop_sequences"].kind == "lines"
    assert fields["temperature"].default == 0.7 and fields["temperature"].has_range
    assert fields["top_p"].minimum == 0 and fields["top_p"].maximum == 1  # exclusiveMinimum as the bound


def test_a_cog_schema_with_allof_refs_nullable_types_and_x_order():
    schema = {
        "type": "object",
        "properties": {
            "width": {
                "type": ["integer", "null"],
                "minimum": 1,
                "maximum": 10,
                "x-order": 1,
                "title": "Width",
            },
            "color": {"allOf": [{"enum": ["red", "blue"], "type": "string"}], "default": "red", "x-order": 0},
            "image": {"type": "string", "format": "uri", "x-order": 2, "description": "An image"},
            "flag": {"anyOf": [{"type": "boolean"}, {"type": "null"}], "x-order": 3},
        },
    }
    fields = fields_of(schema)
    assert [f.name for f in fields] == ["color", "width", "image", "flag"]
    assert [f.kind for f in fields] == ["select", "integer", "file", "checkbox"]
    assert fields[0].options == ("red", "blue") and fields[0].default == "red"
    assert flatten(schema["properties"]["width"])["type"] == "integer"


def test_a_posted_form_becomes_typed_input_and_empty_fields_are_left_to_their_defaults():
    fields = fields_of(schema_of("diffusion", controlnets={"canny": "/x"}))
    form = {
        "prompt": ["a fox"],
        "negative_prompt": [""],
        "width": ["64"],
        "guidance_scale": ["7.5"],
        "scheduler": ['"Euler a"'],
        "seed": [""],
        "guess_mode": ["false", "true"],
        "image": [Upload(b"", "application/octet-stream", ""), ""],
        "controlnets.0.image": [Upload(b"\x89PNG", "image/png", "edge.png"), ""],
        "controlnets.0.type": ['"canny"'],
        "controlnets.0.conditioning_scale": ["0.5"],
        "controlnets.3.image": [Upload(b"", "", ""), ""],
        "controlnets.3.type": [""],
    }  # an empty row
    got = input_of(fields, form)
    assert got == {
        "prompt": "a fox",
        "width": 64,
        "guidance_scale": 7.5,
        "scheduler": "Euler a",
        "guess_mode": True,
        "controlnets": [
            {"image": "data:image/png;base64,iVBORw==", "type": "canny", "conditioning_scale": 0.5}
        ],
    }


def test_an_unticked_box_is_false_and_a_url_stands_for_a_file():
    fields = fields_of(
        {
            "type": "object",
            "properties": {
                "flag": {"type": "boolean", "default": True},
                "image": {"type": "string", "format": "uri"},
                "stops": {"type": "array", "items": {"type": "string"}},
                "extra": {"type": "object"},
            },
        }
    )
    got = input_of(
        fields,
        {
            "flag": ["false"],
            "image": [Upload(b""), "https://example.com/a.png"],
            "stops": ["END\n\n###\n"],
            "extra": ['{"a": [1, 2]}'],
        },
    )
    assert got == {
        "flag": False,
        "image": "https://example.com/a.png",
        "stops": ["END", "###"],
        "extra": {"a": [1, 2]},
    }


@pytest.mark.parametrize(
    "kind, text, rule",
    [
        ("integer", "1.5", "must be a whole number"),
        ("integer", "ten", "must be a whole number"),
        ("number", "x", "must be a number"),
        ("number", "inf", "must be a finite number"),
        ("object", "{nope", "must be JSON"),
    ],
)
def test_what_cannot_be_parsed_is_refused_naming_the_field(kind, text, rule):
    fields = fields_of({"type": "object", "properties": {"v": {"type": kind}}})
    with pytest.raises(InvalidInput) as err:
        input_of(fields, {"v": [text]})
    assert err.value.field == "input.v" and rule in err.value.rule


def test_error_fields_map_to_form_names():
    assert form_name("input.controlnets[0].image") == "controlnets.0.image"
    assert form_name("input.text") == "text"
    assert form_name("model") == ""


def test_the_rendered_form_labels_every_control_fills_defaults_and_marks_errors():
    fields = fields_of(schema_of("echo"))
    html = render_fields(fields, None, {"chunks": "0 is less than the minimum of 1"})
    for name in ("text", "delay_ms", "chunks"):
        assert f'<label for="in-{name}">' in html and f'id="in-{name}"' in html and f'name="{name}"' in html
    assert 'type="range"' in html and 'min="1"' in html and 'max="1000"' in html
    assert (
        'id="in-chunks" name="chunks" aria-describedby="in-chunks-help in-chunks-error" aria-invalid="true"'
        in html
    )
    assert 'value="1"' in html  # chunks' default
    assert "<textarea" in html  # text: long text
    assert "0 is less than the minimum of 1" in html and "Stream the text as this many" in html


def test_a_rendered_form_escapes_what_it_shows():
    fields = fields_of(
        {
            "type": "object",
            "properties": {"t": {"type": "string", "description": "<script>x</script>", "default": '"><b>'}},
        }
    )
    html = render_fields(fields)
    assert "<script>" not in html and "<b>" not in html and "&lt;script&gt;" in html


def test_an_array_of_objects_renders_its_rows_and_a_template_to_add_one():
    fields = fields_of(schema_of("diffusion", controlnets={"canny": "/x"}))
    units = next(f for f in fields if f.name == "controlnets")
    html = render_fields([units], {"controlnets.0.type": ['"canny"']}, {})
    assert (
        'name="controlnets.0.type"' in html
        and "<template>" in html
        and 'name="controlnets.__i__.image"' in html
    )
    assert 'class="add-row"' in html and 'data-next="1"' in html


def test_an_object_input_is_a_fieldset_of_its_own_fields_and_comes_back_as_one_object():
    schema = {"type": "object", "properties": {"outpaint": {
        "type": "object", "description": "Pixels to add.", "properties": {
            "left": {"type": "integer", "minimum": 0, "maximum": 512, "default": 0},
            "top": {"type": "integer", "minimum": 0, "maximum": 512, "default": 0}}}}}
    fields = fields_of(schema)
    (outpaint,) = fields
    assert outpaint.kind == "object" and [f.name for f in outpaint.items] == ["outpaint.left", "outpaint.top"]
    html = render_fields(fields)
    assert '<fieldset class="field field-object" id="in-outpaint"' in html
    assert 'name="outpaint.left"' in html and '<label for="in-outpaint-top">Top</label>' in html
    assert input_of(fields, {"outpaint.left": ["64"], "outpaint.top": [""]}) == {"outpaint": {"left": 64}}
    assert input_of(fields, {"outpaint.left": [""], "outpaint.top": [""]}) == {}
    assert input_of(fields, {"outpaint.left": ["0"], "outpaint.top": ["0"]}) == {}  # the defaults, as shown


def test_an_array_of_numbers_is_one_number_a_line_and_a_bad_line_is_named():
    fields = fields_of({"type": "object", "properties": {"stop_token_ids": {
        "type": "array", "items": {"type": "integer"}}}})
    assert fields[0].kind == "numbers"
    assert input_of(fields, {"stop_token_ids": ["128001\n\n128009\n"]}) == {"stop_token_ids": [128001, 128009]}
    with pytest.raises(InvalidInput) as caught:
        input_of(fields, {"stop_token_ids": ["1\ntwo"]})
    assert caught.value.field == "input.stop_token_ids[1]"
