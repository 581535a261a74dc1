"""The rollout sampler: chunked prefill from embeddings, then n samples per prompt on one shared KV cache.

MR-SP's rollout engine: a long-video prompt runs to hundreds of thousands of tokens and GRPO wants n samples
of it, so the costs that matter, its prefill and its KV cache, are paid once per prompt, never n times:

- **Prefill once, in chunks.** Each prompt (`inputs_embeds` with the cached video embeddings, and its 3-D
  M-RoPE positions) runs through the model `prefill_chunk` tokens at a time. Chunk c writes its keys/values
  into the prompt cache, then attends to all cached so far (causal within itself), so no activation spans the
  whole prompt (attention scores, where SDPA materialises them, are chunk x prompt, not prompt x prompt).
- **Shared-prefix decode.** The n samples of a prompt hold no copy of its cache. At each decode step, per
  layer, attention is split in two: the prompt part is one matmul of all n samples' queries (all query heads
  of a KV head stacked, GQA) against the prompt's single cache; the response part is a batched matmul of each
  sample against its own response cache. The two softmaxes are merged exactly through their log-sum-exps.

Design decisions and simplifications:
- Prompts of different lengths keep *separate* prompt caches (a Python list, one (Hkv, L_p, D) tensor per
  layer each) rather than one padded tensor: no memory or compute pads a short prompt to a 100k-token
  neighbour, and a prompt whose n samples have all finished frees its cache at once. The price, a loop over
  prompts in each layer's decode attention, is small: a rollout batch holds a handful of prompts.
- All samples start decoding together, so every active sample has the same number of response tokens: the
  response caches are one preallocated (A, Hkv, max_new - 1, D) tensor per layer with no mask (the last
  sampled token is never fed back, hence the -1). When samples finish, the active rows are compacted (the
  response caches are index-selected once), so finished samples stop costing compute.
- Log-probs are those of the sampled tokens under the *temperature-scaled full* distribution,
  `log_softmax(logits / temperature)`, before any top-k / top-p truncation (veRL's and TRL's convention for
  old-policy log-probs): the trainer recomputes exactly that. Greedy decoding reports `log_softmax(logits)`.
- Every sample draws from its own `torch.Generator`: sample j of prompt p is seeded `seeds[p] + j` (default
  `seeds[p] = SamplingParams.seed + p * n`, so every sample of a batch has its own seed), so its tokens depend
  only on its prompt, the parameters and its seed, never on the other prompts of the batch, on when they
  finish, or on how prompts are spread over ranks; and sample j of a prompt equals the naive `generate` run
  with a generator seeded `seeds[p] + j`. The price is one small multinomial call per active sample per step.
- Stop tokens are kept at the end of the response, like the naive `minirl.model.generate`.
- The bookkeeping (`DecodeState`: which row is which sample, positions, lengths, stop reasons) is plain CPU
  tensors and lists; the caches live on the model's device. Nothing here is CUDA-only.
- `sample(compile=True)` decodes with a second step, `StaticDecode` (end of this file): the same arithmetic
  on padded, never-compacted caches, so its shapes never change within a rollout and torch.compile captures it
  as one graph, whatever the prompt lengths (on CUDA, one CUDA-graph replay per step). The same samples; the
  eager step above stays the reference.
"""

import math
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from minirl.model import QwenVL, next_position


@dataclass
class SamplingParams:
    """How to sample. `greedy` ignores temperature, top-k, top-p and the seed."""

    n: int = 1  # samples per prompt (the GRPO group size)
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0  # keep the smallest set of most likely tokens whose mass reaches top_p
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    greedy: bool = False
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    seed: int = 0  # sample j of prompt p is seeded seed + p * n + j, unless `sample` gets `seeds`

    def __post_init__(self):
        if self.n < 1 or self.max_new_tokens < 1:
            raise ValueError(f"n={self.n} and max_new_tokens={self.max_new_tokens} must both be >= 1")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (or set greedy=True)")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] and top_k={self.top_k} >= 0")


@dataclass
class Sample:
    prompt_index: int
    tokens: list[int]
    logprobs: list[float]  # of each token under log_softmax(logits / temperature)
    stop_reason: str  # "stop": ended with a stop token; "length": reached max_new_tokens

    @property
    def length(self) -> int:
        return len(self.tokens)


@dataclass
class Rollout:
    samples: list[Sample]  # prompt-major: sample j of prompt i is samples[i * n + j]
    prompt_cache_bytes: int  # all prompt caches (allocated once per prompt, whatever n is)
    response_cache_bytes: int  # the response caches as first allocated, for all B * n samples


# ----------------------------------------------------------------------------- caches


@dataclass
class PromptCache:
    """One prompt's keys and values, per layer (Hkv, L, D): heads first, so decode matmuls read them without a copy."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.k[0].shape[1]


@dataclass
class ResponseCache:
    """Keys and values of the generated tokens, per layer (A, Hkv, T, D) for the A active samples."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    def keep(self, rows: torch.Tensor):
        """Compact to the still-active rows (one copy per compaction, not per step)."""
        self.k = [t.index_select(0, rows) for t in self.k]
        self.v = [t.index_select(0, rows) for t in self.v]


def empty_caches(model: QwenVL, length: int, rows: int | None = None, zeros: bool = False):
    """Uninitialised (or zero) (k, v) lists, one tensor per layer: (Hkv, length, D) for a prompt cache,
    (rows, Hkv, length, D) for the response caches."""
    cfg = model.config
    shape = (cfg.num_kv_heads, length, cfg.head_dim)
    if rows is not None:
        shape = (rows, *shape)
    make = partial(torch.zeros if zeros else torch.empty, shape, dtype=model.dtype, device=model.device)
    return [make() for _ in range(cfg.num_layers)], [make() for _ in range(cfg.num_layers)]


def nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# ----------------------------------------------------------------------------- attention


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None):
    """Softmax attention of q (..., M, D), already scaled by 1/sqrt(D), over k, v (..., S, D), plus an optional
    additive fp32 `bias` broadcast to the scores (-inf hides a key; the static decode's masks).

    Returns (out (..., M, D) in fp32, the scores' log-sum-exp (..., M)) so attention over two disjoint key
    sets merges exactly (`merge`). The softmax is fp32 whatever the dtype, unnormalised until after the value
    matmul, and in place: a decode step is memory-bound, so its cost is the passes over the (M, S) scores.
    """
    scores = (q @ k.transpose(-1, -2)).float()  # (..., M, S)
    if bias is not None:
        scores += bias
    peak = scores.amax(-1, keepdim=True)  # (..., M, 1)
    weights = scores.sub_(peak).exp_()  # exp(score - max), in place
    total = weights.sum(-1, keepdim=True)  # (..., M, 1)
    out = (weights.to(v.dtype) @ v).float() / total  # (..., M, D)
    return out, (peak + total.log())[..., 0]


def merge(out_a, lse_a, out_b, lse_b):
    """Attention over keys A ∪ B from the attentions over A and over B: weight w_a = e^lse_a / (e^lse_a +
    e^lse_b) = sigmoid(lse_a - lse_b)."""
    w_a = torch.sigmoid(lse_a - lse_b)[..., None]
    return out_b + w_a * (out_a - out_b)


def prefill_attention(cache: PromptCache, start: int, q, k, v, layer_idx: int):
    """`attn_fn` for one prefill chunk of one prompt: q, k, v (1, c, H, D) at prompt offsets
    start..start+c-1. Appends k, v to the cache, then attends to cache[:start + c], causally."""
    end = start + q.shape[1]
    cache.k[layer_idx][:, start:end] = k[0].transpose(0, 1)  # (Hkv, c, D)
    cache.v[layer_idx][:, start:end] = v[0].transpose(0, 1)  # (Hkv, c, D)
    keys, values = cache.k[layer_idx][None, :, :end], cache.v[layer_idx][None, :, :end]  # (1, Hkv, S, D)
    q = q.transpose(1, 2)  # (1, Hq, c, D)
    if start == 0:
        out = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=True)
    else:
        # query i sits at prompt offset start + i and sees keys 0..start + i
        mask = torch.ones(q.shape[2], end, dtype=torch.bool, device=q.device).tril(diagonal=start)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2)  # (1, c, Hq, D)


def decode_attention(prompt_caches: list[PromptCache | None], groups: list[tuple[int, int, int]],
                     response: ResponseCache, step: int, q, k, v, layer_idx: int):
    """`attn_fn` for one decode step: q (A, 1, Hq, D), k, v (A, 1, Hkv, D), one new token per row.

    Writes k, v at response position `step`, attends each row to its prompt's shared cache (rows
    lo:hi of prompt p, `groups`) and to its own response cache, and merges the two.
    """
    A, _, Hq, D = q.shape
    Hkv = k.shape[2]
    G = Hq // Hkv  # query heads per KV head: query head h reads KV head h // G
    response.k[layer_idx][:, :, step] = k[:, 0]  # (A, Hkv, D)
    response.v[layer_idx][:, :, step] = v[:, 0]
    dtype = q.dtype
    q = q.view(A, Hkv, G, D) * (1.0 / math.sqrt(D))  # (A, Hkv, G, D)
    out_r, lse_r = attend(q, response.k[layer_idx][:, :, :step + 1], response.v[layer_idx][:, :, :step + 1])
    # heads first: the queries of a prompt's rows lo:hi are then one (n_p * G, D) block per KV head
    q_heads = q.transpose(0, 1).contiguous()  # (Hkv, A, G, D)
    outs, lses = [], []
    for prompt, lo, hi in groups:
        cache = prompt_caches[prompt]
        qp = q_heads[:, lo:hi].reshape(Hkv, (hi - lo) * G, D)  # (Hkv, n_p * G, D), a view
        o, lse = attend(qp, cache.k[layer_idx], cache.v[layer_idx])  # (Hkv, n_p * G, D), (Hkv, n_p * G)
        outs.append(o)
        lses.append(lse)
    out_p = torch.cat(outs, dim=1).view(Hkv, A, G, D).transpose(0, 1)  # (A, Hkv, G, D)
    lse_p = torch.cat(lses, dim=1).view(Hkv, A, G).transpose(0, 1)  # (A, Hkv, G)
    return merge(out_p, lse_p, out_r, lse_r).to(dtype).reshape(A, 1, Hq, D)  # (A, 1, Hq, D)


# ----------------------------------------------------------------------------- prefill


@torch.no_grad()
def prefill(model: QwenVL, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, chunk: int = 4096,
            cache: PromptCache | None = None):
    """Run one prompt, inputs_embeds (1, L, C) and position_ids (3, 1, L), through the model `chunk` tokens at a time,
    into `cache` (default: a new one). Returns (its PromptCache, the final hidden state of its last token (C,))."""
    if chunk < 1:
        raise ValueError(f"prefill chunk={chunk} must be >= 1")
    L = inputs_embeds.shape[1]
    if L == 0:
        raise ValueError("cannot prefill an empty prompt")
    cache = PromptCache(*empty_caches(model, L)) if cache is None else cache
    embeds, positions = inputs_embeds.to(model.device, model.dtype), position_ids.to(model.device)
    for start in range(0, L, chunk):
        attn = partial(prefill_attention, cache, start)
        hidden = model(embeds[:, start:start + chunk], positions[:, :, start:start + chunk], attn_fn=attn)
    return cache, hidden[0, -1]


# ----------------------------------------------------------------------------- sampling


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k, then outside the top-p nucleus of what is left.

    logits (A, V). Top-k keeps ties with the k-th value. Top-p keeps, in order of probability, every
    token whose more-likely tokens hold less than top_p of the mass (so at least one token).
    """
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (A, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (A, V)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        drop = torch.zeros_like(mass_before, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator]):
    """Next tokens (A,) from fp32 logits (A, V), row r drawn with generators[r], and their log-probs
    (A,) (see the module docstring)."""
    if params.greedy:
        token = logits.argmax(-1)
        logp = logits.log_softmax(-1)
    else:
        scaled = logits / params.temperature
        logp = scaled.log_softmax(-1)
        probs = filter_logits(scaled, params.top_k, params.top_p).softmax(-1)  # (A, V)
        draws = [torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators, strict=True)]
        token = torch.cat(draws)  # (A,)
    return token, logp.gather(-1, token[:, None])[:, 0]


class DecodeState:
    """Bookkeeping of the decode loop: plain CPU tensors and lists, testable without a model.

    Active row r is sample `slots[r]`, of prompt `slots[r] // n`. Rows stay sorted by sample, so a prompt's
    rows are contiguous: `groups` lists (prompt, lo, hi) for every prompt with an active sample. The token of
    decode step s sits at position next_positions[prompt] + s on all three M-RoPE axes, as in transformers.
    """

    def __init__(self, next_positions: list[int], n: int, max_new_tokens: int, stop_token_ids=()):
        self.n, self.max_new_tokens = n, max_new_tokens
        self.next_positions = torch.tensor(next_positions, dtype=torch.long)  # (B,)
        self.stop_token_ids = torch.tensor(sorted(stop_token_ids), dtype=torch.long)
        self.slots = torch.arange(len(next_positions) * n)  # (A,)
        self.lengths = [0] * len(self.slots)
        self.stop_reasons: list[str | None] = [None] * len(self.slots)
        self._regroup()

    def _regroup(self):
        prompts, counts = torch.unique_consecutive(self.slots // self.n, return_counts=True)
        ends = counts.cumsum(0)
        self.groups = [(p, e - c, e) for p, c, e in zip(prompts.tolist(), counts.tolist(), ends.tolist(), strict=True)]

    @property
    def num_active(self) -> int:
        return len(self.slots)

    def positions(self, step: int) -> torch.Tensor:
        """Positions (3, A, 1) of the tokens sampled at `step`, fed to the model at this step."""
        pos = self.next_positions[self.slots // self.n] + step  # (A,)
        return pos.view(1, -1, 1).expand(3, -1, 1)  # (3, A, 1)

    def advance(self, tokens: torch.Tensor, step: int) -> torch.Tensor | None:
        """Every active row sampled `tokens` (A,) at `step`: finish the rows that hit a stop token or
        the length limit. Returns the indices of the rows kept, or None when none finished."""
        stopped = torch.isin(tokens.cpu(), self.stop_token_ids)  # (A,)
        done = stopped | (step + 1 >= self.max_new_tokens)
        if not done.any():
            return None
        for r in done.nonzero()[:, 0].tolist():
            slot = int(self.slots[r])
            self.lengths[slot] = step + 1
            self.stop_reasons[slot] = "stop" if stopped[r] else "length"
        keep = (~done).nonzero()[:, 0]
        self.slots = self.slots[keep]
        self._regroup()
        return keep


@torch.no_grad()
def sample(model: QwenVL, prompts: list[tuple[torch.Tensor, torch.Tensor]], params: SamplingParams,
           prefill_chunk: int = 4096, seeds: list[int] | None = None, compile: bool = False,
           static: bool | None = None) -> Rollout:
    """Decode `params.n` samples for each prompt (inputs_embeds (1, L, C), position_ids (3, 1, L)), as
    `minirl.model.prepare_inputs` returns them; prompt-major. `seeds`: see the module docstring. `compile`: decode with
    the static-shape step (`StaticDecode`) under torch.compile, the same samples, faster once the one-time compile is
    paid; `static=True` runs that step uncompiled (its tests). The default is the eager step above, the reference."""
    device, n = model.device, params.n
    static = compile if static is None else static
    if compile and not static:
        raise ValueError("compile=True compiles the static decode step: leave static unset or True")
    if seeds is None:
        seeds = [params.seed + p * n for p in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one seed per prompt")
    if not prompts:
        return Rollout([], 0, 0)
    generators = [torch.Generator(device).manual_seed(s + j) for s in seeds for j in range(n)]  # by sample
    state = DecodeState([next_position(pos) for _, pos in prompts], n, params.max_new_tokens, params.stop_token_ids)
    decoder = StaticDecode(model, [embeds.shape[1] for embeds, _ in prompts], state.next_positions, n,
                           params.max_new_tokens, compile) if static else None
    caches, last_hidden = [], []
    for p, (embeds, positions) in enumerate(prompts):
        cache, hidden = prefill(model, embeds, positions, prefill_chunk, decoder.prompt_cache(p) if static else None)
        caches.append(cache)
        last_hidden.append(hidden)
    if static:
        rollout = Rollout([], nbytes(decoder.prompt_k + decoder.prompt_v),
                          nbytes(decoder.response_k + decoder.response_v))
        fed = torch.zeros(state.num_active, dtype=torch.long, device=device)  # (B * n,) each row's last token
    else:
        response = ResponseCache(*empty_caches(model, params.max_new_tokens - 1, rows=state.num_active))
        rollout = Rollout([], sum(nbytes(c.k + c.v) for c in caches), nbytes(response.k + response.v))
    tokens_out = torch.zeros(state.num_active, params.max_new_tokens, dtype=torch.long, device=device)
    logprobs_out = torch.zeros(state.num_active, params.max_new_tokens, device=device)

    logits = model.logits(torch.stack(last_hidden)).repeat_interleave(n, dim=0)  # (B * n, V)
    for step in range(params.max_new_tokens):
        slots = state.slots.to(device)
        token, logprob = sample_tokens(logits, params, [generators[i] for i in state.slots.tolist()])  # (A,)
        tokens_out[slots, step], logprobs_out[slots, step] = token, logprob
        keep = state.advance(token, step)
        if state.num_active == 0:
            break
        if static:  # every row decodes; a finished row feeds its last token again and its logits are dropped
            fed[slots] = token
            logits = decoder(fed, step)[state.slots.to(device)]  # (A, V)
            continue
        if keep is not None:
            keep = keep.to(device)
            token = token[keep]
            response.keep(keep)
            active = {p for p, _, _ in state.groups}
            caches = [c if i in active else None for i, c in enumerate(caches)]  # free finished prompts
        attn = partial(decode_attention, caches, state.groups, response, step)
        x = model.embed_tokens(token)[:, None]  # (A, 1, C)
        hidden = model(x, state.positions(step).to(device), attn_fn=attn)  # (A, 1, C)
        logits = model.logits(hidden[:, 0])  # (A, V)

    tokens_out, logprobs_out = tokens_out.tolist(), logprobs_out.tolist()
    for slot, (length, reason) in enumerate(zip(state.lengths, state.stop_reasons, strict=True)):
        rollout.samples.append(Sample(slot // n, tokens_out[slot][:length], logprobs_out[slot][:length], reason))
    return rollout


def kv_waves(prompt_tokens: list[int], n: int, response: int, bytes_per_token: int, budget: float) -> list[list[int]]:
    """The rollout's prompts in consecutive waves whose KV cache fits `budget` bytes (0: one wave). A prompt's
    cache is its prompt tokens plus n response caches of `response` tokens, `bytes_per_token` each (the memory
    plan's `kv_cache` term, `minirl.memplan`). A prompt that alone exceeds the budget goes in a wave of its
    own: the budget bounds a batch, never drops a prompt."""
    waves, used = [], 0
    for i, tokens in enumerate(prompt_tokens):
        need = (tokens + n * response) * bytes_per_token
        if waves and (budget <= 0 or used + need <= budget):
            waves[-1].append(i)
            used += need
        else:
            waves.append([i])
            used = need
    return waves


# ----------------------------------------------------------------------------- static decode (compiled)

PAD_MULTIPLE = 256  # the padded prompt length is a multiple of this: on CUDA, nearby lengths share one graph


class StaticDecode:
    """The decode step with shapes that never change, so torch.compile captures it whole (`sample(compile=True)`).

    The eager step's shapes move (a loop over prompts, finished rows compacted away, caches sliced to `step`); here
    every tensor is allocated once per rollout and every step runs one graph, which torch.compile fuses and, with
    mode="reduce-overhead" on CUDA, replays as one CUDA graph: a small-batch step is otherwise hundreds of kernel
    launches that cost more than their arithmetic. The arithmetic is `decode_attention`'s, batched over the prompts:
    - The prompt caches are the rows of one (B, Hkv, L, D) tensor per layer, L the longest prompt rounded up to
      PAD_MULTIPLE, the pads hidden by a -inf key bias. `prefill` writes each prompt into its row (`prompt_cache`):
      still one cache per prompt, shared by its n samples, never copied.
    - The response caches, (B * n, Hkv, max_new - 1, D) per layer, are never compacted: a finished row keeps decoding,
      its outputs unused.
    - The step is a 0-d device tensor, not a Python int: k and v are written at slot `step` (index_copy_) and the
      later slots are masked, so every step is one graph.
    The price: a short prompt's pads and a finished row still cost compute. Pads and unwritten slots hold zeros, not
    uninitialised memory: a masked score must be finite - inf, never NaN.
    """

    def __init__(self, model: QwenVL, prompt_lengths: list[int], next_positions: torch.Tensor, n: int,
                 max_new_tokens: int, compile: bool = False):
        device, B = model.device, len(prompt_lengths)
        L = -(-max(prompt_lengths) // PAD_MULTIPLE) * PAD_MULTIPLE
        self.model, self.prompt_lengths = model, prompt_lengths
        self.prompt_k, self.prompt_v = empty_caches(model, L, rows=B, zeros=True)  # (B, Hkv, L, D) per layer
        self.response_k, self.response_v = empty_caches(model, max_new_tokens - 1, rows=B * n, zeros=True)
        is_pad = torch.arange(L, device=device) >= torch.tensor(prompt_lengths, device=device)[:, None]  # (B, L)
        self.prompt_bias = torch.zeros(B, 1, 1, L, device=device).masked_fill(is_pad[:, None, None], -math.inf)
        self.first_positions = next_positions.to(device).repeat_interleave(n)  # (B * n,): each row's step 0
        self.slots = torch.arange(max_new_tokens - 1, device=device)  # (T,): the response cache's slots
        self.step = torch.zeros((), dtype=torch.long, device=device)  # the current decode step
        self.cuda_graph = compile and device.type == "cuda"
        self.forward_fn = self.forward
        if compile:
            for t in self.prompt_k + self.prompt_v + self.response_k + self.response_v:
                torch._dynamo.mark_static_address(t)  # a CUDA graph updates them in place, never copies them in
            # Prompt lengths differ from rollout to rollout: compile one graph for any length L, not one per
            # length (past torch's recompile limit, 8, a fullgraph compile fails). Any other size that changes
            # (prompts per wave, n, max_new_tokens) becomes symbolic at its first change (dynamic=None).
            for t in self.prompt_k + self.prompt_v:
                torch._dynamo.mark_dynamic(t, 2)
            torch._dynamo.mark_dynamic(self.prompt_bias, 3)
            self.forward_fn = torch.compile(self.forward, mode="reduce-overhead" if self.cuda_graph else None,
                                            fullgraph=True, dynamic=None)

    def prompt_cache(self, p: int) -> PromptCache:
        """Prompt p's row of the padded caches, (Hkv, L_p, D) views per layer, for `prefill` to write into."""
        L = self.prompt_lengths[p]
        return PromptCache([k[p, :, :L] for k in self.prompt_k], [v[p, :, :L] for v in self.prompt_v])

    def __call__(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Logits (B * n, V), fp32, after feeding every row's token (B * n,) at decode step `step`."""
        self.step.fill_(step)  # on the device, no host sync
        if self.cuda_graph:  # the last step's logits are consumed: this replay may overwrite them
            torch.compiler.cudagraph_mark_step_begin()
        return self.forward_fn(tokens, self.step)

    def forward(self, tokens: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """The compiled region: token ids (A,) -> embeddings -> the layers with `attention` -> fp32 logits (A, V)."""
        positions = (self.first_positions + step).view(1, -1, 1).expand(3, -1, 1)  # (3, A, 1), DecodeState's
        response_bias = torch.where(self.slots <= step, 0.0, -math.inf)  # (T,): the slots written so far
        x = self.model.embed_tokens(tokens)[:, None]  # (A, 1, C)
        hidden = self.model(x, positions, attn_fn=partial(self.attention, step, response_bias))  # (A, 1, C)
        return self.model.logits(hidden[:, 0])

    def attention(self, step: torch.Tensor, response_bias: torch.Tensor, q, k, v, layer_idx: int):
        """`attn_fn` of the static step: q (A, 1, Hq, D), k, v (A, 1, Hkv, D), one new token for each of the
        A = B * n rows; row r is sample r % n of prompt r // n."""
        A, _, Hq, D = q.shape
        B, Hkv = self.prompt_k[layer_idx].shape[:2]
        G, n = Hq // Hkv, A // B
        self.response_k[layer_idx].index_copy_(2, step.view(1), k.transpose(1, 2))  # (A, Hkv, 1, D) at `step`
        self.response_v[layer_idx].index_copy_(2, step.view(1), v.transpose(1, 2))
        q = q.view(A, Hkv, G, D) * (1.0 / math.sqrt(D))  # (A, Hkv, G, D)
        out_r, lse_r = attend(q, self.response_k[layer_idx], self.response_v[layer_idx], response_bias)
        # a prompt's n samples: one (n * G, D) block of queries per KV head against the prompt's one cache
        q_prompt = q.view(B, n, Hkv, G, D).transpose(1, 2).reshape(B, Hkv, n * G, D)  # (B, Hkv, n * G, D)
        out_p, lse_p = attend(q_prompt, self.prompt_k[layer_idx], self.prompt_v[layer_idx], self.prompt_bias)
        out_p = out_p.view(B, Hkv, n, G, D).transpose(1, 2).reshape(A, Hkv, G, D)  # (A, Hkv, G, D)
        lse_p = lse_p.view(B, Hkv, n, G).transpose(1, 2).reshape(A, Hkv, G)  # (A, Hkv, G)
        return merge(out_p, lse_p, out_r, lse_r).to(v.dtype).reshape(A, 1, Hq, D)  # (A, 1, Hq, D)
