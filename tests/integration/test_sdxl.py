"""SDXL through the whole cluster: gateway, router, a Ray node agent and the diffusion runner's SDXL family
(tiny SDXL base, its refiner, its canny ControlNet and its LoRA "tiny-style", ``runners.tiny_sdxl``)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from PIL import Image

from runners.diffusion.schedulers import SCHEDULERS
from tests.integration.conftest import SD, SDXL
from tests.integration.test_images import assert_differ, only, pixels, png, shapes
from tests.integration.test_inpaint_lora import assert_batch_equal, right_half_mask
from warmfleet.v1 import predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration

# The base's share of the schedule. At 0.5 of 4 steps of the default DPM++ 2M (timesteps 801, 601, 401,
# 201) the base runs the two at or above 500 and the refiner the two below. At the default 0.8 the
# refiner would get none of those (all are at or above 200); with Euler (751, 501, 251, 1) it gets
# timestep 1 only, where the tiny refiner moves the image by a fraction of a level.
HALF = 0.5


def generation(wait_s: float = 60.0, model: str = SDXL, **fields) -> P.CreatePredictionRequest:
    fields.setdefault("prompt", "a red fox in the snow")
    return P.CreatePredictionRequest(
        model=model, wait_s=wait_s, input=T.PredictionInput(image_generation=T.ImageGenerationInput(**fields)))


async def generate(api, **fields) -> T.Prediction:
    pred = await api.predictions.CreatePrediction(generation(**fields), metadata=api.md)
    assert pred.status == T.STATUS_SUCCEEDED, pred.error
    return pred


async def refused(api, **fields) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.predictions.CreatePrediction(generation(**fields), metadata=api.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value.details()


async def test_sdxl_generates_64x64_with_and_without_the_refiner_and_the_refiner_changes_it(api):
    plain = only(await generate(api, seed=42))
    events = [e async for e in api.predictions.CreateAndStreamPrediction(
        generation(wait_s=0, seed=42, refine=True, high_noise_frac=HALF), metadata=api.md)]
    assert events[-1].completed.status == T.STATUS_SUCCEEDED, events[-1].completed.error
    refined = only(events[-1].completed)
    for f in (plain, refined):
        assert (f.content_type, f.width, f.height) == ("image/png", 64, 64)
        assert pixels(f).std() > 10  # a picture, not the flat image NaN latents decode to
    # One count over both calls: the base's 2 steps, then the refiner's 2.
    progress = [(e.progress.step, e.progress.total) for e in events if e.WhichOneof("kind") == "progress"]
    assert progress == [(i, 4) for i in range(1, 5)]
    assert_differ(refined, plain, "with the refiner and without")
    euler = only(await generate(api, seed=42, scheduler="Euler"))
    default_split = only(await generate(api, seed=42, scheduler="Euler", refine=True))  # 0.8: timestep 1
    assert default_split.data != euler.data


async def test_the_same_seed_gives_the_same_bytes_and_another_seed_differs(api):
    for refine in (False, True):
        first = only(await generate(api, seed=7, refine=refine, high_noise_frac=HALF))
        again = only(await generate(api, seed=7, refine=refine, high_noise_frac=HALF))
        other = only(await generate(api, seed=8, refine=refine, high_noise_frac=HALF))
        assert first.data == again.data
        assert_differ(first, other, f"seeds 7 and 8 (refine {refine})")


async def test_a_batched_prediction_equals_the_same_request_alone_with_and_without_the_refiner(api):
    for refine in (False, True):
        seeds = [101, 102, 103, 104]
        together = await asyncio.gather(*(generate(api, seed=s, prompt=f"fox number {s}", refine=refine,
                                                   high_noise_frac=HALF) for s in seeds))
        assert max(p.metrics.batch_size for p in together) > 1, "the predictions did not share a call"
        for seed, batched in zip(seeds, together):
            alone = await generate(api, seed=seed, prompt=f"fox number {seed}", refine=refine,
                                   high_noise_frac=HALF)
            assert alone.metrics.batch_size == 1
            assert_batch_equal(only(batched), only(alone))


async def test_the_second_prompt_reaches_the_second_text_encoder(api):
    plain = only(await generate(api, seed=9))
    same = only(await generate(api, seed=9, prompt_2="a red fox in the snow"))  # empty means the prompt
    other = only(await generate(api, seed=9, prompt_2="an old castle at night"))
    assert same.data == plain.data
    assert_differ(other, plain, "another prompt_2")


async def test_img2img_keeps_the_init_size_and_follows_the_init_image(api):
    init = shapes(96).resize((96, 80))
    light = only(await generate(api, seed=5, image=png(init), strength=0.5))
    assert (light.width, light.height) == (96, 80)
    inverted = only(await generate(api, seed=5, image=png(Image.fromarray(255 - np.asarray(init))),
                                   strength=0.5))
    assert_differ(light, inverted, "two init images")
    refined = only(await generate(api, seed=5, image=png(init), strength=1.0, refine=True,
                                  high_noise_frac=HALF))
    assert (refined.width, refined.height) == (96, 80)


async def test_inpainting_keeps_every_unmasked_pixel_with_and_without_the_refiner(api):
    init = shapes()
    for refine in (False, True):
        out = only(await generate(api, seed=3, image=png(init), mask=png(right_half_mask()), strength=1.0,
                                  refine=refine, high_noise_frac=HALF))
        got, expected = pixels(out), np.asarray(init).astype(np.int16)
        assert np.array_equal(got[:, :32], expected[:, :32])
        assert np.abs(got[:, 32:] - expected[:, 32:]).mean() > 10


async def test_a_lora_at_scale_zero_equals_none_and_scale_one_differs(api):
    plain = only(await generate(api, seed=11))
    zero = only(await generate(api, seed=11, loras=[T.LoraAdapter(weights="tiny-style", scale=0)]))
    one = only(await generate(api, seed=11, loras=[T.LoraAdapter(weights="tiny-style")]))
    assert zero.data == plain.data
    assert_differ(one, plain, "the LoRA at scale 1 and none")
    after = only(await generate(api, seed=11))
    assert after.data == plain.data  # the adapter never reaches a later request without it


async def test_a_controlnet_unit_steers_the_image_and_its_map_matters(api):
    def unit(image: Image.Image) -> T.ControlNetUnit:
        return T.ControlNetUnit(image=png(image), type="canny", preprocessor="none")

    plain = only(await generate(api, seed=12))
    steered = await generate(api, seed=12, controlnets=[unit(shapes())], return_maps=True)
    image, map_file = steered.output.files
    black = only(await generate(api, seed=12, controlnets=[unit(Image.new("RGB", (64, 64)))]))
    assert_differ(image, plain, "a ControlNet unit and none")
    assert_differ(image, black, "the shapes map and a black map")
    assert map_file.name == "map-0-canny.png"
    assert np.array_equal(pixels(map_file), np.asarray(shapes()).astype(np.int16))
    refined = only(await generate(api, seed=12, controlnets=[unit(shapes())], refine=True,
                                  high_noise_frac=HALF))
    assert_differ(refined, image, "the steered image refined and not")


async def test_every_scheduler_completes_a_2_step_sdxl_prediction(api):
    """Every scheduler name, built on SDXL's Euler config, sent at once (each is its own call)."""
    names = list(SCHEDULERS)
    preds = await asyncio.gather(*(api.predictions.CreatePrediction(
        generation(wait_s=60, seed=31, num_inference_steps=2, scheduler=name), metadata=api.md)
        for name in names))
    for name, pred in zip(names, preds):
        assert pred.status == T.STATUS_SUCCEEDED, (name, pred.error)
        out = only(pred)
        assert (out.width, out.height) == (64, 64), name
        assert pixels(out).std() > 10, name


async def test_refiner_inputs_that_cannot_run_are_invalid_argument_naming_the_field(api):
    # 4 steps at 0.1: the base would run the timesteps from 900 up, and 801 to 201 are all below. The
    # split depends on the scheduler's timesteps, so the runner finds it, and the prediction fails on it.
    pred = await api.predictions.CreatePrediction(generation(seed=1, refine=True, high_noise_frac=0.1),
                                                  metadata=api.md)
    assert pred.status == T.STATUS_FAILED
    assert (pred.error_code, pred.error_field) == ("InvalidInput", "input.high_noise_frac"), pred.error
    details = await refused(api, seed=1, refine=True, image=png(shapes()),
                            controlnets=[T.ControlNetUnit(image=png(shapes()), type="canny")])
    assert "input.refine" in details
    assert "refine" in await refused(api, model=SD, seed=1, refine=True)  # SD 1.x has no refiner
