"""How much memory the controller books for an instance: the option when given, else the weights."""

from __future__ import annotations

from scheduler.placement import WEIGHTS_OVERHEAD, estimate_memory_bytes
from warmfleet.domain import RouteSpec


def test_the_option_wins(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"x" * 1000)
    assert estimate_memory_bytes(RouteSpec("a/b", "llm", str(tmp_path), {"memory_bytes": 123})) == 123


def test_a_folder_of_weights_counts_every_file_with_overhead(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "config.json").write_bytes(b"x" * 24)
    assert estimate_memory_bytes(RouteSpec("a/b", "diffusion", str(tmp_path))) == int(1024 * WEIGHTS_OVERHEAD)


def test_a_single_file_and_no_weights(tmp_path):
    weights = tmp_path / "x4.safetensors"
    weights.write_bytes(b"x" * 500)
    assert estimate_memory_bytes(RouteSpec("a/b", "upscale", str(weights))) == int(500 * WEIGHTS_OVERHEAD)
    assert estimate_memory_bytes(RouteSpec("a/b", "echo")) == 0
    assert estimate_memory_bytes(RouteSpec("a/b", "llm", str(tmp_path / "not-here"))) == 0
