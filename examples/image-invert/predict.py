"""Invert, posterize or grey an image."""

import tempfile

from cog import BasePredictor, Input, Path
from PIL import Image, ImageOps


class Predictor(BasePredictor):
    def predict(
        self,
        image: Path = Input(description="The image to change"),
        mode: str = Input(description="What to do to it", default="invert",
                          choices=["invert", "posterize", "grayscale"]),
        bits: int = Input(description="Bits per channel kept by posterize", default=2, ge=1, le=8),
        max_size: int = Input(description="Longest side of the output, in pixels", default=1024, ge=16, le=4096),
    ) -> Path:
        img = Image.open(image).convert("RGB")
        img.thumbnail((max_size, max_size))
        if mode == "invert":
            img = ImageOps.invert(img)
        elif mode == "posterize":
            img = ImageOps.posterize(img, bits)
        else:
            img = ImageOps.grayscale(img)
        print(f"{mode}: {img.width}x{img.height}")
        out = Path(tempfile.mkdtemp()) / f"{mode}.png"
        img.save(out)
        return out
