"""What `warmfleet up` serves with no configuration: built-in models that need no network."""

from __future__ import annotations

from warmfleet.domain import ModelSpec
from warmfleet.settings import Settings

TINY_LLAMA = "warmfleet/tiny-llama"


def default_models(settings: Settings) -> list[ModelSpec]:
    """The built-in models: echo, and tiny random-weight models with the real architectures."""
    return [
        ModelSpec(
            name="warmfleet/echo", runner="echo",
            description="Returns its input text, optionally after a delay and in streamed chunks.",
        ),
        ModelSpec(
            name=TINY_LLAMA, runner="llm", weights=str(settings.models_path / "tiny-llama"),
            options={"max_batch_size": 32},
            description="A tiny random-weight Llama (real architecture, made locally): gibberish, fast.",
        ),
    ]


def prepare_default_weights(settings: Settings) -> None:
    """Generate the built-in tiny models under ``$WARMFLEET_HOME/models`` unless they are there already."""
    from runners.tiny_models import make_tiny_llama  # imports torch: only where models are made

    make_tiny_llama(settings.models_path / "tiny-llama")
