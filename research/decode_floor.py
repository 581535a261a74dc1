"""Study: how fast can a decode step of the bench rollout workload run on this CPU (fp32)?

    OMP_NUM_THREADS=2 python -m research.decode_floor [--threads 2] [--compile]

The workload of `python -m bench rollout --n 8`: 4 prompts of ~1.25k tokens (64 frames of 168 px), 8 samples
each, the bench model. Measured per decode step (median of 30, at steps 2-31):
- the sampler as it is (rollout.sample, 128 new tokens, prefill subtracted);
- the step's matmuls alone, batched as a fused step would issue them: the floor;
- a static layout in eager mode: the prompt caches padded into one tensor, one batched product for all
  prompts' attention, the response caches attended with a step mask, one softmax (no per-prompt loop, no
  log-sum-exp merge, no compaction);
- the same step under torch.compile (inductor, CPU), with its compile time;
- one SDPA per layer over [prompt | the n samples' responses] with a mask (no merge at all).
"""

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoProcessor

from minirl import synth
from minirl.data import load_jsonl, rl_example
from minirl.model import load_model, next_position, prepare_inputs
from minirl.tiny import build_tiny_model
from minirl.video import FrameSampling
from rollout import SamplingParams, prefill, sample


def median_ms(fn, repeats=30, skip=2):
    times = []
    for s in range(repeats):
        start = time.perf_counter()
        fn(s)
        times.append(time.perf_counter() - start)
    return statistics.median(times[skip:]) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    synth.generate(work / "data", train=0, test=4, frames=64, size=168, fps=8, per_video=1)
    model_dir = build_tiny_model(work / "model", synth.corpus(num_videos=32), size="bench", max_pixels=168**2)
    processor = AutoProcessor.from_pretrained(model_dir)
    items = [rl_example(ex, processor, FrameSampling(num_frames=64), max_prompt_tokens=1 << 20)
             for ex in load_jsonl(work / "data/test.jsonl")]
    model = load_model(model_dir).eval()
    torch.set_grad_enabled(False)
    prompts = [prepare_inputs(model, it["input_ids"], it["pixel_values_videos"], it["video_grid_thw"],
                              it["second_per_grid_ts"]) for it in items]
    cfg = model.config
    P, n, T = len(prompts), 8, 128
    Hq, Hkv, D, layers, h, f, V = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_layers, cfg.hidden_size,
                                   cfg.intermediate_size, cfg.vocab_size)
    G, A = Hq // Hkv, P * n

    sample(model, prompts, SamplingParams(n=n, max_new_tokens=4, seed=0))  # warm-up
    start = time.perf_counter()
    sample(model, prompts, SamplingParams(n=n, max_new_tokens=T, seed=0))
    full = time.perf_counter() - start
    start = time.perf_counter()
    sample(model, prompts, SamplingParams(n=n, max_new_tokens=1, seed=0))
    print(f"sampler: {(full - (time.perf_counter() - start)) / (T - 1) * 1e3:.1f} ms/step")

    caches = [prefill(model, e, p)[0] for e, p in prompts]
    L = max(c.length for c in caches)
    x, xf = torch.randn(A, h), torch.randn(A, f)
    w = dict(qkv=torch.randn(h + 2 * Hkv * D, h), o=torch.randn(h, h), gate=torch.randn(f, h), up=torch.randn(f, h),
             down=torch.randn(h, f), head=torch.randn(V, h))
    q, kp, sp = torch.randn(P, Hkv, n * G, D), torch.randn(P, Hkv, L, D), torch.randn(P, Hkv, n * G, L)

    def matmuls(_):
        for _ in range(layers):
            x @ w["qkv"].T, x @ w["o"].T, x @ w["gate"].T, x @ w["up"].T, xf @ w["down"].T
            q @ kp.transpose(-1, -2), sp @ kp
        x @ w["head"].T

    print(f"matmuls alone (the floor): {median_ms(matmuls):.1f} ms/step")

    Kp = [torch.zeros(P, Hkv, L, D) for _ in range(layers)]
    Vp = [torch.zeros(P, Hkv, L, D) for _ in range(layers)]
    pmask = torch.full((P, 1, 1, 1, L), float("-inf"))
    for i, c in enumerate(caches):
        for layer in range(layers):
            Kp[layer][i, :, :c.length], Vp[layer][i, :, :c.length] = c.k[layer], c.v[layer]
        pmask[i, ..., :c.length] = 0
    Kr = [torch.zeros(A, Hkv, T, D) for _ in range(layers)]
    Vr = [torch.zeros(A, Hkv, T, D) for _ in range(layers)]
    scale = 1 / math.sqrt(D)

    def static_step(token, positions, step, rmask):
        def attn(q, k, v, layer):
            Kr[layer].index_copy_(2, step, k.transpose(1, 2))
            Vr[layer].index_copy_(2, step, v.transpose(1, 2))
            qs = q.view(A, Hkv, G, D) * scale
            sr = qs @ Kr[layer].transpose(-1, -2) + rmask  # (A, Hkv, G, T)
            qp = qs.view(P, n, Hkv, G, D).transpose(1, 2).reshape(P, Hkv, n * G, D)
            sp = (qp @ Kp[layer].transpose(-1, -2)).view(P, Hkv, n, G, L) + pmask
            weights = torch.cat([sp.transpose(1, 2).reshape(A, Hkv, G, L), sr], -1).softmax(-1)
            wp = weights[..., :L].reshape(P, n, Hkv, G, L).transpose(1, 2).reshape(P, Hkv, n * G, L)
            out = (wp @ Vp[layer]).view(P, Hkv, n, G, D).transpose(1, 2).reshape(A, Hkv, G, D)
            return (out + weights[..., L:] @ Vr[layer]).reshape(A, 1, Hq, D)
        return model.logits(model(model.embed_tokens(token)[:, None], positions, attn_fn=attn)[:, 0])

    token = torch.randint(0, V, (A,))
    positions = torch.tensor([next_position(p) for _, p in prompts]).repeat_interleave(n).view(1, A, 1).expand(3, A, 1)

    def static_run(fn):
        def one(s):
            rmask = torch.where(torch.arange(T) <= s, 0.0, float("-inf")).view(1, 1, 1, T)
            fn(token, positions + s, torch.tensor([s]), rmask)
        return one

    print(f"static layout, eager: {median_ms(static_run(static_step)):.1f} ms/step")
    if args.compile:
        start = time.perf_counter()
        compiled = torch.compile(static_step, dynamic=False)
        compiled(token, positions, torch.tensor([0]), torch.zeros(1, 1, 1, T))
        print(f"compile: {time.perf_counter() - start:.0f} s")
        print(f"static layout, torch.compile: {median_ms(static_run(compiled)):.1f} ms/step")

    S = L + n * T
    Kall = [torch.cat([Kp[i], torch.zeros(P, Hkv, n * T, D)], 2) for i in range(layers)]
    Vall = [torch.cat([Vp[i], torch.zeros(P, Hkv, n * T, D)], 2) for i in range(layers)]
    valid = pmask.view(P, L) == 0
    own = torch.arange(n * T).view(1, -1) // T == torch.arange(n).repeat_interleave(G).view(-1, 1)  # (nG, nT)

    def sdpa_step(s):
        slots, mask = L + torch.arange(n) * T + s, torch.cat(
            [valid.view(P, 1, 1, L).expand(P, 1, n * G, L),
             (own & (torch.arange(n * T) % T <= s)).view(1, 1, n * G, n * T).expand(P, 1, n * G, n * T)], -1)

        def attn(q, k, v, layer):
            Kall[layer][:, :, slots] = k.view(P, n, Hkv, D).transpose(1, 2)
            Vall[layer][:, :, slots] = v.view(P, n, Hkv, D).transpose(1, 2)
            qp = q.view(P, n, Hkv, G, D).transpose(1, 2).reshape(P, Hkv, n * G, D)
            out = F.scaled_dot_product_attention(qp, Kall[layer], Vall[layer], attn_mask=mask)  # (P, Hkv, nG, D)
            return out.view(P, Hkv, n, G, D).transpose(1, 2).reshape(A, 1, Hq, D)
        model.logits(model(model.embed_tokens(token)[:, None], positions + s, attn_fn=attn)[:, 0])

    print(f"one SDPA per layer over [prompt | {n} x {T} response slots] ({S} keys): {median_ms(sdpa_step):.1f} ms/step")


if __name__ == "__main__":
    main()
