"""The static-shape decode step (`rollout.StaticDecode`, `sample(compile=True)`) gives the eager sampler's samples.

Prompts of different lengths (pads in the shared prompt buffer), n > 1, stop tokens that end some samples early
(their rows keep decoding, unrecorded), greedy and seeded sampling: the tokens are identical, the log-probs equal
within 1e-4. Eagerly on CPU, once under torch.compile on CPU, and with CUDA graphs on a GPU.
"""

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from minirl.model import load_model, prepare_inputs
from rollout import PAD_MULTIPLE, SamplingParams, sample
from tests.test_model import video_inputs
from tests.test_rollout import QUESTIONS


def load_prompts(model, model_dir, mp4_path, questions=QUESTIONS):
    prompts = []
    for q in questions:
        b = video_inputs(model_dir, mp4_path, question=q, suffix="")
        with torch.no_grad():
            prompts.append(prepare_inputs(model, b["input_ids"][0], b["pixel_values_videos"], b["video_grid_thw"],
                                          b["second_per_grid_ts"]))
    return prompts


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_model(tiny_dir).eval()


@pytest.fixture(scope="module")
def prompts(model, tiny_dir, mp4_path):
    return load_prompts(model, tiny_dir, mp4_path)


def assert_same_samples(static, eager):
    assert len(static.samples) == len(eager.samples)
    for s, e in zip(static.samples, eager.samples, strict=True):
        assert (s.prompt_index, s.tokens, s.stop_reason) == (e.prompt_index, e.tokens, e.stop_reason)
        assert s.logprobs == pytest.approx(e.logprobs, abs=1e-4)


def with_early_stop(model, prompts, params):
    """`params` with a stop token that ends some samples before max_new_tokens and not others."""
    free = sample(model, prompts, params).samples
    for token in free[0].tokens[1:4]:
        cuts = [s.tokens.index(token) + 1 if token in s.tokens else s.length for s in free]
        if max(cuts) == params.max_new_tokens and min(cuts) < params.max_new_tokens - 1:
            return dataclasses.replace(params, stop_token_ids=(token,))
    raise AssertionError("no token of sample 0 stops some samples early and not others: pick other prompts")


@pytest.mark.parametrize("params", [
    SamplingParams(n=2, max_new_tokens=10, greedy=True),
    SamplingParams(n=3, max_new_tokens=10, temperature=1.0, seed=5),
    SamplingParams(n=2, max_new_tokens=8, temperature=0.8, top_k=20, top_p=0.9, seed=9),
], ids=["greedy", "sampled", "top-k-top-p"])
def test_static_step_equals_eager(model, prompts, params):
    lengths = {p[0].shape[1] for p in prompts}
    assert len(lengths) == len(prompts) and max(lengths) < PAD_MULTIPLE  # pads between every prompt's end and L
    params = with_early_stop(model, prompts, params)
    eager = sample(model, prompts, params)
    static = sample(model, prompts, params, static=True)
    assert_same_samples(static, eager)
    assert {s.stop_reason for s in static.samples} == {"stop", "length"}
    if not params.greedy:
        assert len({tuple(s.tokens) for s in static.samples}) > len(prompts)  # samples of a prompt differ


def test_static_step_one_kv_head_odd_sizes(odd_dir, mp4_path):
    """1 KV head (G = 3 query heads share it), head_dim 24, tied embeddings: the reshapes of queries into
    prompt blocks and back."""
    model = load_model(odd_dir).eval()
    prompts = load_prompts(model, odd_dir, mp4_path, QUESTIONS[:2])
    params = SamplingParams(n=3, max_new_tokens=7, temperature=0.9, seed=2)
    assert_same_samples(sample(model, prompts, params, prefill_chunk=13, static=True),
                        sample(model, prompts, params, prefill_chunk=13))


def test_static_prompt_cache_is_shared_not_copied(model, prompts):
    """One padded row per prompt, whatever n; the response caches hold all B * n rows."""
    cfg = model.config
    per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 4  # k and v, every layer, fp32
    one, many = (sample(model, prompts, SamplingParams(n=n, max_new_tokens=4, seed=0), static=True) for n in (1, 4))
    assert one.prompt_cache_bytes == many.prompt_cache_bytes == per_token * len(prompts) * PAD_MULTIPLE
    assert many.response_cache_bytes == 4 * one.response_cache_bytes == per_token * 3 * len(prompts) * 4


def test_static_max_new_tokens_one_and_compile_needs_static(model, prompts):
    params = SamplingParams(n=2, max_new_tokens=1, seed=3)
    assert_same_samples(sample(model, prompts, params, static=True), sample(model, prompts, params))
    with pytest.raises(ValueError, match="static"):
        sample(model, prompts, params, compile=True, static=False)


def test_compiled_step_one_graph_for_every_prompt_length(model, prompts):
    """torch.compile (inductor, fullgraph) of the static step on CPU gives the eager samples: the video prompts,
    then rollouts whose prompts pad to 9 other lengths, past torch's recompile limit (8). One graph serves them
    all (each rollout's new buffers included); more prompts per wave compile once more."""
    params = SamplingParams(n=2, max_new_tokens=3, temperature=1.0, seed=2)
    graphs = counters["stats"]["unique_graphs"]
    assert_same_samples(sample(model, prompts[:2], params, compile=True), sample(model, prompts[:2], params))
    gen = torch.Generator().manual_seed(0)

    def prompt(length):
        embeds = torch.randn(1, length, model.config.hidden_size, generator=gen) * 0.02
        return embeds, torch.arange(length).view(1, 1, length).expand(3, 1, length)

    for k in range(9):
        wave = [prompt(PAD_MULTIPLE * k + 90), prompt(PAD_MULTIPLE * k + 30)]
        assert_same_samples(sample(model, wave, params, compile=True), sample(model, wave, params))
    assert counters["stats"]["unique_graphs"] == graphs + 1
    wave = [prompt(300), prompt(280), prompt(20)]
    assert_same_samples(sample(model, wave, params, compile=True), sample(model, wave, params))
    assert counters["stats"]["unique_graphs"] == graphs + 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: CUDA graphs (mode='reduce-overhead')")
def test_compiled_step_equals_eager_on_cuda(tiny_dir, mp4_path):
    """fp32 with TF32 off: the CUDA-graph replays give the eager sampler's greedy and seeded tokens, also in a
    second rollout, whose new buffers make the CUDA graph re-record."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = load_model(tiny_dir, device="cuda").eval()
    prompts = load_prompts(model, tiny_dir, mp4_path)
    for params in (SamplingParams(n=2, max_new_tokens=12, greedy=True),
                   SamplingParams(n=3, max_new_tokens=12, temperature=1.0, seed=4)):
        params = with_early_stop(model, prompts, params)
        eager = sample(model, prompts, params)
        for _ in range(2):
            assert_same_samples(sample(model, prompts, params, compile=True), eager)
