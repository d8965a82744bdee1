"""Which runner class serves which family: a registry dict, not an if/elif chain."""

from __future__ import annotations

from runners.base import Runner
from runners.cog.runner import CogRunner  # a Cog model runs in a coglet process of its own
from runners.diffusion.runner import DiffusionRunner  # imports torch only when an instance loads
from runners.echo import EchoRunner
from runners.llm.runner import LLMRunner  # imports torch only when an instance loads
from runners.upscale import UpscaleRunner
from warmfleet.errors import InvalidInput

RUNNERS: dict[str, type[Runner]] = {
    EchoRunner.family: EchoRunner,
    LLMRunner.family: LLMRunner,
    DiffusionRunner.family: DiffusionRunner,
    UpscaleRunner.family: UpscaleRunner,
    CogRunner.family: CogRunner,
}


def runner_class(family: str) -> type[Runner]:
    try:
        return RUNNERS[family]
    except KeyError:
        known = ", ".join(sorted(RUNNERS))
        raise InvalidInput("runner", f"unknown runner family {family!r}; known: {known}") from None
