"""Plumbing shared by train_sft.py and train_rl.py: sharding, weight sync, optimizer steps, batches,
data, logging. A library module: it imports nothing from the top-level scripts.

FSDP2 layout. Parameters are sharded over *all* ranks (a 1-D mesh of the whole world): the SP
ranks of a group hold different shards too, so memory per rank falls with dp * sp. Every
decoder block is its own FSDP unit, and so are `embed_tokens` and `lm_head`, because the
trainers call them outside the root forward (embedding a batch before sharding it along the
sequence; logits only at response rows). The vision tower is not sharded: it is frozen by
default, and when trained its replicated gradients are summed by `sync_replicated_grads`.

Gradient convention: every rank's loss is its exact share of one global loss (global token and
sequence counts, see minirl.loss), so the right gradient is the *sum* over ranks. FSDP's
reduce-scatter averages over ranks (a divide factor of 1 would need PREMUL_SUM, which gloo
lacks), so `backward` scales each loss by the world size first.

Non-finite steps: when the loss or the global gradient norm is NaN or inf on any rank, every
rank skips that optimizer step (`optimizer_step`), so no NaN ever reaches the weights or the
AdamW moments; `max_skipped_steps` such steps in a row stop the run (`NonFiniteError`).
"""

import contextlib
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from minirl.data import IGNORE_INDEX, Example, load_jsonl
from minirl.model import QwenVL, next_position, rope_index
from minirl.packing import pack
from minirl.video import FrameSampling, VideoError, probe


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """`model.dtype` as a torch dtype: 'auto' is bfloat16 on CUDA and float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name in ("float32", "bfloat16"):
        return getattr(torch, name)
    raise ValueError(f"model.dtype={name!r}: choose auto, float32 or bfloat16")


def shard_model(model: QwenVL, device, dtype: torch.dtype = torch.float32) -> QwenVL:
    """Apply FSDP2 over every rank (see the module docstring). The weights stay fp32 (master
    weights, AdamW state); forwards run in `dtype`, gradients are reduced in fp32."""
    world = dist.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    kw = dict(mesh=mesh)
    if dtype != torch.float32:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    ignored = set(model.visual.parameters()) if model.visual is not None else set()
    if model.config.tie_word_embeddings:
        fully_shard([model.embed_tokens, model.lm_head], **kw)  # one unit: they share the weight
    else:
        fully_shard(model.embed_tokens, **kw)
        fully_shard(model.lm_head, **kw)
    for block in model.layers:
        fully_shard(block, **kw)
    fully_shard(model, ignored_params=ignored, **kw)
    return model


def backward(loss: torch.Tensor):
    """Backward of this rank's share of the global loss, scaled to undo FSDP's averaging."""
    (loss * dist.get_world_size()).backward()


def sync_replicated_grads(model: QwenVL):
    """Average the gradients of the unsharded (replicated) vision tower over all ranks, like FSDP
    does for the sharded weights (both were scaled by the world size in `backward`)."""
    if model.visual is None or dist.get_world_size() == 1:
        return
    for p in model.visual.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def full_state(model) -> dict:
    """The full, unsharded state dict on every rank (for the rollout copy / reference model)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))


def sync_weights(copy: QwenVL, model) -> None:
    """Copy the current (sharded) weights of `model` into the plain `copy` the sampler decodes with.

    Strict: a key missing on either side or a shape that differs is an error naming it, never a
    weight silently left stale. The copy may be in a lower dtype (`copy_` casts).
    One tensor at a time: a sharded weight is all-gathered, cast into the copy and dropped before
    the next, so the sync adds at most one full fp32 tensor (the embedding) to the copy, never the
    whole fp32 model that `full_state` gathers on every rank (8.29B x 4 bytes = 31 GiB for 7B: the
    memory plan's `sync_gather`). Every rank gathers the same tensors in the same order.
    """
    source, target = model.state_dict(), copy.state_dict()
    problems = []
    if missing := [k for k in target if k not in source]:
        problems.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing))
    if unexpected := [k for k in source if k not in target]:
        problems.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected))
    problems += [f"size mismatch for {k}: the model has {tuple(v.shape)}, the copy {tuple(target[k].shape)}"
                 for k, v in source.items() if k in target and v.shape != target[k].shape]
    if problems:
        raise RuntimeError(f"cannot sync weights into the {type(copy).__name__} copy:\n\t" + "\n\t".join(problems))
    with torch.no_grad():
        for key, value in source.items():
            target[key].copy_(value.full_tensor() if isinstance(value, DTensor) else value)


def make_optimizer(model, lr: float, weight_decay: float, betas=(0.9, 0.999)):
    """AdamW; no weight decay on norms and biases (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=False)


def make_scheduler(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1):
    """Linear warmup, then cosine decay to min_lr_ratio * lr at total_steps."""

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a NaN/inf loss or gradient norm: the run has diverged."""


def optimizer_step(model, optimizer, max_norm: float, loss: float) -> tuple[float, bool]:
    """Clip and take the optimizer step for the gradients accumulated since the last one, unless
    `loss` (this rank's) or the global gradient norm is NaN/inf on any rank.

    The ranks agree through one all-reduce of a non-finite flag: a rank that stepped while another
    skipped would fork the replicas. Returns (gradient norm before clipping, whether the step was
    taken); the gradients are zeroed either way.
    """
    sync_replicated_grads(model)
    norm = clip_grad_norm(model, max_norm)
    stepped = all_reduce_sum(0.0 if math.isfinite(loss) and math.isfinite(norm) else 1.0) == 0
    if stepped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, stepped


def count_skipped(in_a_row: int, stepped: bool, limit: int) -> int:
    """Optimizer steps skipped in a row after this one; `limit` of them raise NonFiniteError (0: never)."""
    in_a_row = 0 if stepped else in_a_row + 1
    if limit and in_a_row >= limit:
        raise NonFiniteError(f"{in_a_row} optimizer steps in a row skipped: the loss or the gradient norm was "
                             f"NaN/inf every time (optim.max_skipped_steps={limit}). Lower the learning rate, "
                             "check the reward and the data, or resume from an earlier checkpoint")
    return in_a_row


def clip_grad_norm(model, max_norm: float) -> float:
    """Clip by the global gradient norm; returns the norm before clipping.

    The sharded (DTensor) gradients and the replicated vision-tower ones are normed separately
    (DTensor ops refuse a mix), then combined: sqrt(sharded^2 + replicated^2).
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    groups = [[g for g in grads if isinstance(g, DTensor)], [g for g in grads if not isinstance(g, DTensor)]]
    norms = []
    for group in groups:
        if group:
            norm = torch.nn.utils.get_total_norm(group)
            norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    total = torch.linalg.vector_norm(torch.stack(norms))
    for group in groups:
        torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return float(total)


def sequence_positions(model: QwenVL, item: dict, prompt_ids: torch.Tensor, response_len: int) -> torch.Tensor:
    """(3, 1, L) M-RoPE positions of prompt + response, exactly as the sampler assigns them.

    The prompt's 3-D positions come from its video grid; response token t sits at
    max(prompt positions) + 1 + t on all three axes (transformers' rope_deltas rule for
    generated tokens). Recomputing the response's positions from the full sequence would put them
    elsewhere whenever a video's time axis outruns its height/width, so the trainer never does.
    """
    prompt = rope_index(prompt_ids.cpu(), item["video_grid_thw"], item["second_per_grid_ts"], model.config)
    response = (next_position(prompt) + torch.arange(response_len)).expand(3, -1)  # (3, R)
    return torch.cat([prompt, response], dim=1)[:, None]


def build_micro_batch(model: QwenVL, prompts: list[torch.Tensor], responses: list[torch.Tensor],
                      video_embeds: list[torch.Tensor], items: list[dict]) -> dict:
    """A right-padded micro-batch of (prompt + response) sequences for sp_token_logprobs.

    Returns input_ids (B, L), video_embeds (N, C), video_mask (B, L), positions (3, B, L) and
    targets (B, L): at position i the token i + 1 when it is a response token, else IGNORE_INDEX.
    Sequence b carries *its own* video (video_embeds[b], keyed to its prompt), concatenated in
    batch order, which is the order the video slots are filled: frames can never land in another
    sample. Only the prompt's <|video_pad|> tokens are slots; the same id inside a sampled
    response is text, as it was for the sampler.
    """
    sequences = [torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]
    L = max(len(s) for s in sequences)
    pad_id = model.config.pad_token_id or 0
    input_ids = torch.full((len(sequences), L), pad_id, dtype=torch.long)
    video_mask = torch.zeros(len(sequences), L, dtype=torch.bool)
    targets = torch.full((len(sequences), L), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros(3, len(sequences), L, dtype=torch.long)
    for b, (p, r, item) in enumerate(zip(prompts, responses, items, strict=True)):
        input_ids[b, :len(p) + len(r)] = sequences[b]
        video_mask[b, :len(p)] = p == model.config.video_token_id
        targets[b, len(p) - 1:len(p) + len(r) - 1] = r  # position i predicts token i + 1
        positions[:, b, :len(p) + len(r)] = sequence_positions(model, item, p, len(r))[:, 0]
    return dict(input_ids=input_ids, video_embeds=torch.cat(video_embeds), video_mask=video_mask,
                positions=positions, targets=targets)


def build_packed_batch(model: QwenVL, items: list[dict], prompts: list[torch.Tensor],
                       responses: list[list[torch.Tensor]], video_embeds: list[torch.Tensor]) -> dict:
    """`build_micro_batch` with each prompt's samples packed into one row with it (one group per
    prompt, `minirl.packing`), for sp_packed_logprobs.

    Returns packed (a `Packed`), video_embeds (N, C) (each group's own video, once, in group
    order) and targets (B, R): the B responses in order, right-padded with IGNORE_INDEX, laid out
    like the log-probs that sp_packed_logprobs returns. Prompt positions are the sampler's
    (`sequence_positions`); response positions follow its rule inside `pack`.
    """
    packed = pack([(p, sequence_positions(model, item, p, 0)[:, 0], rs)
                   for item, p, rs in zip(items, prompts, responses, strict=True)], model.config.video_token_id)
    slots = packed.response_slots()  # (B, R)
    targets = torch.full(slots.shape, IGNORE_INDEX, dtype=torch.long).masked_scatter(slots, packed.targets)
    return dict(packed=packed, video_embeds=torch.cat(video_embeds), targets=targets)


def scatter_like(x: torch.Tensor, mask: torch.Tensor, rows: list[torch.Tensor]) -> torch.Tensor:
    """Zeros like `x` (B, L) holding the concatenated `rows` where `mask` is set, in order: per-sequence
    values (old/ref log-probs) laid out like the log-probs of a micro-batch."""
    out = torch.zeros_like(x)
    out[mask.to(x.device)] = torch.cat(rows).to(x.device, x.dtype)
    return out


def split_sft_item(item: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, target ids) of an SFT example: the target is where labels are not ignored."""
    start = int((item["labels"] != IGNORE_INDEX).nonzero()[0])
    return item["input_ids"][:start], item["input_ids"][start:]


def all_gather_objects(obj, group=None) -> list:
    """Every rank's `obj` (of `group`, default the world), in rank order (`all_gather_object`)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return [obj]
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def share_prompts(mine: list[dict], group) -> list[dict]:
    """The prompts of every rank of the SP `group`, in rank order, each with `holder`: the group rank
    that decoded it. Only the small fields travel (token ids, video grid, answer); a video's pixel
    rows stay on its holder, and MR-SP stage 1 (`sp.encode_videos`) sends each rank only the rows
    it encodes. This rank's own prompts are returned as the very dicts of `mine` (holder set in
    place), so freeing their pixels in one frees them in both."""
    me = dist.get_rank(group)
    light = [{k: v for k, v in it.items() if k != "pixel_values_videos"} for it in mine]
    parts = all_gather_objects(light, group)
    for it in mine:
        it["holder"] = me
    return [it for r, part in enumerate(parts) for it in (mine if r == me else [{**p, "holder": r} for p in part])]


@contextlib.contextmanager
def timed(times: dict, name: str):
    """Add the seconds the block takes to times[name] (perf_counter). On CUDA the queue is drained
    at both ends, so a stage is charged its kernels, not just their launches."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times[name] = times.get(name, 0.0) + time.perf_counter() - start


def all_reduce_sum(value: float, group=None) -> float:
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(t, group=group)
    return float(t)


class MetricsLog:
    """Metrics per step to metrics.jsonl and the console (rank 0), TensorBoard when installed."""

    def __init__(self, out_dir, rank: int, tensorboard: bool = True):
        self.rank = rank
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if rank == 0 and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tb"))
            except ImportError:
                self.tb = None

    def log(self, step: int, metrics: dict, keys_to_print=None):
        if self.rank != 0:
            return
        row = {"step": step, "time": time.time(), **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        shown = {k: metrics[k] for k in (keys_to_print or metrics) if k in metrics}
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        print(f"step {step}  {text}", file=sys.stderr, flush=True)


def frame_sampling(data_cfg) -> FrameSampling:
    """The FrameSampling a DataConfig asks for."""
    return FrameSampling(
        num_frames=data_cfg.frames or None,
        fps=None if data_cfg.frames else data_cfg.fps,
        max_frames=data_cfg.max_frames,
        max_pixels=data_cfg.max_pixels or None,
    )


def load_dataset(path, video_dir, bad_videos: str = "error") -> list[Example]:
    """Load a jsonl and probe every video up front, so a broken file is found before step 1.

    bad_videos="error": raise, listing every unreadable video with its reason.
    bad_videos="drop": remove those examples and print which (never replaced by other videos).
    """
    examples = load_jsonl(path, video_dir or None)
    bad = {}
    for ex in examples:
        if ex.video not in bad:
            try:
                probe(ex.video)
            except VideoError as err:
                bad[ex.video] = err.reason
    if not bad:
        return examples
    listing = "\n".join(f"  {v}: {why}" for v, why in sorted(bad.items()))
    if bad_videos == "error":
        raise VideoError(path, f"{len(bad)} unreadable video(s):\n{listing}\n"
                         "fix or remove them, or pass --data.bad_videos drop to skip their examples")
    if bad_videos != "drop":
        raise ValueError(f"data.bad_videos must be 'error' or 'drop', got {bad_videos!r}")
    kept = [ex for ex in examples if ex.video not in bad]
    print(f"{path}: dropped {len(examples) - len(kept)} example(s) with unreadable videos:\n{listing}",
          file=sys.stderr)
    return kept


@functools.lru_cache(maxsize=4)
def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_examples, generator=g).tolist()


def global_indices(num_examples: int, seed: int, start: int, count: int) -> list[int]:
    """Dataset indices at global positions [start, start + count) of the seeded epoch stream.

    The data position is one integer, so resume is exact and independent of the rank layout.
    """
    out = []
    for pos in range(start, start + count):
        epoch, i = divmod(pos, num_examples)
        out.append(epoch_order(num_examples, seed, epoch)[i])
    return out
