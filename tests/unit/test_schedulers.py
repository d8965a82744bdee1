"""Schedulers by name: each of ``SCHEDULER_NAMES`` builds the diffusers class its name stands for, with
the variant flags it implies (Karras sigmas, SDE or ancestral noise) on SD 1.5's own scheduler config,
and runs a 2-step denoising loop. No Ray, no model: a fake noise predictor stands in for the UNet."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

from runners.diffusion import schedulers
from runners.diffusion.schedulers import SCHEDULER_NAMES, canonical_name, make_scheduler
from runners.tiny_models import SD_SCHEDULER_CONFIG

# Written out here rather than read from the module: what AUTOMATIC1111's names mean in diffusers
# (diffusers' "schedulers" guide lists the same correspondence).
KARRAS_OFF, KARRAS_ON = {"use_karras_sigmas": False}, {"use_karras_sigmas": True}
DPMPP, SDE = {"algorithm_type": "dpmsolver++"}, {"algorithm_type": "sde-dpmsolver++"}
EXPECTED: dict[str, tuple[str, dict[str, Any]]] = {
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
    "Euler": ("EulerDiscreteScheduler", KARRAS_OFF),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", KARRAS_OFF),
    "LMS": ("LMSDiscreteScheduler", KARRAS_OFF),
    "LMS Karras": ("LMSDiscreteScheduler", KARRAS_ON),
    "DPM2": ("KDPM2DiscreteScheduler", KARRAS_OFF),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", KARRAS_OFF),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {**DPMPP, **KARRAS_OFF, "solver_order": 2}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {**DPMPP, **KARRAS_ON, "solver_order": 2}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {**SDE, **KARRAS_OFF, "solver_order": 2}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {**SDE, **KARRAS_ON, "solver_order": 2}),
    "DPM++ 2S": ("DPMSolverSinglestepScheduler", {**DPMPP, **KARRAS_OFF, "solver_order": 2}),
    "DEIS": ("DEISMultistepScheduler", {"algorithm_type": "deis"}),
    "UniPC": ("UniPCMultistepScheduler", {"solver_type": "bh2"}),
    "LCM": ("LCMScheduler", {}),
    "TCD": ("TCDScheduler", {}),
}
EXPECTED_ALIASES = {
    "K_EULER": "Euler", "K_EULER_ANCESTRAL": "Euler a", "K-LMS": "LMS", "HeunDiscrete": "Heun",
    "DPMSolverMultistep": "DPM++ 2M", "KarrasDPM": "DPM++ 2M Karras", "UniPCMultistep": "UniPC",
}
# Samplers that add fresh noise at each step (ancestral, SDE, DDPM's posterior, LCM/TCD's re-noising):
# their result depends on the generator; the others are deterministic given the initial latents.
STOCHASTIC = {"DDPM", "Euler a", "DPM2 a", "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "LCM", "TCD"}
# Model evaluations for 2 steps: second-order Heun/DPM2 evaluate twice per step but the last
# (2n - 1); PNDM with skip_prk_steps repeats one timestep for its PLMS warm-up (n + 1).
EVALUATIONS_FOR_2_STEPS = {name: 2 for name in EXPECTED} | {"Heun": 3, "DPM2": 3, "DPM2 a": 3, "PNDM": 3}
KARRAS_PAIRS = [("LMS Karras", "LMS"), ("DPM++ 2M Karras", "DPM++ 2M"),
                ("DPM++ 2M SDE Karras", "DPM++ 2M SDE")]


@pytest.fixture(scope="module")
def base_config() -> Any:
    """SD 1.5's scheduler config, as the tiny model (and the real one) ships it."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(**SD_SCHEDULER_CONFIG).config


def test_every_name_is_covered_here_and_aliases_resolve_to_their_canonical_name() -> None:
    assert set(SCHEDULER_NAMES) == set(EXPECTED) | set(EXPECTED_ALIASES)
    assert len(SCHEDULER_NAMES) == len(set(SCHEDULER_NAMES))
    assert schedulers.ALIASES == EXPECTED_ALIASES
    for name in EXPECTED:
        assert canonical_name(name) == name
    for alias, name in EXPECTED_ALIASES.items():
        assert canonical_name(alias) == name
    with pytest.raises(KeyError):
        canonical_name("Fastest")


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_each_name_builds_its_class_with_its_flags_on_the_models_config(name: str, base_config: Any) -> None:
    class_name, flags = EXPECTED[EXPECTED_ALIASES.get(name, name)]
    scheduler = make_scheduler(name, base_config)
    assert type(scheduler).__name__ == class_name
    for flag, value in flags.items():
        assert scheduler.config.get(flag) == value, (flag, scheduler.config.get(flag))
    # The model's noise schedule carries over; only the sampler changes.
    for key in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "steps_offset"):
        assert scheduler.config[key] == SD_SCHEDULER_CONFIG[key], key


def test_each_call_builds_a_fresh_scheduler_and_overrides_do_not_leak(base_config: Any) -> None:
    first, second = (make_scheduler("DPM++ 2M Karras", base_config) for _ in range(2))
    assert first is not second
    first.set_timesteps(5)
    assert (first.num_inference_steps, second.num_inference_steps) == (5, None)  # state is per scheduler
    plain = make_scheduler("DPM++ 2M", base_config)
    assert plain.config.use_karras_sigmas is False and plain.config.algorithm_type == "dpmsolver++"
    assert "use_karras_sigmas" not in base_config and "algorithm_type" not in base_config


@pytest.mark.parametrize("karras, plain", KARRAS_PAIRS)
def test_karras_variants_space_their_sigmas_as_karras_et_al(karras: str, plain: str,
                                                            base_config: Any) -> None:
    """Karras et al. (2022), eq. 5, rho = 7: sigmas evenly spaced in sigma^(1/7) between the ends."""
    steps = 10
    with_karras, without = make_scheduler(karras, base_config), make_scheduler(plain, base_config)
    with_karras.set_timesteps(steps)
    without.set_timesteps(steps)
    sigmas = with_karras.sigmas[:steps].double()  # the last of the steps + 1 is the final 0
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    rho = 7.0
    expected = (sigmas[0] ** (1 / rho) + ramp * (sigmas[-1] ** (1 / rho) - sigmas[0] ** (1 / rho))) ** rho
    torch.testing.assert_close(sigmas, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(with_karras.sigmas.double(), without.sigmas.double(), rtol=1e-3)


def _denoise(scheduler: Any, steps: int, seed: int) -> tuple[torch.Tensor, int]:
    """A 2-step sampling loop as diffusers' pipelines run it, with a fake noise predictor for the UNet;
    the final latents and the number of model evaluations."""
    scheduler.set_timesteps(steps)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    generator = torch.Generator().manual_seed(seed)
    # As the pipelines' prepare_extra_step_kwargs: a generator only where step() takes one.
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    evaluations = 0
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        noise_pred = 0.5 * model_input  # stands in for the UNet: finite, depends on its input
        evaluations += 1
        latents = scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
    return latents, evaluations


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_scheduler_completes_a_2_step_loop(name: str, base_config: Any) -> None:
    latents, evaluations = _denoise(make_scheduler(name, base_config), steps=2, seed=1)
    assert latents.shape == (1, 4, 8, 8)
    assert torch.isfinite(latents).all()
    assert evaluations == EVALUATIONS_FOR_2_STEPS[name]
    again, _ = _denoise(make_scheduler(name, base_config), steps=2, seed=1)
    assert torch.equal(latents, again)  # a fresh scheduler, the same seed: the same result
    other_seed, _ = _denoise(make_scheduler(name, base_config), steps=2, seed=2)
    # Ancestral and SDE variants draw step noise from the request's generator; the others draw none.
    assert torch.equal(latents, other_seed) == (name not in STOCHASTIC)
