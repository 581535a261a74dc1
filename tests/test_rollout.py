"""The KV-cache sampler equals transformers' generate, our naive generate and a full recompute."""

import dataclasses

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from minirl.model import generate, load_model, next_position, prepare_inputs
from rollout import DecodeState, SamplingParams, filter_logits, prefill, sample
from tests.test_model import video_inputs

QUESTIONS = ["What colour came first?", "Which block moved to the right, and how far did it go in the end?",
             "Colour?"]



@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_model(tiny_dir).eval()


@pytest.fixture(scope="module")
def batches(tiny_dir, mp4_path):
    return [video_inputs(tiny_dir, mp4_path, question=q, suffix="") for q in QUESTIONS]


@pytest.fixture(scope="module")
def prompts(model, batches):
    with torch.no_grad():
        return [prepare_inputs(model, b["input_ids"][0], b["pixel_values_videos"], b["video_grid_thw"],
                               b["second_per_grid_ts"]) for b in batches]


def recompute_logprobs(model, prompt, tokens, temperature):
    """log_softmax(logits / T) of `tokens` from one forward of prompt + response, no cache."""
    embeds, positions = prompt
    L, T = embeds.shape[1], len(tokens)
    response = torch.tensor(tokens)
    x = torch.cat([embeds, model.embed_tokens(response)[None]], dim=1)  # (1, L + T, C)
    pos = torch.cat([positions, (next_position(positions) + torch.arange(T)).expand(3, 1, T)], dim=2)
    with torch.no_grad():
        logits = model.logits(model(x, pos))[0, L - 1:L - 1 + T]  # (T, V): predicts response[i]
    return (logits / temperature).log_softmax(-1), response


def test_greedy_equals_transformers(tiny_dir, model, batches, prompts):
    lengths = {p[0].shape[1] for p in prompts}
    assert len(lengths) == len(prompts) and min(lengths) > 40  # different lengths, real video tokens
    reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    out = sample(model, prompts, SamplingParams(n=2, max_new_tokens=10, greedy=True), prefill_chunk=16)
    assert len(out.samples) == 2 * len(prompts)
    for i, batch in enumerate(batches):  # transformers unbatched, one prompt at a time
        expected = reference.generate(**batch, do_sample=False, max_new_tokens=10, eos_token_id=None)
        expected = expected[0, batch["input_ids"].shape[1]:].tolist()
        for s in out.samples[2 * i:2 * i + 2]:
            assert s.prompt_index == i and s.tokens == expected and s.stop_reason == "length"
            logp, response = recompute_logprobs(model, prompts[i], s.tokens, 1.0)
            recomputed = logp.gather(-1, response[:, None])[:, 0]
            assert torch.allclose(torch.tensor(s.logprobs), recomputed, atol=1e-4)


def test_sampled_equals_naive_generate(model, prompts):
    """Sample j of prompt p is the naive full-recompute generate with a generator seeded seeds[p] + j."""
    seeds = [11, 23, 37]
    params = SamplingParams(n=2, max_new_tokens=8, temperature=0.7)
    out = sample(model, prompts, params, prefill_chunk=32, seeds=seeds)
    for i, s in enumerate(out.samples):
        p, j = divmod(i, 2)
        tokens, logprobs = generate(model, *prompts[p], max_new_tokens=8, temperature=0.7,
                                    generator=torch.Generator().manual_seed(seeds[p] + j))
        assert s.prompt_index == p and s.tokens == tokens
        assert s.logprobs == pytest.approx(logprobs, abs=1e-5)
    default = sample(model, prompts[:1], SamplingParams(n=1, max_new_tokens=8, temperature=0.7, seed=11))
    assert default.samples[0].tokens == out.samples[0].tokens  # default seeds: seed + p * n + j


def test_samples_do_not_depend_on_the_batch(model, prompts):
    """Same prompt, same seed: same sample alone, in a batch, with neighbours that stop early, or n=1."""
    params = SamplingParams(n=2, max_new_tokens=8, temperature=1.0)
    batch = sample(model, prompts, params, seeds=[5, 6, 7]).samples
    alone = sample(model, prompts[1:2], params, seeds=[6]).samples
    assert [s.tokens for s in alone] == [s.tokens for s in batch[2:4]]
    single = sample(model, prompts[1:2], SamplingParams(n=1, max_new_tokens=8), seeds=[7]).samples[0]
    assert single.tokens == batch[3].tokens  # sample 1 of seed 6 is sample 0 of seed 7
    stop = batch[0].tokens[1]  # prompt 0's first sample stops after two tokens
    with_stop = dataclasses.replace(params, stop_token_ids=(stop,))
    stopped = sample(model, prompts, with_stop, seeds=[5, 6, 7]).samples
    assert stopped[0].tokens == batch[0].tokens[:2] and stopped[0].stop_reason == "stop"
    for s, full in zip(stopped, batch, strict=True):
        cut = full.tokens.index(stop) + 1 if stop in full.tokens else len(full.tokens)
        assert s.tokens == full.tokens[:cut]


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (5, 0.9)])
def test_logprobs_equal_full_recompute(model, prompts, top_k, top_p):
    """Log-probs are of the temperature-scaled full distribution, even when top-k/top-p truncate it."""
    params = SamplingParams(n=3, max_new_tokens=9, temperature=1.3, top_k=top_k, top_p=top_p, seed=1)
    out = sample(model, prompts, params, prefill_chunk=20)
    for s in out.samples:
        logp, response = recompute_logprobs(model, prompts[s.prompt_index], s.tokens, 1.3)
        assert torch.allclose(torch.tensor(s.logprobs), logp.gather(-1, response[:, None])[:, 0], atol=1e-4)
        if top_k:
            ranks = (logp > logp.gather(-1, response[:, None])).sum(-1)  # tokens strictly more likely
            assert (ranks < top_k).all()
    assert len({tuple(s.tokens) for s in out.samples}) > 1


def test_one_kv_head_odd_sizes_equal_full_recompute(odd_dir, mp4_path):
    """1 KV head (all query heads share it), head_dim 24, tied embeddings."""
    model = load_model(odd_dir)
    prompts = []
    for q in QUESTIONS[:2]:
        b = video_inputs(odd_dir, mp4_path, question=q, suffix="")
        with torch.no_grad():
            prompts.append(prepare_inputs(model, b["input_ids"][0], b["pixel_values_videos"],
                                          b["video_grid_thw"], b["second_per_grid_ts"]))
    out = sample(model, prompts, SamplingParams(n=3, max_new_tokens=7, temperature=0.9), prefill_chunk=13)
    for s in out.samples:
        logp, response = recompute_logprobs(model, prompts[s.prompt_index], s.tokens, 0.9)
        assert torch.allclose(torch.tensor(s.logprobs), logp.gather(-1, response[:, None])[:, 0], atol=1e-4)


def test_prompt_cache_does_not_grow_with_n(model, prompts):
    cfg = model.config
    one, many = (sample(model, prompts, SamplingParams(n=n, max_new_tokens=4, seed=0)) for n in (1, 4))
    per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 4  # k and v, every layer, fp32
    prompt_tokens = sum(p[0].shape[1] for p in prompts)
    assert one.prompt_cache_bytes == many.prompt_cache_bytes == per_token * prompt_tokens
    assert many.response_cache_bytes == 4 * one.response_cache_bytes == per_token * 3 * len(prompts) * 4


def test_stop_token_one_prompt_finishes_first(model, prompts):
    free = sample(model, prompts, SamplingParams(n=1, max_new_tokens=12, greedy=True)).samples
    # a stop token prompt 0 produces at step 3 and at least one other prompt does not produce early
    first = [{t: s.tokens.index(t) for t in s.tokens} for s in free]
    stop = next(t for t in free[0].tokens[:4] if any(f.get(t, 99) > first[0][t] for f in first[1:]))
    stopped = sample(model, prompts, SamplingParams(n=1, max_new_tokens=12, greedy=True,
                                                    stop_token_ids=(stop,))).samples
    for s, f, idx in zip(stopped, free, first, strict=True):
        cut = idx.get(stop)
        if cut is None:
            assert s.tokens == f.tokens and s.stop_reason == "length" and s.length == 12
        else:
            assert s.tokens == f.tokens[:cut + 1] and s.stop_reason == "stop"
            assert s.logprobs == pytest.approx(f.logprobs[:cut + 1], abs=1e-5)
    assert stopped[0].length < max(s.length for s in stopped)


def test_max_new_tokens_one(model, prompts):
    out = sample(model, prompts[:2], SamplingParams(n=1, max_new_tokens=1, seed=3))
    assert [(s.prompt_index, s.length, s.stop_reason) for s in out.samples] == [(0, 1, "length"),
                                                                                (1, 1, "length")]
    assert out.response_cache_bytes == 0
    assert sample(model, [], SamplingParams()).samples == []


def test_chunked_prefill_equals_unchunked(model, prompts):
    embeds, positions = prompts[1]
    whole, h_whole = prefill(model, embeds, positions, chunk=10_000)
    with torch.no_grad():
        expected = model(embeds, positions)[0, -1]
    assert torch.allclose(h_whole, expected, atol=1e-5)
    for chunk in (7, 32):
        cache, hidden = prefill(model, embeds, positions, chunk=chunk)
        assert torch.allclose(hidden, h_whole, atol=1e-5)
        for a, b in zip(cache.k + cache.v, whole.k + whole.v, strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    assert whole.length == embeds.shape[1]


def test_seed_determinism_and_top_k_one_is_greedy(model, prompts):
    def run(**kw):
        return [s.tokens for s in sample(model, prompts, SamplingParams(n=2, max_new_tokens=6, **kw)).samples]

    assert run(seed=7) == run(seed=7)
    assert run(seed=7) != run(seed=8)
    assert run(seed=7, top_k=1) == run(greedy=True)


def test_filter_logits():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]).log()
    inf = float("-inf")

    def kept(**kw):
        return (filter_logits(logits, **kw) != inf).tolist()

    assert kept(top_k=2) == [[True, True, False, False], [False, False, True, True]]
    assert kept(top_p=0.7) == [[True, True, False, False], [False, False, True, True]]
    assert kept(top_p=0.85) == [[True, True, True, False], [False, True, True, True]]
    assert kept(top_p=0.1) == [[True, False, False, False], [False, False, False, True]]
    # top-p acts on what top-k left, renormalised: 0.8 / 0.95 of the mass is before the third token
    assert kept(top_p=0.83) == [[True, True, True, False], [False, True, True, True]]
    assert kept(top_k=3, top_p=0.83) == [[True, True, False, False], [False, False, True, True]]
    assert kept(top_k=0, top_p=1.0) == [[True] * 4] * 2
    assert torch.equal(filter_logits(logits, top_k=2)[0, :2], logits[0, :2])  # kept logits unchanged


def test_decode_state_bookkeeping():
    state = DecodeState(next_positions=[10, 50], n=3, max_new_tokens=4, stop_token_ids=(7,))
    assert state.groups == [(0, 0, 3), (1, 3, 6)]
    assert state.positions(0)[:, :, 0].tolist() == [[10, 10, 10, 50, 50, 50]] * 3
    assert state.advance(torch.tensor([1, 2, 3, 4, 5, 6]), step=0) is None
    keep = state.advance(torch.tensor([7, 2, 7, 7, 7, 7]), step=1)  # prompt 1 finishes entirely
    assert keep.tolist() == [1] and state.slots.tolist() == [1] and state.groups == [(0, 0, 1)]
    assert state.positions(2).tolist() == [[[12]]] * 3
    assert state.advance(torch.tensor([3]), step=2) is None
    assert state.advance(torch.tensor([3]), step=3).tolist() == [] and state.num_active == 0
    assert state.lengths == [2, 4, 2, 2, 2, 2]
    assert state.stop_reasons == ["stop", "length", "stop", "stop", "stop", "stop"]


def test_invalid_params():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    SamplingParams(temperature=0.0, greedy=True)
