"""Dynamic batching: which waiting image jobs run together in one pipeline call, and when.

A pure policy (``take_batch``), given the waiting jobs and the time, so it is tested without threads
or clocks. The rule:

- jobs can share a call only if they have the same ``BatchKey`` (mode, size, steps, scheduler, guidance,
  strength, ControlNet set, LoRA adapter set with scales, refiner and its split...), since those are per call in diffusers;
  prompts, seeds, init images, masks and conditioning images are per image, so they differ freely;
- the oldest waiting job leads: its key is the batch's, so no job is overtaken forever by a stream of
  jobs with another key (first come, first served across keys);
- the batch fills with same-key jobs in arrival order up to ``max_images`` images; a job never splits,
  and a job bigger than ``max_images`` on its own runs alone;
- it runs as soon as it is full, or once its leader has waited ``max_wait_s``; until then the worker
  waits for more, at most for the leader's remaining time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Sequence


@dataclass(frozen=True)
class BatchKey:
    """What a pipeline call fixes for every image in it."""

    mode: str  # "txt2img", "img2img" or "inpaint" (outpainting too: it inpaints an enlarged canvas)
    width: int
    height: int
    steps: int
    scheduler: str
    guidance_scale: float
    strength: float  # 0 for txt2img
    controlnets: tuple[tuple[str, float, float, float], ...]  # (type, scale, start, end) per unit
    guess_mode: bool
    # (adapter id, scale) per LoRA, sorted by id (``lora_set``): the adapters are set per call
    loras: tuple[tuple[str, float], ...] = ()
    family: str = "sd"  # "sd" or "sdxl" (``families``): the version's, so one per instance today
    refine: bool = False  # SDXL: the refiner finishes the call's latents (a second pipeline call)
    high_noise_frac: float = 0.0  # refining: the fraction of the schedule the base runs; 0 otherwise


def lora_set(loras: Sequence[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """The canonical form of a request's adapters for its key: sorted by id, and set in that order, so
    that the same set asked in another order batches together and gives the same images."""
    return tuple(sorted((adapter_id, float(scale)) for adapter_id, scale in loras))


@dataclass
class Job:
    """One prediction waiting for (or in) a pipeline call."""

    key: Hashable
    images: int
    arrived_at: float
    payload: Any = None


@dataclass(frozen=True)
class Decision:
    batch: Sequence[Job]  # empty: nothing to run yet
    wait_s: float | None  # how long to wait before deciding again; None: until a job arrives


def take_batch(waiting: Sequence[Job], now: float, max_images: int, max_wait_s: float) -> Decision:
    """The jobs to run now (in arrival order), or how long to wait. ``waiting`` is in arrival order."""
    if not waiting:
        return Decision((), None)
    leader = waiting[0]
    batch, images = [], 0
    for job in waiting:
        if job.key != leader.key:
            continue
        if batch and images + job.images > max_images:
            break
        batch.append(job)
        images += job.images
    full = images >= max_images or len(batch) < sum(1 for j in waiting if j.key == leader.key)
    waited = now - leader.arrived_at
    if full or waited >= max_wait_s:
        return Decision(batch, None)
    return Decision((), max_wait_s - waited)
