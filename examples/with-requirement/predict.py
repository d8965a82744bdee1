"""Say a number of bytes, a count and a duration the way people do, with the `humanize` package."""

import datetime

import humanize
from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def setup(self) -> None:
        print(f"humanize {humanize.__version__} loaded")

    def predict(
        self,
        size_bytes: int = Input(description="A size, in bytes", default=123456789, ge=0),
        count: int = Input(description="A count", default=1200000, ge=0),
        seconds: float = Input(description="A duration, in seconds", default=5400.0, ge=0),
    ) -> str:
        return (f"{humanize.naturalsize(size_bytes)}, {humanize.intword(count)}, "
                f"{humanize.precisedelta(datetime.timedelta(seconds=seconds))}")
