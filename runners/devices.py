"""Device helpers every torch runner shares: which dtype an option names, and giving memory back."""

from __future__ import annotations

import gc
from typing import Any

DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_dtype(name: str, device: str, gpu_auto: str = "bfloat16") -> Any:
    """The torch dtype an option names. "auto" is float32 on a CPU, and ``gpu_auto`` on a GPU (bfloat16
    falls back to float16 on a GPU without it)."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"option dtype must be one of {', '.join(DTYPES)}, not {name!r}")
    if name == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        name = gpu_auto
    if name == "bfloat16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        return torch.float16
    return getattr(torch, name)


def free_memory(device: str) -> None:
    """Collect what an unloaded model left, and hand cached GPU memory back to the driver."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
