"""Tiny random-weight annotators (ControlNet preprocessors) with the real architectures, generated
locally so that tests and benchmarks of ``runners.diffusion.annotators`` need no network.

``make_tiny_annotators`` writes one folder per weights key of ``annotators.WEIGHTS_KEYS``, holding the
files that the libraries' own loaders read:

- ``hed``: ``ControlNetHED.pth``, controlnet_aux's ``ControlNetHED_Apache2`` (HED and scribble).
- ``softedge``: ``table5_pidinet.pth``, PiDiNet (``{"state_dict": {"module.<name>": ...}}``, as the
  released checkpoint, saved from DataParallel).
- ``mlsd``: ``mlsd_large_512_fp32.pth``, M-LSD's ``MobileV2_MLSD_Large``.
- ``lineart``: ``sk_model.pth`` and ``sk_model2.pth`` (the coarse model), the line-art ``Generator``.
- ``openpose``: ``body_pose_model.pth``, CMU's body net with its keys as released (no module prefix).
- ``depth``: a DPT (``DPTForDepthEstimation``, ViT backbone shrunk) and its ``DPTImageProcessor``,
  written with ``save_pretrained``.
- ``seg``: an UperNet with a ConvNeXt backbone (``UperNetForSemanticSegmentation``, 150 ADE20K labels)
  and its ``SegformerImageProcessor``, as openmmlab/upernet-convnext-small ships them.

controlnet_aux's networks have fixed sizes (the body net alone is 52M parameters), so their weights are
stored in float16: ``load_state_dict`` copies them into the float32 parameters. Random
initialisation is adjusted where a random net's map would be blank or would not depend on the image;
each writer says how. Folders are written once and atomically, as ``runners.tiny_models``' are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

# The write-once helpers are shared with the other tiny models on purpose: one marker format, one
# staging-and-rename discipline, one generator version.
from runners.tiny_models import GENERATOR_VERSION, _derived_seed, _seeded, _write_once

# The DPT's shape: a ViT of 4 layers, all four read by the neck (real: 24 layers, 4 of them read).
DEPTH_SHAPE: dict[str, Any] = {
    "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
    "image_size": 128, "patch_size": 16, "backbone_out_indices": [0, 1, 2, 3],
    "neck_hidden_sizes": [16, 32, 32, 64], "fusion_hidden_size": 32, "readout_type": "project",
}
# The head's output before its ReLU, in MiDaS-style inverse depth: (standard deviation, mean).
DEPTH_OUTPUT = (5.0, 10.0)
# A ConvNeXt backbone of four one-block stages (real: small, 3/3/27/3 blocks of 96 to 768 channels).
SEG_BACKBONE_SHAPE: dict[str, Any] = {
    "hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1],
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}
SEG_HEAD_SHAPE: dict[str, Any] = {"hidden_size": 32, "auxiliary_channels": 16, "num_labels": 150}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Output layers standardised on a calibration image (``_standardise_``): (standard deviation, mean).
PIDINET_FUSION = (2.0, -1.0)  # the fused edge logit: mostly dark, some edges
# The body net's heatmaps, before its ReLU: under 1% of pixels pass the 0.1 threshold, so that joints
# are a few hundred; and its part affinity fields, strong enough that some limbs join.
OPENPOSE_HEATMAPS = (1.0, -2.5)
OPENPOSE_PAFS = (2.0, 0.0)


def make_tiny_annotators(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write ``root/tiny-annotator-<key>`` for each weights key and return the folders by key.

    Each key has its own seed, drawn from ``seed`` and the key, so no two nets share weights.
    """
    root = Path(root)
    return {key: make_tiny_annotator(key, root / f"tiny-annotator-{key}",
                                     _derived_seed(seed, f"annotator/{key}"))
            for key in WRITERS}


def make_tiny_annotator(key: str, out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny annotator for weights ``key`` to ``out_dir`` (once) and return it."""
    if key not in WRITERS:
        raise ValueError(f"unknown annotator weights {key!r}; known: {', '.join(WRITERS)}")
    marker = {"generator": f"tiny-annotator-{key}", "version": GENERATOR_VERSION, "seed": seed}
    return _write_once(out_dir, marker, lambda staging: WRITERS[key](staging, seed))


# controlnet_aux's networks


def _write_hed(out_dir: Path, seed: int) -> None:
    """HED as torch initialises it: fed raw 0-255 pixels, its side outputs still follow the image (a light
    map, darker along edges), and the scribble step finds strokes in it."""
    from runners.diffusion.annotators import import_controlnet_aux

    import_controlnet_aux()
    from controlnet_aux.hed import ControlNetHED_Apache2

    with _seeded(seed):
        net = ControlNetHED_Apache2()
    _save(net.state_dict(), out_dir / "ControlNetHED.pth")


def _write_pidinet(out_dir: Path, seed: int) -> None:
    """PiDiNet with its fusing convolution standardised (see ``_standardise_``).

    A random PiDiNet's side outputs vary by about 0.005 around their biases, so every pixel of its map
    is sigmoid(0.005): one grey, whatever the image.
    """
    import torch

    from runners.diffusion.annotators import import_controlnet_aux

    import_controlnet_aux()
    from controlnet_aux.pidi.model import pidinet

    with _seeded(seed), torch.no_grad():
        net = pidinet().eval()
        image = _calibration_image(64)
        _standardise_(lambda: net(image), {net.classifier: PIDINET_FUSION})
    state = {f"module.{name}": tensor for name, tensor in net.state_dict().items()}
    _save({"state_dict": state}, out_dir / "table5_pidinet.pth")


def _write_mlsd(out_dir: Path, seed: int) -> None:
    from runners.diffusion.annotators import import_controlnet_aux

    import_controlnet_aux()
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    with _seeded(seed):
        net = MobileV2_MLSD_Large()
    _save(net.state_dict(), out_dir / "mlsd_large_512_fp32.pth")  # the name the loader reads; float16 inside


def _write_lineart(out_dir: Path, seed: int) -> None:
    from runners.diffusion.annotators import import_controlnet_aux

    import_controlnet_aux()
    from controlnet_aux.lineart import Generator

    for name in ("sk_model.pth", "sk_model2.pth"):  # the fine and the coarse model: both are loaded
        with _seeded(_derived_seed(seed, name)):
            net = Generator(3, 1, 3)
        _save(net.state_dict(), out_dir / name)


def _write_openpose(out_dir: Path, seed: int) -> None:
    """CMU's body net, He-initialised with zero biases, its two outputs standardised.

    torch's default initialisation shrinks the signal about 2.4x per layer, so after the net's 40-odd
    convolutions (no normalisation) its heatmaps are its last biases: the same everywhere and for every
    image. He initialisation keeps the signal. The heatmaps are then set so that only a few hundred
    candidate joints pass the detector's 0.1 threshold (it scores every pair in Python: thousands take
    minutes), and the part affinity fields so that some limbs join into skeletons.
    """
    import torch

    from runners.diffusion.annotators import import_controlnet_aux

    import_controlnet_aux()
    from controlnet_aux.open_pose.model import bodypose_model

    with _seeded(seed), torch.no_grad():
        net = bodypose_model().eval()
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                module.bias.zero_()
        image = _calibration_image(96) - 0.5  # as the body net takes pixels: / 256 - 0.5
        _standardise_(lambda: net(image), {net.model6_2.Mconv7_stage6_L2: OPENPOSE_HEATMAPS,
                                           net.model6_1.Mconv7_stage6_L1: OPENPOSE_PAFS})
    # As released: "conv1_1.weight", not "model0.conv1_1.weight" (the loader's util.transfer maps them).
    state = {name.split(".", 1)[1]: tensor for name, tensor in net.state_dict().items()}
    _save(state, out_dir / "body_pose_model.pth")


def _calibration_image(size: int) -> Any:
    """A smooth random RGB image (1, 3, size, size) in 0..1, a photo's stand-in for ``_standardise_``."""
    import torch

    return torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6), size=(size, size), mode="bilinear")


def _standardise_(run: Callable[[], Any], targets: dict[Any, tuple[float, float]]) -> None:
    """Rescale each output convolution in ``targets`` so that, while ``run`` runs the net on a calibration
    image, each of its channels has the standard deviation and mean given, whatever the seed made."""
    outputs: dict[Any, Any] = {}

    def keep(module: Any, args: Any, output: Any) -> None:
        outputs[module] = output.clone()  # an in-place ReLU may follow

    hooks = [conv.register_forward_hook(keep) for conv in targets]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    for conv, (std, mean) in targets.items():
        out = outputs[conv]
        gain = std / out.std(dim=(0, 2, 3))
        conv.weight.mul_(gain.view(-1, *[1] * (conv.weight.dim() - 1)))
        conv.bias.copy_(mean + (conv.bias - out.mean(dim=(0, 2, 3))) * gain)


def _save(state: dict[str, Any], path: Path) -> None:
    """torch.save ``state`` with its floating tensors (in nested dicts too) in float16."""
    import torch

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {name: convert(item) for name, item in value.items()}
        if value.is_floating_point():
            return value.to(torch.float16).contiguous()
        return value.contiguous()

    torch.save(convert(state), path)


# transformers' models


def _write_depth(out_dir: Path, seed: int) -> None:
    """A DPT with ``DEPTH_SHAPE``, its head's last convolution standardised, and DPT's own image processor
    (384x384, mean and std 0.5).

    A random DPT's inverse depth is about 1e-5 (its ViT is initialised at 0.02); MiDaS-style models give
    tens. The normal map compares Sobel gradients of the raw depth with a constant, so the scale counts.
    """
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    with _seeded(seed), torch.no_grad():
        model = DPTForDepthEstimation(DPTConfig(**DEPTH_SHAPE)).eval()
        last = [module for module in model.head.modules() if isinstance(module, torch.nn.Conv2d)][-1]
        image = _calibration_image(DEPTH_SHAPE["image_size"]) * 2 - 1  # the processor's normalisation
        _standardise_(lambda: model(pixel_values=image), {last: DEPTH_OUTPUT})
    model.save_pretrained(out_dir, safe_serialization=True)
    DPTImageProcessor(size={"height": 384, "width": 384}).save_pretrained(out_dir)


def _write_seg(out_dir: Path, seed: int) -> None:
    """An UperNet over a ConvNeXt backbone with ADE20K's 150 labels, and a Segformer image processor."""
    from transformers import (
        ConvNextConfig, SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation,
    )

    config = UperNetConfig(backbone_config=ConvNextConfig(**SEG_BACKBONE_SHAPE), **SEG_HEAD_SHAPE)
    with _seeded(seed):
        model = UperNetForSemanticSegmentation(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    processor = SegformerImageProcessor(size={"height": 512, "width": 512}, image_mean=IMAGENET_MEAN,
                                        image_std=IMAGENET_STD, do_reduce_labels=False)
    processor.save_pretrained(out_dir)


WRITERS = {
    "hed": _write_hed, "softedge": _write_pidinet, "mlsd": _write_mlsd, "lineart": _write_lineart,
    "openpose": _write_openpose, "depth": _write_depth, "seg": _write_seg,
}
