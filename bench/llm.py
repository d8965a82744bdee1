"""The LLM scenario: output tokens/s of 32 concurrent streams through the cluster, against sequential
``model.generate`` calls on the same prompts and lengths in the same run; TTFT and inter-token latency.

Starts a private cluster (``warmfleet up`` on a temporary home: it generates and serves the tiny Llama as
``warmfleet/tiny-llama``), measures idle TTFT with one stream at a time, then 32 streams at once, then
loads the same weights in this process and runs ``generate`` on each prompt in turn. TTFT under load is
measured twice: in the rounds (all the streams sent at once: a burst), and under a steady load
(``steady_load``: as many streams kept in flight, of varied lengths, each new one arriving while the others
decode). Every request asks
for exactly ``--tokens`` new tokens (min = max), greedy, so both sides produce the same amount of text.
The streams go through ``warmfleet.loadgen``, the load generator of `warmfleet bench` (closed loop, the
client's ``CreateAndStreamPrediction``), and its statistics: percentiles by linear interpolation, ITL
pooled over the streams' chunk gaps.

    python -m bench.llm --streams 32 --tokens 128 --repeats 3 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from bench.common import Report, Target, private_home, running_cluster
from warmfleet import loadgen

MODEL = "warmfleet/tiny-llama"
GOAL_SPEEDUP = 10.0
GOAL_TTFT_RATIO = 3.0
WORDS = "the quick brown fox jumps over a lazy dog while seven wise owls watch from old oak trees".split()


def prompts(count: int) -> list[str]:
    """Prompts of different lengths (5 to ~40 words), the same in every run."""
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(5 + (i * 11) % 36)) for i in range(count)]


def generation(prompt: str, tokens: int) -> dict[str, Any]:
    """The input of one request: exactly ``tokens`` new tokens (min = max), greedy."""
    return {"prompt": prompt, "max_new_tokens": tokens, "min_new_tokens": tokens, "temperature": 0.0}


def streams(send: loadgen.Sender, inputs: list[dict[str, Any]], concurrency: int) -> loadgen.LevelResult:
    """``len(inputs)`` streams, ``concurrency`` at a time (closed loop), each input once; all must succeed.
    The result keeps every request's record (``.records``) beside their statistics (``.stats``)."""
    records = loadgen.run_closed_loop(send, inputs, concurrency, requests=len(inputs))
    result = loadgen.LevelResult(loadgen.Load("concurrency", concurrency), records)
    if result.stats.errors:
        raise RuntimeError(f"generations did not succeed: {result.stats.errors}")
    return result


def engine_metric_p50(records: list[loadgen.RequestRecord], metric: str) -> float | None:
    """The median of a metric the engine reported for each prediction (``metrics``, e.g.
    ``time_to_first_token_s``: from the request reaching the engine to its first token)."""
    return loadgen.percentile([r.metrics[metric] for r in records if metric in r.metrics], 50)


def through_cluster(target: Target, texts: list[str], tokens: int, idle_runs: int,
                    repeats: int, model: str = MODEL) -> dict[str, Any]:
    """Streams through the cluster to ``model`` with ``warmfleet.loadgen`` (the load generator of
    `warmfleet bench`): a warm-up, ``idle_runs`` single streams for the idle TTFT, then ``repeats``
    rounds of all the prompts at once; the median round (by output tokens/s) counts."""
    inputs = [generation(t, tokens) for t in texts]
    with target.client() as client:
        send = loadgen.ClientSender(client, loadgen.Target(model), stream=True)
        streams(send, [generation(texts[0], 4)], 1)  # warm-up
        idle_run = streams(send, [inputs[i % len(inputs)] for i in range(idle_runs)], 1)
        # the median round counts: one round is short and the machine shared
        runs = sorted((streams(send, inputs, len(inputs)) for _ in range(repeats)),
                      key=lambda r: r.stats.output_tokens_per_s)
    idle, loaded_run = idle_run.stats, runs[len(runs) // 2]
    loaded, records = loaded_run.stats, loaded_run.records
    starts = [r.start_s for r in records]
    engine_ttft, queue = ({name: engine_metric_p50(run.records, metric)
                           for name, run in (("idle", idle_run), ("loaded", loaded_run))}
                          for metric in ("time_to_first_token_s", "queue_time_s"))
    return {
        "rounds_tokens_per_s": [r.stats.output_tokens_per_s for r in runs],
        "output_tokens": loaded.output_tokens,
        "tokens_per_s": loaded.output_tokens_per_s, "idle_ttft_p50_ms": idle.ttft_s.p50 * 1e3,
        "ttft_p50_ms": loaded.ttft_s.p50 * 1e3, "ttft_p99_ms": loaded.ttft_s.p99 * 1e3,
        "itl_p50_ms": loaded.itl_s.p50 * 1e3, "itl_p99_ms": loaded.itl_s.p99 * 1e3,
        # the engine's own time to first token (from the request reaching it), p50
        "engine_idle_ttft_p50_ms": _ms(engine_ttft["idle"]), "engine_ttft_p50_ms": _ms(engine_ttft["loaded"]),
        # created at the gateway to started on the agent, p50
        "idle_queue_p50_ms": _ms(queue["idle"]), "queue_p50_ms": _ms(queue["loaded"]),
        "queue_max_ms": _ms(max((r.metrics.get("queue_time_s", 0.0) for r in records), default=None)),
        # how far apart the round's requests were sent (the load generator's threads starting)
        "start_spread_ms": _ms(max(starts) - min(starts)),
        "loaded_wall_s": loaded.wall_s,
    }


def steady_load(target: Target, texts: list[str], tokens: int, count: int, waves: int = 4,
                model: str = MODEL, seed: int = 0) -> dict[str, Any]:
    """``count`` streams in flight, closed loop, for ``waves`` times ``count`` requests, each asking for a
    number of new tokens drawn (seeded) from half to one and a half ``tokens`` (mean ``tokens``): streams
    end at different times, so each new request arrives while the others decode, as under any steady
    load (requests of one length in a closed loop start and end together: bursts, what
    ``through_cluster``'s rounds measure). The first ``count`` requests (sent at once) are left out of
    the TTFT figures."""
    rng = random.Random(seed)
    inputs = [generation(texts[i % len(texts)], rng.randint(tokens // 2, tokens * 3 // 2))
              for i in range(count * waves)]
    with target.client() as client:
        send = loadgen.ClientSender(client, loadgen.Target(model), stream=True)
        streams(send, [generation(texts[0], 4)], 1)  # warm-up
        run = streams(send, inputs, count)
    later = run.records[count:]  # index order: the first wave is the first ``count``
    stats = loadgen.summarize(later)
    return {
        "streams": count, "requests": len(run.records), "ttft_requests": len(later),
        "tokens_per_s": run.stats.output_tokens_per_s,
        "ttft_p50_ms": stats.ttft_s.p50 * 1e3, "ttft_p90_ms": stats.ttft_s.p90 * 1e3,
        "ttft_p99_ms": stats.ttft_s.p99 * 1e3,
        "engine_ttft_p50_ms": _ms(engine_metric_p50(later, "time_to_first_token_s")),
        "queue_p50_ms": _ms(engine_metric_p50(later, "queue_time_s")),
        "itl_p50_ms": stats.itl_s.p50 * 1e3,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def sequential_generate(weights: Path, texts: list[str], tokens: int) -> dict[str, Any]:
    """The baseline: the same weights in this process, ``generate`` on each prompt in turn."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(weights)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32).eval()
    count = 0
    with torch.inference_mode():
        model.generate(**tokenizer(texts[0], return_tensors="pt"), max_new_tokens=4, do_sample=False)
        start = time.perf_counter()
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            count += out.shape[1] - ids["input_ids"].shape[1]
        wall = time.perf_counter() - start
    return {"wall_s": wall, "output_tokens": count, "tokens_per_s": count / wall}


def headline_goals(cluster: dict[str, Any], baseline: dict[str, Any],
                   steady: dict[str, Any] | None = None) -> dict[str, Any]:
    """The issue's two goals from ``through_cluster`` and ``sequential_generate``: throughput against
    sequential generate, TTFT p50 under load against idle; under load both as a burst (the rounds: all
    the streams sent at once) and, with ``steady`` (``steady_load``), as streams keep arriving."""
    speedup = cluster["tokens_per_s"] / baseline["tokens_per_s"]
    idle = cluster["idle_ttft_p50_ms"]
    burst = cluster["ttft_p50_ms"] / idle
    goals = {
        "throughput": {"goal": f">= {GOAL_SPEEDUP}x sequential generate", "value": speedup,
                       "met": speedup >= GOAL_SPEEDUP},
        "ttft_under_load": {"goal": f"p50 <= {GOAL_TTFT_RATIO}x idle, {len(cluster['rounds_tokens_per_s'])} "
                                    "bursts of all the streams at once", "value": burst,
                            "met": burst <= GOAL_TTFT_RATIO},
    }
    if steady is not None:
        ratio = steady["ttft_p50_ms"] / idle
        goals["ttft_under_steady_load"] = {
            "goal": f"p50 <= {GOAL_TTFT_RATIO}x idle, {steady['streams']} streams in flight, each new one "
                    "arriving as one ends", "value": ratio, "met": ratio <= GOAL_TTFT_RATIO}
    return goals


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="llm: continuous batching against sequential generate")
    parser.add_argument("--streams", type=int, default=32, help="concurrent streams")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request (min = max)")
    parser.add_argument("--idle-runs", type=int, default=5, help="single streams for the idle TTFT")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of concurrent streams; the median counts")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = Report("llm", argv)
    texts = prompts(args.streams)
    with private_home() as settings:
        with running_cluster(settings) as target:
            cluster = through_cluster(target, texts, args.tokens, args.idle_runs, args.repeats)
            steady = steady_load(target, texts, args.tokens, args.streams)
        baseline = sequential_generate(settings.models_path / "tiny-llama", texts, args.tokens)
    goals = headline_goals(cluster, baseline, steady)
    report.write(args.out, settings={"streams": args.streams, "tokens": args.tokens, "repeats": args.repeats,
                                     "model": MODEL, "greedy": True},
                 cluster=cluster, steady_load=steady, sequential_generate=baseline, goals=goals)
    print(json.dumps({"cluster": cluster, "steady_load": steady, "sequential_generate": baseline,
                      "goals": goals}, indent=2))


if __name__ == "__main__":
    main()
