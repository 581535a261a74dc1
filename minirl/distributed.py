"""Distributed set-up: the process group and the ("dp", "sp") mesh with its layout checked up front, FSDP2
over every rank, the guarded optimizer step, weight sync into the sampler's copy, and the two small
collectives the trainers use. A library module: it imports nothing from the top level.

FSDP2 layout. Parameters are sharded over *all* ranks (a 1-D mesh of the whole world): the SP ranks of a group
hold different shards too, so memory per rank falls with dp * sp. Every decoder block is its own FSDP unit,
and so are `embed_tokens` and `lm_head`, because the trainers call them outside the root forward (embedding a
batch before sharding it along the sequence; logits only at response rows). The vision tower is not sharded:
it is frozen by default, and when trained its replicated gradients are summed by `sync_replicated_grads`.

Gradient convention: every rank's loss is its exact share of one global loss (global token and sequence
counts: minirl.loss), so the right gradient is the *sum* over ranks. FSDP's reduce-scatter averages (a divide
factor of 1 would need PREMUL_SUM, which gloo lacks), so `backward` scales each loss by the world size first.

Non-finite steps: when the loss or the global gradient norm is NaN or inf on any rank, every rank skips that
optimizer step (`optimizer_step`), so no NaN ever reaches the weights or the AdamW moments;
`max_skipped_steps` such steps in a row stop the run (`NonFiniteError`).
"""

import math
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from minirl.model import QwenVL


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def validate_layout(world: int, dp: int, sp: int, num_heads: int | None = None,
                    num_kv_heads: int | None = None) -> None:
    """Check the parallel degrees up front, with errors that name every number and the fix. Ulysses gives each
    SP rank num_heads / sp query heads, so sp must divide num_heads. Any num_kv_heads works (fewer than sp are
    replicated, see `kv_replication`) as long as it is a valid GQA grouping of the query heads."""
    if dp < 1 or sp < 1:
        raise ValueError(f"dp={dp} and sp={sp} must both be >= 1")
    if dp * sp != world:
        raise ValueError(f"dp={dp} x sp={sp} = {dp * sp} does not equal the world size {world}: launch "
                         f"{dp * sp} processes, or choose sp from {_divisors(world)} and dp = {world} / sp")
    if num_heads is not None and num_heads % sp:
        raise ValueError(f"sp={sp} does not divide num_heads={num_heads}: Ulysses gives each rank num_heads/sp "
                         f"attention heads; choose sp from {_divisors(num_heads)}")
    if num_heads is not None and num_kv_heads is not None and num_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads={num_kv_heads} does not divide num_heads={num_heads}: not a GQA model config")


def init_distributed(sp: int = 1):
    """(rank, world, device, mesh) from torchrun's environment; one process without torchrun. The mesh is
    `DeviceMesh(("dp", "sp"))` with sp innermost, so an SP group is consecutive ranks (one node: the
    all-to-alls stay on the fast links). Backend: nccl on CUDA, gloo on CPU. Without torchrun (no RANK in the
    environment) this is a world of one whose group lives in an in-memory store: no port is opened."""
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    torchrun = "RANK" in os.environ
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dp = world // sp if 0 < sp <= world else 1  # a wrong sp makes dp * sp != world: a named error
    validate_layout(world, dp, sp)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(local_rank)
    if torchrun:
        dist.init_process_group(backend)  # MASTER_ADDR / MASTER_PORT from torchrun
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    mesh = init_device_mesh(device.type, (dp, sp), mesh_dim_names=("dp", "sp"))
    return rank, world, device, mesh


def shard_model(model: QwenVL, device, dtype: torch.dtype = torch.float32) -> QwenVL:
    """Apply FSDP2 over every rank (see the module docstring). The weights stay fp32 (master weights, AdamW
    state); forwards run in `dtype`, gradients are reduced in fp32."""
    kw = dict(mesh=init_device_mesh(device.type, (dist.get_world_size(),)))
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
    """Average the gradients of the unsharded (replicated) vision tower over all ranks, like FSDP does for the
    sharded weights (both were scaled by the world size in `backward`)."""
    if model.visual is None or dist.get_world_size() == 1:
        return
    for p in model.visual.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def sync_weights(copy: QwenVL, model) -> None:
    """Copy the current (sharded) weights of `model` into the plain `copy` the sampler decodes with. Strict: a key
    missing on either side or a shape that differs is an error naming it, never a weight silently left stale. The copy
    may be in a lower dtype (`copy_` casts). One tensor at a time: a sharded weight is all-gathered, cast into the copy
    and dropped before the next, so the sync adds at most one full fp32 tensor (the embedding) to the copy, never the
    whole fp32 model that a full state dict gathers on every rank (8.29B x 4 bytes = 31 GiB for 7B: the memory plan's
    `sync_gather`). Every rank gathers the same tensors in the same order."""
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


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a NaN/inf loss or gradient norm: the run has diverged."""


def optimizer_step(model, optimizer, max_norm: float, loss: float) -> tuple[float, bool]:
    """Clip and take the optimizer step for the gradients accumulated since the last one, unless `loss` (this
    rank's) or the global gradient norm is NaN/inf on any rank. The ranks agree through one all-reduce of a
    non-finite flag: a rank that stepped while another skipped would fork the replicas. Returns (gradient norm
    before clipping, whether the step was taken); the gradients are zeroed either way."""
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
    """Clip by the global gradient norm; returns the norm before clipping. The sharded (DTensor) gradients and
    the replicated vision-tower ones are normed separately (DTensor ops refuse a mix), then combined:
    sqrt(sharded^2 + replicated^2)."""
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


def all_gather_objects(obj, group=None) -> list:
    """Every rank's `obj` (of `group`, default the world), in rank order (`all_gather_object`)."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return [obj]
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def all_reduce_sum(value: float, group=None) -> float:
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(t, group=group)
    return float(t)
