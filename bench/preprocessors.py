"""The preprocessors scenario: what one image costs each ControlNet annotator (runners/diffusion/
annotators.py), at 512x512 on the CPU, on the tiny random-weight annotators.

Writes the tiny annotators (runners/tiny_annotators.py) to a temporary folder, loads each weights key
(timed), then for each preprocessor runs one warm-up image and ``--runs`` timed ones (a photo-like
picture: gradients, shapes, a stick figure; detect_resolution 512, the default) and reports the median,
minimum and maximum. No cluster is involved: this is the work a diffusion runner adds to a prediction
before denoising starts.

controlnet_aux's nets (HED, PiDiNet, M-LSD, line art, the body net) have their real architectures, so
their numbers are what the released weights cost; only openpose's post-processing depends on the
weights (it scores candidate joints in Python). The transformers models (DPT, UperNet) are shrunk
(``tiny_annotators.DEPTH_SHAPE``, ``SEG_BACKBONE_SHAPE``), so theirs are a floor: Intel/dpt-hybrid-midas
and upernet-convnext-small are hundreds of times bigger.

    python -m bench.preprocessors --runs 5 --out bench/results
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Report
from runners.diffusion.annotators import PREPROCESSORS, WEIGHTS_FOR, Annotators
from runners.tiny_annotators import make_tiny_annotators

SIZE = 512
REAL_ARCHITECTURE = {"hed", "softedge", "scribble", "mlsd", "lineart", "openpose"}


def picture(size: int, shift: int = 0) -> Any:
    """A photo's stand-in: colour gradients, a square, a disc, a triangle and a stick figure."""
    import numpy as np
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    pixels = np.stack([x / size * 200 + 30, y / size * 180 + 40, (x + y) / (2 * size) * 120 + 60], axis=-1)
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    s = size / 100
    draw.rectangle([8 * s + shift, 10 * s, 35 * s + shift, 40 * s], fill=(220, 40, 40))
    draw.ellipse([60 * s, 60 * s, 90 * s, 92 * s], fill=(30, 60, 200))
    draw.polygon([(10 * s, 90 * s), (30 * s, 55 * s), (45 * s, 90 * s)], fill=(250, 230, 30))
    cx = 62 * s + shift
    draw.ellipse([cx - 5 * s, 8 * s, cx + 5 * s, 20 * s], outline=(0, 0, 0), width=int(s))
    for line in ([cx, 20 * s, cx, 45 * s], [cx - 12 * s, 28 * s, cx + 12 * s, 28 * s],
                 [cx, 45 * s, cx - 9 * s, 62 * s], [cx, 45 * s, cx + 9 * s, 62 * s]):
        draw.line(line, fill=(0, 0, 0), width=int(1.5 * s))
    return image


def measure(annotators: Annotators, name: str, runs: int) -> dict[str, Any]:
    """One warm-up image, then ``runs`` timed ones (each its own picture, so no cache can help)."""
    annotators.run(name, picture(SIZE), {})
    times = []
    for k in range(runs):
        image = picture(SIZE, shift=k + 1)
        start = time.perf_counter()
        annotators.run(name, image, {})
        times.append(time.perf_counter() - start)
    return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
            "max_ms": max(times) * 1e3, "runs_ms": [t * 1e3 for t in times], "weights": WEIGHTS_FOR[name],
            "architecture": "real" if name in REAL_ARCHITECTURE or WEIGHTS_FOR[name] is None else "shrunk"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="preprocessors: per-image cost of each ControlNet annotator")
    parser.add_argument("--runs", type=int, default=5, help="timed images per preprocessor (median)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parse_args(argv)
    report = Report("preprocessors", argv)
    with tempfile.TemporaryDirectory(prefix="warmfleet-annotators-") as root:
        start = time.perf_counter()
        folders = make_tiny_annotators(Path(root))
        generate_s = time.perf_counter() - start
        annotators = Annotators({key: str(path) for key, path in folders.items()}, "cpu", torch.float32)
        load_s = {}
        for key in folders:
            start = time.perf_counter()
            annotators.load([key])
            load_s[key] = time.perf_counter() - start
        sizes = {key: sum(f.stat().st_size for f in path.iterdir()) for key, path in folders.items()}
        results = {name: measure(annotators, name, args.runs) for name in PREPROCESSORS if name != "none"}
        annotators.unload()
    settings = {"runs": args.runs, "size": [SIZE, SIZE], "detect_resolution": 512, "device": "cpu",
                "dtype": "float32", "torch_threads": torch.get_num_threads(),
                "versions": {name: importlib.metadata.version(name)
                             for name in ("torch", "controlnet-aux", "transformers")}}
    report.write(args.out, settings=settings, generate_s=generate_s, weights_bytes=sizes, load_s=load_s,
                 preprocessors=results)
    print(json.dumps({name: round(result["median_ms"], 1) for name, result in results.items()}, indent=2))


if __name__ == "__main__":
    main()
