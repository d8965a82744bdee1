"""Every conditioning type of Replicate's ControlNet guide from a plain photo, through the cluster: the
unit's preprocessor makes its map on the server (tiny random-weight annotators with the real
architectures, ``runners/tiny_annotators.py``), ``return_maps`` shows it beside the image, and the image
follows the map: the map sent back with preprocessor none gives the same bytes, a black map does not."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from tests.integration.test_images import assert_differ, generate, moved, png
from tests.unit.test_annotators import photo
from warmfleet.v1 import types_pb2 as T

pytestmark = pytest.mark.integration

SIZE = 64
# preprocessor -> the ControlNet type whose map it makes
TYPE_OF = {"canny": "canny", "hed": "hed", "softedge": "softedge", "scribble": "scribble", "mlsd": "mlsd",
           "lineart": "lineart", "depth": "depth", "normal": "normal", "openpose": "pose", "seg": "segmentation"}
PHOTO = photo(size=(256, 256)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def unit(preprocessor: str, image: Image.Image = PHOTO, **fields) -> T.ControlNetUnit:
    return T.ControlNetUnit(image=png(image), type=TYPE_OF.get(preprocessor, fields.pop("type", "canny")),
                            preprocessor=preprocessor, detect_resolution=128, **fields)


def rgb(f: T.File) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(f.data)))


_FROM_PHOTO: dict[str, T.Prediction] = {}  # made once for this module's tests (``api`` is per test)


@pytest.fixture
async def from_photo(api) -> dict[str, T.Prediction]:
    """One prediction per preprocessor, all from the same photo, with its map returned."""
    for name in TYPE_OF:
        if name not in _FROM_PHOTO:
            _FROM_PHOTO[name] = await generate(api, seed=31, width=SIZE, height=SIZE, controlnets=[unit(name)],
                                               return_maps=True)
    return _FROM_PHOTO


@pytest.mark.parametrize("name", list(TYPE_OF))
async def test_each_preprocessor_makes_a_map_of_the_right_shape_and_range(from_photo, name):
    image, made = from_photo[name].output.files
    assert made.name == f"map-0-{TYPE_OF[name]}.png"
    array = rgb(made)
    assert array.shape == (SIZE, SIZE, 3) and array.dtype == np.uint8
    assert array.max() > array.min(), f"{name}'s map is one flat colour"


def test_the_maps_differ_between_every_pair_of_types(from_photo):
    for a, b in itertools.combinations(TYPE_OF, 2):
        assert not np.array_equal(rgb(from_photo[a].output.files[1]), rgb(from_photo[b].output.files[1])), (a, b)


@pytest.mark.parametrize("name", list(TYPE_OF))
async def test_the_image_follows_the_map_the_preprocessor_made(api, from_photo, name):
    image, made = from_photo[name].output.files
    plain = await generate(api, seed=31, width=SIZE, height=SIZE)
    assert_differ(image, plain.output.files[0], f"{name} from a photo against no ControlNet")
    # The map it returned, sent as the map: the same image, byte for byte. So the map is what steered it.
    as_map = await generate(api, seed=31, width=SIZE, height=SIZE, controlnets=[T.ControlNetUnit(
        image=T.File(data=made.data, content_type="image/png"), type=TYPE_OF[name], preprocessor="none")])
    assert as_map.output.files[0].data == image.data
    # A black map of the same type: another image, so a runner that ignored the map would fail here. (A
    # line map is mostly black already, so fewer values move than for a dense one; rounding moves none by
    # more than a level, so any share of them beyond rounding is the map's doing.)
    black = await generate(api, seed=31, width=SIZE, height=SIZE, controlnets=[
        T.ControlNetUnit(image=png(Image.new("RGB", (SIZE, SIZE))), type=TYPE_OF[name], preprocessor="none")])
    assert moved(image, black.output.files[0]) > 0.005, f"{name}'s map against a black map"


async def test_a_units_default_preprocessor_is_its_types_annotator(api, from_photo):
    by_default = await generate(api, seed=31, width=SIZE, height=SIZE, return_maps=True, controlnets=[
        T.ControlNetUnit(image=png(PHOTO), type="depth", detect_resolution=128)])
    assert by_default.output.files[1].data == from_photo["depth"].output.files[1].data


async def test_a_tunable_reaches_its_annotator(api, from_photo):
    coarse = await generate(api, seed=31, width=SIZE, height=SIZE, return_maps=True,
                            controlnets=[unit("lineart", lineart_coarse=True)])
    assert coarse.output.files[1].data != from_photo["lineart"].output.files[1].data


async def test_an_unknown_preprocessor_or_a_tunable_out_of_range_is_invalid_naming_the_field(api):
    from tests.integration.test_images import generation

    for fields, field in (({"preprocessor": "midas"}, "input.controlnets[0].preprocessor"),
                          ({"preprocessor": "hed", "detect_resolution": 10}, "input.controlnets[0].detect_resolution")):
        bad = T.ControlNetUnit(image=png(PHOTO), type="hed", **fields)
        with pytest.raises(Exception) as caught:
            await api.predictions.CreatePrediction(generation(controlnets=[bad], width=SIZE, height=SIZE),
                                                   metadata=api.md)
        assert caught.value.code().name == "INVALID_ARGUMENT" and field in caught.value.details()
