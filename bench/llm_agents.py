"""The agents' LLM scenarios (issue 17), in one run against one private cluster: prefix caching of a long
shared system prompt, constrained requests mixed with free ones, and the headline of ``bench/llm.py``
(32 streams against sequential ``generate``, TTFT under load against idle), each measured through the
cluster with ``warmfleet.loadgen`` (the load generator of `warmfleet bench`), then profiled with no
cluster (``bench/llm_engine_profile.py``: the runner and its engine in this process, timed by part),
so that the report says where the time goes in measured figures.

1. Prefix caching. A chat whose system prompt is about 960 tokens of varied words (the chat template's
   prompt about 1,000 tokens, checked with the tiny Llama's tokenizer; the model takes 1,024), short user
   messages, 4 new tokens. The built-in ``warmfleet/tiny-llama`` (prefix cache on) against
   ``bench/tiny-llama-nocache``, created here with the same weights and options but
   ``prefix_cache_tokens`` 0. Per model a warm-up with the system prompt, then the same ``--prefix-requests``
   requests one at a time, each with its own user message, in rounds alternating between the models.
   Measured: the client's TTFT (loadgen's ``ttft_s``), the engine's ``time_to_first_token_s`` and
   ``cached_input_token_count`` (each prediction's metrics). Goal: TTFT p50 with the cache at least 3x
   faster than without.
2. Constrained requests mixed with free ones. Run A: 16 free streams and 16 more free streams; run B: the
   same 16 free streams and 16 streams of the second run's prompts constrained to ``[a-z ]{400}`` (which
   cannot complete within the tokens asked); every request 64 tokens (min = max), greedy; 32 at once
   (closed loop, one request each), the two groups interleaved. ``--mix-repeats`` pairs, alternating which
   run goes first. Measured: the free streams' tokens/s (each one's output tokens over its own latency,
   median; and their tokens summed over the level's wall time), in A and B, median over the repeats.
   Goal: B's free streams within 10% of A's. The constrained streams' tokens/s too, and each constrained
   output checked against the regex.
3. The headline: ``bench.llm.through_cluster`` and ``sequential_generate`` (32 streams of 128 tokens,
   3 rounds), with ``bench.llm``'s goals (10x sequential generate, run with torch's default threads and
   with one, the faster counting; TTFT p50 under load at most 3x idle, in a burst (the rounds) and under
   a steady load, ``bench.llm.steady_load``); as diagnostics, the same load to the no-cache model; the CPU
   seconds each process of the cluster spent on it.

    python -m bench.llm_agents --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import llm
from bench import llm_engine_profile as profile
from bench.common import Report, private_home, start_cluster
from bench.soak import cluster_pids, process_title
from warmfleet import loadgen
from warmfleet.cli import launch
from warmfleet.cli.defaults import default_models
from warmfleet.client import Client
from warmfleet.settings import Settings

MODEL = llm.MODEL
NO_CACHE_MODEL = "bench/tiny-llama-nocache"
GOAL_PREFIX_SPEEDUP = 3.0
GOAL_FREE_RATIO = 0.9  # free streams' tokens/s with constrained ones beside them, against without
REGEX = "[a-z ]{400}"  # at least one character a token: 64 tokens cannot complete it
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
IDLE_RUNS = 5  # the headline's single streams for its idle TTFT, as bench.llm's default
SYSTEM_WORDS = (
    "agent tool call answer question schedule meeting report invoice customer order shipment warehouse "
    "river mountain garden library window kitchen planet ocean forest market station bridge harbour "
    "yellow purple silver quiet bright careful patient quickly slowly gently always never often "
    "policy account deployment version cluster node gateway router stream token prompt cache model "
    "weights latency budget deadline summary detail history future reason example number letter "
    "morning evening winter summer travel ticket hotel flight weather forecast recipe dinner music "
    "doctor patient teacher student engineer manager editor writer painter farmer baker sailor"
).split()
USER_WORDS = "order invoice flight meeting ticket recipe report forecast shipment budget".split()


# The chat of the prefix scenario


def chat_tokens(tokenizer: Any, system: str, user: str) -> int:
    """The prompt's length in tokens as the runner encodes a system prompt and a user message (its
    chat template, then the tokenizer with no special tokens added: the template has them)."""
    chat = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def user_messages(count: int, seed: int = 17) -> list[str]:
    """``count`` short user messages, each its own."""
    rng = random.Random(seed)
    return [f"Question {i}: where is my {rng.choice(USER_WORDS)} for {rng.choice(SYSTEM_WORDS)}?"
            for i in range(count)]


def system_prompt(tokenizer: Any, users: list[str], prompt_tokens: int, seed: int = 7) -> str:
    """Sentences of 6 to 14 words drawn from ``SYSTEM_WORDS``, as many words as keep the longest chat
    prompt (this system prompt and the longest of ``users``) within ``prompt_tokens``."""
    rng = random.Random(seed)
    words: list[str] = []
    while len(words) < 4 * prompt_tokens:
        sentence = [rng.choice(SYSTEM_WORDS) for _ in range(rng.randint(6, 14))]
        words += [sentence[0].capitalize(), *sentence[1:-1], sentence[-1] + "."]
    longest = max(users, key=lambda u: chat_tokens(tokenizer, "", u))
    low, high = 1, len(words)  # the most words whose prompt fits: tokens grow with words
    while low < high:
        middle = (low + high + 1) // 2
        if chat_tokens(tokenizer, " ".join(words[:middle]), longest) <= prompt_tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def chat(system: str, user: str, tokens: int) -> dict[str, Any]:
    return {"system_prompt": system, "prompt": user, "max_new_tokens": tokens, "min_new_tokens": tokens,
            "temperature": 0.0}


# The second model


def create_no_cache_model(client: Client, settings: Settings, timeout_s: float = 180.0) -> dict[str, Any]:
    """``NO_CACHE_MODEL``: the built-in tiny Llama's weights and options with the prefix cache off, one
    instance; returns when it has served a prediction."""
    builtin = next(spec for spec in default_models(settings) if spec.name == MODEL)
    options = {**builtin.options, "prefix_cache_tokens": 0}
    start = time.perf_counter()
    client.models.create(NO_CACHE_MODEL, "llm", weights=builtin.weights, options=options, min_instances=1,
                         description="The tiny Llama with its prefix cache off (bench/llm_agents.py).")
    send = loadgen.ClientSender(client, loadgen.Target(NO_CACHE_MODEL), stream=True, timeout_s=60.0)
    while True:
        record = send(0, llm.generation("hello", 2))
        if record.succeeded:
            break
        if time.perf_counter() - start > timeout_s:
            raise RuntimeError(f"{NO_CACHE_MODEL} served nothing in {timeout_s:.0f} s: {record.error_key} "
                               f"{record.message}")
        time.sleep(1.0)
    return {"name": NO_CACHE_MODEL, "weights": builtin.weights, "options": options,
            "serving_after_s": time.perf_counter() - start}


# 1. Prefix caching


def prefix_caching(client: Client, system: str, users: list[str], tokens: int, rounds: int) -> dict[str, Any]:
    """Each user message once to each model, one request at a time, in ``rounds`` rounds alternating
    which model goes first, after a warm-up with the system prompt; then a short prompt to the no-cache
    model, for the TTFT of a prompt with nothing to prefill (what a cache can at best come down to)."""
    sends = {name: loadgen.ClientSender(client, loadgen.Target(model), stream=True)
             for name, model in (("cache", MODEL), ("no_cache", NO_CACHE_MODEL))}
    for send in sends.values():
        llm.streams(send, [chat(system, "Hello, this is the warm-up.", tokens)], 1)
    records: dict[str, list[loadgen.RequestRecord]] = {name: [] for name in sends}
    size = -(-len(users) // rounds)
    for r in range(rounds):
        part = [chat(system, user, tokens) for user in users[r * size:(r + 1) * size]]
        for name in (list(sends) if r % 2 == 0 else list(sends)[::-1]):
            records[name] += llm.streams(sends[name], part, 1).records
    shorts = [chat("Be brief.", user, tokens) for user in users[:10]]
    short = llm.streams(sends["no_cache"], shorts, 1).records
    out = {name: chat_summary(rs) for name, rs in records.items()}
    out["short_prompt_no_cache"] = chat_summary(short)
    cache, none = out["cache"], out["no_cache"]
    out["speedup_client_ttft_p50"] = none["ttft_p50_ms"] / cache["ttft_p50_ms"]
    out["speedup_engine_ttft_p50"] = none["engine_ttft_p50_ms"] / cache["engine_ttft_p50_ms"]
    return out


def chat_summary(records: list[loadgen.RequestRecord]) -> dict[str, Any]:
    """Client TTFT, the engine's TTFT, what lies between them (per request, client minus engine),
    latency, prompt tokens and cached tokens, as medians (ms) over the requests."""
    def p50(values: list[float]) -> float | None:
        return loadgen.percentile(values, 50)

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1e3

    streamed = [r for r in records if r.ttft_s is not None]
    engine = [r.metrics["time_to_first_token_s"] for r in records if "time_to_first_token_s" in r.metrics]
    return {
        "requests": len(records), "ttft_p50_ms": ms(p50([r.ttft_s for r in streamed])),
        "ttft_p90_ms": ms(loadgen.percentile([r.ttft_s for r in streamed], 90)),
        # succeeded, but the stream carried its "completed" event alone (no output chunk): no client TTFT
        "without_output_chunk": [r.prediction_id for r in records if r.ttft_s is None],
        "engine_ttft_p50_ms": ms(p50(engine)),
        "queue_p50_ms": ms(p50([r.metrics["queue_time_s"] for r in records if "queue_time_s" in r.metrics])),
        "outside_engine_ttft_p50_ms": ms(p50([r.ttft_s - r.metrics["time_to_first_token_s"] for r in streamed
                                              if "time_to_first_token_s" in r.metrics])),
        "latency_p50_ms": ms(p50([r.latency_s for r in records])),
        "input_tokens_p50": p50([r.metrics.get("input_token_count", 0) for r in records]),
        "input_tokens_max": max(r.metrics.get("input_token_count", 0) for r in records),
        "cached_input_tokens_p50": p50([r.metrics.get("cached_input_token_count", 0) for r in records]),
        "cached_input_tokens_min": min(r.metrics.get("cached_input_token_count", 0) for r in records),
    }


# 2. Constrained requests mixed with free ones


def mix_inputs(tokens: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The 16 free requests, the 16 others as free requests (run A) and constrained (run B)."""
    texts = llm.prompts(32)
    free = [llm.generation(t, tokens) for t in texts[:16]]
    second = [llm.generation(t, tokens) for t in texts[16:]]
    return free, second, [{**g, "regex": REGEX} for g in second]


def interleave(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """first[0], second[0], first[1], ...: request ``i`` is of the first group when ``i`` is even."""
    return [x for pair in zip(first, second) for x in pair]


def constrained_mix(client: Client, tokens: int, repeats: int) -> dict[str, Any]:
    """Runs A and B (the module docstring), ``repeats`` of each, alternating which goes first."""
    free, second, constrained = mix_inputs(tokens)
    send = loadgen.ClientSender(client, loadgen.Target(MODEL), stream=True)
    # builds the grammar side (llguidance's view of the tokenizer), then a mix to warm up
    llm.streams(send, [{**constrained[0], "max_new_tokens": 4, "min_new_tokens": 4}], 1)
    llm.streams(send, interleave(free, constrained), len(free) * 2)
    runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    checked: list[str] = []
    for repeat in range(repeats):
        for name in ("AB" if repeat % 2 == 0 else "BA"):
            others = second if name == "A" else constrained
            records = llm.streams(send, interleave(free, others), len(free) * 2).records
            runs[name].append(mix_summary(records))
            if name == "B":
                checked = [r.prediction_id for r in records[1::2]]
    medians = {name: {key: loadgen.percentile([run[key] for run in rs], 50)
                      for key in rs[0] if key != "wall_s"} for name, rs in runs.items()}
    a, b = medians["A"], medians["B"]
    # Each repeat's B against its A, run back to back: the machine's other work drifts over the minutes,
    # and a ratio within a pair cancels it where a ratio of medians over all the runs does not.
    pairs = {key: [rb[key] / ra[key] for ra, rb in zip(runs["A"], runs["B"])]
             for key in ("free_tokens_per_s_p50", "free_tokens_per_s_summed")}
    return {
        "runs": runs, "medians": medians, "pair_ratios": pairs,
        "free_ratio_b_over_a": loadgen.percentile(pairs["free_tokens_per_s_p50"], 50),
        "free_ratio_b_over_a_summed": loadgen.percentile(pairs["free_tokens_per_s_summed"], 50),
        "free_ratio_of_medians": b["free_tokens_per_s_p50"] / a["free_tokens_per_s_p50"],
        "constrained_over_free_in_b": b["other_tokens_per_s_p50"] / b["free_tokens_per_s_p50"],
        "constrained_outputs": check_outputs(client, checked, tokens),
    }


def mix_summary(records: list[loadgen.RequestRecord]) -> dict[str, float]:
    """The two groups' tokens/s: per stream (its output tokens over its own latency; p50), their tokens
    summed over the level's wall time, and the engine's own ``tokens_per_second`` (p50)."""
    wall = max(r.end_s for r in records)
    out: dict[str, float] = {"wall_s": wall}
    for group, part in (("free", records[0::2]), ("other", records[1::2])):
        per_stream = [r.output_tokens / r.latency_s for r in part]
        out[f"{group}_tokens_per_s_p50"] = loadgen.percentile(per_stream, 50)
        out[f"{group}_tokens_per_s_summed"] = sum(r.output_tokens for r in part) / wall
        out[f"{group}_engine_tokens_per_s_p50"] = loadgen.percentile(
            [r.metrics["tokens_per_second"] for r in part if "tokens_per_second" in r.metrics], 50)
        out[f"{group}_ttft_p50_ms"] = loadgen.percentile([r.ttft_s for r in part], 50) * 1e3
        out[f"{group}_output_tokens_min"] = min(r.output_tokens for r in part)
    return out


def check_outputs(client: Client, prediction_ids: list[str], tokens: int) -> dict[str, Any]:
    """The constrained predictions of the last run B, read back: how many match the regex."""
    predictions = [client.predictions.get(i) for i in prediction_ids]
    texts = [p.output if isinstance(p.output, str) else "" for p in predictions]
    return {"checked": len(texts), "match_regex": sum(bool(re.fullmatch(REGEX.replace("{400}", "*"), t))
                                                      for t in texts),
            "output_tokens": sorted({int(p.metrics.get("output_token_count", -1)) for p in predictions}),
            "finish_reasons": sorted({str(p.metrics.get("finish_reason", "")) for p in predictions}),
            "characters_min": min(map(len, texts), default=0), "example": texts[0][:120] if texts else ""}


# CPU per process


def cpu_snapshot(gateway_pid: int, head_pid: int) -> dict[str, float]:
    """CPU seconds so far of each process of the cluster (summed by title), of this process (the load
    client), and of the whole machine (``machine busy``: all processes, ours and others')."""
    seconds: dict[str, float] = defaultdict(float)
    for pid in [*cluster_pids(gateway_pid, head_pid), os.getpid()]:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            argv = [a.decode(errors="replace") for a in cmdline.split(b"\0")]
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        label = ("gateway" if pid == gateway_pid else "bench (load client)" if pid == os.getpid()
                 else process_title(argv))
        seconds[label] += (int(fields[11]) + int(fields[12])) / TICKS_PER_S
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    seconds["machine busy"] = (sum(cpu) - cpu[3] - cpu[4]) / TICKS_PER_S  # all but idle and iowait
    return dict(seconds)


def cpu_during(pids: tuple[int, int], fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """``fn()``'s result, and the CPU seconds each process spent meanwhile (those above 0.05 s)."""
    before, start = cpu_snapshot(*pids), time.perf_counter()
    result = fn()
    after, wall = cpu_snapshot(*pids), time.perf_counter() - start
    spent = {k: after[k] - before.get(k, 0.0) for k in after if after[k] - before.get(k, 0.0) >= 0.05}
    ours = sum(v for k, v in spent.items() if k != "machine busy")
    return result, {"wall_s": wall, "cpu_s": dict(sorted(spent.items(), key=lambda kv: -kv[1])),
                    "others_on_the_machine_cpu_s": max(spent.get("machine busy", 0.0) - ours, 0.0)}


# The run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="llm_agents: prefix caching, constrained mixes, the headline")
    parser.add_argument("--prompt-tokens", type=int, default=1000,
                        help="the longest chat prompt (system prompt and user message), in tokens")
    parser.add_argument("--prefix-requests", type=int, default=30, help="requests per model, one at a time")
    parser.add_argument("--prefix-rounds", type=int, default=3, help="rounds alternating the two models")
    parser.add_argument("--chat-tokens", type=int, default=4, help="new tokens per chat request")
    parser.add_argument("--mix-tokens", type=int, default=64, help="new tokens per request of the mix")
    parser.add_argument("--mix-repeats", type=int, default=10, help="runs of A and of B")
    parser.add_argument("--streams", type=int, default=32, help="the headline's concurrent streams")
    parser.add_argument("--tokens", type=int, default=128, help="the headline's new tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="the headline's rounds; the median counts")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--markdown-from", type=Path, help="only write llm_agents.md again from this report")
    return parser.parse_args(argv)


def the_chat(weights: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The system prompt and user messages, and their lengths in tokens, checked against the context."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(weights)
    context = int(json.loads((weights / "config.json").read_text())["max_position_embeddings"])
    users = user_messages(args.prefix_requests + 1)
    system = system_prompt(tokenizer, users, args.prompt_tokens)
    lengths = [chat_tokens(tokenizer, system, u) for u in users]
    if max(lengths) + args.chat_tokens > context:
        raise ValueError(f"the chat prompt ({max(lengths)} tokens) and {args.chat_tokens} new tokens "
                         f"pass the model's context of {context}")
    return {"system": system, "users": users, "context_tokens": context,
            "system_prompt_tokens": len(tokenizer(system, add_special_tokens=False).input_ids),
            "system_prompt_words": len(system.split()), "prompt_tokens_min": min(lengths),
            "prompt_tokens_max": max(lengths)}


def in_cluster(settings: Settings, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Everything measured through the cluster (``warmfleet up`` on ``settings``, brought down after),
    and the chat (built once the cluster has written the tiny Llama)."""
    try:
        state, target = start_cluster(settings)
        pids = (state.pid, state.ray_head.pid if state.ray_head else 0)
        the = the_chat(settings.models_path / "tiny-llama", args)
        with target.client() as client:
            second_model = create_no_cache_model(client, settings)
            prefix = prefix_caching(client, the["system"], the["users"][1:], args.chat_tokens,
                                    args.prefix_rounds)
            mix, mix_cpu = cpu_during(
                pids, lambda: constrained_mix(client, args.mix_tokens, args.mix_repeats))
        texts = llm.prompts(args.streams)
        headline, headline_cpu = cpu_during(pids, lambda: llm.through_cluster(
            target, texts, args.tokens, IDLE_RUNS, args.repeats))
        no_cache = llm.through_cluster(target, texts, args.tokens, IDLE_RUNS, args.repeats,
                                       model=NO_CACHE_MODEL)
        steady = llm.steady_load(target, texts, args.tokens, args.streams)
    finally:
        launch.down(settings)
    headline_cpu["output_tokens"] = 4 + (IDLE_RUNS + args.repeats * args.streams) * args.tokens
    return {"second_model": second_model, "prefix": prefix, "mix": mix, "mix_cpu": mix_cpu,
            "headline": headline, "headline_cpu": headline_cpu, "headline_no_cache": no_cache,
            "headline_steady": steady}, the


def alone(weights: Path, args: argparse.Namespace, the: dict[str, Any]) -> dict[str, Any]:
    """The same loads with no cluster (``bench.llm_engine_profile``), and the sequential baseline."""
    inputs = [chat(the["system"], u, args.chat_tokens) for u in the["users"]]
    free, second, _ = mix_inputs(args.mix_tokens)
    texts = llm.prompts(args.streams)
    sequential = sequential_baselines(weights, texts, args.tokens)
    contention = profile.contention_profile(weights, args.streams, args.tokens)
    with profile.torch_threads(profile.AGENT_TORCH_THREADS):  # as the agent runs the engine
        return {
            "torch_threads": profile.AGENT_TORCH_THREADS, "sequential_generate": sequential,
            "decode": profile.decode_profile(weights, args.streams, args.tokens, max(args.repeats, 5)),
            "contention": contention, "prefix": profile.prefix_profile(weights, inputs),
            "mix": profile.constrained_profile(weights, free, second, REGEX, args.mix_repeats),
        }


def sequential_baselines(weights: Path, texts: list[str], tokens: int) -> dict[str, Any]:
    """``bench.llm.sequential_generate`` with torch's default intra-op threads, as ``bench.llm`` runs it,
    and with one: on a shared 2-core machine the default can be many times slower (its threads wait on
    each other while another process holds a core), which would flatter the cluster. The faster of the
    two is the baseline of the goal."""
    import torch

    runs = {f"threads_{torch.get_num_threads()}": llm.sequential_generate(weights, texts, tokens)}
    with profile.torch_threads(1):
        runs["threads_1"] = llm.sequential_generate(weights, texts, tokens)
    best = max(runs, key=lambda name: runs[name]["tokens_per_s"])
    return {**runs[best], "chosen": best, "runs": runs}


# Where the time goes: the cluster's figures beside the same loads with no cluster


def where_the_time_goes(m: dict[str, Any], a: dict[str, Any]) -> dict[str, Any]:
    """Per scenario, the figures that say where its time goes: ``m`` measured through the cluster
    (``in_cluster``), ``a`` with no cluster (``alone``)."""
    return {"prefix_caching": where_prefix(m["prefix"], a["prefix"]),
            "constrained_mix": where_mix(m["mix"], m["mix_cpu"], a["mix"]),
            "headline": where_headline(m, a["decode"], a["sequential_generate"], a["contention"])}


def where_prefix(p: dict[str, Any], alone: dict[str, Any]) -> dict[str, Any]:
    """TTFT with and without the cache, in the client and in the engine, what lies between, and the
    parts of the engine's prefill with no cluster."""
    cache, none, short = p["cache"], p["no_cache"], p["short_prompt_no_cache"]
    parts_cache, parts_none = alone["cache"]["parts"], alone["no_cache"]["parts"]
    return {
        "client_ttft_p50_ms": {"cache": cache["ttft_p50_ms"], "no_cache": none["ttft_p50_ms"],
                               "short_prompt_no_cache": short["ttft_p50_ms"]},
        "engine_ttft_p50_ms": {"cache": cache["engine_ttft_p50_ms"], "no_cache": none["engine_ttft_p50_ms"],
                               "short_prompt_no_cache": short["engine_ttft_p50_ms"]},
        "speedup_client": p["speedup_client_ttft_p50"], "speedup_engine": p["speedup_engine_ttft_p50"],
        # per request, the client's TTFT less the engine's: what no cache can remove
        "outside_engine_p50_ms": {"cache": cache["outside_engine_ttft_p50_ms"],
                                  "no_cache": none["outside_engine_ttft_p50_ms"],
                                  "short_prompt_no_cache": short["outside_engine_ttft_p50_ms"]},
        # the client's ratio were the engine's TTFT with the cache 0: no-cache TTFT / the time outside it
        "client_speedup_ceiling": none["ttft_p50_ms"] / cache["outside_engine_ttft_p50_ms"],
        "prepare_p50_ms_alone": {"cache": alone["cache"]["prepare_p50_ms"],
                                 "no_cache": alone["no_cache"]["prepare_p50_ms"]},
        "engine_ttft_p50_ms_alone": {"cache": alone["cache"]["engine_ttft_p50_ms"],
                                     "no_cache": alone["no_cache"]["engine_ttft_p50_ms"]},
        "prefill_parts_p50_ms_alone": {
            "cache": {name: profile.p50_of(parts_cache.get(name)) for name in
                      ("prefix_lookup", "prefix_rebuild", "prefill_forward", "prefix_store", "admit")},
            "no_cache": {name: profile.p50_of(parts_none.get(name))
                         for name in ("prefill_forward", "admit")}},
        "decode_forward_p50_ms_alone": profile.p50_of(parts_cache.get("decode_forward")),
    }


def where_mix(mix: dict[str, Any], cpu: dict[str, Any], alone: dict[str, Any]) -> dict[str, Any]:
    """The free streams' ratio in the cluster and alone, the decode step and the grammar's share of it,
    the mask's parts timed alone, and the CPU each process spent on the mix."""
    def median(runs: list[dict[str, Any]], pick: Callable[[dict[str, Any]], float | None]) -> float | None:
        return loadgen.percentile([v for v in map(pick, runs) if v is not None], 50)

    def per_step(parts: dict[str, Any], name: str) -> float | None:
        steps = parts.get("decode_step", {}).get("calls")
        return parts[name]["total_ms"] / steps if name in parts and steps else None

    runs = alone["runs"]
    return {
        "cluster_free_ratio": mix["free_ratio_b_over_a"],
        "cluster_free_ratio_summed": mix["free_ratio_b_over_a_summed"],
        "engine_alone_free_ratio": alone["free_ratio_b_over_a"],
        "decode_step_32_rows_p50_ms_alone": {
            name: median(rs, lambda r: profile.p50_of(r["parts"].get("decode_step_32_rows")))
            for name, rs in runs.items()},
        "grammar_masks_ms_per_step_alone": median(runs["B"], lambda r: per_step(r["parts"], "grammar_masks")),
        "grammar_advance_ms_per_step_alone": median(runs["B"],
                                                    lambda r: per_step(r["parts"], "grammar_advance")),
        "sample_ms_per_step_alone": {name: median(rs, lambda r: per_step(r["parts"], "sample"))
                                     for name, rs in runs.items()},
        "matcher_build_ms_per_request_alone": alone["prepare_constrained_ms"],
        "mask_timing_alone": alone["mask_timing"],
        "engine_tokens_per_s_p50_in_cluster": {name: mix["medians"][name]["free_engine_tokens_per_s_p50"]
                                               for name in ("A", "B")},
        "cpu_s_during_the_mix": cpu["cpu_s"],
        "others_cpu_s_during_the_mix": cpu["others_on_the_machine_cpu_s"],
        "mix_wall_s": cpu["wall_s"],
    }


def _ttft_parts(client: float, queue: float, engine: float) -> dict[str, float]:
    """A TTFT p50 and its parts' p50s: the gateway's queue, the engine's own, and the rest (sending,
    tokenizing on the agent, the first token's way back), by difference."""
    return {"client": client, "gateway_queue": queue, "engine": engine, "rest": client - queue - engine}


def where_headline(m: dict[str, Any], d: dict[str, Any], seq: dict[str, Any],
                   contention: dict[str, Any]) -> dict[str, Any]:
    """Tokens/s and TTFT through the cluster, the runner alone and the engine alone; TTFT's parts; the
    time per decode step; the headroom's queue; the CPU per 1,000 tokens of each process."""
    h, hn, cpu = m["headline"], m["headline_no_cache"], m["headline_cpu"]
    hs = m["headline_steady"]
    cache, none, runner = d["cache"]["median_round"], d["no_cache"]["median_round"], d["through_runner"]
    rates = {"cluster": h["tokens_per_s"], "cluster_no_cache_model": hn["tokens_per_s"],
             "runner_alone": runner["tokens_per_s"], "engine_alone": cache["tokens_per_s"],
             "engine_alone_no_cache": none["tokens_per_s"]}
    steps = d["tokens"]  # every stream makes this many tokens, one a decode step
    return {
        "tokens_per_s": rates,
        "speedup_over_sequential": {k: v / seq["tokens_per_s"] for k, v in rates.items()},
        # the same streams kept in flight, of varied lengths: each new one arrives while the others decode
        "steady": {**hs, "speedup_over_sequential": hs["tokens_per_s"] / seq["tokens_per_s"],
                   "ttft_ratio_loaded_over_idle": hs["ttft_p50_ms"] / h["idle_ttft_p50_ms"]},
        "all_streams_queue_max_ms": h["queue_max_ms"], "all_streams_ttft_p99_ms": h["ttft_p99_ms"],
        "start_spread_ms": h["start_spread_ms"],
        "ttft_p50_ms_under_load": {
            "cluster_client": h["ttft_p50_ms"], "cluster_engine": h["engine_ttft_p50_ms"],
            "cluster_no_cache_model_client": hn["ttft_p50_ms"],
            "cluster_no_cache_model_engine": hn["engine_ttft_p50_ms"], "runner_alone": runner["ttft_p50_ms"],
            "engine_alone": cache["engine_ttft_p50_ms"], "engine_alone_no_cache": none["engine_ttft_p50_ms"]},
        "ttft_p50_ms_idle": {
            "cluster_client": h["idle_ttft_p50_ms"], "cluster_engine": h["engine_idle_ttft_p50_ms"],
            "runner_alone": runner["idle_ttft_p50_ms"], "engine_alone": d["idle"]["engine_ttft_p50_ms"]},
        "ttft_ratio_loaded_over_idle": {
            "cluster_client": h["ttft_p50_ms"] / h["idle_ttft_p50_ms"],
            "cluster_no_cache_model_client": hn["ttft_p50_ms"] / hn["idle_ttft_p50_ms"],
            "runner_alone": runner["ttft_p50_ms"] / runner["idle_ttft_p50_ms"],
            "engine_alone": cache["engine_ttft_p50_ms"] / d["idle"]["engine_ttft_p50_ms"]},
        "round_wall_ms_per_decode_step": {"cluster": h["loaded_wall_s"] / steps * 1e3,
                                          "engine_alone": cache["wall_s"] / steps * 1e3},
        "decode_step_p50_ms_alone": {
            "32_rows": profile.p50_of(cache["parts"].get("decode_step_32_rows")),
            "32_rows_forward": profile.p50_of(cache["parts"].get("decode_forward_32_rows")),
            "1_row": profile.p50_of(d["idle"]["parts"].get("decode_step_1_rows"))},
        "prefill_per_round_alone": {
            name: {"forwards": r["parts"].get("prefill_forward", {}).get("calls"),
                   "total_ms": r["parts"].get("prefill_forward", {}).get("total_ms"),
                   "admit_total_ms": r["parts"].get("admit", {}).get("total_ms"),
                   "cached_input_tokens": r["cached_input_tokens"]}
            for name, r in (("cache", cache), ("no_cache", none))},
        # medians of the gateway's queue (created to started on the agent) and the engine's TTFT, and
        # what is left of the client's TTFT: sending, tokenizing on the agent, the first token's way back
        "ttft_parts_p50_ms_under_load": _ttft_parts(h["ttft_p50_ms"], h["queue_p50_ms"],
                                                    h["engine_ttft_p50_ms"]),
        "ttft_parts_p50_ms_idle": _ttft_parts(h["idle_ttft_p50_ms"], h["idle_queue_p50_ms"],
                                              h["engine_idle_ttft_p50_ms"]),
        "engine_alone_under_contention": contention,
        "sequential_generate_tokens_per_s": {name: run["tokens_per_s"] for name, run in seq["runs"].items()},
        "cpu_s_per_1000_tokens": {k: v / cpu["output_tokens"] * 1e3 for k, v in cpu["cpu_s"].items()},
        "cpu_s_per_1000_tokens_alone": {"engine": cache["cpu_s_per_1000_tokens"],
                                        "runner": runner["cpu_s_per_1000_tokens"]},
        "others_cpu_s_during_the_headline": cpu["others_on_the_machine_cpu_s"],
        "headline_wall_s": cpu["wall_s"],
    }


def goals_of(measured: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    prefix, mix = measured["prefix"], measured["mix"]
    speedup, ratio = prefix["speedup_client_ttft_p50"], mix["free_ratio_b_over_a"]
    return {
        "prefix_caching": {"goal": f"client TTFT p50 with the cache >= {GOAL_PREFIX_SPEEDUP}x faster than "
                                   "without", "value": speedup, "met": speedup >= GOAL_PREFIX_SPEEDUP},
        "constrained_mix": {"goal": "free streams' tokens/s (per-stream p50) with 16 constrained beside "
                                    f"them >= {GOAL_FREE_RATIO}x without (median of the repeats' B/A)",
                            "value": ratio, "met": ratio >= GOAL_FREE_RATIO},
        **llm.headline_goals(measured["headline"], baseline, measured["headline_steady"]),
    }


# The Markdown summary


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    return [line(header), line(["---"] + ["---:"] * (len(header) - 1)),
            *(line([c if isinstance(c, str) else _f(c) for c in row]) for row in rows)]


def _paragraph(*parts: str) -> list[str]:
    return ["".join(parts), ""]


def markdown(r: dict[str, Any]) -> str:
    """``llm_agents.md``: the command, the goals, and the figures of each scenario, from the report."""
    machine, goals = r["machine"], r["goals"].values()
    lines = [
        "# llm_agents: prefix caching, constrained mixes, and the headline, measured", "",
        "```", r["command"], "```", "",
        *_paragraph(
            f"Machine: {machine['nproc']} cores ({machine['cpu']}), load average ",
            f"{machine['loadavg_1m_at_start']:.1f} at the start, commit {machine['git_commit']} with ",
            f"{len(machine['git_modified'])} files modified; {r['wall_s']:.0f} s. Every figure is in ",
            "`llm_agents.json`; the profile with no cluster is `python -m bench.llm_engine_profile`."),
        "## Goals", "",
        *_table(["goal", "measured", "met"],
                [[g["goal"], f"{g['value']:.2f}", "yes" if g["met"] else "**no**"] for g in goals]), "",
        *_md_prefix(r), *_md_mix(r), *_md_headline(r),
    ]
    return "\n".join(lines)


def _md_prefix(r: dict[str, Any]) -> list[str]:
    p, w, chat_info = r["cluster"]["prefix"], r["where_the_time_goes"]["prefix_caching"], r["chat"]
    rows = (("warmfleet/tiny-llama (cache)", "cache"), (NO_CACHE_MODEL, "no_cache"),
            (f"{NO_CACHE_MODEL}, short prompt", "short_prompt_no_cache"))
    return [
        "## 1. Prefix caching", "",
        *_paragraph(
            f"System prompt {chat_info['system_prompt_tokens']} tokens ({chat_info['system_prompt_words']} ",
            f"words); chat prompts {chat_info['prompt_tokens_min']} to {chat_info['prompt_tokens_max']} ",
            f"tokens (context {chat_info['context_tokens']}); {p['cache']['requests']} requests per model, ",
            f"one at a time, {r['settings']['chat_tokens']} new tokens."),
        *_table(["model", "client TTFT p50 ms", "engine TTFT p50 ms", "client - engine p50 ms",
                 "cached tokens p50", "prompt tokens p50", "streams without a chunk"],
                [[name, p[key]["ttft_p50_ms"], p[key]["engine_ttft_p50_ms"],
                  p[key]["outside_engine_ttft_p50_ms"], p[key]["cached_input_tokens_p50"],
                  p[key]["input_tokens_p50"], len(p[key]["without_output_chunk"])]
                 for name, key in rows]), "",
        *_paragraph(
            f"Speed-up of TTFT p50: client {w['speedup_client']:.2f}x, engine {w['speedup_engine']:.2f}x. ",
            "Were the engine's TTFT with the cache 0, the client's would still be at most ",
            f"{w['client_speedup_ceiling']:.2f}x. With no cluster: engine TTFT ",
            f"{_f(w['engine_ttft_p50_ms_alone']['cache'], 2)} ms (cache) against ",
            f"{_f(w['engine_ttft_p50_ms_alone']['no_cache'], 2)} ms; preparing a request (chat template ",
            f"and tokenizing, before the engine) {_f(w['prepare_p50_ms_alone']['cache'], 2)} ms."),
    ]


def _md_mix(r: dict[str, Any]) -> list[str]:
    mix, w = r["cluster"]["mix"], r["where_the_time_goes"]["constrained_mix"]
    medians, masks, steps = mix["medians"], w["mask_timing_alone"], w["decode_step_32_rows_p50_ms_alone"]
    pairs = mix["pair_ratios"]["free_tokens_per_s_p50"]
    timed = "; ".join(
        f"{when.replace('_', ' ')}: `apply_masks` {_f(t['apply_masks_us']['p50'], 0)} / "
        f"{_f(t['apply_masks_us']['p90'], 0)}, of which llguidance's fill "
        f"{_f(t['llguidance_fill_us']['p50'], 0)} / {_f(t['llguidance_fill_us']['p90'], 0)}"
        for when, t in masks.items())
    engine, checked = w["engine_tokens_per_s_p50_in_cluster"], mix["constrained_outputs"]
    return [
        "## 2. Constrained requests mixed with free ones", "",
        *_table(["run (median of repeats)", "free tok/s per stream p50", "free tok/s summed",
                 "free TTFT p50 ms", "others tok/s per stream p50", "others tok/s summed"],
                [[f"{name}: 16 free + 16 {kind}", medians[name]["free_tokens_per_s_p50"],
                  medians[name]["free_tokens_per_s_summed"], medians[name]["free_ttft_p50_ms"],
                  medians[name]["other_tokens_per_s_p50"], medians[name]["other_tokens_per_s_summed"]]
                 for name, kind in (("A", "free"), ("B", f"`{REGEX}`"))]), "",
        *_paragraph(
            f"Free streams B/A (median of the {len(pairs)} repeats' ratios, each B against the A beside ",
            f"it): {w['cluster_free_ratio']:.3f} per stream (the repeats: ",
            ", ".join(f"{x:.2f}" for x in pairs), f"), {w['cluster_free_ratio_summed']:.3f} summed; the ",
            f"ratio of the medians above {mix['free_ratio_of_medians']:.3f}; the engine alone: ",
            f"{w['engine_alone_free_ratio']:.3f}. Other work on the machine took ",
            f"{w['others_cpu_s_during_the_mix']:.1f} of the ",
            f"{r['machine']['nproc'] * w['mix_wall_s']:.1f} CPU-seconds of the mix. The engine's own ",
            f"tokens/s of the free streams in the cluster (p50): {_f(engine['A'])} (A), ",
            f"{_f(engine['B'])} (B)."),
        *_paragraph(
            f"Decode step of 32 rows with no cluster: {_f(steps['A'], 2)} ms (A), {_f(steps['B'], 2)} ms ",
            f"(B), of which the grammar masks {_f(w['grammar_masks_ms_per_step_alone'], 3)} ms (waiting for ",
            "their fill, begun before the forward, and masking) and ",
            f"advancing the matchers {_f(w['grammar_advance_ms_per_step_alone'], 3)} ms a step; a matcher ",
            f"takes {_f(w['matcher_build_ms_per_request_alone'], 2)} ms to build. One step's masks for ",
            f"{masks['as_is']['constrained']} of {masks['as_is']['rows']} rows, timed alone (p50 / p90 ",
            f"us): {timed}. Constrained outputs checked: {checked['match_regex']} of {checked['checked']} ",
            "match the regex."),
    ]


def _md_headline(r: dict[str, Any]) -> list[str]:
    w, seq = r["where_the_time_goes"]["headline"], r["alone"]["sequential_generate"]
    rate, speedup = w["tokens_per_s"], w["speedup_over_sequential"]
    loaded, idle, steady = w["ttft_p50_ms_under_load"], w["ttft_p50_ms_idle"], w["steady"]
    rows = [
        *([f"sequential `generate`, torch {name.replace('_', ' ')}", value, value / seq["tokens_per_s"],
           None, None] for name, value in w["sequential_generate_tokens_per_s"].items()),
        [f"cluster, {MODEL}", rate["cluster"], speedup["cluster"], loaded["cluster_client"],
         idle["cluster_client"]],
        [f"cluster, {steady['streams']} streams kept in flight (steady load; TTFT without the first "
         f"{steady['streams']})", steady["tokens_per_s"], steady["speedup_over_sequential"],
         steady["ttft_p50_ms"], idle["cluster_client"]],
        ["cluster, steady load, engine's own TTFT", None, None, steady["engine_ttft_p50_ms"], None],
        ["cluster, same model, engine's own TTFT", None, None, loaded["cluster_engine"],
         idle["cluster_engine"]],
        [f"cluster, {NO_CACHE_MODEL}", rate["cluster_no_cache_model"], speedup["cluster_no_cache_model"],
         loaded["cluster_no_cache_model_client"], None],
        ["runner alone (`predict` on an event loop)", rate["runner_alone"], speedup["runner_alone"],
         loaded["runner_alone"], idle["runner_alone"]],
        ["engine alone, prefix cache on", rate["engine_alone"], speedup["engine_alone"],
         loaded["engine_alone"], idle["engine_alone"]],
        ["engine alone, prefix cache off", rate["engine_alone_no_cache"], speedup["engine_alone_no_cache"],
         loaded["engine_alone_no_cache"], None],
    ]
    return [
        "## 3. The headline (bench.llm's scenario)", "",
        *_paragraph(
            "\"Alone\" rows: the runner and its engine in the bench process, torch at ",
            f"{r['alone']['torch_threads']} intra-op thread(s) as the engine in the agent (the agent's CPUs ",
            "less one, `runners.llm.runner.engine_threads`). The goal's baseline is the faster sequential run ",
            f"({seq['chosen'].replace('_', ' ')})."),
        *_table(["what", "output tok/s", "x sequential generate", "TTFT p50 loaded ms", "TTFT p50 idle ms"],
                rows),
        "", *_md_headline_time(r),
    ]


def _md_headline_time(r: dict[str, Any]) -> list[str]:
    w = r["where_the_time_goes"]["headline"]
    step, alone_step = w["round_wall_ms_per_decode_step"], w["decode_step_p50_ms_alone"]
    steady, spread = w["steady"], w["start_spread_ms"]
    prefills = ", ".join(f"{name} {v['forwards']} forwards, {_f(v['total_ms'])} ms"
                         for name, v in w["prefill_per_round_alone"].items())
    split = "; ".join(f"{when}: " + ", ".join(f"{k} {_f(v)}" for k, v in w[key].items())
                      for when, key in (("under load", "ttft_parts_p50_ms_under_load"),
                                        ("idle", "ttft_parts_p50_ms_idle")))
    cpu = ", ".join(f"{k} {v:.3f}" for k, v in w["cpu_s_per_1000_tokens"].items())
    contention = [[key.split("_threads_")[0].replace("_", " "), key.split("_threads_")[1], v["tokens_per_s"],
                   v["decode_step_p50_ms"], v["engine_ttft_p50_ms"]]
                  for key, v in w["engine_alone_under_contention"].items() if isinstance(v, dict)]
    return [
        *_paragraph(
            f"Per decode step (a round's wall / tokens per stream): cluster {step['cluster']:.2f} ms, ",
            f"engine alone {step['engine_alone']:.2f} ms; the engine's decode step of 32 rows ",
            f"{_f(alone_step['32_rows'], 2)} ms p50 (the forward ",
            f"{_f(alone_step['32_rows_forward'], 2)} ms), ",
            f"of 1 row {_f(alone_step['1_row'], 2)} ms. Prefill of a round with no cluster: {prefills}."),
        *_paragraph(
            f"In the rounds (a burst: {r['settings']['streams']} streams sent at once) the last waited up ",
            f"to {_f(w['all_streams_queue_max_ms'], 0)} ms in the gateway's queue (TTFT p99 ",
            f"{_f(w['all_streams_ttft_p99_ms'], 0)} ms); the load generator sent the median round's ",
            f"requests over {_f(spread, 0)} ms. Under the steady load ({steady['requests']} requests of ",
            f"{r['settings']['tokens'] // 2} to {r['settings']['tokens'] * 3 // 2} tokens, ",
            f"{steady['streams']} in flight; TTFT over the {steady['ttft_requests']} after the first ",
            f"{steady['streams']}): TTFT p50/p90/p99 {_f(steady['ttft_p50_ms'])}/",
            f"{_f(steady['ttft_p90_ms'])}/{_f(steady['ttft_p99_ms'])} ms, the engine's own p50 ",
            f"{_f(steady['engine_ttft_p50_ms'])} ms, the gateway's queue p50 ",
            f"{_f(steady['queue_p50_ms'])} ms."),
        *_paragraph(
            f"TTFT p50 split (medians of each part, ms): {split} (gateway_queue: created at the gateway ",
            "to started on the agent; rest: the client's send, tokenizing on the agent, the first ",
            "token's way back)."),
        *_paragraph(
            "The engine alone under contention (prefix cache off; one other process spinning on a core, ",
            "as the cluster's other processes do beside the engine):"),
        *_table(["machine", "torch threads", "tok/s", "decode step of 32 rows p50 ms", "engine TTFT p50 ms"],
                contention), "",
        *_paragraph(
            "CPU seconds per 1,000 output tokens during the headline (warm-up, idle streams and rounds): ",
            f"{cpu}; with no cluster, the engine {w['cpu_s_per_1000_tokens_alone']['engine']:.3f} and the ",
            f"runner {w['cpu_s_per_1000_tokens_alone']['runner']:.3f}. Other work on the machine took ",
            f"{w['others_cpu_s_during_the_headline']:.1f} of the ",
            f"{r['machine']['nproc'] * w['headline_wall_s']:.1f} CPU-seconds of the headline."),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.markdown_from:  # the Markdown again, from a report already written
        (args.out / "llm_agents.md").write_text(markdown(json.loads(args.markdown_from.read_text())))
        return
    report = Report("llm_agents", argv)
    with private_home() as settings:
        measured, the = in_cluster(settings, args)
        no_cluster = alone(settings.models_path / "tiny-llama", args, the)
    goals = goals_of(measured, no_cluster["sequential_generate"])
    chat_info = {k: v for k, v in the.items() if k not in ("system", "users")}
    chat_info.update(system_prompt_start=the["system"][:200], user_examples=the["users"][1:4])
    written = report.write(
        args.out, settings={**vars(args), "out": str(args.out), "markdown_from": None, "model": MODEL,
                            "no_cache_model": NO_CACHE_MODEL, "regex": REGEX, "greedy": True,
                            "idle_runs": IDLE_RUNS},
        chat=chat_info, cluster=measured, alone=no_cluster, goals=goals,
        where_the_time_goes=where_the_time_goes(measured, no_cluster))
    (args.out / "llm_agents.md").write_text(markdown(written))
    print(json.dumps({"goals": goals, "where_the_time_goes": written["where_the_time_goes"]}, indent=2))


if __name__ == "__main__":
    main()
