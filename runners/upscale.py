"""The ``upscale`` runner: ESRGAN-family super-resolution with any image-to-image model spandrel detects
(ESRGAN, Real-ESRGAN, SwinIR, HAT, ...), tiled so that memory stays bounded on large images.

``load`` reads ``spec.weights`` (a weights file, or a folder holding exactly one .safetensors, .pth,
.pt or .ckpt file) with ``spandrel.ModelLoader`` and refuses anything that is not an
``ImageModelDescriptor`` (inpainting models, unknown state dicts). ``predict`` is a generator run on a
worker thread: it decodes the image, checks the sizes before any compute, upscales tile by tile
(one ``ProgressUpdate`` per tile, a cancel noticed between tiles), resamples with Lanczos when the
requested scale is not the model's, and returns one encoded image.

Tiling (``iter_upscale_tiled``) follows Real-ESRGAN's ``tile``/``tile_pad``: the image is cut into a
grid of tiles of at most ``tile`` px a side, each widened by ``overlap`` px of context on every side
that has a neighbour, so the model sees at most ``tile + 2 * overlap`` px. Each upscaled tile is
weighted by a ramp that rises linearly across the overlaps and added to one output canvas; the canvas
is divided by the sum of the weights at the end. Neighbouring ramps add up to one, so a seam is a
gradual cross-fade between two predictions rather than a hard edge, and memory is one tile's
activations plus the canvas (kept on the CPU, so a GPU holds only the tile).

Options (``RouteSpec.options``):

- ``tile``: default of the ``tile`` input (256).
- ``dtype``: "auto" (float16 on CUDA when the architecture supports it, else float32), "float32",
  "float16" or "bfloat16".
- ``max_input_pixels``: largest input image, in pixels (default ``runners.images.DEFAULT_MAX_PIXELS``).
- ``max_output_pixels``: largest output, in pixels, counting the model's native-scale canvas too
  (default 64 Mpx).
- ``max_concurrency``: predictions an instance runs at once (default 1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runners.base import NodeResources, PredictContext, PredictGenerator, Runner
from runners.devices import free_memory, resolve_dtype
from runners.images import (
    DEFAULT_MAX_PIXELS,
    OUTPUT_FORMAT_SCHEMA,
    OUTPUT_FORMATS,
    decode_image,
    encode_image,
    image_file_schema,
)
from warmfleet.domain import LogLine, MetricsUpdate, RouteSpec, Output, ProgressUpdate
from warmfleet.errors import InvalidInput

if TYPE_CHECKING:
    import torch
    from PIL import Image

DEFAULT_TILE = 256
MIN_TILE = 32
MAX_TILE = 2048
DEFAULT_OVERLAP = 16
MAX_OVERLAP = 256
MIN_SCALE, MAX_SCALE = 1, 8
# 64 megapixels out: the float32 canvas is then 768 MB, the largest this runner holds by default.
DEFAULT_MAX_OUTPUT_PIXELS = 64 * 1024 * 1024
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")

ModelFn = Callable[["torch.Tensor"], "torch.Tensor"]


class UpscaleRunner(Runner):
    family = "upscale"

    def __init__(self, spec: RouteSpec, device: str = "cpu", node: NodeResources | None = None) -> None:
        super().__init__(spec, device, node)
        self.model: Any = None  # a spandrel ImageModelDescriptor once loaded

    @classmethod
    def input_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["image"],
            "properties": {
                "image": image_file_schema("Image to upscale."),
                "scale": {
                    "type": "number", "minimum": MIN_SCALE, "maximum": MAX_SCALE,
                    "description": f"Output size over input size, {MIN_SCALE} to {MAX_SCALE}. Unset: the "
                                   "model's own scale. Any other value runs the model, then resamples "
                                   "its output with Lanczos.",
                },
                "tile": {
                    "type": "integer", "default": int(spec.options.get("tile", DEFAULT_TILE)),
                    "anyOf": [{"const": 0}, {"minimum": MIN_TILE, "maximum": MAX_TILE}],
                    "description": f"Upscale in tiles of at most this many pixels a side ({MIN_TILE} to "
                                   f"{MAX_TILE}), to bound memory; 0: the whole image at once.",
                },
                "tile_overlap": {
                    "type": "integer", "default": DEFAULT_OVERLAP, "minimum": 0, "maximum": MAX_OVERLAP,
                    "description": f"Pixels of context each tile takes from its neighbours on each side, "
                                   f"0 to {MAX_OVERLAP} and less than half of tile; the seams are "
                                   "cross-faded over twice this width.",
                },
                "output_format": OUTPUT_FORMAT_SCHEMA,
            },
        }

    @classmethod
    def check_input(cls, spec: RouteSpec, input: dict[str, Any]) -> None:
        """On entry, the rules across fields that need no image: tile_overlap against tile."""
        check_tiling(input, int(spec.options.get("tile", DEFAULT_TILE)))

    @classmethod
    def output_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        return {"type": "null", "description": "No value: the upscaled image is the output's one file."}

    def load(self) -> None:
        from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

        path = weights_file(self.spec.weights)
        try:
            model = ModelLoader(device=self.device).load_from_file(path)
        except UnsupportedModelError as err:
            raise ValueError(f"{path}: spandrel recognises no architecture in these weights") from err
        if not isinstance(model, ImageModelDescriptor):
            raise TypeError(f"{path}: a {model.architecture.name} model ({type(model).__name__}) is not an "
                             "image-to-image model; the upscale runner takes ESRGAN-family upscalers")
        if model.input_channels not in (1, 3) or model.output_channels != model.input_channels:
            raise ValueError(f"{path}: {model.architecture.name} maps {model.input_channels} channels to "
                             f"{model.output_channels}; the upscale runner takes RGB or greyscale models")
        dtype = resolve_dtype(self.spec.options.get("dtype", "auto"), self.device,
                              gpu_auto="float16" if model.supports_half else "float32")
        self.model = model.to(self.device, dtype).eval()

    def unload(self) -> None:
        self.model = None
        free_memory(self.device)

    def predict(self, input: dict[str, Any], ctx: PredictContext) -> PredictGenerator:
        from spandrel import ModelTiling

        model = self.model
        if model is None:
            raise RuntimeError("the upscale runner is not loaded")
        options = self.spec.options
        image = decode_image(input.get("image"), "input.image",  # type: ignore[arg-type]
                             int(options.get("max_input_pixels", DEFAULT_MAX_PIXELS)))
        plan = plan_upscale(image.size, model.scale, input,
                            int(options.get("max_output_pixels", DEFAULT_MAX_OUTPUT_PIXELS)),
                            int(options.get("tile", DEFAULT_TILE)))
        tile = 0 if model.tiling == ModelTiling.INTERNAL else plan.tile  # it tiles itself
        tensor = image_to_tensor(image, model.input_channels)
        steps = iter_upscale_tiled(self._model_fn, tensor, model.scale, tile, plan.overlap,
                                   model.size_requirements)
        total = tile_count(image.height, image.width, tile)
        yield LogLine(f"upscaling {image.width}x{image.height} to {plan.width}x{plan.height} with "
                      f"{model.architecture.name} x{model.scale} in {total} tile(s)")
        started = time.monotonic()
        while True:
            ctx.check_cancelled()
            try:
                done = next(steps)
            except StopIteration as stop:
                canvas = stop.value
                break
            per_tile_s = (time.monotonic() - started) / done
            yield ProgressUpdate(step=done, total=total, eta_s=round(per_tile_s * (total - done), 3))
        result = tensor_to_image(canvas)
        if result.size != (plan.width, plan.height):
            from PIL import Image

            result = result.resize((plan.width, plan.height), Image.Resampling.LANCZOS)
        # predict_time_s is the agent's to measure; the image count is ours to report.
        yield MetricsUpdate({"image_count": 1})
        return Output(value=None, files=[encode_image(result, input.get("output_format", "png"), "upscaled")])

    def _model_fn(self, tile: torch.Tensor) -> torch.Tensor:
        """One CPU float32 tile through the model on its device and dtype, back as CPU float32."""
        return self.model(tile.to(self.model.device, self.model.dtype)).float().cpu()


@dataclass(frozen=True)
class UpscalePlan:
    """What one prediction will do, its input checked: output size, tile size and overlap."""

    width: int
    height: int
    tile: int
    overlap: int


def plan_upscale(size: tuple[int, int], native_scale: int, input: dict[str, Any],
                 max_output_pixels: int, default_tile: int = DEFAULT_TILE) -> UpscalePlan:
    """The plan for an image of ``size`` (w, h); ``InvalidInput`` naming the field for a rule broken.

    The schema checks each field alone; this checks them together, and again alone for inputs that
    skipped the schema. The output bound counts the model's native-scale canvas as well as the
    requested size, since both are held in memory.
    """
    width, height = size
    scale = input.get("scale")
    scale = native_scale if scale is None else scale
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise InvalidInput("input.scale", f"must be {MIN_SCALE} to {MAX_SCALE}, not {scale}")
    tile, overlap = check_tiling(input, default_tile)
    output_format = input.get("output_format", "png")
    if output_format not in OUTPUT_FORMATS:
        raise InvalidInput("input.output_format", f"must be one of {', '.join(OUTPUT_FORMATS)}, "
                                                  f"not {output_format!r}")
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    largest = max(out_w * out_h, width * height * native_scale**2)
    if largest > max_output_pixels:
        raise InvalidInput("input.scale", f"{width}x{height} at x{scale} (the model computes x{native_scale}) "
                                          f"makes {largest} output pixels; at most {max_output_pixels} are "
                                          "allowed: give a smaller image or scale")
    return UpscalePlan(out_w, out_h, tile, overlap)


def check_tiling(input: dict[str, Any], default_tile: int = DEFAULT_TILE) -> tuple[int, int]:
    """The input's (tile, tile_overlap), or ``InvalidInput`` naming the one that breaks a rule."""
    tile = int(input.get("tile", default_tile))
    if tile != 0 and not MIN_TILE <= tile <= MAX_TILE:
        raise InvalidInput("input.tile", f"must be 0 (no tiling) or {MIN_TILE} to {MAX_TILE}, not {tile}")
    overlap = int(input.get("tile_overlap", DEFAULT_OVERLAP))
    if not 0 <= overlap <= MAX_OVERLAP:
        raise InvalidInput("input.tile_overlap", f"must be 0 to {MAX_OVERLAP}, not {overlap}")
    if tile and 2 * overlap >= tile:
        raise InvalidInput("input.tile_overlap", f"must be less than half of tile ({tile}), not {overlap}")
    return tile, overlap


def weights_file(weights: str) -> Path:
    """The weights file ``weights`` names: itself, or the one weights file in that folder."""
    if not weights:
        raise ValueError("the upscale runner needs weights: a weights file or a folder holding one")
    path = Path(weights).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"weights not found: {path}")
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise ValueError(f"{path} must hold exactly one weights file ({', '.join(WEIGHT_SUFFIXES)}); "
                         f"found {names}")
    return found[0]


# Tiling: pure functions over tensors, testable with any model_fn.


def tile_spans(length: int, tile: int) -> list[tuple[int, int]]:
    """``length`` cut into the fewest spans of at most ``tile`` (0: one span), as even as can be.

    Even spans, not ``tile``-sized ones and a sliver, so that no tile is too small for the model or
    narrower than its own overlaps.
    """
    count = 1 if tile <= 0 else math.ceil(length / tile)
    bounds = [round(i * length / count) for i in range(count + 1)]
    return list(pairwise(bounds))


def tile_count(height: int, width: int, tile: int) -> int:
    return len(tile_spans(height, tile)) * len(tile_spans(width, tile))


def feather(start: int, stop: int, length: int, overlap: int,
            scale: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Blending weights, in output pixels, of the span [start, stop) of an axis ``length`` long once
    widened by ``overlap`` on each side that has a neighbour: 1 inside, ramping linearly to near 0
    across the 2 * overlap px where it shares pixels with a neighbour (whose ramp is the mirror image,
    so the two add up to 1). Returns the weights and, in input pixels, the widened span."""
    import torch

    lo, hi = max(0, start - overlap), min(length, stop + overlap)
    weights = torch.ones((hi - lo) * scale)
    positions = torch.arange((hi - lo) * scale, dtype=torch.float32) + 0.5  # pixel centres
    if lo < start:  # a neighbour before: ramp up across [start - overlap, start + overlap)
        weights = torch.minimum(weights, positions / (2 * (start - lo) * scale))
    if hi > stop:  # a neighbour after: ramp down across [stop - overlap, stop + overlap)
        weights = torch.minimum(weights, positions.flip(0) / (2 * (hi - stop) * scale))
    return weights, (lo, hi)


def pad_to(tensor: torch.Tensor, minimum: int = 0, multiple_of: int = 1, square: bool = False) -> torch.Tensor:
    """``tensor`` (N, C, H, W) padded on the right and bottom to meet a model's size requirements:
    mirrored (reflect) where the tile is large enough, edge pixels repeated beyond that."""
    import torch.nn.functional as F

    height, width = tensor.shape[-2:]
    want_h = math.ceil(max(height, minimum) / multiple_of) * multiple_of
    want_w = math.ceil(max(width, minimum) / multiple_of) * multiple_of
    if square:
        want_h = want_w = max(want_h, want_w)
    pad_h, pad_w = want_h - height, want_w - width
    if not (pad_h or pad_w):
        return tensor
    reflect_h, reflect_w = min(pad_h, height - 1), min(pad_w, width - 1)
    if reflect_h or reflect_w:
        tensor = F.pad(tensor, (0, reflect_w, 0, reflect_h), mode="reflect")
    if pad_h > reflect_h or pad_w > reflect_w:
        tensor = F.pad(tensor, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
    return tensor


def iter_upscale_tiled(model_fn: ModelFn, image: torch.Tensor, scale: int, tile: int, overlap: int,
                       size_requirements: Any = None) -> Generator[int, None, torch.Tensor]:
    """Upscale ``image`` (1, C, H, W) tile by tile, yielding the number of tiles done after each and
    returning the (1, C', H * scale, W * scale) float32 result, on ``image``'s device.

    ``model_fn`` maps a (1, C, h, w) tensor to (1, C', h * scale, w * scale). Each tile is padded to
    ``size_requirements`` (spandrel's: ``minimum``, ``multiple_of``, ``square``) and its output cropped
    back. ``tile`` 0 runs the whole image at once. Every step runs under ``torch.inference_mode``,
    entered and left within the step, so no grad mode leaks to the caller between tiles.
    """
    import torch

    req = {} if size_requirements is None else {
        "minimum": size_requirements.minimum, "multiple_of": size_requirements.multiple_of,
        "square": size_requirements.square}
    height, width = image.shape[-2:]
    rows = [feather(a, b, height, overlap, scale) for a, b in tile_spans(height, tile)]
    cols = [feather(a, b, width, overlap, scale) for a, b in tile_spans(width, tile)]
    canvas: torch.Tensor | None = None
    done = 0
    for row_weights, (y0, y1) in rows:
        for col_weights, (x0, x1) in cols:
            with torch.inference_mode():
                piece = image[..., y0:y1, x0:x1]
                out = model_fn(pad_to(piece, **req))[..., : (y1 - y0) * scale, : (x1 - x0) * scale]
                if canvas is None:
                    canvas = torch.zeros((1, out.shape[1], height * scale, width * scale),
                                         dtype=torch.float32, device=image.device)
                weights = (row_weights[:, None] * col_weights[None, :]).to(image.device)
                canvas[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale].addcmul_(out.to(canvas), weights)
            done += 1
            yield done
    assert canvas is not None
    with torch.inference_mode():
        # The weights are a product of a row ramp and a column ramp over a grid, so their sum is the
        # product of the per-axis sums: no full-size weight canvas is needed.
        row_sum, col_sum = axis_sum(rows, height, scale), axis_sum(cols, width, scale)
        canvas /= (row_sum[:, None] * col_sum[None, :]).to(canvas.device)
    return canvas


def axis_sum(spans: list[tuple[torch.Tensor, tuple[int, int]]], length: int, scale: int) -> torch.Tensor:
    """The sum of the tiles' weights along one axis, in output pixels."""
    import torch

    total = torch.zeros(length * scale)
    for weights, (lo, hi) in spans:
        total[lo * scale:hi * scale] += weights
    return total


def upscale_tiled(model_fn: ModelFn, image: torch.Tensor, scale: int, tile: int, overlap: int,
                  size_requirements: Any = None) -> torch.Tensor:
    """``iter_upscale_tiled`` run to its end: the upscaled image."""
    steps = iter_upscale_tiled(model_fn, image, scale, tile, overlap, size_requirements)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def image_to_tensor(image: Image.Image, channels: int = 3) -> torch.Tensor:
    """An RGB image as a (1, channels, H, W) float32 tensor in [0, 1] (greyscale for 1 channel)."""
    import numpy as np
    import torch

    pixels = np.asarray(image.convert("L") if channels == 1 else image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255)


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """A (1, C, H, W) tensor in [0, 1] as an 8-bit RGB image (greyscale is spread to RGB)."""
    import torch
    from PIL import Image

    with torch.inference_mode():
        pixels = tensor[0].clamp(0, 1).mul_(255).round_().to(torch.uint8).permute(1, 2, 0).contiguous()
    array = pixels.cpu().numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0]).convert("RGB")
    return Image.fromarray(array)
