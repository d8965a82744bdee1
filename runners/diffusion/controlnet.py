"""ControlNet units: which types there are, a unit's schema, and turning its image into its conditioning map.

A unit's ``preprocessor`` makes the map on the server from a photo (``annotators``: canny, hed, softedge,
scribble, mlsd, lineart, depth, normal, openpose, seg, with the annotator weights a version configures
in ``options.annotators``), or is ``none`` for an image that already is a map. Its default is the type's
own annotator (``annotators.DEFAULT_PREPROCESSOR``) when the version has its weights, else ``none``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runners.diffusion.annotators import (
    DEFAULT_PREPROCESSOR, PREPROCESSORS, available_preprocessors, parameter_schema,
)

if TYPE_CHECKING:
    from PIL import Image

    from runners.diffusion.annotators import Annotators

CONTROLNET_TYPES = ("canny", "depth", "pose", "scribble", "segmentation", "normal", "mlsd", "hed", "lineart",
                    "softedge")

# A unit's fields with their defaults (the schema shows them; the runner applies them).
UNIT_DEFAULTS: dict[str, Any] = {
    "conditioning_scale": 1.0,
    "guidance_start": 0.0,
    "guidance_end": 1.0,
}


def default_preprocessor(controlnet_type: str, available: tuple[str, ...] = PREPROCESSORS) -> str:
    """The type's own annotator where it can run, else ``none`` (the image is taken as a map)."""
    own = DEFAULT_PREPROCESSOR.get(controlnet_type, "none")
    return own if own in available else "none"


def unit_schema(types: list[str], weights_keys: list[str], image_schema: dict[str, Any]) -> dict[str, Any]:
    """The schema of one unit, for a version carrying ControlNets ``types`` and annotator weights
    ``weights_keys``: the preprocessors those can run and their tunables."""
    available = available_preprocessors(weights_keys)
    defaults = ", ".join(f"{t}: {default_preprocessor(t, available)}" for t in types)
    return {
        "type": "object", "additionalProperties": False, "required": ["image", "type"],
        "properties": {
            "image": image_schema,
            "type": {"enum": types, "description": "Which ControlNet: one this version carries."},
            "preprocessor": {"enum": list(available),
                             "description": "How the image becomes the map: an annotator run here on a photo, "
                                            f"or none for an image that is a map already. Default: {defaults}."},
            "conditioning_scale": {"type": "number", "minimum": 0, "maximum": 2,
                                   "default": UNIT_DEFAULTS["conditioning_scale"],
                                   "description": "How strongly this unit steers the image, 0 to 2."},
            "guidance_start": {"type": "number", "minimum": 0, "maximum": 1,
                               "default": UNIT_DEFAULTS["guidance_start"],
                               "description": "Fraction of the steps at which the unit starts, 0 to 1."},
            "guidance_end": {"type": "number", "minimum": 0, "maximum": 1,
                             "default": UNIT_DEFAULTS["guidance_end"],
                             "description": "Fraction of the steps after which it stops, 0 to 1, "
                                            "at least guidance_start."},
            **parameter_schema(available),
        },
    }


def conditioning_image(unit: dict[str, Any], image: "Image.Image", width: int, height: int,
                       annotators: "Annotators", field: str) -> "Image.Image":
    """The unit's map at the output size: the image resized to (width, height), then preprocessed as the
    unit asks (``field`` names the unit, for errors: "input.controlnets[0]")."""
    from PIL import Image

    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    name = unit.get("preprocessor") or default_preprocessor(unit["type"], annotators.preprocessors)
    return annotators.run(name, image, unit, f"{field}.preprocessor")
