"""Safe image decoding (allow-list, pixel bound before decoding, EXIF orientation, transparency) and
encoding; and the schema check that refuses a bad image before it is queued."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from runners.images import decode_image, encode_image, image_file_schema, probe_image
from runners.schema import InputValidator
from warmfleet.domain import FileData
from warmfleet.errors import InvalidInput


def file_of(image: Image.Image, fmt: str, **save) -> FileData:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return FileData(buffer.getvalue(), name=f"x.{fmt.lower()}")


def gradient(width: int = 6, height: int = 4) -> Image.Image:
    data = np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3)
    return Image.fromarray(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_decode_to_rgb(fmt):
    image = decode_image(file_of(gradient(), fmt), "input.image")
    assert image.mode == "RGB" and image.size == (6, 4)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "PPM"])
def test_other_formats_are_refused_naming_the_field(fmt):
    with pytest.raises(InvalidInput) as err:
        decode_image(file_of(gradient(), fmt), "input.image")
    assert err.value.field == "input.image" and "PNG, JPEG or WebP" in str(err.value)


def test_an_image_over_the_pixel_bound_is_refused_from_its_header():
    big = file_of(Image.new("L", (200, 100)), "PNG")
    assert probe_image(big, "input.image") == (200, 100)
    with pytest.raises(InvalidInput) as err:
        probe_image(big, "input.image", max_pixels=19_999)
    assert "200x100 = 20000 pixels; at most 19999" in str(err.value)


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding():
    # A 20000 x 20000 PNG of one colour is about 1 MB of bytes but 400 million pixels.
    bomb = file_of(Image.new("L", (20000, 20000)), "PNG", compress_level=9)
    assert len(bomb.data) < 2_000_000
    with pytest.raises(InvalidInput) as err:
        probe_image(bomb, "input.image")
    assert err.value.field == "input.image" and f"{64 * 1024 * 1024} pixels" in str(err.value)
    with pytest.raises(InvalidInput):
        decode_image(FileData(bomb.data), "input.image", max_pixels=10_000)


def test_truncated_data_is_an_invalid_input_not_a_crash():
    data = file_of(gradient(64, 64), "PNG").data
    with pytest.raises(InvalidInput) as err:
        decode_image(FileData(data[: len(data) // 2]), "input.controlnets[0].image")
    assert err.value.field == "input.controlnets[0].image"


def test_exif_orientation_is_applied():
    image = gradient(6, 4)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    upright = decode_image(file_of(image, "JPEG", exif=exif.tobytes()), "input.image")
    assert upright.size == (4, 6)


def test_transparency_is_flattened_onto_white():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    decoded = decode_image(file_of(rgba, "PNG"), "input.image")
    assert decoded.getpixel((0, 0)) == (255, 255, 255) and decoded.getpixel((1, 0)) == (0, 0, 255)


@pytest.mark.parametrize("fmt, content_type", [("png", "image/png"), ("webp", "image/webp"), ("jpg", "image/jpeg")])
def test_encode_writes_the_format_with_its_content_type_and_size(fmt, content_type):
    out = encode_image(gradient(), fmt, "output-0")
    assert (out.content_type, out.name, out.width, out.height) == (content_type, f"output-0.{fmt}", 6, 4)
    assert Image.open(io.BytesIO(out.data)).size == (6, 4)


def test_png_round_trip_is_lossless():
    image = gradient()
    assert np.array_equal(np.asarray(decode_image(encode_image(image, "png", "x"), "f")), np.asarray(image))


def test_the_input_schema_refuses_a_bad_image_on_entry_naming_its_place():
    validator = InputValidator({"type": "object", "properties": {
        "image": image_file_schema("An image."),
        "units": {"type": "array", "items": {"type": "object", "properties": {"image": image_file_schema("x")}}},
    }})
    good = file_of(gradient(), "PNG")
    assert validator.validate({"image": good, "units": [{"image": good}]})["image"] is good
    with pytest.raises(InvalidInput) as err:
        validator.validate({"image": good, "units": [{"image": FileData(b"GIF89a...")}]})
    assert err.value.field == "input.units[0].image"
