"""Inpainting, outpainting, per-request LoRA adapters and ControlNet maps through the whole cluster:
gateway, router, a Ray node agent and the diffusion runner (tiny Stable Diffusion, its tiny ControlNets
and its tiny LoRA "tiny-style")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from runners.tiny_loras import LORA_WEIGHT_NAME
from tests.integration.conftest import SD
from tests.integration.test_images import generation, pixels, png
from warmfleet.v1 import predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration


def shapes(width: int = 64, height: int = 64) -> Image.Image:
    """A photo stand-in with clear edges: a dark square and a bright disc on grey."""
    size = min(width, height)
    yy, xx = np.mgrid[:height, :width]
    img = np.full((height, width, 3), 128, np.uint8)
    img[size // 8: size // 2, size // 8: size // 2] = 20
    img[(yy - 0.65 * height) ** 2 + (xx - 0.65 * width) ** 2 < (size / 5) ** 2] = 235
    return Image.fromarray(img)


def right_half_mask(width: int = 64, height: int = 64) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 2, 0, width, height))
    return mask


def lora_file(folder: Path) -> T.File:
    return T.File(data=(folder / LORA_WEIGHT_NAME).read_bytes(), content_type="application/octet-stream",
                  name="mine.safetensors")


async def generate(api, **fields) -> T.Prediction:
    pred = await api.predictions.CreatePrediction(generation(**fields), metadata=api.md)
    assert pred.status == T.STATUS_SUCCEEDED, pred.error
    return pred


async def refused(api, **fields) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.predictions.CreatePrediction(generation(**fields), metadata=api.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value


def assert_batch_equal(batched: T.File, alone: T.File) -> None:
    """Equal up to float rounding: a batch runs other CPU kernels than a call of one, and a last-bit
    difference can flip an 8-bit rounding (test_images measures 0-2 of 12288 values off by one level)."""
    diff = np.abs(pixels(batched) - pixels(alone))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.005, (diff.max(), (diff > 0).mean())


@pytest.fixture(scope="module")
def other_lora_dir(tiny_sd_paths, tmp_path_factory) -> Path:
    """A LoRA the version does not carry (another seed than tiny-style), for uploading."""
    from runners.tiny_loras import make_tiny_sd_lora

    return make_tiny_sd_lora(tmp_path_factory.mktemp("upload-lora") / "other", tiny_sd_paths["sd"], seed=2)


# Inpainting


async def test_inpainting_keeps_every_unmasked_pixel_and_repaints_the_masked_ones(api):
    """Tolerance outside the mask: none. The inpaint pipeline keeps that area in latent space only, and
    the tiny VAE's round trip would change it wholesale; the runner pastes the init image back there."""
    init = shapes()
    pred = await generate(api, seed=3, image=png(init), mask=png(right_half_mask()), strength=1.0)
    [out] = pred.output.files
    assert (out.width, out.height) == (64, 64)
    got, expected = pixels(out), np.asarray(init).astype(np.int16)
    assert np.array_equal(got[:, :32], expected[:, :32])
    assert np.abs(got[:, 32:] - expected[:, 32:]).mean() > 10


async def test_a_mask_of_another_size_is_resized_by_nearest_neighbour_then_thresholded_at_half(api):
    # 16x16, grey on both sides of 50%: 100 (kept) on the left, 160 (repainted) on the right.
    small = np.full((16, 16), 100, np.uint8)
    small[:, 8:] = 160
    init = png(shapes())
    resized = await generate(api, seed=4, image=init, mask=png(Image.fromarray(small)), num_inference_steps=5)
    exact = await generate(api, seed=4, image=init, mask=png(right_half_mask().convert("RGB")),
                           num_inference_steps=5)
    assert resized.output.files[0].data == exact.output.files[0].data


async def test_mask_blur_feathers_the_edge_and_keeps_pixels_far_from_it(api):
    init = shapes()
    sharp = await generate(api, seed=5, image=png(init), mask=png(right_half_mask()))
    soft = await generate(api, seed=5, image=png(init), mask=png(right_half_mask()), mask_blur=2)
    got, expected = pixels(soft.output.files[0]), np.asarray(init).astype(np.int16)
    assert np.array_equal(got[:, :24], expected[:, :24])  # a radius-2 blur reaches a few pixels only
    assert not np.array_equal(got[:, 28:32], expected[:, 28:32])
    assert soft.output.files[0].data != sharp.output.files[0].data


async def test_inpainting_with_a_controlnet_keeps_the_unmasked_pixels_and_is_steered(api):
    init, unit = shapes(), T.ControlNetUnit(image=png(shapes()), type="canny")
    plain = await generate(api, seed=6, image=png(init), mask=png(right_half_mask()))
    steered = await generate(api, seed=6, image=png(init), mask=png(right_half_mask()), controlnets=[unit])
    got = pixels(steered.output.files[0])
    assert np.array_equal(got[:, :32], np.asarray(init).astype(np.int16)[:, :32])
    assert steered.output.files[0].data != plain.output.files[0].data


@pytest.mark.parametrize("fields, field", [
    ({"mask": png(right_half_mask())}, "input.mask"),
    ({"outpaint": T.Outpaint(left=16)}, "input.outpaint"),
    ({"image": png(shapes()), "outpaint": T.Outpaint()}, "input.outpaint"),
    ({"image": png(shapes()), "outpaint": T.Outpaint(left=12)}, "input.outpaint.left"),
    ({"image": png(shapes()), "mask": T.File(data=b"GIF89a not really", name="m.gif")}, "input.mask"),
])
async def test_bad_inpainting_input_is_invalid_argument_naming_the_field(api, fields, field):
    assert field in (await refused(api, **fields)).details()


# Outpainting


async def test_outpainting_expands_the_image_and_keeps_the_original_area(api):
    init = shapes(72, 64)
    pred = await generate(api, seed=7, image=png(init), outpaint=T.Outpaint(left=16, top=8, bottom=8),
                          strength=1.0)
    [out] = pred.output.files
    assert (out.width, out.height) == (88, 80)
    got = pixels(out)
    assert np.array_equal(got[8:72, 16:88], np.asarray(init).astype(np.int16))
    edge_fill = np.repeat(np.asarray(init)[:, :1].astype(np.int16), 16, axis=1)
    assert np.abs(got[8:72, :16] - edge_fill).mean() > 10  # the new area is painted, not the fill


async def test_outpainting_past_the_largest_side_is_refused(api):
    err = await refused(api, image=png(shapes()), outpaint=T.Outpaint(left=2048))
    assert "input.outpaint" in err.details()


# LoRA adapters


async def test_a_lora_at_scale_zero_equals_none_and_other_scales_change_the_image(api):
    """Byte-equal at scale 0: peft adds the adapter's output times 0, exactly 0, to each projection."""
    plain = await generate(api, seed=11)
    zero = await generate(api, seed=11, loras=[T.LoraAdapter(weights="tiny-style", scale=0)])
    one = await generate(api, seed=11, loras=[T.LoraAdapter(weights="tiny-style")])
    minus = await generate(api, seed=11, loras=[T.LoraAdapter(weights="tiny-style", scale=-1)])
    assert zero.output.files[0].data == plain.output.files[0].data
    images = {plain.output.files[0].data, one.output.files[0].data, minus.output.files[0].data}
    assert len(images) == 3


async def test_a_loras_effect_never_reaches_a_later_request_without_it(api):
    before = await generate(api, seed=12, prompt="a quiet lake")
    with_lora = await generate(api, seed=12, prompt="a quiet lake",
                               loras=[T.LoraAdapter(weights="tiny-style")])
    after = await generate(api, seed=12, prompt="a quiet lake")
    assert with_lora.output.files[0].data != before.output.files[0].data
    assert after.output.files[0].data == before.output.files[0].data


async def test_an_uploaded_lora_equals_the_same_weights_by_name_and_another_differs(api, tiny_sd_lora_dir,
                                                                                   other_lora_dir):
    by_name = await generate(api, seed=13, loras=[T.LoraAdapter(weights="tiny-style")])
    uploaded = await generate(api, seed=13, loras=[T.LoraAdapter(file=lora_file(tiny_sd_lora_dir))])
    other = await generate(api, seed=13, loras=[T.LoraAdapter(file=lora_file(other_lora_dir))])
    assert uploaded.output.files[0].data == by_name.output.files[0].data
    assert other.output.files[0].data != by_name.output.files[0].data


async def test_the_json_form_takes_an_uploaded_lora_by_path_and_equals_the_typed_form(api, other_lora_dir):
    from google.protobuf import json_format, struct_pb2

    fields = json_format.ParseDict({"prompt": "a fox", "seed": 14, "loras": [{"scale": 0.5}]},
                                   struct_pb2.Struct())
    files = {"loras[0].file": lora_file(other_lora_dir)}
    as_json = T.PredictionInput(json=T.JsonInput(fields=fields, files=files))
    pred = await api.predictions.CreatePrediction(
        P.CreatePredictionRequest(model=SD, wait_s=60, input=as_json), metadata=api.md)
    assert pred.status == T.STATUS_SUCCEEDED, pred.error
    typed = await generate(api, prompt="a fox", seed=14,
                           loras=[T.LoraAdapter(file=lora_file(other_lora_dir), scale=0.5)])
    assert pred.output.files[0].data == typed.output.files[0].data


async def test_mixed_adapter_sets_sent_together_each_equal_the_same_request_alone(api, other_lora_dir):
    """Two requests per adapter set (and an inpainting pair), all sent at once: same-set requests share a
    call, different sets never do, and each image equals the same request run alone."""
    upload = lora_file(other_lora_dir)
    sets = [
        [],
        [T.LoraAdapter(weights="tiny-style")],
        [T.LoraAdapter(weights="tiny-style", scale=-1)],
        [T.LoraAdapter(file=upload)],
        [T.LoraAdapter(weights="tiny-style", scale=0.5), T.LoraAdapter(file=upload, scale=0.5)],
    ]
    inpaint = {"image": png(shapes()), "mask": png(right_half_mask())}
    requests = [{"seed": 20 + 2 * i + k, "loras": loras} for i, loras in enumerate(sets) for k in range(2)]
    requests += [{"seed": 40 + k, **inpaint, "loras": sets[1]} for k in range(2)]
    together = await asyncio.gather(*(generate(api, **fields) for fields in requests))
    assert max(p.metrics.batch_size for p in together) > 1, "no two predictions shared a call"
    assert all(p.metrics.batch_size <= 2 for p in together), "predictions of different keys shared a call"
    for fields, batched in zip(requests, together):
        alone = await generate(api, **fields)
        assert alone.metrics.batch_size == 1
        assert_batch_equal(batched.output.files[0], alone.output.files[0])
    plain = await generate(api, seed=22)  # set 1's first seed, without its adapter
    assert plain.output.files[0].data != together[2].output.files[0].data


async def test_an_unknown_adapter_or_a_file_that_is_no_lora_is_invalid_argument_naming_the_field(api):
    err = await refused(api, loras=[T.LoraAdapter(weights="no-such-style")])
    assert "input.loras[0].weights" in err.details()
    err = await refused(api, loras=[T.LoraAdapter(weights="tiny-style"), T.LoraAdapter(file=png(shapes()))])
    assert "input.loras[1].file" in err.details() and "safetensors" in err.details()


# ControlNet maps


async def test_return_maps_gives_the_images_then_each_units_map_in_order(api):
    photo = shapes()
    units = [T.ControlNetUnit(image=png(photo), type="canny"),
             T.ControlNetUnit(image=png(photo), type="depth", preprocessor="none")]
    pred = await generate(api, seed=15, num_outputs=2, output_format="webp", controlnets=units,
                          return_maps=True)
    files = pred.output.files
    assert [f.name for f in files] == ["output-0.webp", "output-1.webp", "map-0-canny.png", "map-1-depth.png"]
    assert [f.content_type for f in files] == ["image/webp"] * 2 + ["image/png"] * 2
    assert pred.metrics.image_count == 2
    canny_map = pixels(files[2])
    assert set(np.unique(canny_map)) <= {0, 255} and (canny_map == 255).any()  # edges, detected here
    assert np.array_equal(pixels(files[3]), np.asarray(photo).astype(np.int16))
    # The map is the one the unit used: given back as a ready map, it steers the same way.
    again = await generate(api, seed=15, num_outputs=2, output_format="webp", controlnets=[
        T.ControlNetUnit(image=files[2], type="canny", preprocessor="none"), units[1]])
    assert [f.data for f in again.output.files] == [f.data for f in files[:2]]
    without = await generate(api, seed=15, num_outputs=2, output_format="webp", controlnets=units)
    assert [f.data for f in without.output.files] == [f.data for f in files[:2]]
