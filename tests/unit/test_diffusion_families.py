"""Which pipeline family a diffusion version is: from options.family, else its model_index.json."""

from __future__ import annotations

import json

import pytest

from runners.diffusion.families import FAMILIES, detect_family
from warmfleet.errors import InvalidInput


def weights(tmp_path, class_name: str | None):
    if class_name is not None:
        (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return str(tmp_path)


@pytest.mark.parametrize("class_name, family", [
    ("StableDiffusionPipeline", "sd"),
    ("StableDiffusionXLPipeline", "sdxl"),
    ("StableDiffusionXLImg2ImgPipeline", "sdxl"),  # a refiner's folder
])
def test_the_family_is_read_from_model_index_json(tmp_path, class_name, family):
    assert detect_family(weights(tmp_path, class_name)) == family


def test_the_option_overrides_the_folder_and_an_unknown_one_names_the_option(tmp_path):
    folder = weights(tmp_path, "StableDiffusionPipeline")
    assert detect_family(folder, "sdxl") == "sdxl"
    with pytest.raises(InvalidInput) as err:
        detect_family(folder, "sd3")
    assert err.value.field == "options.family"


def test_without_a_readable_index_a_refiner_means_sdxl_else_sd(tmp_path):
    assert detect_family(weights(tmp_path, None)) == "sd"
    assert detect_family("no/such/folder", refiner="some/refiner") == "sdxl"
    (tmp_path / "model_index.json").write_text("not json")
    assert detect_family(str(tmp_path)) == "sd"


def test_every_family_names_a_pipeline_for_every_mode_with_and_without_controlnets():
    for family in FAMILIES.values():
        assert set(family.classes) == {(m, c) for m in ("txt2img", "img2img", "inpaint") for c in (False, True)}
