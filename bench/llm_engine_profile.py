"""Where an LLM request's time goes inside one instance, with no cluster: the ``llm`` runner loaded in this
process (``LLMRunner.load``, so the engine, the prefix cache and the grammars are built as the agent
builds them) and its engine driven directly, with timers around its parts.

The timers wrap, for the length of one measurement, the model's ``forward`` (a prefill when it is given
more than one token a row, else a decode step of ``rows`` rows), and the engine's decode step, sampling
(``_choose``: penalties, grammar masks, the choice), token intake (``_accept``: detokenizing, stop
strings, the ``emit`` callback), the grammar's mask and advance (``constraints.PendingMasks.apply``: the
wait for the fill, which overlaps the forward, and the masking; ``constraints.advance``) and the prefix
cache's lookup, store and cache rebuild (``cache_from_blocks``).
They reach into the engine's private methods, which a profile may do and nothing else should; they add
about a microsecond a call. What they give, against the same figures through the cluster
(``bench/llm_agents.py``), is how much of a request's time the model loop takes and how much the
gateway, the router, the agent and the stream take.

    python -m bench.llm_engine_profile --weights ~/.warmfleet/models/tiny-llama
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.llm import generation, prompts
from warmfleet import loadgen


@dataclass
class Timers:
    """Durations (seconds) per part, and the rows of every decode forward, in call order."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    decode_rows: list[int] = field(default_factory=list)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name].append(time.perf_counter() - start)
        return timed

    def wrap_forward(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(forward)
        def timed(*args: Any, **kwargs: Any) -> Any:
            ids = kwargs.get("input_ids", args[0] if args else None)
            start = time.perf_counter()
            try:
                return forward(*args, **kwargs)
            finally:
                decode = ids is not None and ids.shape[1] == 1
                name = "decode_forward" if decode else "prefill_forward"
                self.seconds[name].append(time.perf_counter() - start)
                if decode:
                    self.decode_rows.append(int(ids.shape[0]))
        return timed

    def summary(self, rows: int | None = None) -> dict[str, Any]:
        """Per part: calls, total and p50 ms; the decode-step figures of steps of ``rows`` rows alone too."""
        out: dict[str, Any] = {name: _ms_summary(values) for name, values in sorted(self.seconds.items())}
        if rows is not None:
            picked = [i for i, r in enumerate(self.decode_rows) if r == rows]
            for name in ("decode_forward", "decode_step"):
                values = self.seconds.get(name, [])
                out[f"{name}_{rows}_rows"] = _ms_summary([values[i] for i in picked if i < len(values)])
        return out


def _ms_summary(values: list[float]) -> dict[str, Any]:
    p50 = loadgen.percentile(values, 50)
    return {"calls": len(values), "total_ms": sum(values) * 1e3, "p50_ms": None if p50 is None else p50 * 1e3}


@contextlib.contextmanager
def timed(runner: Any) -> Iterator[Timers]:
    """Timers around the parts of ``runner``'s engine for the block (see the module docstring)."""
    import runners.llm.constraints as constraints_module
    import runners.llm.engine as engine_module

    timers = Timers()
    engine, model = runner.engine, runner.model
    patches: list[tuple[Any, str, Any]] = [
        (model, "forward", timers.wrap_forward(model.forward)),
        (engine, "_decode_step", timers.wrap("decode_step", engine._decode_step)),
        (engine, "_choose", timers.wrap("sample", engine._choose)),
        (engine, "_accept", timers.wrap("accept", engine._accept)),
        (engine, "_admit", timers.wrap("admit", engine._admit)),
        # The masks' fill overlaps the forward (``constraints.PendingMasks``): what is timed is the step's
        # wait for it and the masking of the logits.
        (constraints_module.PendingMasks, "apply",
         timers.wrap("grammar_masks", constraints_module.PendingMasks.apply)),
        (constraints_module, "advance", timers.wrap("grammar_advance", constraints_module.advance)),
        (engine_module, "cache_from_blocks", timers.wrap("prefix_rebuild", engine_module.cache_from_blocks)),
    ]
    if engine.prefix is not None:
        patches += [(engine.prefix, "lookup", timers.wrap("prefix_lookup", engine.prefix.lookup)),
                    (engine.prefix, "store", timers.wrap("prefix_store", engine.prefix.store))]
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]
    for owner, name, wrapper in patches:
        setattr(owner, name, wrapper)
    try:
        yield timers
    finally:
        for owner, name, before in saved:
            if before is None:
                delattr(owner, name)  # the instance's own attribute: the class's shows again
            else:
                setattr(owner, name, before)


# The agent gives its models the node's CPUs (``scheduler.ray_adapter.runner_threads``; one agent on a CPU
# node) and the llm engine takes one less (``runners.llm.runner.engine_threads``): on 2 cores, one thread.
AGENT_TORCH_THREADS = max(1, (os.cpu_count() or 1) - 1)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for the block (the process's, the engine thread's too)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_runner(weights: Path, options: dict[str, Any] | None = None) -> Any:
    """The ``llm`` runner on the CPU, loaded as an agent loads it (the built-in tiny Llama's options)."""
    from runners.llm.runner import LLMRunner
    from warmfleet.domain import RouteSpec

    runner = LLMRunner(RouteSpec(name="profile/tiny-llama", runner="llm", weights=str(weights),
                                 options={"max_batch_size": 32, **(options or {})}), device="cpu")
    runner.load()
    return runner


@dataclass
class Outcome:
    """One request's end in the engine: its ``Finished`` and when it was submitted and ended."""

    submitted_at: float
    finished: Any = None
    ended_at: float = 0.0


def run_batch(runner: Any, inputs: list[dict[str, Any]]) -> tuple[list[Outcome], float]:
    """Submit every input to the engine at once (prepared first, as the runner prepares them) and wait
    for all to finish; returns each one's outcome and the wall time from the first submit."""
    from runners.llm.engine import Failed, Finished
    from runners.llm.runner import sampling_params

    prepared = [runner.prepare(dict(i), 1) for i in inputs]
    outcomes, left = [], threading.Semaphore(0)

    def emit_to(outcome: Outcome) -> Callable[[Any], None]:
        def emit(event: Any) -> None:
            if isinstance(event, (Finished, Failed)):
                outcome.finished, outcome.ended_at = event, time.perf_counter()
                left.release()
        return emit

    start = time.perf_counter()
    for (ids, matchers), data in zip(prepared, inputs):
        outcome = Outcome(time.perf_counter())
        outcomes.append(outcome)
        runner.engine.submit(ids, sampling_params(data), emit_to(outcome), matchers=matchers)
    for _ in inputs:
        left.acquire()
    failed = [o.finished for o in outcomes if not isinstance(o.finished, Finished)]
    if failed:
        raise RuntimeError(f"engine requests failed: {failed[0]}")
    return outcomes, time.perf_counter() - start


def decode_profile(weights: Path, streams: int = 32, tokens: int = 128, repeats: int = 3) -> dict[str, Any]:
    """The headline's load with no cluster: ``streams`` prompts (``bench.llm.prompts``) of ``tokens``
    new tokens each submitted to the engine at once, ``repeats`` rounds after a warm-up round, as the
    headline repeats them, to the runner as the cluster builds it (prefix cache on: the rounds after the
    first find their prompts' blocks cached) and to one with the prefix cache off, alternating. Per
    variant the median round by tokens/s: its engine TTFT and the parts of its time, the decode step of
    ``streams`` rows among them. Then, on the first: one stream at a time (idle TTFT, a one-row step),
    and the same load through ``runner.predict`` (``runner_streams``)."""
    runners = {"cache": load_runner(weights), "no_cache": load_runner(weights, {"prefix_cache_tokens": 0})}
    try:
        inputs = [generation(t, tokens) for t in prompts(streams)]
        for runner in runners.values():
            run_batch(runner, inputs)  # warm-up, and the prompts' blocks into the cache
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
        for repeat in range(repeats):
            for name in (list(runners) if repeat % 2 == 0 else list(runners)[::-1]):
                rounds[name].append(_round(runners[name], inputs, streams))
        variants = {}
        for name, runs in rounds.items():
            runs.sort(key=lambda r: r["tokens_per_s"])
            variants[name] = {"rounds_tokens_per_s": [r["tokens_per_s"] for r in runs],
                              "median_round": runs[len(runs) // 2]}
        runner = runners["cache"]
        with timed(runner) as timers:
            idle = [run_batch(runner, [inputs[i]])[0][0].finished.time_to_first_token_s for i in range(5)]
        single = {"engine_ttft_p50_ms": _p50_ms(idle), "parts": timers.summary(rows=1)}
        through_runner = asyncio.run(runner_streams(runner, inputs))
    finally:
        for runner in runners.values():
            runner.unload()
    return {"streams": streams, "tokens": tokens, **variants, "idle": single,
            "through_runner": through_runner}


def _round(runner: Any, inputs: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    cpu = time.process_time()  # this process's threads: the engine's, and this one waiting
    with timed(runner) as timers:
        outcomes, wall = run_batch(runner, inputs)
    cpu = time.process_time() - cpu
    count = sum(o.finished.output_token_count for o in outcomes)
    return {"wall_s": wall, "output_tokens": count, "tokens_per_s": count / wall,
            "cpu_s_per_1000_tokens": cpu / count * 1e3,
            "engine_ttft_p50_ms": _p50_ms([o.finished.time_to_first_token_s for o in outcomes]),
            "cached_input_tokens": sum(o.finished.cached_input_token_count for o in outcomes),
            "parts": timers.summary(rows=rows)}


async def runner_streams(runner: Any, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The same load through ``runner.predict`` on an event loop, as the agent runs it (its tokenizing
    thread hop and the engine's events handed to the loop) but with no agent, router or gateway: the
    output tokens/s and the p50 time from calling ``predict`` to its first output chunk."""
    from runners.base import PredictContext
    from warmfleet.domain import OutputChunk

    async def one(index: int, data: dict[str, Any]) -> float:
        start = time.perf_counter()
        first = None
        async for event in runner.predict(dict(data), PredictContext(f"profile-{index}")):
            if first is None and isinstance(event, OutputChunk):
                first = time.perf_counter() - start
        return first if first is not None else float("nan")

    await one(0, {**inputs[0], "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    ttfts = await asyncio.gather(*(one(i, data) for i, data in enumerate(inputs)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    idle = [await one(i, inputs[i]) for i in range(5)]
    tokens = sum(int(d["max_new_tokens"]) for d in inputs)
    return {"wall_s": wall, "tokens_per_s": tokens / wall, "cpu_s_per_1000_tokens": cpu / tokens * 1e3,
            "ttft_p50_ms": _p50_ms(ttfts), "idle_ttft_p50_ms": _p50_ms(idle)}


def prefix_profile(weights: Path, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The prefix scenario's requests, one at a time, to an engine with the prefix cache and to one
    without: the engine's TTFT p50, the time to prepare a request (chat template and tokenizing, on the
    runner's thread) and the parts of the prefill (the cached one: lookup, cache rebuild from blocks,
    the forward over the rest, store)."""
    out = {}
    for name, options in (("cache", {}), ("no_cache", {"prefix_cache_tokens": 0})):
        runner = load_runner(weights, options)
        try:
            run_batch(runner, [inputs[0]])  # warm-up: the system prompt's blocks go to the cache
            prepare = []
            for data in inputs[1:]:
                start = time.perf_counter()
                runner.prepare(dict(data), 1)
                prepare.append(time.perf_counter() - start)
            with timed(runner) as timers:
                finished = [run_batch(runner, [data])[0][0].finished for data in inputs[1:]]
        finally:
            runner.unload()
        out[name] = {"engine_ttft_p50_ms": _p50_ms([f.time_to_first_token_s for f in finished]),
                     "prepare_p50_ms": _p50_ms(prepare),
                     "cached_input_tokens_p50": loadgen.percentile(
                         [f.cached_input_token_count for f in finished], 50),
                     "input_tokens_p50": loadgen.percentile([f.input_token_count for f in finished], 50),
                     "parts": timers.summary()}
    return out


def constrained_profile(weights: Path, free: list[dict[str, Any]], second: list[dict[str, Any]],
                        regex: str, repeats: int = 3) -> dict[str, Any]:
    """The constrained scenario with no cluster: ``free`` plus ``second`` submitted at once, ``second``
    as they are (run A) or constrained to ``regex`` (run B), alternating; the free requests' engine
    tokens/s (their ``Finished.tokens_per_second``, median), the decode step of all rows and the
    grammar's share of it, and the time to build a request's matcher."""
    runner = load_runner(weights)
    try:
        constrained = [{**data, "regex": regex} for data in second]
        run_batch(runner, [constrained[0]])  # warm-up: builds llguidance's view of the tokenizer
        runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
        rows = len(free) + len(second)
        for repeat in range(repeats):
            for name in ("AB" if repeat % 2 == 0 else "BA"):
                mixed = [x for pair in zip(free, second if name == "A" else constrained) for x in pair]
                with timed(runner) as timers:
                    outcomes, wall = run_batch(runner, mixed)
                rates = [o.finished.tokens_per_second for o in outcomes]
                runs[name].append({"wall_s": wall, "parts": timers.summary(rows=rows),
                                   "free_tokens_per_s_p50": loadgen.percentile(rates[0::2], 50),
                                   "other_tokens_per_s_p50": loadgen.percentile(rates[1::2], 50)})
        start = time.perf_counter()
        for data in constrained:
            runner.prepare(dict(data), 1)
        matcher_ms = (time.perf_counter() - start) / len(constrained) * 1e3
        masks = {"as_is": mask_timing(runner, regex, rows, len(second))}
        with spinning(1):
            masks["one_core_busy"] = mask_timing(runner, regex, rows, len(second))
    finally:
        runner.unload()
    medians = {name: loadgen.percentile([r["free_tokens_per_s_p50"] for r in rs], 50)
               for name, rs in runs.items()}
    pairs = [b["free_tokens_per_s_p50"] / a["free_tokens_per_s_p50"] for a, b in zip(runs["A"], runs["B"])]
    return {"runs": runs, "free_tokens_per_s_p50": medians, "pair_ratios": pairs,
            "free_ratio_b_over_a": loadgen.percentile(pairs, 50),
            "prepare_constrained_ms": matcher_ms, "mask_timing": masks}


def mask_timing(runner: Any, regex: str, rows: int, constrained: int, calls: int = 200) -> dict[str, Any]:
    """One step's grammar masks for ``constrained`` of ``rows`` rows at the start of ``regex``, timed
    ``calls`` times (p50 and p90, microseconds): ``constraints.apply_masks`` whole, and llguidance's own
    part of it (its parallel fill of the token bitmask); the rest is the bitmask's unpacking and applying
    in torch."""
    import llguidance.torch as lt
    import torch
    from llguidance import LLExecutor

    from runners.llm import constraints

    matchers = [runner.grammars.matcher(constraints.Constraint("regex", regex, "input.regex"))
                for _ in range(constrained)]
    slots = [*matchers, *([None] * (rows - constrained))]
    logits = torch.zeros(rows, runner.grammars.vocab_size)

    def us(fn: Callable[[], Any]) -> dict[str, float | None]:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e6)
        return {"p50": loadgen.percentile(times, 50), "p90": loadgen.percentile(times, 90)}

    bitmask = lt.allocate_token_bitmask(rows, runner.grammars.vocab_size)
    pairs = [(m, i) for i, m in enumerate(slots) if m is not None]
    executor = LLExecutor()  # a pool as the engine's (one per process there)
    return {"rows": rows, "constrained": constrained, "vocab": runner.grammars.vocab_size,
            "apply_masks_us": us(lambda: constraints.apply_masks(logits.clone(), slots)),
            "llguidance_fill_us": us(lambda: lt.fill_next_token_bitmask_par(executor, pairs, bitmask)),
            "clone_logits_us": us(logits.clone)}


@contextlib.contextmanager
def spinning(count: int) -> Iterator[None]:
    """``count`` other processes, each spinning on a core, for the block (killed after it)."""
    import subprocess
    import sys

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.2)  # let them take their cores
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def contention_profile(weights: Path, streams: int = 32, tokens: int = 128, repeats: int = 2
                       ) -> dict[str, Any]:
    """The headline's load on the engine (prefix cache off, so that every round is alike) with torch's
    default intra-op threads and with one, each on the machine as it is and beside one other process
    spinning on a core (as the gateway, the agent's loop and the client do beside the engine in the
    cluster): the median round's tokens/s and decode step of ``streams`` rows."""
    import torch

    runner = load_runner(weights, {"prefix_cache_tokens": 0})
    default = torch.get_num_threads()
    inputs = [generation(t, tokens) for t in prompts(streams)]
    out: dict[str, Any] = {"default_threads": default}
    try:
        run_batch(runner, inputs)  # warm-up
        for busy in (False, True):
            with spinning(1 if busy else 0), torch_threads(default):
                for threads in sorted({default, 1}, reverse=True):
                    torch.set_num_threads(threads)
                    rounds = sorted((_round(runner, inputs, streams) for _ in range(repeats)),
                                    key=lambda r: r["tokens_per_s"])
                    middle = rounds[len(rounds) // 2]
                    out[f"{'one_core_busy' if busy else 'as_is'}_threads_{threads}"] = {
                        "rounds_tokens_per_s": [r["tokens_per_s"] for r in rounds],
                        "tokens_per_s": middle["tokens_per_s"],
                        "engine_ttft_p50_ms": middle["engine_ttft_p50_ms"],
                        "decode_step_p50_ms": p50_of(middle["parts"].get(f"decode_step_{streams}_rows"))}
    finally:
        runner.unload()
    return out


def p50_of(part: dict[str, Any] | None) -> float | None:
    """The p50 (ms) of one part of a ``Timers.summary``, None when it was not measured."""
    return None if not part else part.get("p50_ms")


def _p50_ms(values: list[float | None]) -> float | None:
    p50 = loadgen.percentile([v for v in values if v is not None], 50)
    return None if p50 is None else p50 * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the llm runner's engine in this process, timed by part")
    parser.add_argument("--weights", type=Path, required=True, help="a tiny Llama folder (make-tiny-llama)")
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=AGENT_TORCH_THREADS,
                        help="torch intra-op threads (default: the engine's in the agent, the cores less one)")
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        print(json.dumps(decode_profile(args.weights, args.streams, args.tokens), indent=2))


if __name__ == "__main__":
    main()
