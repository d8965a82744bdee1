"""The llm logits processors on hand-made logits, and streaming text: whole characters, stop sequences."""

from __future__ import annotations

import pytest
import torch

from runners.llm.detokenize import IncrementalDetokenizer, StopMatcher
from runners.llm.sampling import (
    BatchSampler,
    SamplingParams,
    apply_frequency_presence,
    apply_repetition_penalty,
    apply_top_k_top_p,
    draw,
    mask_eos,
    nucleus_floor,
)

INF = float("inf")


def _sampler(*params: SamplingParams, eos: tuple[int, ...] = ()) -> BatchSampler:
    gens = [torch.Generator().manual_seed(p.seed) for p in params]
    return BatchSampler(params, gens, eos, "cpu")


# The processors, each exactly as defined


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens_only():
    logits = torch.tensor([[2.0, -2.0, 1.0, -0.5], [3.0, -1.0, 0.0, 4.0]])
    seen = torch.tensor([[True, True, False, False], [False, True, True, True]])
    apply_repetition_penalty(logits, seen, torch.tensor([[2.0], [1.5]]))
    assert torch.equal(logits, torch.tensor([[1.0, -4.0, 1.0, -0.5], [3.0, -1.5, 0.0, 4.0 / 1.5]]))


def test_frequency_and_presence_penalties_subtract_per_occurrence_and_once_per_token():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0], [2.0, 0.0, 0.0, 1.0]])
    apply_frequency_presence(logits, counts, torch.tensor([[0.5], [-1.0]]), torch.tensor([[1.0], [0.25]]))
    # row 0: 1 - (0.5 * count + 1.0 * present); row 1: 0 - (-1.0 * count + 0.25 * present)
    assert torch.allclose(logits, torch.tensor([[1.0, -0.5, -1.5, 1.0], [1.75, 0.0, 0.0, 0.75]]))


def test_mask_eos_masks_every_eos_id_in_the_chosen_rows_only():
    logits = torch.zeros(2, 5)
    mask_eos(logits, torch.tensor([1, 4]), torch.tensor([True, False]))
    assert logits[0].tolist() == [0.0, -INF, 0.0, 0.0, -INF]
    assert logits[1].tolist() == [0.0] * 5


def test_top_k_keeps_the_k_largest_and_zero_keeps_all():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0]])
    out = apply_top_k_top_p(logits, torch.tensor([2, 0]), torch.tensor([[1.0], [1.0]]))
    assert out[0].tolist() == [-INF, 4.0, 3.0, -INF]
    assert out[1].tolist() == [1.0, 4.0, 3.0, 2.0]


def test_top_p_keeps_the_smallest_nucleus_reaching_p_and_always_the_top_token():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3)
    logits = probs.log()
    out = apply_top_k_top_p(logits, torch.tensor([0, 0, 0]), torch.tensor([[0.79], [0.81], [0.1]]))
    kept = (out > -INF).tolist()
    assert kept[0] == [True, True, False, False]  # 0.5 + 0.3 reaches 0.79
    assert kept[1] == [True, True, True, False]  # 0.81 needs the third
    assert kept[2] == [True, False, False, False]  # the top token stays even above p


def test_top_p_applies_to_what_top_k_left():
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    # top_k=2 leaves 0.4 and 0.3, renormalised to 4/7 and 3/7; p=0.5 then keeps only the first
    out = apply_top_k_top_p(logits, torch.tensor([2]), torch.tensor([[0.5]]))
    assert (out > -INF).tolist() == [[True, False, False, False]]


def test_a_cut_by_value_keeps_the_tokens_tied_with_the_last_one_kept():
    probs = torch.tensor([[0.4, 0.2, 0.2, 0.2]])
    assert nucleus_floor(probs, torch.tensor([2]), torch.tensor([[1.0]])).item() == pytest.approx(0.2)
    assert nucleus_floor(probs, torch.tensor([0]), torch.tensor([[0.3]])).item() == pytest.approx(0.4)


def test_a_draw_follows_the_probabilities_and_never_takes_a_token_that_cannot_be_drawn():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(2, 1)
    probs[1] *= 7.0  # unnormalised rows draw as their normalised selves
    gens = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    draws = torch.stack([draw(probs, gens) for _ in range(6000)])
    for row in range(2):
        counts = torch.bincount(draws[:, row], minlength=6).float() / 6000
        assert counts[[0, 2, 5]].sum() == 0
        assert torch.allclose(counts[[1, 3, 4]], torch.tensor([0.5, 0.3, 0.2]), atol=0.025)


def test_a_draw_at_the_very_top_of_the_unit_interval_still_takes_a_drawable_token(monkeypatch):
    probs = torch.tensor([[0.25, 0.75, 0.0]])
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(1.0))  # past every cumulative sum
    assert draw(probs, [torch.Generator()]).tolist() == [1]


def test_the_processors_run_in_the_documented_order_penalties_then_min_tokens():
    # token 0 leads; the repetition penalty (seen) halves it, the presence penalty takes 1 more:
    # 4 -> 2 -> 1 < 1.5 (token 1). min_new_tokens then masks the EOS (token 2), which would lead.
    params = SamplingParams(temperature=0, repetition_penalty=2.0, presence_penalty=1.0, min_new_tokens=3)
    sampler = _sampler(params, eos=(2,))
    logits = torch.tensor([[4.0, 1.5, 9.0, 0.0]])
    seen = torch.tensor([[True, False, False, False]])
    counts = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    processed = sampler.process(logits.clone(), seen, counts, torch.tensor([1]))
    assert processed.tolist() == [[1.0, 1.5, -INF, 0.0]]
    assert sampler.choose(processed).tolist() == [1]
    # once min_new_tokens is reached, EOS is allowed again
    assert sampler.choose(sampler.process(logits.clone(), seen, counts, torch.tensor([3]))).tolist() == [2]


# Sampling: per-row parameters and generators


def test_greedy_rows_take_the_argmax_and_draw_nothing_from_their_generator():
    sampler = _sampler(SamplingParams(temperature=0, seed=7))
    before = sampler.generators[0].get_state()
    assert sampler.choose(torch.tensor([[0.1, 0.3, 0.2]])).tolist() == [1]
    assert torch.equal(sampler.generators[0].get_state(), before)


def test_top_k_1_samples_the_argmax_whatever_the_seed():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    for seed in range(20):
        sampler = _sampler(SamplingParams(temperature=1.5, top_k=1, top_p=1.0, seed=seed))
        assert sampler.choose(logits.clone()).tolist() == [int(logits.argmax())]


def test_a_seeded_row_draws_the_same_tokens_alone_and_beside_other_rows():
    logits = torch.zeros(1, 1000)  # uniform: every draw depends on the generator alone
    seeded = SamplingParams(temperature=1.0, top_p=1.0, seed=1234)
    alone = _sampler(seeded)
    together = _sampler(SamplingParams(temperature=1.0, top_p=1.0, seed=99), SamplingParams(temperature=0),
                        seeded)
    draws_alone = [alone.choose(logits.clone())[0].item() for _ in range(10)]
    draws_together = [together.choose(logits.repeat(3, 1))[2].item() for _ in range(10)]
    other_row = _sampler(SamplingParams(temperature=1.0, top_p=1.0, seed=99))
    draws_other = [other_row.choose(logits.clone())[0].item() for _ in range(10)]
    assert draws_alone == draws_together
    assert draws_alone != draws_other  # a different seed draws differently: the seed is what matters


def test_temperature_sharpens_and_flattens_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    cold = _sampler(SamplingParams(temperature=0.05, top_p=1.0, seed=0))
    hot = _sampler(SamplingParams(temperature=2.0, top_p=1.0, seed=0))
    cold_draws = {cold.choose(logits.clone()).item() for _ in range(200)}
    hot_draws = {hot.choose(logits.clone()).item() for _ in range(200)}
    assert cold_draws == {0}
    assert hot_draws == {0, 1, 2, 3}


@pytest.mark.parametrize("field, value", [("max_new_tokens", 0), ("temperature", -0.1), ("top_p", 0.0),
                                          ("top_p", 1.01), ("top_k", -2), ("repetition_penalty", 0.0),
                                          ("stop_sequences", ("",))])
def test_sampling_params_refuse_values_out_of_range_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_an_unset_seed_is_random_and_recorded():
    assert SamplingParams().seed != SamplingParams().seed


# Streaming text


class _ByteTokenizer:
    """One token per UTF-8 byte (ids 0-255) plus special tokens 256+; decodes as a byte-level BPE does."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def test_the_detokenizer_emits_only_whole_characters_and_its_deltas_make_the_text():
    text = "café → 世界 🙂!"
    tok = _ByteTokenizer()
    detok = IncrementalDetokenizer(tok, tok.encode("prompt: "))
    deltas = [detok.push(i) for i in tok.encode(text)] + [detok.flush()]
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == text
    assert deltas.count("") >= 9  # the multi-byte characters were held back until whole


def test_the_detokenizer_skips_special_tokens_and_drops_an_unfinished_character_at_the_end():
    tok = _ByteTokenizer()
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(i) for i in [*tok.encode("ok"), 300, *tok.encode("é")[:1]]]
    assert deltas == ["o", "k", "", ""]
    assert detok.flush() == ""


def test_stop_matcher_cuts_before_the_stop_text_found_across_chunks():
    stop = StopMatcher(["END", "###"])
    out = [stop.push(t) for t in ["Hello E", "N", "D and more"]]
    assert out == ["Hello ", "", ""]
    assert stop.stopped and stop.flush() == ""


def test_stop_matcher_releases_held_text_that_turns_out_not_to_be_a_stop():
    stop = StopMatcher(["END"])
    assert stop.push("the EN") == "the "
    assert stop.push("TRY") == "ENTRY"
    assert stop.push("ok E") == "ok "
    assert not stop.stopped
    assert stop.flush() == "E"  # the end of the text: what was held back is output after all


def test_stop_matcher_picks_the_earliest_stop_and_passes_text_through_without_stops():
    stop = StopMatcher(["b", "a"])
    assert stop.push("xxab") == "xx"
    assert StopMatcher([]).push("anything") == "anything"


def test_the_byte_level_detokenizer_matches_decode_on_the_tiny_llama(tmp_path):
    """The O(1) path gives exactly what decoding the ids at once gives, delta by delta, for text with
    multi-byte characters split over tokens, special tokens in the middle, and invalid byte runs."""
    import random

    from transformers import AutoTokenizer

    from runners.llm.detokenize import ByteLevelDetokenizer, IncrementalDetokenizer, make_detokenizer
    from runners.tiny_models import make_tiny_llama

    tok = AutoTokenizer.from_pretrained(make_tiny_llama(tmp_path / "tiny"))
    assert isinstance(make_detokenizer(tok), ByteLevelDetokenizer)
    rng = random.Random(3)
    texts = ["café → 世界 🙂!", "plain words here", "日本語のテキスト"]
    cases = [tok.encode(t, add_special_tokens=False) for t in texts]
    cases.append([rng.randrange(len(tok)) for _ in range(300)])  # random ids: specials, broken bytes
    for ids in cases:
        fast, slow = make_detokenizer(tok), IncrementalDetokenizer(tok)
        fast_text = "".join(fast.push(i) for i in ids) + fast.flush()
        slow_text = "".join(slow.push(i) for i in ids) + slow.flush()
        assert fast_text == slow_text == tok.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
