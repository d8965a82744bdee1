"""Images in and out of runners: safe decoding of input files and encoding of outputs.

Decoding is the edge where untrusted bytes meet an image library, so it is strict:
- only the formats on the allow-list (PNG, JPEG, WebP) are even tried, whatever the file's name says;
- the pixel count is read from the header and checked against a bound *before* any pixel is decoded,
  so a small file that expands to gigabytes (a decompression bomb) is refused cheaply;
- the EXIF orientation is applied, so a phone photo is upright as its owner saw it;
- transparency is flattened onto white, and the result is always 8-bit RGB.
Every refusal is an ``InvalidInput`` that names the field.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from warmfleet.domain import FileData
from warmfleet.errors import InvalidInput

if TYPE_CHECKING:
    from PIL import Image

# What PIL calls the formats we read, and how we write each output format.
INPUT_FORMATS = ("PNG", "JPEG", "WEBP")
OUTPUT_FORMATS = {  # name -> (PIL format, content type, save options)
    "png": ("PNG", "image/png", {"compress_level": 4}),
    "webp": ("WEBP", "image/webp", {"quality": 90, "method": 4}),
    "jpg": ("JPEG", "image/jpeg", {"quality": 92}),
}
# 64 megapixels: above an 8K frame; ~200 MB as RGB bytes while decoding.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
OUTPUT_FORMAT_SCHEMA = {
    "enum": list(OUTPUT_FORMATS), "default": "png",
    "description": "Format of the output images: png (lossless), webp or jpg.",
}


IMAGE_MEDIA_TYPE = "image/*"  # the schema's contentMediaType of a file field that takes an image


def image_file_schema(description: str) -> dict[str, Any]:
    """The JSON Schema of an input field that takes an image file (checked by ``probe_image`` on entry)."""
    return {"type": "string", "format": "uri", "contentMediaType": IMAGE_MEDIA_TYPE,
            "description": f"{description} PNG, JPEG or WebP."}


def _open(file: FileData, field: str, max_pixels: int) -> "Image.Image":
    """The image, opened lazily (its header read, no pixel decoded yet) and checked against the bounds."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(file, FileData) or not file.data:
        raise InvalidInput(field, "expected an image file (PNG, JPEG or WebP), got no data")
    try:
        image = Image.open(io.BytesIO(file.data), formats=list(INPUT_FORMATS))
    except UnidentifiedImageError:
        raise InvalidInput(field, "is not a PNG, JPEG or WebP image (the formats accepted)") from None
    except Image.DecompressionBombError:  # PIL's own bound, far above ours, checked as it opens
        raise InvalidInput(field, f"has more than {max_pixels} pixels, the most accepted") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InvalidInput(field, f"is not a readable image: {err}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInput(field, f"has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InvalidInput(field, f"is {width}x{height} = {width * height} pixels; at most {max_pixels} "
                                  f"are accepted")
    return image


def probe_image(file: FileData, field: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the file's header, or ``InvalidInput``: the cheap check made on entry, before
    a prediction is queued (format, size bound; no pixel is decoded)."""
    with _open(file, field, max_pixels) as image:
        return image.size


def decode_image(file: FileData, field: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> "Image.Image":
    """The file as an upright 8-bit RGB image; ``InvalidInput`` naming ``field`` if it is not one we accept."""
    from PIL import Image, ImageOps

    image = _open(file, field, max_pixels)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InvalidInput(field, f"is not a readable image: {err}") from None


def _to_rgb(image: "Image.Image") -> "Image.Image":
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale PNG: scale, do not clip
        return image.point(lambda v: v / 257).convert("L").convert("RGB")
    return image.convert("RGB")


def encode_image(image: "Image.Image", output_format: str, name: str) -> FileData:
    """The image as a file in ``output_format`` (png, webp or jpg), named ``name`` plus its extension."""
    try:
        pil_format, content_type, options = OUTPUT_FORMATS[output_format]
    except KeyError:
        known = ", ".join(OUTPUT_FORMATS)
        raise InvalidInput("input.output_format", f"must be one of {known}, not {output_format!r}") from None
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format, **options)
    return FileData(buffer.getvalue(), content_type, f"{name}.{output_format}", image.width, image.height)
