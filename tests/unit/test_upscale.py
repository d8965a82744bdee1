"""The upscale runner: loading spandrel weights, sizes and formats, tiling that matches the untiled
result without seams and bounds memory, progress and cancel between tiles, and inputs refused by
name."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import spandrel
import torch
from safetensors.torch import save_file
from spandrel.architectures.ESRGAN import ESRGAN

from runners import tiny_models
from runners.base import Cancelled, PredictContext
from runners.schema import InputValidator
from runners.devices import resolve_dtype
from runners.upscale import (
    UpscaleRunner,
    image_to_tensor,
    plan_upscale,
    tile_count,
    tile_spans,
    upscale_tiled,
)
from warmfleet.domain import FileData, LogLine, MetricsUpdate, RouteSpec, Output, ProgressUpdate
from warmfleet.errors import InvalidInput

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def esrgan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.make_tiny_esrgan(tmp_path_factory.mktemp("esrgan") / "tiny-esrgan", seed=0)


@pytest.fixture(scope="module")
def runner(esrgan_dir: Path) -> UpscaleRunner:
    loaded = UpscaleRunner(RouteSpec("test/esrgan", "upscale", weights=str(esrgan_dir)))
    loaded.load()
    return loaded


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Gradients with a block of noise in the middle: smooth areas and edges for a seam to show in."""
    yy, xx = np.mgrid[:height, :width]
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = xx * 255 // max(1, width - 1)
    pixels[..., 1] = yy * 255 // max(1, height - 1)
    pixels[..., 2] = 128
    y0, x0 = height // 4, width // 4
    noise = np.random.default_rng(seed).integers(0, 256, (height // 2, width // 2, 3), dtype=np.uint8)
    pixels[y0:y0 + height // 2, x0:x0 + width // 2] = noise
    return Image.fromarray(pixels)


def png(image: Image.Image) -> FileData:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return FileData(buffer.getvalue(), "image/png", "in.png")


def run(runner: UpscaleRunner, ctx: PredictContext | None = None, **input: Any) -> tuple[list[Any], Output]:
    """The runner's events and output, for an input with the schema's defaults filled in."""
    filled = InputValidator(runner.input_schema(runner.spec)).validate(input)
    gen = runner.predict(filled, ctx or PredictContext("p"))
    events: list[Any] = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def opened(file: FileData) -> Image.Image:
    image = Image.open(io.BytesIO(file.data))
    image.load()
    return image


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


# Loading, sizes and formats


def test_loads_weights_from_a_folder_or_a_file_and_upscales_at_the_model_scale(runner, esrgan_dir):
    image = picture(24, 20)
    _, from_folder = run(runner, image=png(image))
    by_file = UpscaleRunner(RouteSpec("f", "upscale", weights=str(esrgan_dir / "model.safetensors")))
    by_file.load()
    _, from_file = run(by_file, image=png(image))

    [out] = from_folder.files
    assert (out.content_type, out.name, out.width, out.height) == ("image/png", "upscaled.png", 96, 80)
    assert from_folder.value is None
    assert opened(out).size == (96, 80)
    assert from_file.files[0].data == out.data  # the same weights, whichever way they were named
    # The tiny ESRGAN is a nearest-neighbour upscale plus a little noise: the picture survives
    # (measured: 5.4 levels of 255 from the nearest-neighbour upscale; the mirrored picture: 64).
    nearest = np.asarray(image.resize((96, 80), Image.Resampling.NEAREST), np.int16)
    assert np.abs(np.asarray(opened(out), np.int16) - nearest).mean() < 10


def test_another_scale_runs_the_model_then_resamples_with_lanczos(runner):
    image = png(picture(24, 20))
    _, native = run(runner, image=image, tile=0)
    _, half = run(runner, image=image, scale=2, tile=0)
    _, odd = run(runner, image=image, scale=2.5, tile=0)
    assert (half.files[0].width, half.files[0].height) == (48, 40)
    assert opened(odd.files[0]).size == (60, 50)
    expected = opened(native.files[0]).resize((48, 40), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(opened(half.files[0])), np.asarray(expected))


@pytest.mark.parametrize(("fmt", "content_type", "pil_format"),
                         [("webp", "image/webp", "WEBP"), ("jpg", "image/jpeg", "JPEG")])
def test_output_formats(runner, fmt, content_type, pil_format):
    _, output = run(runner, image=png(picture(24, 20)), output_format=fmt)
    [out] = output.files
    assert (out.content_type, out.name) == (content_type, f"upscaled.{fmt}")
    decoded = opened(out)
    assert (decoded.format, decoded.size, decoded.mode) == (pil_format, (96, 80), "RGB")


def test_a_greyscale_model_upscales_to_a_grey_rgb_image(tmp_path):
    torch.manual_seed(0)
    save_file(ESRGAN(in_nc=1, out_nc=1, num_filters=4, num_blocks=1, scale=2).state_dict(),
              tmp_path / "grey.safetensors")
    grey = UpscaleRunner(RouteSpec("g", "upscale", weights=str(tmp_path)))
    grey.load()
    _, output = run(grey, image=png(picture(24, 20)))
    pixels = np.asarray(opened(output.files[0]))
    assert pixels.shape == (40, 48, 3)
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])


def test_refuses_weights_that_are_not_one_image_to_image_model(tmp_path, monkeypatch, esrgan_dir):
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.safetensors", "b.pth"):
        (two / name).write_bytes(b"x")
    with pytest.raises(ValueError, match=r"exactly one weights file.*a\.safetensors, b\.pth"):
        UpscaleRunner(RouteSpec("m", "upscale", weights=str(two))).load()
    with pytest.raises(FileNotFoundError):
        UpscaleRunner(RouteSpec("m", "upscale", weights=str(tmp_path / "missing"))).load()

    save_file({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "unknown.safetensors")
    with pytest.raises(ValueError, match="recognises no architecture"):
        UpscaleRunner(RouteSpec("m", "upscale", weights=str(tmp_path / "unknown.safetensors"))).load()

    # An inpainting model (spandrel's MaskedImageModelDescriptor) loads in spandrel but is no upscaler.
    lama = spandrel.MAIN_REGISTRY.get("LaMa").architecture
    conv = torch.nn.Conv2d(4, 3, 1)
    inpainter = spandrel.MaskedImageModelDescriptor(
        conv, conv.state_dict(), lama, purpose="Inpainting", tags=[], supports_half=True,
        supports_bfloat16=True, input_channels=3, output_channels=3)
    monkeypatch.setattr(spandrel.ModelLoader, "load_from_file", lambda self, path: inpainter)
    with pytest.raises(TypeError, match="LaMa model .*MaskedImageModelDescriptor.* not an image-to-image"):
        UpscaleRunner(RouteSpec("m", "upscale", weights=str(esrgan_dir))).load()


def test_dtype_auto_is_half_only_on_cuda_for_models_that_support_it():
    assert resolve_dtype("auto", "cpu", gpu_auto="float16") is torch.float32
    assert resolve_dtype("auto", "cuda:0", gpu_auto="float16") is torch.float16
    assert resolve_dtype("auto", "cuda:0", gpu_auto="float32") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp8", "cpu")


def test_options_set_the_tile_default_and_the_concurrency():
    spec = RouteSpec("m", "upscale", options={"tile": 64, "max_concurrency": 3})
    assert UpscaleRunner.input_schema(spec)["properties"]["tile"]["default"] == 64
    assert UpscaleRunner.policy(spec).max_concurrency == 3
    plain = RouteSpec("m", "upscale")
    assert UpscaleRunner.input_schema(plain)["properties"]["tile"]["default"] == 256
    assert UpscaleRunner.policy(plain).max_concurrency == 1


# Tiling


def test_tiles_are_even_spans_that_cover_the_axis():
    assert tile_spans(100, 32) == [(0, 25), (25, 50), (50, 75), (75, 100)]  # not 32+32+32+4
    assert tile_spans(64, 32) == [(0, 32), (32, 64)]
    assert tile_spans(20, 32) == [(0, 20)]
    assert tile_spans(100, 0) == [(0, 100)]
    assert tile_count(90, 100, 32) == 3 * 4


@pytest.mark.parametrize(("size", "tile", "overlap", "requirements"), [
    ((90, 100), 32, 8, None),
    ((90, 100), 32, 0, None),
    ((37, 101), 32, 15, None),
    ((90, 100), 32, 8, spandrel.SizeRequirements(multiple_of=8)),
    ((50, 70), 32, 4, spandrel.SizeRequirements(minimum=48, multiple_of=16, square=True)),
])
def test_tiling_is_exact_for_a_model_without_context(size, tile, overlap, requirements):
    """A pixel-wise model (nearest-neighbour 3x) gives the same output whatever the tiling, so any
    error here is the tiler's: a misplaced tile, a bad crop of the padding, weights that do not sum
    to one."""
    def nearest_3x(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(t, scale_factor=3, mode="nearest")

    def model(t: torch.Tensor) -> torch.Tensor:
        if requirements is not None:
            assert requirements.check(t.shape[-1], t.shape[-2]), f"tile {tuple(t.shape)} not padded"
        return nearest_3x(t)

    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    tiled = upscale_tiled(model, image, 3, tile, overlap, requirements)
    assert tiled.shape == (1, 3, size[0] * 3, size[1] * 3)
    torch.testing.assert_close(tiled, nearest_3x(image), rtol=0, atol=1e-6)


@pytest.mark.parametrize("overlap", [4, 8])
def test_seams_are_cross_faded_linearly_across_the_overlap(overlap):
    """Each tile's prediction is offset by 0.1 x its index, as if neighbouring tiles disagreed. On a
    flat image, the output then steps from one offset to the next by at most the ramp's slope (the
    difference over 2 x overlap x scale pixels), where hard seams would jump by the whole difference."""
    scale, calls = 2, []

    def disagreeing(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape)
        return torch.nn.functional.interpolate(t, scale_factor=scale, mode="nearest") + 0.1 * len(calls)

    flat = torch.full((1, 3, 64, 96), 0.5)
    out = upscale_tiled(disagreeing, flat, scale, 32, overlap)[0, 0]
    assert len(calls) == 2 * 3
    across_columns, across_rows = 0.1, 0.3  # tile k's right neighbour is k + 1, its lower one k + 3
    ramp = 2 * overlap * scale
    assert float(out.diff(dim=1).abs().max()) <= across_columns / ramp + 1e-5
    assert float(out.diff(dim=0).abs().max()) <= across_rows / ramp + 1e-5
    calls.clear()
    hard = upscale_tiled(disagreeing, flat, scale, 32, 0)[0, 0]
    assert float(hard.diff(dim=1).abs().max()) == pytest.approx(across_columns, abs=1e-5)


def test_tiled_output_of_the_real_model_matches_the_untiled_output(runner):
    """The tiny ESRGAN sees 16+ px of context, so tiles with 8 px of overlap differ from the whole
    image near their edges. Measured (seed 0, 100x90, tile 32, overlap 8): max abs diff 0.0024 in
    [0, 1], PSNR 77 dB; with no overlap, max 0.046 and PSNR 48 dB. Bounds: max abs diff under 2/255
    (at most one 8-bit level of error after rounding) and PSNR over 65 dB; no overlap at least 15 dB
    worse, so that a blend that ignored the overlap (hard seams) would fail."""
    image = image_to_tensor(picture(100, 90))
    model = runner._model_fn
    whole = upscale_tiled(model, image, 4, 0, 0, runner.model.size_requirements)
    tiled = upscale_tiled(model, image, 4, 32, 8, runner.model.size_requirements)
    abutted = upscale_tiled(model, image, 4, 32, 0, runner.model.size_requirements)
    assert tiled.shape == whole.shape == (1, 3, 360, 400)
    assert float((tiled - whole).abs().max()) < 2 / 255
    assert psnr(tiled, whole) > 65
    assert psnr(abutted, whole) < psnr(tiled, whole) - 15


MEASURE_PEAKS = textwrap.dedent("""
    import io, json, re, sys
    import numpy as np
    from PIL import Image
    from runners.base import PredictContext
    from runners.upscale import UpscaleRunner
    from warmfleet.domain import FileData, RouteSpec

    def upscale(size, tile):
        buffer = io.BytesIO()
        noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(noise).save(buffer, format="PNG")
        input = {"image": FileData(buffer.getvalue(), "image/png"), "tile": tile, "tile_overlap": 8}
        gen = runner.predict(input, PredictContext("p"))
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            assert stop.value.files[0].width == 4 * size

    def mib(field):
        status = open("/proc/self/status").read()
        return int(re.search(field + r":\\s+(\\d+) kB", status).group(1)) / 1024

    def peak_rise_mib(size, tile):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak (VmHWM) to the current resident set (VmRSS)
        before = mib("VmRSS")
        upscale(size, tile)
        return mib("VmHWM") - before

    runner = UpscaleRunner(RouteSpec("m", "upscale", weights=sys.argv[1]))
    runner.load()
    upscale(16, 0)  # imports and first-call set-up happen here, before any measure
    size, tile = int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps({"untiled": peak_rise_mib(size, 0), "tiled": peak_rise_mib(size, tile)}))
""")


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak resident set")
def test_tiling_keeps_peak_memory_well_below_the_untiled_run(esrgan_dir):
    """A fresh process upscales 256x256 to 1024x1024 whole, then in tiles of 64; each figure is how
    far its resident memory peaked (VmHWM, reset before each run) above where it stood (VmRSS).
    glibc's mmap threshold is fixed so that a freed tensor goes back to the system at once: with its
    default, sliding threshold, freed memory stays resident, a later run reuses it unseen, and the
    untiled figure varied from 126 to 274 MiB between runs. Measured: untiled 194 MiB (ESRGAN's
    16-channel features at 1024x1024 are 64 MiB each), tiled 39 MiB (the 12 MiB float canvas, its
    8-bit copy, the PNG encoder and one tile's features)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    done = subprocess.run([sys.executable, "-c", MEASURE_PEAKS, str(esrgan_dir), "256", "64"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"peak memory rise: untiled {peaks['untiled']:.0f} MiB, tiled {peaks['tiled']:.0f} MiB")
    assert peaks["untiled"] > 150, "the untiled run did not show its feature maps: the measure is broken"
    assert peaks["tiled"] < peaks["untiled"] / 3


# Progress and cancel


def test_one_progress_update_per_tile_in_order(runner):
    events, output = run(runner, image=png(picture(100, 90)), tile=32, tile_overlap=8)
    progress = [e for e in events if isinstance(e, ProgressUpdate)]
    assert [(p.step, p.total) for p in progress] == [(i, 12) for i in range(1, 13)]  # 3 rows x 4 columns
    assert all(p.eta_s >= 0 for p in progress) and progress[-1].eta_s == 0
    assert isinstance(events[0], LogLine) and "12 tile(s)" in events[0].text
    assert [e.values for e in events if isinstance(e, MetricsUpdate)] == [{"image_count": 1}]
    assert (output.files[0].width, output.files[0].height) == (400, 360)


def test_a_cancel_between_tiles_stops_before_the_next_tile(runner, monkeypatch):
    tiles_run = []
    real = runner._model_fn
    monkeypatch.setattr(runner, "_model_fn", lambda t: tiles_run.append(t.shape) or real(t))
    ctx = PredictContext("p")
    input = InputValidator(runner.input_schema(runner.spec)).validate(
        {"image": png(picture(100, 90)), "tile": 32, "tile_overlap": 8})
    gen = runner.predict(input, ctx)
    seen = 0
    with pytest.raises(Cancelled):
        while True:
            if isinstance(next(gen), ProgressUpdate):
                seen += 1
                if seen == 3:
                    ctx.cancel_event.set()
    assert seen == 3 and len(tiles_run) == 3


# Inputs refused by name


def refused(runner: UpscaleRunner, **input: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as err:
        run(runner, **input)
    return err.value


def test_a_file_that_is_not_an_image_is_refused_naming_the_field(runner):
    not_image = FileData(b"GIF89a not really", "image/gif", "x.gif")
    assert refused(runner, image=not_image).field == "input.image"  # at the schema check, on entry
    with pytest.raises(InvalidInput) as err:  # and by the runner, for an input that skipped it
        next(runner.predict({"image": not_image}, PredictContext("p")))
    assert err.value.field == "input.image"


def test_an_image_over_the_pixel_bound_is_refused_before_decoding(esrgan_dir):
    small = UpscaleRunner(RouteSpec("m", "upscale", weights=str(esrgan_dir), options={"max_input_pixels": 400}))
    small.load()
    err = refused(small, image=png(picture(24, 20)))
    assert err.field == "input.image" and "24x20 = 480 pixels" in str(err)


def test_an_output_over_its_bound_is_refused_before_any_tile_runs(esrgan_dir, monkeypatch):
    bounded = UpscaleRunner(RouteSpec("m", "upscale", weights=str(esrgan_dir),
                                      options={"max_output_pixels": 96 * 80 - 1}))
    bounded.load()
    monkeypatch.setattr(bounded, "_model_fn", lambda t: pytest.fail("a tile ran"))
    err = refused(bounded, image=png(picture(24, 20)))
    assert err.field == "input.scale" and "7680 output pixels" in str(err)
    # Even at scale 1 the model's own x4 canvas counts.
    assert refused(bounded, image=png(picture(24, 20)), scale=1).field == "input.scale"


@pytest.mark.parametrize(("fields", "field"), [
    ({"scale": 0.5}, "input.scale"),
    ({"scale": 9}, "input.scale"),
    ({"tile": 16}, "input.tile"),
    ({"tile": 4096}, "input.tile"),
    ({"tile_overlap": 300}, "input.tile_overlap"),
    ({"tile_overlap": -1}, "input.tile_overlap"),
    ({"output_format": "gif"}, "input.output_format"),
    ({"colour": "red"}, "input.colour"),
])
def test_the_schema_refuses_each_field_out_of_range_by_name(runner, fields, field):
    validator = InputValidator(runner.input_schema(runner.spec))
    with pytest.raises(InvalidInput) as err:
        validator.validate({"image": png(picture(8, 8)), **fields})
    assert err.value.field == field


def test_tile_overlap_must_be_less_than_half_the_tile(runner):
    err = refused(runner, image=png(picture(24, 20)), tile=32, tile_overlap=16)
    assert err.field == "input.tile_overlap" and "less than half of tile (32)" in str(err)
    # The same rule on entry, before queueing (the runner's check_input), against the option's tile.
    spec = RouteSpec("m", "upscale", options={"tile": 40})
    with pytest.raises(InvalidInput) as on_entry:
        UpscaleRunner.check_input(spec, {"tile_overlap": 20})
    assert on_entry.value.field == "input.tile_overlap" and "(40)" in str(on_entry.value)
    UpscaleRunner.check_input(spec, {"tile_overlap": 19})
    _, output = run(runner, image=png(picture(24, 20)), tile=32, tile_overlap=15)
    assert output.files[0].width == 96
    _, output = run(runner, image=png(picture(24, 20)), tile=0, tile_overlap=200)  # no tiles: no overlap
    assert output.files[0].width == 96


@pytest.mark.parametrize(("fields", "field"), [
    ({"scale": 9}, "input.scale"), ({"scale": 0}, "input.scale"), ({"tile": 31}, "input.tile"),
    ({"tile_overlap": 257, "tile": 0}, "input.tile_overlap"), ({"output_format": "gif"}, "input.output_format"),
])
def test_the_runner_checks_fields_again_for_inputs_that_skipped_the_schema(fields, field):
    with pytest.raises(InvalidInput) as err:
        plan_upscale((24, 20), 4, fields, max_output_pixels=10**9)
    assert err.value.field == field


# On a GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the half-precision path is untested")
def test_on_cuda_auto_dtype_is_half_and_matches_the_cpu_output(runner, esrgan_dir):
    gpu = UpscaleRunner(RouteSpec("m", "upscale", weights=str(esrgan_dir)), device="cuda")
    gpu.load()
    assert gpu.model.dtype == torch.float16
    image = image_to_tensor(picture(100, 90))
    on_gpu = upscale_tiled(gpu._model_fn, image, 4, 32, 8, gpu.model.size_requirements)
    on_cpu = upscale_tiled(runner._model_fn, image, 4, 32, 8, runner.model.size_requirements)
    assert on_gpu.device.type == "cpu"  # the canvas stays in host memory; the GPU holds a tile
    assert float((on_gpu - on_cpu).abs().max()) < 4 / 255
    gpu.unload()
    assert gpu.model is None
