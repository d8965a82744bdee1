"""The ``diffusion`` runner: Stable Diffusion with ControlNet, via diffusers, dynamically batched."""
