"""ControlNet units: which types there are, and turning a unit's image into its conditioning map.

Only Canny is preprocessed here (OpenCV, no weights needed). The other annotators (depth, pose, HED,
M-LSD, segmentation, normal) need their own model weights, so those types take a map that is already
preprocessed, and the input schema says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

CONTROLNET_TYPES = ("canny", "depth", "pose", "scribble", "segmentation", "normal", "mlsd", "hed")
PREPROCESSORS = ("canny", "none")

# A unit's fields with their defaults (the schema shows them; the runner applies them).
UNIT_DEFAULTS: dict[str, Any] = {
    "conditioning_scale": 1.0,
    "guidance_start": 0.0,
    "guidance_end": 1.0,
    "canny_low_threshold": 100,
    "canny_high_threshold": 200,
}


def default_preprocessor(controlnet_type: str) -> str:
    return "canny" if controlnet_type == "canny" else "none"


def canny(image: "Image.Image", low: int, high: int) -> "Image.Image":
    """Canny edges (white on black, 3 channels), as the canny ControlNet was trained on."""
    import cv2
    import numpy as np
    from PIL import Image

    edges = cv2.Canny(np.asarray(image.convert("L")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def conditioning_image(unit: dict[str, Any], image: "Image.Image", width: int, height: int) -> "Image.Image":
    """The unit's map at the output size: resized to (width, height), then preprocessed as it asks."""
    from PIL import Image

    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    if (unit.get("preprocessor") or default_preprocessor(unit["type"])) == "canny":
        return canny(image, int(unit.get("canny_low_threshold", UNIT_DEFAULTS["canny_low_threshold"])),
                     int(unit.get("canny_high_threshold", UNIT_DEFAULTS["canny_high_threshold"])))
    return image
