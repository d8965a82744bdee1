"""A tiny deterministic "language model": it answers a prompt by echoing its words in a shuffled or
reversed order, one word at a time, so streaming shows up as it would for a real LLM."""

import random
import time

from cog import BasePredictor, ConcatenateIterator, Input


class Predictor(BasePredictor):
    def setup(self) -> None:
        print("loading vocabulary ...")
        self.filler = ["indeed", "perhaps", "so", "and", "then", "quite", "still"]
        print("ready")

    def predict(
        self,
        prompt: str = Input(description="Text to answer to", default="the quick brown fox"),
        max_words: int = Input(description="Most words to generate", default=16, ge=1, le=256),
        mode: str = Input(description="How to reuse the prompt's words", default="shuffle",
                          choices=["shuffle", "reverse"]),
        delay_ms: int = Input(description="Pause between words, to watch the stream", default=0, ge=0, le=2000),
        seed: int = Input(description="Random seed; the same seed gives the same text", default=0),
    ) -> ConcatenateIterator[str]:
        words = prompt.split() or ["..."]
        rng = random.Random(seed)
        print(f"generating up to {max_words} words (mode={mode}, seed={seed})")
        for i in range(max_words):
            if mode == "reverse":
                word = words[-1 - i % len(words)]
            else:
                word = rng.choice(words + self.filler)
            if delay_ms:
                time.sleep(delay_ms / 1000)
            yield word if i == 0 else " " + word
