"""The warm-pool scenario: how long each tiny model takes to boot from zero, and what fraction of
predictions find a warm instance under a mixed load over three deployments that may scale to zero.

Starts a private cluster (``warmfleet up`` on a temporary home), then through the Python client:

1. Cold boot, per built-in tiny model: a deployment with min 0 (none running), one prediction; its
   ``boot_time_s`` (creation to start, including the load) and a second, warm prediction's total time.
2. Mixed load: three deployments (echo, tiny-llama, tiny-sd) with min 0, max 2 and a scale-to-zero
   delay of ``--idle-s``; each gets predictions in bursts separated by random gaps (seeded), some
   shorter and some longer than the idle delay, for ``--duration`` seconds. A prediction is served warm
   when it did not wait for a boot (no ``boot_time_s``). Reported per deployment and overall.

    python -m bench.warmpool --duration 60 --idle-s 4 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import Report, private_home, running_cluster
from warmfleet.client import Client
from warmfleet.cli.defaults import TINY_ESRGAN, TINY_LLAMA, TINY_SD

ECHO = "warmfleet/echo"


def sample_input(model: str) -> dict[str, Any]:
    from io import BytesIO

    from PIL import Image

    if model == TINY_LLAMA:
        return {"prompt": "the quick brown fox", "max_new_tokens": 16}
    if model == TINY_SD:
        return {"prompt": "a lighthouse", "num_inference_steps": 4}
    if model == TINY_ESRGAN:
        buffer = BytesIO()
        Image.new("RGB", (32, 32), (120, 80, 40)).save(buffer, format="PNG")
        return {"image": buffer.getvalue()}
    return {"text": "hello"}


def cold_boots(client: Client, models: list[str]) -> dict[str, Any]:
    out = {}
    for model in models:
        name = f"bench/cold-{model.split('/')[1]}"
        client.deployments.create(name, model, min_instances=0, max_instances=1, scale_to_zero_delay_s=600)
        first = client.predictions.create(deployment=name, input=sample_input(model), wait_s=60)
        first = client.predictions.wait(first, timeout_s=120)
        warm = client.predictions.wait(
            client.predictions.create(deployment=name, input=sample_input(model), wait_s=60), timeout_s=120)
        if first.status != "succeeded" or warm.status != "succeeded":
            raise RuntimeError(f"{model}: {first.error or warm.error}")
        out[model] = {"boot_time_s": first.metrics.get("boot_time_s"),
                      "cold_total_s": first.metrics.get("total_time_s"),
                      "warm_total_s": warm.metrics.get("total_time_s"),
                      "warm_had_boot": "boot_time_s" in warm.metrics}
        client.deployments.delete(name)
    return out


def mixed_load(client: Client, duration_s: float, idle_s: float, seed: int) -> dict[str, Any]:
    names = {}
    for model in (ECHO, TINY_LLAMA, TINY_SD):
        name = f"bench/mixed-{model.split('/')[1]}"
        client.deployments.create(name, model, min_instances=0, max_instances=2, target_ongoing_requests=2,
                                  upscale_delay_s=1, downscale_delay_s=idle_s, scale_to_zero_delay_s=idle_s)
        names[name] = model
    results: dict[str, list[bool]] = {name: [] for name in names}
    deadline = time.monotonic() + duration_s

    errors: list[str] = []

    def drive(name: str, rng: random.Random) -> None:
        try:
            while time.monotonic() < deadline:
                for _ in range(rng.randint(1, 4)):  # a burst, one after another
                    pred = client.predictions.wait(client.predictions.create(
                        deployment=name, input=sample_input(names[name]), wait_s=60), timeout_s=120)
                    if pred.status != "succeeded":
                        raise RuntimeError(f"{name}: {pred.status}: {pred.error}")
                    results[name].append("boot_time_s" not in pred.metrics)
                time.sleep(rng.uniform(0.2, 2.5 * idle_s))  # some gaps outlast the idle delay, some not
        except Exception as err:  # noqa: BLE001 - reported, and the scenario fails below
            errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=drive, args=(name, random.Random(seed + i)))
               for i, name in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in names:
        client.deployments.delete(name)
    if errors:
        raise RuntimeError(f"mixed load failed: {errors}")
    per = {name: {"predictions": len(r), "warm_fraction": sum(r) / len(r) if r else None}
           for name, r in results.items()}
    everything = [x for r in results.values() for x in r]
    return {"per_deployment": per, "predictions": len(everything),
            "warm_fraction": sum(everything) / len(everything) if everything else None}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="warm pool: cold boots and the warm fraction")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of mixed load")
    parser.add_argument("--idle-s", type=float, default=4.0, help="scale-to-zero delay of the mixed deployments")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = Report("warmpool", argv)
    with private_home() as settings, running_cluster(settings) as target:
        client = Client(target.address, target.token_file.read_text().strip(), settings=settings)
        boots = cold_boots(client, [ECHO, TINY_LLAMA, TINY_SD, TINY_ESRGAN])
        mixed = mixed_load(client, args.duration, args.idle_s, args.seed)
    written = report.write(
        args.out, settings={"duration_s": args.duration, "idle_s": args.idle_s, "seed": args.seed},
        cold_boot=boots, mixed_load=mixed,
        summary={"median_boot_time_s": statistics.median(b["boot_time_s"] for b in boots.values()),
                 "warm_fraction": mixed["warm_fraction"]})
    print(json.dumps({k: written[k] for k in ("cold_boot", "mixed_load", "summary")}, indent=2))


if __name__ == "__main__":
    main()
