"""Model FLOPs of one RL step, phase by phase, from the shapes; and the machine's matmul peak, measured, so a
benchmark can print each phase's GFLOP/s and its fraction of that peak.

Counted (2 FLOPs per multiply-add): the work the algorithm needs, the model-FLOPs convention. Each video
encoded once (the patch embedding, the vision blocks' projections and MLPs, the merger), each prompt prefilled
once, every sampled token decoded once, old/ref log-probs and the update with one copy of a prompt per group
and mini-batch, the update's backward twice its forward; attention as the (query, key) pairs a causal mask
keeps (QK^T and AV). A variant that computes more for the same step (the naive baseline re-encodes and
re-prefills, activation checkpointing recomputes the forward) has the same model FLOPs in more seconds: a
lower GFLOP/s. Left out: norms, activations, softmax, the vision tower's windowed attention (it grows with
the window, not with the video). tests/test_flops.py holds the projections and the vision tower equal
to torch's FlopCounterMode on a real forward.
"""

import statistics
import time

import torch

from minirl.memplan import Shape

PHASES = ("encode", "prefill", "decode", "old", "ref", "update")


def token_flops(s: Shape) -> int:
    """One token through every decoder layer's q/k/v/o projections and SwiGLU MLP."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return 2 * s.layers * (s.hidden * (2 * q + 2 * kv) + 3 * s.hidden * s.ffn)


def attention_flops(s: Shape, pairs: int) -> int:
    """QK^T and AV of `pairs` (query, key) pairs, every layer and head."""
    return 4 * s.layers * s.heads * s.head_dim * pairs


def logits_flops(s: Shape, rows: int) -> int:
    return 2 * s.hidden * s.vocab * rows


def vision_flops(s: Shape, video_tokens: int) -> int:
    """The vision tower over the merge**2 patches of each merged video token, and the merger."""
    d, f, merged = s.v_hidden, s.v_ffn, s.v_hidden * s.merge**2
    per_patch = s.patch_values() * d + s.v_depth * (4 * d * d + 3 * d * f)  # embedding; qkv + proj, SwiGLU
    return 2 * video_tokens * (s.merge**2 * per_patch + merged * (merged + s.v_out))


def forward_flops(s: Shape, prompt: int, responses: list[int]) -> int:
    """One forward of a prompt packed with its responses, as the trainer scores them: a response's last token
    is no input, every response token is scored, a response row sees the prompt and its own earlier rows."""
    inputs = prompt + sum(r - 1 for r in responses)
    pairs = prompt * (prompt + 1) // 2 + sum((r - 1) * prompt + r * (r - 1) // 2 for r in responses)
    return token_flops(s) * inputs + attention_flops(s, pairs) + logits_flops(s, sum(responses))


def step_flops(s: Shape, prompts: list[tuple[int, int, list[int]]], mini_batches: int = 1, ppo_epochs: int = 1,
               kl: bool = False, on_policy: bool = True) -> dict[str, int]:
    """Model FLOPs per phase of one RL step over `prompts`: (prompt tokens, video tokens, response lengths)."""
    out = dict.fromkeys(PHASES, 0)
    for prompt, video, responses in prompts:
        out["encode"] += vision_flops(s, video)
        out["prefill"] += token_flops(s) * prompt + attention_flops(s, prompt * (prompt + 1) // 2) + logits_flops(s, 1)
        fed = sum(r - 1 for r in responses)  # the sampler feeds back every token but the last
        out["decode"] += (token_flops(s) * fed + logits_flops(s, fed)
                          + attention_flops(s, sum((r - 1) * prompt + r * (r - 1) // 2 for r in responses)))
        forward = forward_flops(s, prompt, responses)
        out["old"] += 0 if on_policy else forward
        out["ref"] += forward if kl else 0
        n = len(responses)  # mini-batch m: samples [m n / M, (m + 1) n / M) of every prompt
        out["update"] += ppo_epochs * sum(3 * forward_flops(s, prompt, responses[m * n // mini_batches:
                                                                                  (m + 1) * n // mini_batches])
                                          for m in range(mini_batches))
    return out


def matmul_peak_gflops(threads: int, size: int = 1024, repeats: int = 7) -> float:
    """Dense fp32 matmul GFLOP/s on `threads` threads, the median of `repeats` timed products: the peak a
    phase's GFLOP/s is a fraction of."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    torch.set_num_threads(saved)
    return 2 * size**3 / statistics.median(seconds) / 1e9


def phase_table(flops: dict[str, int], seconds: dict[str, float], peak_gflops: float) -> list[dict]:
    """Per phase (and the whole step): GFLOP, seconds, GFLOP/s and the fraction of `peak_gflops`. `seconds`
    holds the trainer's phases; prefill and decode share its `rollout` seconds, reported together."""
    merged = dict(flops)
    merged["rollout"] = merged.pop("prefill") + merged.pop("decode")
    rows = []
    for phase in ("encode", "rollout", "old", "ref", "update", "step"):
        gflop = (sum(flops.values()) if phase == "step" else merged[phase]) / 1e9
        secs = seconds.get(phase, 0.0)
        rate = gflop / secs if secs > 0 else 0.0
        rows.append(dict(phase=phase, gflop=gflop, seconds=secs, gflops=rate, of_peak=rate / peak_gflops))
    return rows


def format_phase_table(rows: list[dict], peak_gflops: float) -> str:
    lines = [f"{'phase':<8} {'GFLOP':>8} {'s':>7} {'GFLOP/s':>8} {'of peak':>8}"
             f"   (measured matmul peak {peak_gflops:.1f} GFLOP/s)"]
    lines += [f"{r['phase']:<8} {r['gflop']:>8.2f} {r['seconds']:>7.2f} {r['gflops']:>8.2f} "
              f"{100 * r['of_peak']:>7.1f}%" for r in rows]
    return "\n".join(lines)
