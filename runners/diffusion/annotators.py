"""ControlNet annotators: a photo turned into each ControlNet type's conditioning map, on the server.

Each preprocessor makes the kind of map its ControlNet was trained on, with the annotator its users
know, through the library that maintains it, loaded by that library's own loader from a local folder
(or a hub id):

- canny: OpenCV's Canny edges, on the image at its own size (no weights).
- hed: controlnet_aux's HED (``ControlNetHED_Apache2``). scribble: the same HED map through
  controlnet_aux's scribble step (non-maximum suppression, blur, threshold), as ControlNet's
  fake-scribble demo made its maps.
- softedge: controlnet_aux's PiDiNet. mlsd: M-LSD straight lines. lineart: the line-art generator
  (fine or coarse model).
- openpose: CMU's body net (controlnet_aux's ``Body``), body only: the hand and face nets that
  ``OpenposeDetector.from_pretrained`` also insists on loading (300 MB) are never needed for it.
- depth: a transformers depth model (DPT, as Intel/dpt-hybrid-midas), its relative inverse depth
  min-max normalised to 0-255 (near is white), as ControlNet's MiDaS annotator did.
- normal: normals from the same depth prediction: Sobel gradients of the raw depth against a constant
  z, with what lies below a relative depth threshold flattened to face the camera. That is how the maps
  of lllyasviel/sd-controlnet-normal (the "normal" type) were made, from MiDaS, so it needs no weights
  beyond the depth model's. (NormalBae is another model's map, control_v11p_sd15_normalbae's.)
- seg: a transformers semantic segmentation model (UperNet over ConvNeXt, as openmmlab/upernet-
  convnext-small) over ADE20K's 150 classes, painted in the ADE20K palette that ControlNet's seg
  model was trained on.

Inputs always go through the annotator's own preprocessing (controlnet_aux's ``__call__`` with
``detect_resolution``, transformers' image processors), and every map comes back RGB, uint8, at the
input's size. Models load on first use, on the given device. This module imports no torch,
controlnet_aux or transformers at import time.

The weights a local folder needs, by key: hed ``ControlNetHED.pth``, softedge ``table5_pidinet.pth``,
mlsd ``mlsd_large_512_fp32.pth``, lineart ``sk_model.pth`` and ``sk_model2.pth``, openpose
``body_pose_model.pth`` (all in lllyasviel/Annotators, so one folder may serve them all); depth and seg
a transformers model folder with its image processor.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from warmfleet.errors import InvalidInput

if TYPE_CHECKING:
    from PIL import Image

PREPROCESSORS = ("none", "canny", "hed", "softedge", "scribble", "mlsd", "lineart", "depth", "normal",
                 "openpose", "seg")
WEIGHTS_KEYS = ("hed", "softedge", "mlsd", "lineart", "openpose", "depth", "seg")
# The weights each preprocessor runs on (None: it needs none).
WEIGHTS_FOR: dict[str, str | None] = {
    "none": None, "canny": None, "hed": "hed", "softedge": "softedge", "scribble": "hed", "mlsd": "mlsd",
    "lineart": "lineart", "depth": "depth", "normal": "depth", "openpose": "openpose", "seg": "seg",
}
# The preprocessor that makes a ControlNet type's map from a photo (lineart and softedge: types that
# ControlNet 1.1 added).
DEFAULT_PREPROCESSOR = {
    "canny": "canny", "depth": "depth", "pose": "openpose", "scribble": "scribble", "segmentation": "seg",
    "normal": "normal", "mlsd": "mlsd", "hed": "hed", "lineart": "lineart", "softedge": "softedge",
}
OPENPOSE_BODY_FILE = "body_pose_model.pth"
ADE20K_CLASSES = 150

_DETECT_RESOLUTION = {
    "type": "integer", "minimum": 64, "maximum": 2048, "default": 512,
    "description": "The size the annotator sees, in pixels, 64 to 2048: the image's shorter side (rounded "
                   "to a multiple of 64), or for depth, normal and seg the side of the square their image "
                   "processor makes. The map is then resized to the output size.",
}
# Each preprocessor's tunables: JSON Schema properties with their defaults. A name shared by several
# preprocessors (detect_resolution) means the same everywhere.
PARAMETERS: dict[str, dict[str, dict[str, Any]]] = {
    "none": {},
    "canny": {
        "canny_low_threshold": {"type": "integer", "minimum": 0, "maximum": 255, "default": 100,
                                "description": "Canny's lower hysteresis threshold, 0 to 255."},
        "canny_high_threshold": {"type": "integer", "minimum": 0, "maximum": 255, "default": 200,
                                 "description": "Canny's upper hysteresis threshold, 0 to 255."},
    },
    "hed": {"detect_resolution": _DETECT_RESOLUTION},
    "softedge": {"detect_resolution": _DETECT_RESOLUTION},
    "scribble": {"detect_resolution": _DETECT_RESOLUTION},
    "mlsd": {
        "detect_resolution": _DETECT_RESOLUTION,
        "mlsd_value_threshold": {"type": "number", "minimum": 0.01, "maximum": 2.0, "default": 0.1,
                                 "description": "M-LSD: the score a line's centre must pass, 0.01 to 2."},
        "mlsd_distance_threshold": {"type": "number", "minimum": 0.01, "maximum": 20.0, "default": 0.1,
                                    "description": "M-LSD: the shortest line kept, in the net's output "
                                                   "pixels (half the detect resolution's), 0.01 to 20."},
    },
    "lineart": {
        "detect_resolution": _DETECT_RESOLUTION,
        "lineart_coarse": {"type": "boolean", "default": False,
                           "description": "Line art: the coarse model (bolder, fewer lines), not the fine."},
    },
    "depth": {"detect_resolution": _DETECT_RESOLUTION},
    "normal": {
        "detect_resolution": _DETECT_RESOLUTION,
        "normal_bg_threshold": {"type": "number", "minimum": 0.0, "maximum": 1.0, "default": 0.4,
                                "description": "Normal: relative depth (0 far, 1 near) under which a surface "
                                               "counts as background and faces the camera, 0 to 1."},
    },
    "openpose": {"detect_resolution": _DETECT_RESOLUTION},
    "seg": {"detect_resolution": _DETECT_RESOLUTION},
}


def parameter_schema(preprocessors: Iterable[str] = PREPROCESSORS) -> dict[str, dict[str, Any]]:
    """JSON Schema properties for the tunables of ``preprocessors``, each saying which of them use it."""
    users: dict[str, list[str]] = {}
    for name in preprocessors:
        for parameter in PARAMETERS[name]:
            users.setdefault(parameter, []).append(name)
    return {parameter: {**PARAMETERS[names[0]][parameter],
                        "description": f"{PARAMETERS[names[0]][parameter]['description']} "
                                       f"Preprocessors: {', '.join(names)}."}
            for parameter, names in users.items()}


def available_preprocessors(weights_keys: Iterable[str]) -> tuple[str, ...]:
    """The preprocessors that can run with the weights ``weights_keys``, in ``PREPROCESSORS`` order."""
    keys = set(weights_keys)
    return tuple(name for name in PREPROCESSORS if WEIGHTS_FOR[name] is None or WEIGHTS_FOR[name] in keys)


def settings_for(name: str, params: dict[str, Any], field: str = "preprocessor") -> dict[str, Any]:
    """Preprocessor ``name``'s tunables from ``params`` (other keys ignored), defaults filled in, each
    checked against its schema. An error names the tunable as a sibling of ``field``."""
    settings = {}
    for parameter, schema in PARAMETERS[name].items():
        value = params.get(parameter)
        settings[parameter] = schema["default"] if value is None else _checked(value, schema,
                                                                               _sibling(field, parameter))
    return settings


def _checked(value: Any, schema: dict[str, Any], field: str) -> Any:
    kind = schema["type"]
    if kind == "boolean":
        if not isinstance(value, bool):
            raise InvalidInput(field, "must be a boolean")
        return value
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "integer" and not integral):
        raise InvalidInput(field, f"must be an {kind}" if kind == "integer" else f"must be a {kind}")
    if not schema["minimum"] <= value <= schema["maximum"]:
        raise InvalidInput(field, f"must be from {schema['minimum']} to {schema['maximum']}, not {value}")
    return int(value) if kind == "integer" else float(value)


def _sibling(field: str, name: str) -> str:
    parent, dot, _ = field.rpartition(".")
    return f"{parent}{dot}{name}"


class Annotators:
    """The annotators of one runner: each loaded on first use (once, under a lock) on ``device``.

    ``paths`` maps weights keys (``WEIGHTS_KEYS``) to a local folder or a hub id. ``dtype`` applies to
    the transformers models (depth, seg); controlnet_aux's nets run in float32, as their ``__call__``
    feeds them float32 tensors.
    """

    def __init__(self, paths: dict[str, str], device: str = "cpu", dtype: Any = None) -> None:
        unknown = sorted(set(paths) - set(WEIGHTS_KEYS))
        if unknown:
            raise ValueError(f"unknown annotator weights {unknown}; known: {', '.join(WEIGHTS_KEYS)}")
        self.paths = {key: os.fspath(path) for key, path in paths.items()}
        self.device = device
        self.dtype = dtype
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def preprocessors(self) -> tuple[str, ...]:
        """The preprocessors this set of weights can run."""
        return available_preprocessors(self.paths)

    @property
    def loaded(self) -> tuple[str, ...]:
        """The weights keys loaded so far."""
        return tuple(self._models)

    def load(self, keys: Iterable[str] | None = None) -> None:
        """Load ``keys`` (default: every configured one) now rather than on first use."""
        for key in self.paths if keys is None else keys:
            self._model(key, key, "weights")

    def run(self, name: str, image: Image.Image, params: dict[str, Any] | None = None,
            field: str = "preprocessor") -> Image.Image:
        """Preprocessor ``name``'s map of ``image``: RGB, uint8, ``image``'s size (``none``: the image).

        ``params`` holds the tunables (``PARAMETERS[name]``; other keys are ignored). ``field`` is the
        request field that chose the preprocessor: errors name it (an unknown name, weights this
        version lacks) or its siblings (a tunable out of bounds).
        """
        if name not in PREPROCESSORS:
            raise InvalidInput(field, f"unknown preprocessor {name!r}; known: {', '.join(PREPROCESSORS)}")
        if name == "none":
            return image if image.mode == "RGB" else image.convert("RGB")
        settings = settings_for(name, params or {}, field)
        key = WEIGHTS_FOR[name]
        if key is None:  # canny: no model, no torch
            array = _RUNS[name](None, image.convert("RGB"), settings)
        else:
            model = self._model(key, name, field)
            import torch

            with torch.inference_mode():
                array = _RUNS[name](model, image.convert("RGB"), settings)
        return _fit(array, image.size, nearest=name in _DISCRETE_MAPS)

    def unload(self) -> None:
        """Drop every loaded model and give their memory back."""
        from runners.devices import free_memory

        with self._lock:
            self._models.clear()
        free_memory(self.device)

    def _model(self, key: str, name: str, field: str) -> Any:
        if key not in self.paths:
            raise InvalidInput(field, f"preprocessor {name!r} needs the {key!r} annotator weights, which "
                                      f"this version does not configure")
        model = self._models.get(key)
        if model is None:
            with self._lock:  # two first uses at once load once
                model = self._models.get(key)
                if model is None:
                    model = self._models[key] = _LOADERS[key](self.paths[key], self.device, self.dtype)
        return model


# Loading

# What importing controlnet_aux says: its __init__ imports every annotator it has (SAM, DWPose, ZoeDepth,
# MediaPipe's face...), and those imports warn about timm's moved modules, re-register timm's tiny_vit
# names and miss the optional mediapipe.
_IMPORT_NOISE = (
    (FutureWarning, r"Importing from timm\.models\.\w+ is deprecated"),
    (UserWarning, r"Overwriting tiny_vit_\w+ in registry"),
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    (DeprecationWarning, r"Please import `gaussian_filter`"),
    (UserWarning, r"The module 'mediapipe' is not installed"),
)


def import_controlnet_aux() -> None:
    """Import controlnet_aux without the warnings its imports print (nothing in them concerns us)."""
    if "controlnet_aux" in sys.modules:
        return
    with warnings.catch_warnings():
        for category, message in _IMPORT_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        import controlnet_aux  # noqa: F401


def _load_hed(path: str, device: str, dtype: Any) -> Any:
    import_controlnet_aux()
    from controlnet_aux.hed import HEDdetector

    return HEDdetector.from_pretrained(path).to(device)


def _load_pidinet(path: str, device: str, dtype: Any) -> Any:
    import_controlnet_aux()
    from controlnet_aux.pidi import PidiNetDetector

    return PidiNetDetector.from_pretrained(path).to(device)


def _load_mlsd(path: str, device: str, dtype: Any) -> Any:
    import_controlnet_aux()
    from controlnet_aux.mlsd import MLSDdetector

    return MLSDdetector.from_pretrained(path).to(device)


def _load_lineart(path: str, device: str, dtype: Any) -> Any:
    import_controlnet_aux()
    from controlnet_aux.lineart import LineartDetector

    return LineartDetector.from_pretrained(path).to(device)


def _load_openpose(path: str, device: str, dtype: Any) -> Any:
    """The body net only, found as ``OpenposeDetector.from_pretrained`` finds it, loaded by ``Body``."""
    import_controlnet_aux()
    from controlnet_aux.open_pose import Body, OpenposeDetector

    if os.path.isdir(path):
        body_file = os.path.join(path, OPENPOSE_BODY_FILE)
    else:
        from huggingface_hub import hf_hub_download

        body_file = hf_hub_download(path, OPENPOSE_BODY_FILE)
    return OpenposeDetector(Body(body_file).to(device))


def _load_depth(path: str, device: str, dtype: Any) -> Any:
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    model = AutoModelForDepthEstimation.from_pretrained(path, dtype=_dtype(dtype)).to(device).eval()
    return AutoImageProcessor.from_pretrained(path), model


def _load_seg(path: str, device: str, dtype: Any) -> Any:
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    model = AutoModelForSemanticSegmentation.from_pretrained(path, dtype=_dtype(dtype)).to(device).eval()
    if model.config.num_labels != ADE20K_CLASSES:
        raise ValueError(f"the seg annotator at {path} has {model.config.num_labels} labels; ControlNet's "
                         f"seg maps are ADE20K's {ADE20K_CLASSES} classes")
    return AutoImageProcessor.from_pretrained(path), model


def _dtype(dtype: Any) -> Any:
    import torch

    return torch.float32 if dtype is None else dtype


_LOADERS: dict[str, Callable[[str, str, Any], Any]] = {
    "hed": _load_hed, "softedge": _load_pidinet, "mlsd": _load_mlsd, "lineart": _load_lineart,
    "openpose": _load_openpose, "depth": _load_depth, "seg": _load_seg,
}


# Running: each takes the loaded model, an RGB image and the settings, and returns an HxWx3 uint8 map


def _canny(_: Any, image: Image.Image, settings: dict[str, Any]) -> Any:
    import cv2
    import numpy as np

    edges = cv2.Canny(np.asarray(image.convert("L")), settings["canny_low_threshold"],
                      settings["canny_high_threshold"])
    return np.stack([edges] * 3, axis=-1)


def _aux(detector: Any, image: Image.Image, settings: dict[str, Any], **options: Any) -> Any:
    """A controlnet_aux detector's map. It resizes the image to ``detect_resolution`` itself, and returns
    its map with the input's shorter side (rounded to 64 as it rounds); ``_fit`` makes it exact."""
    import numpy as np

    return detector(np.asarray(image), detect_resolution=settings["detect_resolution"],
                    image_resolution=min(image.size), output_type="np", **options)


def _transformers_outputs(loaded: Any, image: Image.Image, resolution: int) -> Any:
    """The model's outputs for ``image`` through its own image processor, asked for ``resolution`` square.

    The processor's config decides the rest: DPT's (keep_aspect_ratio false) squashes the image to the
    square, as transformers' depth pipeline does (its ViT neck takes square inputs only); one that keeps
    the aspect ratio (Depth Anything's) fits it in.
    """
    processor, model = loaded
    inputs = processor(images=image, size={"height": resolution, "width": resolution}, return_tensors="pt")
    weight = next(model.parameters())
    return model(pixel_values=inputs["pixel_values"].to(weight.device, weight.dtype))


def _depth(loaded: Any, image: Image.Image, settings: dict[str, Any]) -> Any:
    import numpy as np

    outputs = _transformers_outputs(loaded, image, settings["detect_resolution"])
    outputs.predicted_depth = outputs.predicted_depth.float()
    depth = loaded[0].post_process_depth_estimation(outputs, target_sizes=[image.size[::-1]])[0]
    grey = (_min_max(depth["predicted_depth"].cpu().numpy()) * 255).round().astype(np.uint8)
    return np.stack([grey] * 3, axis=-1)


def _normal(loaded: Any, image: Image.Image, settings: dict[str, Any]) -> Any:
    """sd-controlnet-normal's recipe on the raw depth at the detect resolution: x and y from Sobel,
    z a constant 2 pi, background (below the threshold of relative depth) facing the camera."""
    import cv2
    import numpy as np

    outputs = _transformers_outputs(loaded, image, settings["detect_resolution"])
    depth = outputs.predicted_depth[0].float().cpu().numpy()
    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3)
    background = _min_max(depth) < settings["normal_bg_threshold"]
    x[background] = 0
    y[background] = 0
    normal = np.stack([x, y, np.full_like(x, 2 * np.pi)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    return (normal * 127.5 + 127.5).clip(0, 255).astype(np.uint8)


def _min_max(values: Any) -> Any:
    """``values`` scaled to 0..1 (all 0 when they are all equal)."""
    values = values - values.min()
    top = values.max()
    return values / top if top > 0 else values


def _seg(loaded: Any, image: Image.Image, settings: dict[str, Any]) -> Any:
    outputs = _transformers_outputs(loaded, image, settings["detect_resolution"])
    outputs.logits = outputs.logits.float()
    labels = loaded[0].post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
    return ade20k_palette()[labels.cpu().numpy()]


def ade20k_palette() -> Any:
    """ADE20K's colours as a (150, 3) uint8 array: class k is painted ``palette[k]`` (controlnet_aux's)."""
    import numpy as np

    import_controlnet_aux()
    from controlnet_aux.util import ade_palette

    return np.asarray(ade_palette(), dtype=np.uint8)


_RUNS: dict[str, Callable[[Any, Image.Image, dict[str, Any]], Any]] = {
    "canny": _canny,
    "hed": lambda detector, image, settings: _aux(detector, image, settings, safe=False),
    "scribble": lambda detector, image, settings: _aux(detector, image, settings, scribble=True),
    "softedge": lambda detector, image, settings: _aux(detector, image, settings, safe=False),
    "mlsd": lambda detector, image, settings: _aux(detector, image, settings,
                                                   thr_v=settings["mlsd_value_threshold"],
                                                   thr_d=settings["mlsd_distance_threshold"]),
    "lineart": lambda detector, image, settings: _aux(detector, image, settings,
                                                      coarse=settings["lineart_coarse"]),
    "openpose": lambda detector, image, settings: _aux(detector, image, settings, include_body=True,
                                                       include_hand=False, include_face=False),
    "depth": _depth,
    "normal": _normal,
    "seg": _seg,
}
# Maps of a few exact values (binary strokes, palette colours): resized without blending them.
_DISCRETE_MAPS = frozenset({"scribble", "seg"})


def _fit(array: Any, size: tuple[int, int], nearest: bool) -> Image.Image:
    """``array`` as an RGB image of ``size`` (width, height)."""
    import numpy as np
    from PIL import Image

    out = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).convert("RGB")
    if out.size == size:
        return out
    return out.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)
