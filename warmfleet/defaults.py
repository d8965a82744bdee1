"""What `warmfleet up` serves with no configuration: built-in models that need no network."""

from __future__ import annotations

from warmfleet.domain import ModelSpec
from warmfleet.settings import Settings


def default_models(settings: Settings) -> list[ModelSpec]:
    """The built-in models. Later model families add their tiny generated models here."""
    return [
        ModelSpec(
            name="warmfleet/echo", runner="echo",
            description="Returns its input text, optionally after a delay and in streamed chunks.",
        ),
    ]
