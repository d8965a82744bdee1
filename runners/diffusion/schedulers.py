"""Schedulers (samplers) by the names users know from AUTOMATIC1111 and Replicate.

Each name maps to a diffusers scheduler class and the config it overrides; the scheduler is built from
the model's own scheduler config (its betas and timestep spacing), as diffusers' ``from_config`` does.
A scheduler keeps state across the steps of one call, so every pipeline call gets a fresh one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SchedulerChoice:
    class_name: str
    overrides: dict[str, Any] = field(default_factory=dict)


_KARRAS = {"use_karras_sigmas": True}
_SDE = {"algorithm_type": "sde-dpmsolver++"}

SCHEDULERS: dict[str, SchedulerChoice] = {
    "DDIM": SchedulerChoice("DDIMScheduler"),
    "DDPM": SchedulerChoice("DDPMScheduler"),
    "PNDM": SchedulerChoice("PNDMScheduler"),
    "Euler": SchedulerChoice("EulerDiscreteScheduler"),
    "Euler a": SchedulerChoice("EulerAncestralDiscreteScheduler"),
    "Heun": SchedulerChoice("HeunDiscreteScheduler"),
    "LMS": SchedulerChoice("LMSDiscreteScheduler"),
    "LMS Karras": SchedulerChoice("LMSDiscreteScheduler", _KARRAS),
    "DPM2": SchedulerChoice("KDPM2DiscreteScheduler"),
    "DPM2 a": SchedulerChoice("KDPM2AncestralDiscreteScheduler"),
    "DPM++ 2M": SchedulerChoice("DPMSolverMultistepScheduler"),
    "DPM++ 2M Karras": SchedulerChoice("DPMSolverMultistepScheduler", _KARRAS),
    "DPM++ 2M SDE": SchedulerChoice("DPMSolverMultistepScheduler", _SDE),
    "DPM++ 2M SDE Karras": SchedulerChoice("DPMSolverMultistepScheduler", {**_SDE, **_KARRAS}),
    "DPM++ 2S": SchedulerChoice("DPMSolverSinglestepScheduler"),
    "DEIS": SchedulerChoice("DEISMultistepScheduler"),
    "UniPC": SchedulerChoice("UniPCMultistepScheduler"),
    "LCM": SchedulerChoice("LCMScheduler"),
    "TCD": SchedulerChoice("TCDScheduler"),
}

# Replicate's Stable Diffusion models name their schedulers after the diffusers/k-diffusion classes.
ALIASES: dict[str, str] = {
    "K_EULER": "Euler",
    "K_EULER_ANCESTRAL": "Euler a",
    "K-LMS": "LMS",
    "HeunDiscrete": "Heun",
    "DPMSolverMultistep": "DPM++ 2M",
    "KarrasDPM": "DPM++ 2M Karras",
    "UniPCMultistep": "UniPC",
}

SCHEDULER_NAMES = [*SCHEDULERS, *ALIASES]


def canonical_name(name: str) -> str:
    """The scheduler's name as listed in ``SCHEDULERS`` (aliases resolved); KeyError if unknown."""
    name = ALIASES.get(name, name)
    if name not in SCHEDULERS:
        raise KeyError(name)
    return name


def make_scheduler(name: str, base_config: Any) -> Any:
    """A new scheduler of the named kind, built on the model's scheduler config."""
    import diffusers

    choice = SCHEDULERS[canonical_name(name)]
    return getattr(diffusers, choice.class_name).from_config(base_config, **choice.overrides)
