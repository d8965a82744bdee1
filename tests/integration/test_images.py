"""Image generation and upscaling through the whole cluster: gateway, router, a Ray node agent, the
diffusion runner (tiny Stable Diffusion + tiny ControlNets) and the upscale runner (tiny ESRGAN)."""

from __future__ import annotations

import asyncio
import io
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from runners.diffusion.controlnet import CONTROLNET_TYPES
from runners.diffusion.schedulers import ALIASES, SCHEDULERS
from tests.integration.conftest import ESRGAN, SD
from warmfleet.v1 import predictions_pb2 as P, types_pb2 as T

pytestmark = pytest.mark.integration

STEPS = 4  # the test model's default
# Float rounding alone (another batch size runs other CPU kernels) moves a few 8-bit values by one
# level, never more (0-2 of 12288 values, measured). Two images "differ" when more than this fraction
# of their values are more than one level apart: rounding moves none that far, and an input that matters
# moves many (the smallest effect here, Canny's thresholds adding one faint stripe's edges, about 5%).
DISTINCT_FRACTION = 0.02


def generation(wait_s: float = 60.0, **fields) -> P.CreatePredictionRequest:
    fields.setdefault("prompt", "a red fox in the snow")
    return P.CreatePredictionRequest(
        model=SD, wait_s=wait_s, input=T.PredictionInput(image_generation=T.ImageGenerationInput(**fields)))


def png(image: Image.Image) -> T.File:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return T.File(data=buffer.getvalue(), content_type="image/png", name="in.png")


def pixels(f: T.File) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(f.data)).convert("RGB")).astype(np.int16)


def shapes(size: int = 64) -> Image.Image:
    """A photo stand-in with clear edges: a dark square and a bright disc on grey."""
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size, 3), 128, np.uint8)
    img[size // 8: size // 2, size // 8: size // 2] = 20
    img[(yy - 0.65 * size) ** 2 + (xx - 0.65 * size) ** 2 < (size / 5) ** 2] = 235
    return Image.fromarray(img)


async def generate(api, **fields) -> T.Prediction:
    pred = await api.predictions.CreatePrediction(generation(**fields), metadata=api.md)
    assert pred.status == T.STATUS_SUCCEEDED, pred.error
    return pred


def only(pred: T.Prediction) -> T.File:
    [f] = pred.output.files
    return f


def mad(a: T.File, b: T.File) -> float:
    """Mean absolute difference of two images, in 8-bit levels."""
    return float(np.abs(pixels(a) - pixels(b)).mean())


def moved(a: T.File, b: T.File) -> float:
    """The fraction of two images' 8-bit values that are more than one level apart."""
    return float((np.abs(pixels(a) - pixels(b)) > 1).mean())


def assert_differ(a: T.File, b: T.File, what: str) -> None:
    fraction = moved(a, b)
    assert fraction > DISTINCT_FRACTION, (
        f"{what}: {fraction:.2%} of the values more than one level apart (mean difference "
        f"{mad(a, b):.4f} levels)")


async def test_the_same_seed_gives_the_same_bytes_and_another_seed_differs(api):
    first = await generate(api, seed=42)
    again = await generate(api, seed=42)
    other = await generate(api, seed=43)
    [image] = first.output.files
    assert (image.content_type, image.width, image.height) == ("image/png", 64, 64)
    assert image.data == again.output.files[0].data
    assert_differ(image, only(other), "seeds 42 and 43")
    assert first.metrics.image_count == 1


async def test_a_batched_prediction_equals_the_same_request_run_alone(api):
    """Each image has its own generator, so its noise does not depend on its batch."""
    seeds = [101, 102, 103, 104]
    together = await asyncio.gather(*(generate(api, seed=s, prompt=f"fox number {s}") for s in seeds))
    assert max(p.metrics.batch_size for p in together) > 1, "the predictions did not share a pipeline call"
    for seed, batched in zip(seeds, together):
        alone = await generate(api, seed=seed, prompt=f"fox number {seed}")
        assert alone.metrics.batch_size == 1
        # Equal up to float rounding: a batch of 4 runs other CPU kernels than a batch of 1, and a
        # last-bit difference can flip an 8-bit rounding. Measured: 0-2 of 12288 values off by one level.
        diff = np.abs(pixels(batched.output.files[0]) - pixels(alone.output.files[0]))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.005, (diff.max(), (diff > 0).mean())


async def test_num_outputs_gives_consecutive_seeds(api):
    pred = await generate(api, seed=7, num_outputs=2, output_format="webp")
    assert [f.content_type for f in pred.output.files] == ["image/webp"] * 2
    first = await generate(api, seed=7, output_format="webp")
    second = await generate(api, seed=8, output_format="webp")
    assert pred.output.files[0].data == first.output.files[0].data
    assert pred.output.files[1].data == second.output.files[0].data
    assert_differ(pred.output.files[0], pred.output.files[1], "the two outputs")
    assert pred.metrics.image_count == 2


async def test_progress_arrives_once_per_step(api):
    events = [e async for e in api.predictions.CreateAndStreamPrediction(
        generation(wait_s=0, seed=1, num_inference_steps=6, scheduler="Euler a"), metadata=api.md)]
    progress = [e.progress for e in events if e.WhichOneof("kind") == "progress"]
    assert [(p.step, p.total) for p in progress] == [(i, 6) for i in range(1, 7)]
    assert all(p.eta_s >= 0 for p in progress) and progress[-1].eta_s == 0
    assert events[-1].completed.status == T.STATUS_SUCCEEDED


async def test_cancel_mid_denoise_ends_canceled_within_a_step(api):
    stream = api.predictions.CreateAndStreamPrediction(
        generation(wait_s=0, seed=2, num_inference_steps=400), metadata=api.md)
    seen, canceled_at, after = 0, None, 0
    async for event in stream:
        kind = event.WhichOneof("kind")
        if kind == "progress":
            seen += 1
            if canceled_at is not None:
                after += 1
            elif event.progress.step == 3:
                canceled_at = time.monotonic()
                await api.predictions.CancelPrediction(P.CancelPredictionRequest(id=event.prediction_id),
                                                       metadata=api.md)
        elif kind == "completed":
            assert event.completed.status == T.STATUS_CANCELED
            break
    assert canceled_at is not None and after <= 1, f"{after} steps after the cancel"
    assert seen < 400
    # The instance is free again: a new prediction runs at once.
    assert (await generate(api, seed=3)).output.files


# Image to image

IMG2IMG = {"seed": 5, "num_inference_steps": 10}  # one step count for both strengths: 3 and 9 steps run


def init_image() -> Image.Image:
    return shapes(96).resize((96, 80))


def inverted(image: Image.Image) -> Image.Image:
    return Image.fromarray(255 - np.asarray(image))


async def test_img2img_keeps_the_init_image_size_unless_told_another(api):
    init = png(init_image())
    kept = only(await generate(api, image=init, strength=0.3, **IMG2IMG))
    assert (kept.width, kept.height) == (96, 80) and pixels(kept).shape == (80, 96, 3)
    resized = only(await generate(api, image=init, strength=0.3, width=64, height=72, **IMG2IMG))
    assert (resized.width, resized.height) == (64, 72) and pixels(resized).shape == (72, 64, 3)


async def test_img2img_strength_changes_the_image_at_the_same_steps(api):
    """At one num_inference_steps, a low strength stays nearer the init image than a high one.

    The tiny model's random VAE decodes latents to its own colours, so no output is near the init
    image in pixels (about 53 levels off on average at any strength); the order still holds, by about
    2 levels at this seed. The next test measures the init image's part more sharply."""
    init = init_image()
    light = only(await generate(api, image=png(init), strength=0.3, **IMG2IMG))
    heavy = only(await generate(api, image=png(init), strength=0.9, **IMG2IMG))
    assert_differ(light, heavy, "strengths 0.3 and 0.9")
    to_init = {name: float(np.abs(pixels(f) - np.asarray(init, np.int16)).mean())
               for name, f in (("light", light), ("heavy", heavy))}
    assert to_init["light"] < to_init["heavy"], to_init


async def test_img2img_output_comes_from_the_init_image_less_so_at_high_strength(api):
    """Two init images at the same strength and seed give two images, so the init image is used; and
    the outputs of two init images differ several times less at strength 0.9 than at 0.3 (measured:
    about 4 and 0.3 levels), as a high strength noises the init away."""
    inits = [png(init_image()), png(inverted(init_image()))]
    light = [only(await generate(api, image=init, strength=0.3, **IMG2IMG)) for init in inits]
    heavy = [only(await generate(api, image=init, strength=0.9, **IMG2IMG)) for init in inits]
    assert_differ(*light, "two init images at strength 0.3")
    assert mad(*light) > 3 * mad(*heavy), (mad(*light), mad(*heavy))


# ControlNets


def steps_in_window(start: float, end: float, steps: int = STEPS) -> list[int]:
    """The steps at which a unit applies, as diffusers 0.42's ControlNet pipelines decide it
    (``controlnet_keep``): step i of n when i/n >= start and (i + 1)/n <= end. At the other steps the
    unit's conditioning scale is multiplied by 0, so its residuals add exact zeros to the UNet's."""
    return [i for i in range(steps) if not (i / steps < start or (i + 1) / steps > end)]


def unit(kind: str = "depth", map_image: Image.Image | None = None, **fields) -> T.ControlNetUnit:
    return T.ControlNetUnit(image=png(shapes() if map_image is None else map_image), type=kind, **fields)


async def test_each_controlnet_type_steers_the_image_its_own_way(api):
    """The same map through each type: every type changes the image, and no two alike, since each
    type's ControlNet has its own weights (tests/unit/test_tiny_models.py checks them tensor by tensor)."""
    plain = only(await generate(api, seed=9))
    steered = {kind: only(await generate(api, seed=9, controlnets=[unit(kind, preprocessor="none")]))
               for kind in CONTROLNET_TYPES}
    for kind, f in steered.items():
        assert_differ(f, plain, f"{kind} against no ControlNet")
    for i, first in enumerate(CONTROLNET_TYPES):
        for second in CONTROLNET_TYPES[i + 1:]:
            assert_differ(steered[first], steered[second], f"types {first} and {second} on one map")


async def test_the_map_steers_the_image_not_only_the_unit(api):
    """The same unit on a photo's map and on an all-black map (preprocessor none: used as it is): a
    runner that dropped or replaced the map would give one image for both."""
    plain = only(await generate(api, seed=9))
    photo = only(await generate(api, seed=9, controlnets=[unit(preprocessor="none")]))
    black = only(await generate(api, seed=9, controlnets=[unit(map_image=Image.new("RGB", (64, 64)),
                                                                preprocessor="none")]))
    assert_differ(photo, black, "the photo's map and a black map")
    assert_differ(black, plain, "a black map and no ControlNet")  # the unit still applies


async def test_conditioning_scale_0_is_no_controlnet_and_half_lies_between(api):
    plain = only(await generate(api, seed=9))
    zero, half, full = [only(await generate(api, seed=9, controlnets=[unit(conditioning_scale=scale)]))
                        for scale in (0.0, 0.5, 1.0)]
    # Byte-equal: diffusers scales the unit's residuals by 0, and adding exact zeros changes no float.
    assert zero.data == plain.data
    assert_differ(half, full, "conditioning scales 0.5 and 1")
    assert_differ(half, plain, "conditioning scale 0.5 and no ControlNet")
    assert mad(half, plain) < mad(full, plain), (mad(half, plain), mad(full, plain))


async def test_a_guidance_window_limits_the_steps_the_unit_applies_at(api):
    windows = {"first half": (0.0, 0.5), "second half": (0.5, 1.0), "whole": (0.0, 1.0)}
    assert [steps_in_window(*w) for w in windows.values()] == [[0, 1], [2, 3], [0, 1, 2, 3]]
    plain = only(await generate(api, seed=9))
    out = {name: only(await generate(api, seed=9, controlnets=[unit(guidance_start=start, guidance_end=end)]))
           for name, (start, end) in windows.items()}
    for name, f in out.items():
        assert_differ(f, plain, f"window {name} and no ControlNet")
    names = list(out)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            assert_differ(out[first], out[second], f"windows {first} and {second}")


async def test_a_window_that_holds_no_step_equals_no_controlnet(api):
    # Of 4 steps, [0.25, 0.5] starts before 0.3 and [0.5, 0.75] ends after 0.6: none is inside.
    assert steps_in_window(0.3, 0.6) == []
    plain = only(await generate(api, seed=9))
    outside = only(await generate(api, seed=9, controlnets=[unit(guidance_start=0.3, guidance_end=0.6)]))
    assert outside.data == plain.data  # the unit's scale is 0 at every step: exact zeros added


async def test_a_window_with_its_end_at_its_start_is_accepted_and_equals_no_controlnet(api):
    """guidance_end may equal guidance_start (the schema: "at least guidance_start"). Such a window
    holds no step (diffusers' rule gives none for any start = end), so the unit applies nowhere."""
    assert steps_in_window(0.5, 0.5) == []
    plain = only(await generate(api, seed=9))
    pred = await api.predictions.CreatePrediction(
        generation(seed=9, controlnets=[unit(guidance_start=0.5, guidance_end=0.5)]), metadata=api.md)
    assert pred.status == T.STATUS_SUCCEEDED, pred.error
    assert only(pred).data == plain.data


def faint_stripe_photo(size: int = 64) -> Image.Image:
    """``shapes()`` with a faint stripe from top to bottom: its edges, a step of 44 levels (a Sobel
    response of 176, with no corners where the x and y responses add up), pass Canny's high threshold
    150 but not 200, so that the thresholds change the edge map."""
    img = np.asarray(shapes(size)).copy()
    img[:, size * 7 // 8: size * 7 // 8 + 5] = 128 + 44
    return Image.fromarray(img)


def edge_map(photo: Image.Image, low: int, high: int) -> Image.Image:
    import cv2

    edges = cv2.Canny(np.asarray(photo.convert("L")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


async def test_canny_preprocessing_on_the_server_equals_sending_the_edge_map(api):
    photo = faint_stripe_photo()
    edge_pixels = [int((np.asarray(edge_map(photo, *t))[..., 0] > 0).sum()) for t in ((50, 150), (100, 200))]
    assert edge_pixels[0] > edge_pixels[1] > 0, edge_pixels
    thresholds = {"canny_low_threshold": 50, "canny_high_threshold": 150}
    on_server = only(await generate(api, seed=11, controlnets=[unit("canny", photo, **thresholds)]))
    preprocessed = only(await generate(api, seed=11, controlnets=[
        unit("canny", edge_map(photo, 50, 150), preprocessor="none")]))
    default_thresholds = only(await generate(api, seed=11, controlnets=[unit("canny", photo)]))
    raw_photo = only(await generate(api, seed=11, controlnets=[unit("canny", photo, preprocessor="none")]))
    assert on_server.data == preprocessed.data
    assert_differ(on_server, default_thresholds, "canny thresholds 50/150 and the default 100/200")
    assert_differ(on_server, raw_photo, "the edge map and the photo itself")


async def test_several_controlnets_at_once_with_guidance_windows(api):
    """Each unit's scale and window go with its own ControlNet: swapping the units changes nothing,
    a unit at scale 0 is as good as absent, and the second unit's window matters."""
    canny = unit("canny", conditioning_scale=0.8)
    depth = unit("depth", guidance_start=0.5, guidance_end=1.0)
    both = only(await generate(api, seed=12, controlnets=[canny, depth], guess_mode=True))
    only_canny = only(await generate(api, seed=12, controlnets=[canny], guess_mode=True))
    swapped = only(await generate(api, seed=12, controlnets=[depth, canny], guess_mode=True))
    silent_depth = only(await generate(api, seed=12, guess_mode=True, controlnets=[
        canny, unit("depth", guidance_start=0.5, guidance_end=1.0, conditioning_scale=0.0)]))
    depth_throughout = only(await generate(api, seed=12, controlnets=[canny, unit("depth")], guess_mode=True))
    assert_differ(both, only_canny, "canny with depth and canny alone")
    # Two units' residuals are summed, and a + b == b + a exactly in floats.
    assert swapped.data == both.data
    assert silent_depth.data == only_canny.data
    assert_differ(both, depth_throughout, "depth over the second half and over every step")


# Schedulers

# Progress counts the UNet's evaluations: second-order Heun and DPM2 evaluate twice per step but the
# last (2n - 1), and PNDM repeats one timestep for its PLMS warm-up (n + 1); the others once per step.
EVALUATIONS_FOR_2_STEPS = {"Heun": 3, "DPM2": 3, "DPM2 a": 3, "PNDM": 3}
# Samplers that draw fresh noise at each step (ancestral, SDE, DDPM, LCM and TCD's re-noising).
STOCHASTIC = {"DDPM", "Euler a", "DPM2 a", "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "LCM", "TCD"}


@pytest.mark.parametrize("name", list(SCHEDULERS))
async def test_each_scheduler_completes_a_2_step_prediction(api, name):
    """Every scheduler name (tests/unit/test_schedulers.py checks the class each builds) through the
    cluster: 64x64, 2 steps. Its aliases give the same bytes; a stochastic one repeats with its seed,
    so its step noise comes from the request's generator."""
    request = generation(wait_s=0, seed=31, num_inference_steps=2, scheduler=name, width=64, height=64)
    events = [e async for e in api.predictions.CreateAndStreamPrediction(request, metadata=api.md)]
    done = events[-1].completed
    assert done.status == T.STATUS_SUCCEEDED, done.error
    total = EVALUATIONS_FOR_2_STEPS.get(name, 2)
    progress = [(e.progress.step, e.progress.total) for e in events if e.WhichOneof("kind") == "progress"]
    assert progress == [(i, total) for i in range(1, total + 1)]
    out = only(done)
    assert (out.content_type, out.width, out.height) == ("image/png", 64, 64)
    assert pixels(out).std() > 10  # a picture, not the flat image that NaN latents decode to
    same_seed = dict(seed=31, num_inference_steps=2, width=64, height=64)
    for alias in [alias for alias, canonical in ALIASES.items() if canonical == name]:
        assert only(await generate(api, scheduler=alias, **same_seed)).data == out.data, alias
    if name in STOCHASTIC:
        assert only(await generate(api, scheduler=name, **same_seed)).data == out.data


# Upscaling


def upscale(**fields) -> P.CreatePredictionRequest:
    return P.CreatePredictionRequest(model=ESRGAN, wait_s=60,
                                     input=T.PredictionInput(upscale=T.UpscaleInput(**fields)))


async def test_upscale_through_the_cluster_in_tiles(api):
    image = shapes(72).resize((72, 40))
    pred = await api.predictions.CreatePrediction(upscale(image=png(image), tile=32, tile_overlap=8),
                                                  metadata=api.md)
    assert pred.status == T.STATUS_SUCCEEDED, pred.error
    [out] = pred.output.files
    assert (out.width, out.height) == (288, 160)
    # The tiny ESRGAN is close to a nearest-neighbour upscale of its input: the picture is still there.
    expected = np.asarray(image.resize((288, 160), Image.Resampling.NEAREST)).astype(np.int16)
    assert np.abs(pixels(out) - expected).mean() < 25


async def test_upscale_to_another_scale_and_format(api):
    image = shapes(40)
    pred = await api.predictions.CreatePrediction(
        upscale(image=png(image), scale=2.5, output_format="jpg"), metadata=api.md)
    assert pred.status == T.STATUS_SUCCEEDED, pred.error
    [out] = pred.output.files
    assert (out.content_type, out.width, out.height) == ("image/jpeg", 100, 100)
    assert Image.open(io.BytesIO(out.data)).format == "JPEG"
    # Still the input picture, at 2.5x (JPEG and the model's noise allowed for).
    expected = np.asarray(image.resize((100, 100), Image.Resampling.BICUBIC)).astype(np.int16)
    assert np.abs(pixels(out) - expected).mean() < 25


async def test_upscale_refuses_a_bad_image_naming_the_field(api):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.predictions.CreatePrediction(upscale(image=T.File(data=b"not an image")), metadata=api.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "input.image" in err.value.details()


async def test_the_json_form_takes_nested_files_by_path_and_equals_the_typed_form(api):
    from google.protobuf import json_format, struct_pb2

    fields = json_format.ParseDict({"prompt": "a fox", "seed": 21, "controlnets": [{"type": "canny"}]},
                                   struct_pb2.Struct())
    files = {"controlnets[0].image": png(shapes())}
    as_json = T.PredictionInput(json=T.JsonInput(fields=fields, files=files))
    pred = await api.predictions.CreatePrediction(
        P.CreatePredictionRequest(model=SD, wait_s=60, input=as_json), metadata=api.md)
    assert pred.status == T.STATUS_SUCCEEDED, pred.error
    typed = await generate(api, prompt="a fox", seed=21, controlnets=[T.ControlNetUnit(image=png(shapes()),
                                                                                       type="canny")])
    assert pred.output.files[0].data == typed.output.files[0].data
    assert pred.input.json.files["controlnets[0].image"].data == png(shapes()).data


async def test_tiled_upscale_through_the_cluster_matches_the_untiled_one(api):
    """Metric: PSNR of the tiled output against the untiled one, both PNG (lossless) through the
    cluster. Bound: at least 60 dB with overlapping tiles (the unit tests measure 77 dB on the raw
    tensors; 8-bit rounding caps it here), against about 48 dB when tiles merely meet."""
    image = png(shapes(80).resize((80, 72)))

    async def run(tile: int, overlap: int) -> np.ndarray:
        pred = await api.predictions.CreatePrediction(upscale(image=image, tile=tile, tile_overlap=overlap),
                                                      metadata=api.md)
        assert pred.status == T.STATUS_SUCCEEDED, pred.error
        return pixels(pred.output.files[0]).astype(np.float64)

    whole, tiled, abutting = await run(0, 0), await run(32, 8), await run(32, 0)

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return 10 * np.log10(255**2 / max(np.mean((a - b) ** 2), 1e-12))

    assert whole.shape == (288, 320, 3)
    assert psnr(tiled, whole) >= 60, psnr(tiled, whole)
    assert psnr(tiled, whole) > psnr(abutting, whole) + 5
