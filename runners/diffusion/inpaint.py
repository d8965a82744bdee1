"""Inpainting and outpainting: the mask a pipeline call repaints, the canvas outpainting builds, and the
overlay that keeps every pixel outside the mask.

The rules (the input schema says them too):

- a mask is white where the image is repainted and black where it is kept, as diffusers' and
  Replicate's inpainting models take it. Any image mode is read: it is made greyscale (a transparent
  pixel counts as white, as ``decode_image`` flattens transparency onto white), resized to the output
  size by nearest neighbour (no grey appears at the resized edges), then thresholded at 50%
  (``MASK_THRESHOLD``): the pipeline sees a binary mask.
- outpainting adds ``left``/``right``/``top``/``bottom`` pixels around the image (multiples of 8). The new
  area is filled from the image's border (``edge``: its border pixels stretched outward; ``blur``: the
  same, blurred) so that a strength below 1 starts it from plausible colours, and it is white in the
  mask; a mask given with it marks what to repaint inside the original image too.
- the overlay (AUTOMATIC1111's "mask overlay", diffusers' ``apply_overlay``): after decoding, the init
  image (the canvas, when outpainting) is pasted back through the inverted mask, feathered by
  ``mask_blur`` pixels (a Gaussian blur's radius). With a 4-channel UNet diffusers' inpaint pipeline
  keeps the unmasked area in latent space only (it blends the init image's latents back after every
  step), so the VAE's round trip, and the mask's 8-pixel latent grid, would otherwise change pixels
  outside the mask. With ``mask_blur`` 0 every black pixel of the mask is the init image's exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

MASK_THRESHOLD = 128  # a mask pixel at or above this (of 255) is repainted
OUTPAINT_FILLS = ("edge", "blur")
OUTPAINT_SIDES = ("left", "right", "top", "bottom")
MAX_MASK_BLUR = 64


def binary_mask(mask: "Image.Image", size: tuple[int, int]) -> "Image.Image":
    """``mask`` (any mode) as a greyscale 0/255 mask of ``size``: nearest-neighbour resize, 50% threshold."""
    from PIL import Image

    grey = mask.convert("L")
    if grey.size != size:
        grey = grey.resize(size, Image.Resampling.NEAREST)
    return grey.point(lambda v: 255 if v >= MASK_THRESHOLD else 0)


def outpaint_canvas(image: "Image.Image", sides: dict[str, int], fill: str,
                    mask: "Image.Image | None" = None) -> tuple["Image.Image", "Image.Image"]:
    """The enlarged canvas (``image`` placed at (left, top), the new area filled) and its mask (the new
    area white; inside the image, ``mask`` if given, else black)."""
    import numpy as np
    from PIL import Image, ImageFilter

    left, right, top, bottom = (int(sides.get(side, 0)) for side in OUTPAINT_SIDES)
    pixels = np.asarray(image.convert("RGB"))
    canvas = Image.fromarray(np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge"))
    if fill == "blur":
        radius = max(4, max(left, right, top, bottom) // 4)
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius))
        canvas.paste(image, (left, top))
    new_mask = Image.new("L", canvas.size, 255)
    new_mask.paste(mask if mask is not None else Image.new("L", image.size, 0), (left, top))
    return canvas, new_mask


def overlay_mask(mask: "Image.Image", blur: int) -> "Image.Image":
    """The mask the overlay pastes through: ``mask`` feathered by ``blur`` pixels (0: as it is)."""
    from PIL import ImageFilter

    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask


def apply_overlay(generated: "Image.Image", init: "Image.Image", mask: "Image.Image") -> "Image.Image":
    """``generated`` where ``mask`` is white, ``init`` where it is black, blended between."""
    from PIL import Image

    return Image.composite(generated.convert("RGB"), init.convert("RGB"), mask)


def outpaint_sides(raw: dict[str, Any]) -> dict[str, int]:
    """The four sides of an ``outpaint`` input, the absent ones 0."""
    return {side: int(raw.get(side) or 0) for side in OUTPAINT_SIDES}
