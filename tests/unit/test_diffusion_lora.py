"""Per-request LoRA adapters and inpainting inputs of the diffusion runner, without a model: the cache's
LRU policy, the LoRA file check, switching a (fake) pipeline's adapters between calls, the input rules,
and the mask, outpainting canvas and overlay rules."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from runners.diffusion.inpaint import apply_overlay, binary_mask, outpaint_canvas, overlay_mask
from runners.diffusion.loras import (
    LoraAdapters, LoraCache, LoraSource, adapter_name, named_source, probe_lora, uploaded_source,
)
from runners.diffusion.runner import DiffusionRunner
from runners.schema import InputValidator
from warmfleet.domain import FileData, RouteSpec
from warmfleet.errors import InvalidInput

MB = 1024 * 1024


# The cache policy


def test_the_least_recently_used_adapter_goes_first_at_the_count_bound():
    cache = LoraCache(max_count=2, max_bytes=100 * MB)
    for adapter in ("a", "b"):
        assert cache.make_room({adapter: MB}) == []
        cache.add(adapter, MB)
    assert cache.make_room({"a": MB}) == []  # a hit: now the most recent
    assert cache.make_room({"c": MB}) == ["b"]
    cache.add("c", MB)
    assert cache.ids == ["a", "c"] and len(cache) == 2


def test_the_byte_bound_evicts_as_many_as_it_takes():
    cache = LoraCache(max_count=10, max_bytes=10 * MB)
    for adapter in ("a", "b", "c"):
        cache.make_room({adapter: 3 * MB})
        cache.add(adapter, 3 * MB)
    assert cache.make_room({"big": 7 * MB}) == ["a", "b"]
    cache.add("big", 7 * MB)
    assert cache.ids == ["c", "big"] and cache.total_bytes == 10 * MB


def test_a_calls_own_adapters_are_never_evicted_even_past_the_bounds():
    cache = LoraCache(max_count=2, max_bytes=100 * MB)
    for adapter in ("a", "b"):
        cache.make_room({adapter: MB})
        cache.add(adapter, MB)
    assert cache.make_room({"a": MB, "b": MB, "c": MB}) == []  # a and b are wanted; c will overflow
    cache.add("c", MB)
    assert len(cache) == 3
    assert cache.make_room({"d": MB}) == ["a", "b"]  # the next call shrinks it back


@given(st.lists(st.lists(st.tuples(st.sampled_from("abcdefg"), st.integers(1, 6)), min_size=1, max_size=4),
                max_size=25),
       st.integers(1, 4), st.integers(1, 16))
def test_cache_guarantees(calls, max_count, max_bytes):
    """For any sequence of calls: a call's adapters are all loaded after it, the loaded set is within
    the bounds unless it is only the call's own, and an evicted adapter is never one the call wants."""
    cache = LoraCache(max_count, max_bytes)
    sizes: dict[str, int] = {}
    for call in calls:
        wanted = {adapter: sizes.setdefault(adapter, size) for adapter, size in call}
        evicted = cache.make_room(wanted)
        assert not set(evicted) & set(wanted)
        for adapter, size in wanted.items():
            if adapter not in cache:
                cache.add(adapter, size)
        assert set(wanted) <= set(cache.ids)
        within = len(cache) <= max_count and cache.total_bytes <= max_bytes
        assert within or set(cache.ids) == set(wanted)


def test_bounds_below_one_are_refused():
    with pytest.raises(ValueError):
        LoraCache(max_count=0)


# The LoRA file check


def safetensors_bytes(names: list[str]) -> bytes:
    """A .safetensors file of float32 tensors of one value each, built by hand (no torch)."""
    header = {name: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
              for i, name in enumerate(names)}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * (4 * len(names))


LORA_NAMES = ["unet.down_blocks.0.attn1.to_q.lora.down.weight",
              "unet.down_blocks.0.attn1.to_q.lora.up.weight"]


def test_a_safetensors_lora_passes_and_is_keyed_by_its_sha256():
    data = safetensors_bytes(LORA_NAMES)
    source = uploaded_source(FileData(data, "", "mine.safetensors"), "input.loras[0].file")
    again = uploaded_source(FileData(data, "", "renamed.safetensors"), "input.loras[1].file")
    assert source.id == again.id and source.id.startswith("sha256:") and source.size_bytes == len(data)


@pytest.mark.parametrize("data, rule", [
    (b"", "no data"),
    (b"PK\x03\x04 a zip, not safetensors", "not a .safetensors file"),
    (struct.pack("<Q", 10**9) + b"{}", "not a .safetensors file"),
    (safetensors_bytes([]), "no tensors"),
    (safetensors_bytes([*LORA_NAMES, "unet.conv_in.weight"]), "'unet.conv_in.weight' is not a LoRA weight"),
])
def test_a_file_that_is_not_a_lora_is_refused_naming_the_field(data, rule):
    with pytest.raises(InvalidInput) as err:
        probe_lora(FileData(data, "", "x.safetensors"), "input.loras[2].file")
    assert err.value.field == "input.loras[2].file" and rule in err.value.rule


def test_a_file_over_the_bound_is_refused():
    with pytest.raises(InvalidInput, match="at most 10 are accepted"):
        probe_lora(FileData(safetensors_bytes(LORA_NAMES), "", "x"), "input.loras[0].file", max_bytes=10)


def test_a_versions_adapter_is_a_file_or_a_folder_holding_one(tmp_path):
    (tmp_path / "style").mkdir()
    (tmp_path / "style" / "pytorch_lora_weights.safetensors").write_bytes(safetensors_bytes(LORA_NAMES))
    (tmp_path / "two").mkdir()
    for name in ("a", "b"):
        (tmp_path / "two" / f"{name}.safetensors").write_bytes(b"x")
    assert named_source("style", str(tmp_path / "style"), "options.loras.style").id == "name:style"
    with pytest.raises(InvalidInput, match="holds 2 .safetensors files"):
        named_source("two", str(tmp_path / "two"), "options.loras.two")
    with pytest.raises(InvalidInput, match="no such file"):
        named_source("gone", str(tmp_path / "gone"), "options.loras.gone")


# Switching a pipeline's adapters


class FakeLoraPipeline:
    """The part of a diffusers pipeline's LoRA interface that ``LoraAdapters`` uses, recording calls."""

    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.calls: list[tuple] = []

    def load_lora_weights(self, state, adapter_name):
        self.loaded.append(adapter_name)
        self.calls.append(("load", adapter_name))

    def delete_adapters(self, names):
        self.loaded = [n for n in self.loaded if n not in names]
        self.calls.append(("delete", tuple(names)))

    def get_list_adapters(self):
        return {"unet": list(self.loaded)}

    def set_adapters(self, names, weights):
        self.calls.append(("set", tuple(names), tuple(weights)))

    def enable_lora(self):
        self.calls.append(("enable",))

    def disable_lora(self):
        self.calls.append(("disable",))


def source(adapter_id: str) -> LoraSource:
    import safetensors.torch
    import torch

    data = safetensors.torch.save({"unet.x.lora.down.weight": torch.zeros(1)})
    return LoraSource(adapter_id, 100, "input.loras[0].weights", data=data)


def test_each_call_sets_exactly_its_adapters_and_a_call_without_disables_them():
    pipe = FakeLoraPipeline()
    adapters = LoraAdapters(pipe, LoraCache(max_count=1))
    a, b = source("name:a"), source("name:b")
    adapters.apply([], {})
    assert pipe.calls == []  # nothing was ever loaded: nothing to disable
    adapters.apply([("name:a", 0.5)], {"name:a": a})
    assert pipe.calls == [("load", adapter_name("name:a")), ("enable",),
                          ("set", (adapter_name("name:a"),), (0.5,))]
    pipe.calls.clear()
    adapters.apply([], {})
    assert pipe.calls == [("disable",)]
    pipe.calls.clear()
    adapters.apply([("name:b", 1.0)], {"name:b": b})  # the bound is one: a is unloaded
    assert pipe.calls[:2] == [("delete", (adapter_name("name:a"),)), ("load", adapter_name("name:b"))]
    assert pipe.loaded == [adapter_name("name:b")]
    pipe.calls.clear()
    adapters.apply([("name:b", 2.0)], {"name:b": b})  # cached: set at the new scale, not loaded again
    assert pipe.calls == [("enable",), ("set", (adapter_name("name:b"),), (2.0,))]


def test_weights_the_pipeline_refuses_are_invalid_input_and_nothing_stays_half_loaded():
    class Refusing(FakeLoraPipeline):
        def load_lora_weights(self, state, adapter_name):
            self.loaded.append(adapter_name)  # the UNet half, say, before the text encoder's refusal
            raise ValueError("size mismatch for to_q.lora_A")

    pipe = Refusing()
    adapters = LoraAdapters(pipe, LoraCache())
    with pytest.raises(InvalidInput) as err:
        adapters.apply([("sha256:x", 1.0)], {"sha256:x": source("sha256:x")})
    assert err.value.field == "input.loras[0].weights" and "size mismatch" in err.value.rule
    assert pipe.loaded == [] and "sha256:x" not in adapters.cache


# The input rules, as the gateway checks them


def png(image: Image.Image) -> FileData:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return FileData(buffer.getvalue(), "image/png", "in.png")


SPEC = RouteSpec("t/sd", "diffusion", options={"steps": 4, "loras": {"tiny-style": "/nowhere"}})
IMAGE = png(Image.new("RGB", (64, 64), (90, 90, 90)))
LORA_FILE = FileData(safetensors_bytes(LORA_NAMES), "", "mine.safetensors")


@pytest.fixture(scope="module")
def validator() -> InputValidator:
    return InputValidator(DiffusionRunner.input_schema(SPEC),
                          check=lambda i: DiffusionRunner.check_input(SPEC, i))


@pytest.mark.parametrize("fields, field, rule", [
    ({"mask": IMAGE}, "input.mask", "needs an image"),
    ({"outpaint": {"left": 8}}, "input.outpaint", "needs an image"),
    ({"image": IMAGE, "outpaint": {}}, "input.outpaint", "adds no pixels"),
    ({"image": IMAGE, "outpaint": {"left": 12}}, "input.outpaint.left", "multiple of 8"),
    ({"image": IMAGE, "outpaint": {"left": 8, "fill": "noise"}}, "input.outpaint.fill", "is not one of"),
    ({"mask_blur": 65}, "input.mask_blur", "maximum"),
    ({"loras": [{"weights": "unknown"}]}, "input.loras[0].weights", "is not one of"),
    ({"loras": [{"scale": 1}]}, "input.loras[0].weights", "one of the two"),
    ({"loras": [{"weights": "tiny-style", "file": LORA_FILE}]}, "input.loras[0].weights", "one of the two"),
    ({"loras": [{"weights": "tiny-style"}, {"weights": "tiny-style"}]}, "input.loras[1].weights", "again"),
    ({"loras": [{"weights": "tiny-style", "scale": 4.5}]}, "input.loras[0].scale", "maximum"),
    ({"loras": [{"file": FileData(b"not a lora", "", "x")}]}, "input.loras[0].file", "not a .safetensors"),
    ({"loras": [{"file": LORA_FILE}] * 5}, "input.loras", "too long"),
])
def test_bad_inpainting_and_lora_input_names_the_field(validator, fields, field, rule):
    with pytest.raises(InvalidInput) as err:
        validator.validate({"prompt": "a fox", **fields})
    assert err.value.field == field and rule in err.value.rule, str(err.value)


def test_good_inpainting_and_lora_input_passes(validator):
    filled = validator.validate({"prompt": "a fox", "image": IMAGE, "mask": IMAGE, "mask_blur": 4,
                                 "outpaint": {"left": 8, "bottom": 16, "fill": "blur"}, "return_maps": True,
                                 "loras": [{"weights": "tiny-style", "scale": -1.5}, {"file": LORA_FILE}]})
    assert filled["loras"][1]["file"] is LORA_FILE and filled["return_maps"] is True


# Masks, canvases and the overlay


def test_a_mask_of_another_size_is_resized_by_nearest_neighbour_and_thresholded_at_half():
    grey = np.array([[0, 127], [128, 255]], np.uint8)  # 2x2: one pixel either side of 50%
    mask = np.asarray(binary_mask(Image.fromarray(grey), (4, 4)))
    assert mask.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [255, 255, 255, 255], [255, 255, 255, 255]]


def test_a_mask_in_another_mode_is_made_greyscale_first():
    rgb = Image.new("RGB", (8, 8), (255, 255, 255))
    rgb.paste((0, 0, 0), (0, 0, 4, 8))
    mask = np.asarray(binary_mask(rgb.convert("P"), (8, 8)))
    assert (mask[:, :4] == 0).all() and (mask[:, 4:] == 255).all()


def test_outpainting_places_the_image_and_whitens_only_the_new_area():
    image = Image.fromarray(np.arange(16 * 24 * 3, dtype=np.uint8).reshape(16, 24, 3))
    canvas, mask = outpaint_canvas(image, {"left": 8, "right": 0, "top": 16, "bottom": 8}, "edge")
    assert canvas.size == mask.size == (32, 40)
    pixels, m = np.asarray(canvas), np.asarray(mask)
    assert (pixels[16:32, 8:32] == np.asarray(image)).all()
    assert (m[16:32, 8:32] == 0).all() and (m[:16] == 255).all() and (m[:, :8] == 255).all()
    assert (pixels[16:32, 0] == np.asarray(image)[:, 0]).all()  # edge: the border stretched outward


def test_a_mask_given_with_outpainting_marks_the_original_too():
    image = Image.new("RGB", (16, 16), (50, 60, 70))
    inner = Image.new("L", (16, 16), 0)
    inner.paste(255, (0, 0, 8, 16))
    canvas, mask = outpaint_canvas(image, {"right": 8}, "blur", inner)
    m = np.asarray(mask)
    assert (m[:, :8] == 255).all() and (m[:, 8:16] == 0).all() and (m[:, 16:] == 255).all()
    assert (np.asarray(canvas)[:, :16] == (50, 60, 70)).all()  # blur fills only the new area


def test_the_overlay_keeps_every_black_pixel_exactly_and_feathering_blends_the_edge():
    init = Image.new("RGB", (32, 32), (10, 20, 30))
    generated = Image.new("RGB", (32, 32), (200, 100, 0))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (16, 0, 32, 32))
    sharp = np.asarray(apply_overlay(generated, init, overlay_mask(mask, 0)))
    assert (sharp[:, :16] == (10, 20, 30)).all() and (sharp[:, 16:] == (200, 100, 0)).all()
    soft = np.asarray(apply_overlay(generated, init, overlay_mask(mask, 2)))
    assert (soft[:, :8] == (10, 20, 30)).all() and (soft[:, 24:] == (200, 100, 0)).all()
    assert 10 < soft[0, 15, 0] < 200  # the edge blends
