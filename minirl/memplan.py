"""The memory plan: bytes per GPU of one RL step, term by term, before anything is allocated.

    python -m minirl.memplan [--model qwen2.5-vl-7b | path/to/config.json] [--gpus 8] [--sp 8]
        [--frames 64 256 1024 3600] [--tokens-per-frame 72] [--n 8] [--response 1024] ...
    python -m minirl.memplan --table      # the README table: 7B on 8 x 80 GB, naive / stage 1 / 1+2 / + shared

Why a formula: there is no GPU here, and "will 3,600 frames of 7B fit on 8 x 80 GB?" must be answered
before a run, by a reader who can check every term. Each term below is the bytes of tensors this code
base allocates (not of an ideal system), named after the code that allocates it:

- **FSDP shards** (`minirl.distributed.shard_model`): the decoder's fp32 master weights, fp32 gradients
  and AdamW's two fp32 moments, sharded over all `gpus`; the vision tower is not sharded (FSDP
  ignores it): an fp32 replica per GPU, with gradients and moments only when it is trained.
- **FSDP workspace**: during a forward/backward FSDP all-gathers one unit (a block, or the
  embedding / LM head) in the compute dtype and prefetches the next, and holds the unit's fp32
  gradient before its reduce-scatter: 2 units x compute bytes + 1 unit x 4 bytes.
- **Rollout weights** (`Trainer.rollout_model`): a full, unsharded copy in the compute dtype.
- **Reference weights** (`Trainer.ref_model`, when the KL coefficient is > 0): the decoder
  sharded with FSDP2 over all GPUs in the compute dtype, the vision tower replicated (FSDP ignores
  it); `sharded_ref=False` plans a full reference replica per GPU instead.
- **Weight sync** (`sync_weights`): one tensor gathered at a time, at most the embedding in fp32;
  `streamed_sync=False` plans the whole fp32 model gathered on every GPU at once, as
  `get_model_state_dict(full_state_dict=True)` gathers it.
- **Video inputs and vision activations** (`sp.encode_videos`): the patches this GPU encodes
  (fp32 `pixel_values_videos`, 3 * 2 * 14 * 14 values each) and one vision block's activations at
  a time for a run of at most `vision_chunk` patches (`QwenVL.encode_video`), in fp32 (the
  policy's replicated vision tower encodes; no grad, it is frozen by default). An SP group
  encodes its sp ranks' videos together, each rank 1/sp of each, so a GPU encodes one video's
  worth of patches per prompt it rolls out, with or without stage 1: stage 1 saves the n - 1
  re-encodings (time), not memory.
- **Embedding cache** (`Trainer.encode`): in the compute dtype, held for the whole step; under
  stage 2 every rank of an SP group trains on the group's union of sequences, so it caches the
  videos of all the group's prompts (sp x prompts per GPU).
- **Rollout KV cache** (`rollout.sample`): per prompt one prompt cache (k and v, every layer) and
  n response caches of `response` tokens; the naive rollout prefills n copies of the prompt.
- **Update activations** (`sp_token_logprobs` / `sp_packed_logprobs` under autograd): per token
  and layer, the tensors autograd keeps (counted from `minirl.model.Block`: two RMSNorms with their
  fp32 copies, q/k/v, the attention output and o_proj's input, the SwiGLU's four intermediates);
  with gradient checkpointing only each block's input, plus one block recomputed during its
  backward. Tokens per GPU per forward: the micro-batch's sequences, / sp with stage 2, and with the
  shared prefix one prompt per group plus k responses. `attention="math"` (CPU SDPA, or CUDA without
  flash-attn) adds the saved (heads / sp) x S x S fp32 softmax of every layer.
- **Logits**: response rows only, (compute + 4 + 4 + 4) bytes per vocabulary entry per row
  (logits, fp32 log-softmax, its gradient, the logits' gradient).

The peak is the persistent terms plus the largest phase (sync, encode, rollout, update): phases run
one after another and free their tensors. `step_added` is what a step allocates on top of what it
starts with (the largest phase, the update with the gradients it allocates), the figure
`python -m bench plan validate` measures on CPU, where `host_is_device` also counts the decoded
pixels the step holds (on a GPU they stay in host memory): until the encode, where a rank encodes
its own rows in place, and to the end of the step when the videos are encoded again (the naive
baseline, or a trained vision tower). Left out, and why: the CUDA context and NCCL buffers
(a fixed `reserve_gib` is subtracted from the card instead), allocator fragmentation, the text
tokens of the prompt beyond `text_tokens`, activations of the prefill chunks and of decoding
(prefill_chunk x one block, small next to the cache).
"""

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

GIB = 2**30


@dataclass(frozen=True)
class Shape:
    """The numbers of a Qwen2.5-VL config.json the plan needs."""

    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    v_hidden: int
    v_ffn: int
    v_depth: int
    v_out: int
    patch: int = 14
    temporal: int = 2
    merge: int = 2
    channels: int = 3

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def block_params(self) -> int:
        """One decoder block: q/k/v (with bias), o, SwiGLU, two norms."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return h * h + h + 2 * (h * kv + kv) + h * h + 3 * h * self.ffn + 2 * h

    def embed_params(self) -> int:
        return self.vocab * self.hidden

    def llm_params(self) -> int:
        return self.layers * self.block_params() + self.embed_params() * (1 if self.tied else 2) + self.hidden

    def patch_values(self) -> int:
        return self.channels * self.temporal * self.patch**2

    def vision_params(self) -> int:
        """Patch embedding, blocks (qkv + proj with bias, SwiGLU with bias, two norms), the merger MLP."""
        d, f, m = self.v_hidden, self.v_ffn, self.v_hidden * self.merge**2
        block = 3 * d * d + 3 * d + d * d + d + 2 * (d * f + f) + f * d + d + 2 * d
        return self.patch_values() * d + self.v_depth * block + d + m * m + m + m * self.v_out + self.v_out

    def params(self) -> int:
        return self.llm_params() + self.vision_params()

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def layer_activation_bytes(self, cb: int, sp: int) -> int:
        """Bytes autograd keeps per token for one `Block` (see the module docstring); equal to what
        `saved_tensors_hooks` count for one Block under SDPA (tests/test_memplan.py)."""
        h, q, kv, f = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.ffn
        # the input's fp32 copy (the input itself in fp32), the normalised input cast back, the scaled
        # output, the fp32 rsqrt
        norm = 4 * h + 2 * h * cb + 4
        # q k v after RoPE, the output (also o_proj's input, except under Ulysses: the all-to-all's
        # output is a new tensor), the fp32 log-sum-exp per head
        attention = (q + 2 * kv) * cb + q * cb + (q * cb if sp > 1 else 0) + 4 * self.heads
        return 2 * norm + attention + 4 * f * cb  # gate, silu(gate), up, their product


def from_config(config: dict) -> Shape:
    """A Shape from a Hugging Face Qwen2.5-VL config.json (either layout: text fields at the top
    level, as Qwen's own files, or under text_config)."""
    text = {**config, **config.get("text_config", {})}
    vision = config["vision_config"]
    return Shape(hidden=text["hidden_size"], ffn=text["intermediate_size"], layers=text["num_hidden_layers"],
                 heads=text["num_attention_heads"], kv_heads=text["num_key_value_heads"], vocab=text["vocab_size"],
                 tied=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
                 v_hidden=vision["hidden_size"], v_ffn=vision["intermediate_size"], v_depth=vision["depth"],
                 v_out=vision["out_hidden_size"], patch=vision.get("patch_size", 14),
                 temporal=vision.get("temporal_patch_size", 2), merge=vision.get("spatial_merge_size", 2),
                 channels=vision.get("in_chans", vision.get("in_channels", 3)))


# The public config.json values of Qwen/Qwen2.5-VL-7B-Instruct and Qwen/Qwen2.5-VL-3B-Instruct.
BUILTIN = {
    "qwen2.5-vl-7b": Shape(hidden=3584, ffn=18944, layers=28, heads=28, kv_heads=4, vocab=152064, tied=False,
                           v_hidden=1280, v_ffn=3420, v_depth=32, v_out=3584),
    "qwen2.5-vl-3b": Shape(hidden=2048, ffn=11008, layers=36, heads=16, kv_heads=2, vocab=151936, tied=True,
                           v_hidden=1280, v_ffn=3420, v_depth=32, v_out=2048),
}


def load_shape(name_or_path: str) -> Shape:
    if name_or_path.lower() in BUILTIN:
        return BUILTIN[name_or_path.lower()]
    path = Path(name_or_path)
    return from_config(json.loads((path / "config.json" if path.is_dir() else path).read_text()))


@dataclass(frozen=True)
class Setup:
    """One RL step's shape. Defaults: the paper's hour-long setting on one 8-GPU node."""

    gpus: int = 8
    sp: int = 8  # sequence-parallel degree (stage 2); dp = gpus / sp
    frames: int = 3600
    tokens_per_frame: float = 72.0  # LLM tokens per frame: 3,600 frames ~ 256k tokens (12 x 12 merged per 2 frames)
    text_tokens: int = 128  # question, options, template
    n: int = 8  # rollouts per prompt
    response: int = 1024  # response tokens (max_new_tokens)
    prompts_per_gpu: float = 1.0  # rollout prompts per GPU; 1 / sp: one video per SP group (the paper's layout)
    micro_batch: int = 1  # sequences (samples) per update forward
    grad_ckpt: bool = True
    parallel_encode: bool = True  # stage 1: frames / sp per GPU, embeddings cached, one prefill per prompt
    ulysses: bool = True  # stage 2: update sequences split over sp
    shared_prefix: bool = False  # a forward packs its micro_batch samples of one prompt with one prompt copy
    kl: bool = True  # a reference model
    train_vision: bool = False
    compute_bytes: int = 2  # bf16
    attention: str = "flash"  # "flash": no S x S; "math": SDPA/eager saves the softmax
    vision_chunk: int = 8192  # patches per vision-tower call without grad (minirl.model.VISION_CHUNK)
    cache_bytes: int = 0  # bytes per embedding-cache value (0: the compute dtype's, as Trainer.encode casts)
    sharded_ref: bool = True  # the reference decoder sharded over the GPUs (False: a full replica per GPU)
    streamed_sync: bool = True  # weight sync one tensor at a time (False: the whole fp32 model gathered at once)
    host_is_device: bool = False  # CPU runs: the decoded pixels of this rank's prompts, held by the step, count too
    gpu_gib: float = 80
    reserve_gib: float = 3  # CUDA context, NCCL buffers, fragmentation: not planned, subtracted

    def __post_init__(self):
        if self.gpus % self.sp:
            raise ValueError(f"gpus={self.gpus} must divide by sp={self.sp}")


def plan(shape: Shape, s: Setup) -> dict:
    """{"terms": {name: bytes}, "phases": {name: bytes on top of the persistent terms}, "peak": bytes,
    "fits": bool, "prompt_tokens": int} for one GPU."""
    cb, world = s.compute_bytes, s.gpus
    video = round(s.frames * s.tokens_per_frame)
    prompt = video + s.text_tokens
    train_sp = s.sp if s.ulysses else 1
    group = max(1.0, s.prompts_per_gpu * train_sp)  # prompts whose embeddings every rank of an SP group caches
    t = {}
    # persistent
    t["fsdp_params"] = shape.llm_params() * 4 // world
    t["fsdp_grads"] = shape.llm_params() * 4 // world
    t["fsdp_adam"] = 2 * shape.llm_params() * 4 // world
    t["vision_replica"] = shape.vision_params() * 4 * (4 if s.train_vision else 1)
    t["rollout_weights"] = shape.params() * cb
    ref = shape.llm_params() * cb // world + shape.vision_params() * cb if s.sharded_ref else shape.params() * cb
    t["reference_weights"] = ref if s.kl else 0
    # sync
    unit = max(shape.block_params(), shape.embed_params())
    t["sync_gather"] = shape.embed_params() * 4 if s.streamed_sync else shape.params() * 4
    # encode
    patches = round(s.prompts_per_gpu * video * shape.merge**2)  # patches this GPU encodes
    t["video_pixels"] = patches * shape.patch_values() * 4
    d, f = shape.v_hidden, shape.v_ffn
    t["vision_activations"] = min(patches, s.vision_chunk) * (6 * d + 3 * f) * 4  # one fp32 block of one run
    t["embedding_cache"] = round(group * video * shape.hidden * (s.cache_bytes or cb))
    # rollout
    kv = shape.kv_bytes_per_token(cb)
    copies = 1 if s.parallel_encode else s.n  # naive: each rollout prefills its own copy of the prompt
    # with fewer prompts than GPUs a GPU holds its prompt's cache and its share of the n samples
    t["kv_cache"] = round((math.ceil(s.prompts_per_gpu) * copies * prompt + s.prompts_per_gpu * s.n * s.response) * kv)
    # update
    if s.shared_prefix:
        seq, rows = prompt + s.micro_batch * s.response, 1
    else:
        seq, rows = prompt + s.response, s.micro_batch
    tokens = -(-seq // train_sp) * rows  # tokens per GPU in one forward
    layer = shape.layer_activation_bytes(cb, train_sp)
    if s.grad_ckpt:
        saved = shape.layers * shape.hidden * cb + layer  # every block's input + one block recomputed
    else:
        saved = shape.layers * layer
    t["update_activations"] = tokens * (saved + 2 * shape.ffn * cb)  # + the backward's widest gradient
    scores = rows * (shape.heads // train_sp) * seq * seq * 4 if s.attention == "math" else 0
    t["attention_scores"] = scores * (1 if s.grad_ckpt else shape.layers) + scores  # saved + the live one
    t["logits"] = -(-s.micro_batch * s.response // train_sp) * shape.vocab * (cb + 12)
    t["fsdp_workspace"] = unit * (2 * cb + 4)

    persistent = ("fsdp_params", "fsdp_grads", "fsdp_adam", "vision_replica", "rollout_weights", "reference_weights")
    phases = {
        "sync": t["sync_gather"],
        "encode": t["video_pixels"] + t["vision_activations"] + t["embedding_cache"],
        "rollout": t["embedding_cache"] + t["kv_cache"],
        "update": t["embedding_cache"] + t["update_activations"] + t["attention_scores"] + t["logits"]
        + t["fsdp_workspace"],
    }
    if s.host_is_device:  # the decoded pixels (fp32) of the videos this rank decoded, whole
        t["host_pixels"] = math.ceil(s.prompts_per_gpu) * video * shape.merge**2 * shape.patch_values() * 4
        # the share a rank encodes is its own decoded rows where it holds them (one prompt per rank: a view)
        phases["encode"] += max(t["host_pixels"], t["video_pixels"]) - t["video_pixels"]
        if not s.parallel_encode or s.train_vision:  # re-encoded later (naive, or with grad): kept to the end
            phases = {k: v + t["host_pixels"] * (k != "encode") for k, v in phases.items()}
    peak = sum(t[k] for k in persistent) + max(phases.values())
    # what a step allocates on top of what it starts with: gradients are freed after each optimizer step
    step_added = max(*phases.values(), phases["update"] + t["fsdp_grads"])
    return dict(terms=t, phases=phases, peak=peak, prompt_tokens=prompt, step_added=step_added,
                fits=peak <= (s.gpu_gib - s.reserve_gib) * GIB, bottleneck=max(phases, key=phases.get))


def saved_bytes(fn, skip=()) -> tuple:
    """(fn(), bytes of every distinct storage autograd keeps for backward while fn runs), counted through
    `saved_tensors_hooks`, except the storages of the tensors in `skip` (the parameters: they exist before and
    after the step). What `Shape.layer_activation_bytes` plans, measured (tests/test_memplan.py, `python -m bench
    sp` and `python -m bench shared`)."""
    import torch  # the plan itself is arithmetic; only this measurement needs torch

    skipped = {t.untyped_storage().data_ptr() for t in skip}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skipped:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, sum(saved.values())


VARIANTS = {  # the paper's Figure 2 variants as this code runs them, then k = n samples per forward
    "naive": dict(parallel_encode=False, ulysses=False, shared_prefix=False, micro_batch=1),
    "stage 1": dict(parallel_encode=True, ulysses=False, shared_prefix=False, micro_batch=1),
    "stages 1+2": dict(parallel_encode=True, ulysses=True, shared_prefix=False, micro_batch=1),
    "1+2, mb = n": dict(parallel_encode=True, ulysses=True, shared_prefix=False, micro_batch=None),
    "+ shared, mb = n": dict(parallel_encode=True, ulysses=True, shared_prefix=True, micro_batch=None),
    "1+2, 1 video/group": dict(parallel_encode=True, ulysses=True, shared_prefix=False, micro_batch=1,
                               prompts_per_gpu=None),  # the paper's layout (train_rl: one prompt per GPU)
}
FRAMES = (64, 128, 256, 512, 1024, 2048, 3600)


def largest_fitting(shape: Shape, setup: Setup, limit: int = 100_000) -> int:
    """The largest frame count (a multiple of 2) that fits; 0 if none."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 2) // 4 * 2
        if mid > hi:
            break
        if plan(shape, replace(setup, frames=mid))["fits"]:
            lo = mid
        else:
            hi = mid - 2
    return lo


def table(shape: Shape, base: Setup, frames=FRAMES) -> str:
    """Peak GiB per GPU for each variant at each frame count ('*' past the card) and the largest
    frame count that fits, in two memory layouts: "replica ref + full sync" (a reference replica per
    GPU, the whole fp32 model gathered by the weight sync, the vision tower run on all patches at
    once, an fp32 embedding cache) and "sharded ref + streamed sync" (this code's: the reference
    sharded, the weights synced one tensor at a time, the vision tower in chunks, a compute-dtype
    cache)."""
    replica = dict(sharded_ref=False, streamed_sync=False, vision_chunk=1 << 60, cache_bytes=4)
    layouts = {"replica ref + full sync": replica, "sharded ref + streamed sync": {}}
    width = max(map(len, [*layouts, *VARIANTS]))
    lines = []
    for label, layout in layouts.items():
        head = f"{label:<{width}}" + "".join(f"{f:>8}" for f in frames) + f"{'max frames':>12}"
        lines += [head, "-" * len(head)]
        for name, variant in VARIANTS.items():
            setup = replace(base, **{**variant, "micro_batch": variant["micro_batch"] or base.n,
                                     "prompts_per_gpu": variant.get("prompts_per_gpu", 1) or 1 / base.sp}, **layout)
            cells = []
            for f in frames:
                p = plan(shape, replace(setup, frames=f))
                cells.append(f"{p['peak'] / GIB:>7.0f}" + (" " if p["fits"] else "*"))
            lines.append(f"{name:<{width}}" + "".join(cells) + f"{largest_fitting(shape, setup):>12}")
        lines.append("")
    return "\n".join(lines) + f"(* = over {base.gpu_gib:g} - {base.reserve_gib:g} GiB)"


def breakdown(shape: Shape, setup: Setup) -> str:
    p = plan(shape, setup)
    rows = [f"{k:<20} {v / GIB:>8.2f} GiB" for k, v in p["terms"].items()]
    rows += [f"phase {k:<14} {v / GIB:>8.2f} GiB" for k, v in p["phases"].items()]
    rows.append(f"{'peak':<20} {p['peak'] / GIB:>8.2f} GiB  ({'fits' if p['fits'] else 'does not fit'}; "
                f"{p['prompt_tokens']} prompt tokens; largest phase: {p['bottleneck']})")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-vl-7b", help=f"{' | '.join(BUILTIN)} or a config.json / folder")
    parser.add_argument("--table", action="store_true", help="the variants x frames table (the README's)")
    parser.add_argument("--frames", type=int, nargs="+", default=None)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    for field, value in asdict(Setup()).items():
        if field == "frames":
            continue
        kind = (lambda x: x.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, default=value)
    args = parser.parse_args(argv)
    shape = load_shape(args.model)
    setup = Setup(**{k: getattr(args, k) for k in asdict(Setup()) if k != "frames"})
    print(f"{args.model}: {shape.params() / 1e9:.2f}B parameters ({shape.llm_params() / 1e9:.2f}B decoder, "
          f"{shape.vision_params() / 1e9:.2f}B vision); {setup.gpus} GPUs x {setup.gpu_gib:g} GiB, sp={setup.sp}")
    if args.table:
        print(table(shape, setup, tuple(args.frames or FRAMES)))
        return
    for frames in args.frames or [setup.frames]:
        s = replace(setup, frames=frames)
        if args.json:
            print(json.dumps(dict(frames=frames, **plan(shape, s))))
        else:
            print(f"\n{frames} frames\n{breakdown(shape, s)}")


if __name__ == "__main__":
    main()
