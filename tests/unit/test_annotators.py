"""The ControlNet annotators (runners/diffusion/annotators.py) on tiny random-weight nets with the real
architectures (runners/tiny_annotators.py), each loaded by its library's own loader: every map is RGB at
the input's size, tells the types and the images apart, and the errors name their field."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image, ImageDraw

from runners.diffusion import annotators as annotators_module
from runners.diffusion.annotators import (
    DEFAULT_PREPROCESSOR, PARAMETERS, PREPROCESSORS, WEIGHTS_FOR, WEIGHTS_KEYS, Annotators, ade20k_palette,
    available_preprocessors, parameter_schema, settings_for,
)
from runners.diffusion.controlnet import CONTROLNET_TYPES
from runners.tiny_annotators import make_tiny_annotators
from warmfleet.errors import InvalidInput

SIZE = (328, 248)  # not a multiple of 64, so the annotators' own rounding has to be undone
DETECT = {"detect_resolution": 256}
FIELD = "input.controlnets[0].preprocessor"
MAPS = [name for name in PREPROCESSORS if name != "none"]
NEURAL = [name for name in PREPROCESSORS if WEIGHTS_FOR[name] is not None]


def photo(shift: int = 0, size: tuple[int, int] = SIZE) -> Image.Image:
    """A photo's stand-in: colour gradients, a ripple, a square, a disc, a triangle and a stick figure;
    ``shift`` moves the ripple, the square and the figure."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    pixels = np.stack([x / w * 200 + 30, y / h * 180 + 40, (x + y) / (w + h) * 120 + 60], axis=-1)
    pixels += 20 * np.sin((x + shift) / 23.0)[..., None]
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([w * 0.08 + shift, h * 0.1, w * 0.35 + shift, h * 0.4], fill=(220, 40, 40))
    draw.ellipse([w * 0.6, h * 0.6, w * 0.9, h * 0.92], fill=(30, 60, 200))
    draw.polygon([(w * 0.1, h * 0.9), (w * 0.3, h * 0.55), (w * 0.45, h * 0.9)], fill=(250, 230, 30))
    cx = w * 0.62 + shift
    draw.ellipse([cx - 15, h * 0.08, cx + 15, h * 0.2], outline=(0, 0, 0), width=4)
    for line in ([cx, h * 0.2, cx, h * 0.45], [cx - 40, h * 0.28, cx + 40, h * 0.28],
                 [cx, h * 0.45, cx - 30, h * 0.62], [cx, h * 0.45, cx + 30, h * 0.62]):
        draw.line(line, fill=(0, 0, 0), width=5)
    return image


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_annotators(tmp_path_factory.mktemp("annotators"))


@pytest.fixture(scope="module")
def annotators(folders: dict[str, Path]) -> Annotators:
    import torch

    loaded = Annotators({key: str(path) for key, path in folders.items()}, "cpu", torch.float32)
    yield loaded
    loaded.unload()


@pytest.fixture(scope="module")
def maps(annotators: Annotators) -> dict[str, list[Image.Image]]:
    """Each preprocessor's map of two photos, made once (the body net alone takes seconds a call)."""
    images = (photo(), photo(shift=40))
    return {name: [annotators.run(name, image, DETECT, FIELD) for image in images] for name in MAPS}


# The maps


@pytest.mark.parametrize("name", MAPS)
def test_each_map_is_rgb_uint8_at_the_inputs_size_and_not_constant(maps, name):
    for image in maps[name]:
        pixels = np.asarray(image)
        assert image.mode == "RGB" and image.size == SIZE
        assert pixels.dtype == np.uint8 and pixels.shape == (SIZE[1], SIZE[0], 3)
        assert pixels.max() > pixels.min(), f"{name}'s map is one colour"
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) >= 2


def test_the_maps_differ_between_every_pair_of_types(maps):
    for first, second in itertools.combinations(MAPS, 2):
        assert not np.array_equal(np.asarray(maps[first][0]), np.asarray(maps[second][0])), (first, second)


@pytest.mark.parametrize("name", MAPS)
def test_each_map_depends_on_the_image(maps, name):
    assert not np.array_equal(np.asarray(maps[name][0]), np.asarray(maps[name][1]))


def test_canny_is_opencvs_canny_on_the_grey_image(annotators):
    import cv2

    image = photo()
    thresholds = {"canny_low_threshold": 50, "canny_high_threshold": 150}
    edges = np.asarray(annotators.run("canny", image, thresholds))
    expected = cv2.Canny(np.asarray(image.convert("L")), 50, 150)
    assert np.array_equal(edges, np.stack([expected] * 3, axis=-1))
    assert edges.any()


def test_none_returns_the_image_unchanged(annotators):
    image = photo()
    assert np.array_equal(np.asarray(annotators.run("none", image, {})), np.asarray(image))


def test_depth_is_grey_and_spans_0_to_255(maps):
    pixels = np.asarray(maps["depth"][0])
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert pixels.min() == 0 and pixels.max() == 255


def test_normals_face_the_camera_and_background_is_flat(maps):
    pixels = np.asarray(maps["normal"][0]).astype(int)
    assert (pixels[..., 2] >= 127).all()  # z > 0 everywhere
    flat = (np.abs(pixels[..., 0] - 127) <= 1) & (np.abs(pixels[..., 1] - 127) <= 1)
    assert 0 < flat.mean() < 1  # the background below normal_bg_threshold, and some tilted surface


def test_seg_is_painted_in_the_ade20k_palette(maps):
    colours = np.unique(np.asarray(maps["seg"][0]).reshape(-1, 3), axis=0)
    assert ade20k_palette().shape == (150, 3)
    palette = {tuple(colour) for colour in ade20k_palette().tolist()}
    assert len(colours) > 1 and {tuple(colour) for colour in colours.tolist()} <= palette


def test_scribble_is_white_strokes_on_black(maps):
    assert set(np.unique(np.asarray(maps["scribble"][0]))) == {0, 255}


def test_openpose_draws_limbs_on_black(maps):
    pixels = np.asarray(maps["openpose"][0])
    drawn = pixels.any(axis=-1).mean()
    assert 0 < drawn < 0.6
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 3  # the limbs' colours


@pytest.mark.parametrize(("name", "params"), [
    ("hed", {"detect_resolution": 128}),
    ("mlsd", {"mlsd_value_threshold": 1.5}),
    ("lineart", {"lineart_coarse": True}),
    ("depth", {"detect_resolution": 128}),
    ("normal", {"normal_bg_threshold": 0.05}),
])
def test_tunables_reach_the_annotator(annotators, maps, name, params):
    assert not np.array_equal(np.asarray(annotators.run(name, photo(), {**DETECT, **params})),
                              np.asarray(maps[name][0]))


def test_other_image_modes_come_back_rgb_at_their_size(annotators):
    grey = photo(size=(200, 136)).convert("L")
    for name in ("canny", "hed", "none"):
        out = annotators.run(name, grey, DETECT)
        assert out.mode == "RGB" and out.size == (200, 136)


# Errors


@pytest.mark.parametrize("name", NEURAL)
def test_a_preprocessor_whose_weights_are_not_configured_names_the_field_and_the_weights(name):
    with pytest.raises(InvalidInput) as caught:
        Annotators({}, "cpu").run(name, photo(), {}, FIELD)
    assert caught.value.field == FIELD
    assert repr(WEIGHTS_FOR[name]) in caught.value.rule


def test_an_unknown_preprocessor_names_the_field():
    with pytest.raises(InvalidInput) as caught:
        Annotators({}, "cpu").run("midas", photo(), {}, FIELD)
    assert caught.value.field == FIELD and "unknown preprocessor 'midas'" in caught.value.rule


@pytest.mark.parametrize(("params", "field", "rule"), [
    ({"mlsd_value_threshold": 5}, "input.controlnets[0].mlsd_value_threshold", "from 0.01 to 2.0"),
    ({"detect_resolution": 32}, "input.controlnets[0].detect_resolution", "from 64 to 2048"),
    ({"detect_resolution": 256.5}, "input.controlnets[0].detect_resolution", "must be an integer"),
])
def test_a_tunable_out_of_bounds_names_its_own_field(params, field, rule):
    with pytest.raises(InvalidInput) as caught:
        Annotators({}, "cpu").run("mlsd", photo(), params, FIELD)
    assert caught.value.field == field and rule in caught.value.rule


def test_unknown_weights_keys_are_refused():
    with pytest.raises(ValueError, match="unknown annotator weights"):
        Annotators({"midas": "/nowhere"}, "cpu")


# Loading


def test_depth_and_seg_folders_load_with_transformers_own_classes(folders):
    from transformers import (
        AutoImageProcessor, AutoModelForDepthEstimation, ConvNextBackbone, DPTForDepthEstimation,
        DPTImageProcessor, SegformerImageProcessor, UperNetForSemanticSegmentation,
    )

    depth = AutoModelForDepthEstimation.from_pretrained(folders["depth"])
    assert isinstance(depth, DPTForDepthEstimation)
    assert isinstance(AutoImageProcessor.from_pretrained(folders["depth"]), DPTImageProcessor)
    seg = UperNetForSemanticSegmentation.from_pretrained(folders["seg"])
    assert isinstance(seg.backbone, ConvNextBackbone) and seg.config.num_labels == 150
    assert isinstance(AutoImageProcessor.from_pretrained(folders["seg"]), SegformerImageProcessor)


def test_controlnet_aux_folders_load_with_its_own_from_pretrained(folders):
    import torch

    annotators_module.import_controlnet_aux()
    from controlnet_aux.hed import HEDdetector
    from controlnet_aux.lineart import LineartDetector
    from controlnet_aux.mlsd import MLSDdetector
    from controlnet_aux.pidi import PidiNetDetector

    assert type(HEDdetector.from_pretrained(folders["hed"]).netNetwork).__name__ == "ControlNetHED_Apache2"
    assert type(PidiNetDetector.from_pretrained(folders["softedge"]).netNetwork).__name__ == "PiDiNet"
    assert type(MLSDdetector.from_pretrained(folders["mlsd"]).model).__name__ == "MobileV2_MLSD_Large"
    lineart = LineartDetector.from_pretrained(folders["lineart"])
    fine, coarse = lineart.model.model0[1].weight, lineart.model_coarse.model0[1].weight
    assert fine.dtype == coarse.dtype == torch.float32 and not fine.equal(coarse)  # two nets, float16 on disk


def test_models_load_on_first_use_and_unload(folders):
    annotators = Annotators({key: str(path) for key, path in folders.items()}, "cpu")
    assert annotators.loaded == ()
    annotators.run("canny", photo(), {})
    assert annotators.loaded == ()
    annotators.run("scribble", photo(), DETECT)
    annotators.run("hed", photo(), DETECT)
    assert annotators.loaded == ("hed",)  # scribble and hed share one net
    annotators.unload()
    assert annotators.loaded == ()


def test_concurrent_first_uses_load_once(folders, monkeypatch):
    loads = []
    real = annotators_module._LOADERS["mlsd"]
    monkeypatch.setitem(annotators_module._LOADERS, "mlsd",
                        lambda *args: loads.append(args) or real(*args))
    annotators = Annotators({"mlsd": str(folders["mlsd"])}, "cpu")
    start = threading.Barrier(4)
    results: list[np.ndarray] = []

    def first_use() -> None:
        start.wait()
        results.append(np.asarray(annotators.run("mlsd", photo(), DETECT)))

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and len(results) == 4
    assert all(np.array_equal(result, results[0]) for result in results)


def test_tiny_annotators_write_each_weights_key_once(folders):
    assert set(folders) == set(WEIGHTS_KEYS)
    assert all((path / ".complete").is_file() for path in folders.values())
    def stamps(found: dict[str, Path]) -> dict[str, int]:
        return {key: (path / ".complete").stat().st_mtime_ns for key, path in found.items()}

    before = stamps(folders)
    again = make_tiny_annotators(next(iter(folders.values())).parent)
    assert again == folders and stamps(again) == before


def test_importing_the_module_imports_no_torch_controlnet_aux_or_transformers():
    code = ("import sys, runners.diffusion.annotators, runners.tiny_annotators; "
            "print(sorted(m for m in ('torch', 'controlnet_aux', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# The declarations


def test_every_controlnet_type_has_a_preprocessor():
    for kind in CONTROLNET_TYPES:
        assert DEFAULT_PREPROCESSOR[kind] in PREPROCESSORS
    assert DEFAULT_PREPROCESSOR["pose"] == "openpose" and DEFAULT_PREPROCESSOR["segmentation"] == "seg"


def test_weights_for_names_only_known_keys():
    assert set(WEIGHTS_FOR) == set(PREPROCESSORS) == set(PARAMETERS)
    assert {key for key in WEIGHTS_FOR.values() if key} == set(WEIGHTS_KEYS)
    assert WEIGHTS_FOR["normal"] == "depth" and WEIGHTS_FOR["scribble"] == "hed"
    assert available_preprocessors(["depth"]) == ("none", "canny", "depth", "normal")


def test_the_parameter_schema_holds_its_defaults_and_names_its_users():
    schema = parameter_schema()
    for name, params in PARAMETERS.items():
        for parameter, property_schema in params.items():
            jsonschema.validate(property_schema["default"], property_schema)
            assert name in schema[parameter]["description"]
    resolution = schema["detect_resolution"]
    assert (resolution["default"], resolution["minimum"], resolution["maximum"]) == (512, 64, 2048)
    assert set(parameter_schema(["canny", "none"])) == {"canny_low_threshold", "canny_high_threshold"}
    assert settings_for("mlsd", {"detect_resolution": 384, "conditioning_scale": 1.0}) == {
        "detect_resolution": 384, "mlsd_value_threshold": 0.1, "mlsd_distance_threshold": 0.1}
