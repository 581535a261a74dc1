"""MR-SP: parallel video encoding (stage 1) and Ulysses sequence parallelism (stage 2).

One long (prompt + response) sequence is too big for one device, so the ranks of an SP group share it:

1. `parallel_encode`: the video's temporal patch groups are split across the SP ranks, each rank runs the
   vision tower on its share, an all-gather gives every rank all the embeddings. A rank receives only its
   share's pixel rows, from the rank that decoded the video (`fetch_video_rows`): the frames cross the network
   once, in pieces, never as whole videos. Qwen2.5-VL's vision tower attends only inside one temporal group
   (its `cu_seqlens` and attention windows are cut per group), so the split is exact.
2. `sp_token_logprobs`: the embedded sequence is padded to a multiple of sp and cut along its length; each
   rank runs every decoder layer on its shard. Attention is the only layer that mixes positions:
   `ulysses_attn_fn` all-to-alls the (seq shard, all heads) q/k/v into (whole seq, head shard), runs ordinary
   causal attention on its heads, and all-to-alls the output back. Each shard's log-probs are then gathered.

Conventions that keep the pieces exact (every one is tested against one process):
- Sharding is `full.chunk(P, dim)[rank]` after right-padding to a multiple of P. Pads at the end never change
  a real token's output under causal masking, so no mask is needed.
- M-RoPE positions (3, B, L) are computed once on the whole sequence (`minirl.model.rope_index`) and sharded
  exactly like the embeddings.
- Every collective on the autograd path is an `autograd.Function` with a hand-written backward. Two backward
  rules appear, and which one applies depends on what the ranks do downstream: when every rank computes the
  same loss from a gathered tensor (`gather_sequence`), a rank's gradient is its own chunk of the (identical)
  gradient; when every rank uses the gathered tensor for its *own part* of the loss (`parallel_encode`: rank r
  only embeds the tokens of shard r), the gradient of a rank's share is the sum over ranks. Either way the
  parameter gradients summed over the SP group equal the one-process gradients.
- Process groups are always passed in; nothing here is global.
"""

import dataclasses
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from minirl.data import IGNORE_INDEX
from minirl.distributed import all_gather_objects, validate_layout
from minirl.model import sdpa_attention
from minirl.packing import Packed, grouped_attention, scatter_rows

# ----------------------------------------------------------------------------- shard / gather


def pad_to_multiple(x: torch.Tensor, multiple: int, dim: int, value=0) -> torch.Tensor:
    """Right-pad `x` along `dim` with `value` to a length divisible by `multiple`."""
    pad = -x.shape[dim] % multiple
    if pad == 0:
        return x
    widths = [0, 0] * (x.dim() - dim % x.dim() - 1) + [0, pad]  # F.pad lists the last dim first
    return F.pad(x, widths, value=value)


def shard(x: torch.Tensor, group, dim: int, value=0) -> torch.Tensor:
    """This rank's chunk of `x` along `dim`: `pad_to_multiple(x, P, dim).chunk(P, dim)[rank]`. Plain slicing,
    so autograd already does the right thing: the gradient of `x` is this rank's chunk of the gradient and
    zero elsewhere."""
    P = dist.get_world_size(group)
    return pad_to_multiple(x, P, dim, value).chunk(P, dim)[dist.get_rank(group)]


class _GatherSequence(torch.autograd.Function):
    """All-gather equal chunks along `dim` and drop the padding; backward: own chunk of the grad, right when every rank
    computes the same loss from the gathered tensor, as the policy loss does from the gathered log-probs."""

    @staticmethod
    def forward(ctx, x, group, dim, length):
        ctx.group, ctx.dim = group, dim
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim).narrow(dim, 0, length)

    @staticmethod
    def backward(ctx, grad):
        return shard(grad, ctx.group, ctx.dim), None, None, None


def gather_sequence(x: torch.Tensor, group, dim: int, length: int) -> torch.Tensor:
    """Inverse of `shard`: the full tensor (first `length` entries along `dim`) on every rank."""
    return _GatherSequence.apply(x, group, dim, length)


# ----------------------------------------------------------------------------- Ulysses attention


def _all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Cut `x` in P chunks along scatter_dim, send chunk p to rank p, concatenate what arrives
    (ordered by sender) along gather_dim."""
    P = dist.get_world_size(group)
    send = torch.stack(x.chunk(P, scatter_dim))  # (P, *chunk shape): send[p] goes to rank p
    recv = torch.empty_like(send)  # recv[p]: the chunk rank p sent to us
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    """`_all_to_all` on the autograd path; its backward is the inverse all-to-all."""

    @staticmethod
    def forward(ctx, x, group, scatter_dim, gather_dim):
        ctx.group, ctx.scatter_dim, ctx.gather_dim = group, scatter_dim, gather_dim
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad, ctx.group, ctx.gather_dim, ctx.scatter_dim), None, None, None


def seq_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """(B, L/P, H, D) sequence shard, all heads -> (B, L, H/P, D) whole sequence, head shard."""
    return _AllToAll.apply(x, group, 2, 1)


def heads_to_seq(x: torch.Tensor, group) -> torch.Tensor:
    """(B, L, H/P, D) whole sequence, head shard -> (B, L/P, H, D) sequence shard, all heads."""
    return _AllToAll.apply(x, group, 1, 2)


def kv_replication(num_heads: int, num_kv_heads: int, sp: int) -> int:
    """How many copies of each KV head Ulysses needs so every rank gets its query heads' KV.

    Rank r holds query heads [r*Hq/P, (r+1)*Hq/P) and, after the all-to-all, KV heads [r*Hkv'/P, (r+1)*Hkv'/P)
    of the Hkv' = Hkv * rep heads it was sent. Both need P | Hkv', and the local GQA grouping (local query
    head i uses local KV head i // (Hq/Hkv')) must still be the model's, so Hkv' = lcm(Hkv, P), which divides
    Hq because Hkv and P both do. Copies are made with `repeat_interleave`: new KV head i is old head
    i // rep, so query head j uses new head j // (Hq/Hkv') = old head j // (Hq/Hkv), exactly the model's
    grouping. Examples: (Hq, Hkv, P) = (4, 2, 4) -> 2 copies; (3, 1, 3) -> 3; (8, 2, 2) -> 1.
    """
    validate_layout(sp, 1, sp, num_heads, num_kv_heads)
    return math.lcm(num_kv_heads, sp) // num_kv_heads


def ulysses_attn_fn(group, inner=sdpa_attention):
    """An `attn_fn` for `QwenVL.forward` that runs `inner` (causal attention over the whole sequence) on this
    rank's heads, taking and returning sequence shards; a one-rank group gets `inner` itself."""
    P = dist.get_world_size(group)
    if P == 1:
        return inner

    def attn(q, k, v, layer_idx):
        rep = kv_replication(q.shape[2], k.shape[2], P)
        if rep > 1:
            k = k.repeat_interleave(rep, dim=2)  # (B, L/P, Hkv*rep, D)
            v = v.repeat_interleave(rep, dim=2)
        q, k, v = (seq_to_heads(t, group) for t in (q, k, v))  # (B, L, H/P, D) each
        out = inner(q, k, v, layer_idx)  # (B, L, Hq/P, D)
        return heads_to_seq(out, group)  # (B, L/P, Hq, D)

    return attn


# ----------------------------------------------------------------------------- parallel encoding


def share_prompts(local: list, group) -> list:
    """The prompts of every rank of the SP `group`, in rank order, each with `holder`: the group rank that
    decoded it. Only the small fields travel (token ids, positions, video grid, answer); a video's pixel rows
    stay on its holder, and MR-SP stage 1 (`encode_videos`) sends each rank only the rows it encodes. `local`
    (this rank's) are dataclasses with `holder` and `pixel_values_videos` fields, returned as the very objects
    (holder set in place), so freeing their pixels in one frees them in both."""
    me = dist.get_rank(group)
    for prompt in local:
        prompt.holder = me
    parts = all_gather_objects([dataclasses.replace(p, pixel_values_videos=None) for p in local], group)
    return [p for r, part in enumerate(parts) for p in (local if r == me else part)]


def split_temporal_groups(video_grid_thw: torch.Tensor, parts: int):
    """Contiguous shares of all temporal patch groups (of all videos, in order) for `parts` ranks.

    Returns one (row_start, row_end, grid_thw) per rank: rows of pixel_values_videos (group t of a (T, h, w)
    video is h*w consecutive rows) and the grid of that share, one row per video it touches (a share may end
    inside one video and start inside another). Shares differ by at most one group and may be empty (fewer
    groups than ranks). The split counts groups, not pixels (balanced when the videos share a resolution).
    """
    groups = [(v, h, w) for v, (t, h, w) in enumerate(video_grid_thw.tolist()) for _ in range(t)]
    row_offsets = [0]
    for _, h, w in groups:
        row_offsets.append(row_offsets[-1] + h * w)
    bounds = [len(groups) * r // parts for r in range(parts + 1)]
    shares = []
    for r in range(parts):
        grid = []  # [video, t, h, w] runs
        for v, h, w in groups[bounds[r]:bounds[r + 1]]:
            if grid and grid[-1][0] == v:
                grid[-1][1] += 1
            else:
                grid.append([v, 1, h, w])
        grid_thw = torch.tensor([g[1:] for g in grid], dtype=torch.long).reshape(-1, 3)  # (videos, 3)
        shares.append((row_offsets[bounds[r]], row_offsets[bounds[r + 1]], grid_thw))
    return shares


class _GatherShares(torch.autograd.Function):
    """All-gather shares of different sizes along dim 0; backward: the sum over ranks of the gradient of this
    rank's share (a reduce-scatter, done as one uneven all-to-all)."""

    @staticmethod
    def forward(ctx, x, sizes, group):
        ctx.sizes, ctx.group = sizes, group
        most = max(sizes)
        padded = F.pad(x, (0, 0, 0, most - len(x))).contiguous()  # (most, C)
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])  # (sum(sizes), C)

    @staticmethod
    def backward(ctx, grad):
        P, own = len(ctx.sizes), ctx.sizes[dist.get_rank(ctx.group)]
        recv = grad.new_empty(P * own, grad.shape[1])  # every rank's gradient of our share
        dist.all_to_all_single(recv, grad.contiguous(), output_split_sizes=[own] * P,
                               input_split_sizes=ctx.sizes, group=ctx.group)
        return recv.view(P, own, grad.shape[1]).sum(0), None, None  # (own, C); own may be 0


def parallel_encode(model, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor,
                    group, share_only: bool = False) -> torch.Tensor:
    """MR-SP stage 1: every rank gets all merged video embeddings (N_tokens, C), in order, equal to
    `model.encode_video(pixel_values_videos, video_grid_thw)`, each rank having run the vision tower on its share of the
    temporal groups only. Differentiable: when the vision tower is trained, each rank's vision gradients come from its
    own frames and the sum over the SP group is the one-process gradient. With `share_only`, pixel_values_videos holds
    this rank's rows only (`fetch_video_rows`), not every rank's."""
    visual = model.vision_tower()
    P, rank = dist.get_world_size(group), dist.get_rank(group)
    merge = model.config.spatial_merge_size ** 2  # patch rows per video token
    shares = split_temporal_groups(video_grid_thw, P)
    sizes = [(end - start) // merge for start, end, _ in shares]
    start, end, grid_thw = shares[rank]
    if end > start:
        rows = pixel_values_videos if share_only else pixel_values_videos[start:end]  # (end - start, D)
        local = model.encode_video(rows, grid_thw)  # (sizes[rank], C)
    else:
        # An empty share must still join the backward all-to-all, so it takes part in autograd
        # whenever the other ranks' shares do.
        trains = torch.is_grad_enabled() and any(p.requires_grad for p in visual.parameters())
        local = torch.zeros(0, model.config.hidden_size, device=model.device, dtype=model.dtype, requires_grad=trains)
    return _GatherShares.apply(local, sizes, group)


def fetch_video_rows(pixels: list[torch.Tensor | None], grids: list[torch.Tensor], holders: list[int],
                     wants: list[tuple[int, int]], group, dim: int, device) -> torch.Tensor:
    """Rows [start, end) = wants[rank] of the videos' pixel rows concatenated in order, fetched from the SP
    ranks that hold them: (end - start, D = dim). Video i's pixel rows (`pixels[i]`, grid `grids[i]`) exist on
    rank holders[i] only (the rank that decoded it; elsewhere pixels[i] may be None). One uneven all-to-all
    moves, from each holder to each rank, exactly the rows that rank wants and nothing else: with parallel
    encoding a rank receives its own share of the frames, not the whole group's videos. Rows a rank holds
    itself never enter the exchange buffers, and a share that is one piece is returned as a view: when each
    rank encodes the video it decoded (one prompt per rank), stage 1 copies no pixels at all."""
    P, me = dist.get_world_size(group), dist.get_rank(group)
    counts = [int(g.prod(1).sum()) for g in grids]  # patch rows per video
    starts = [sum(counts[:i]) for i in range(len(grids))]

    def pieces(sender: int, receiver: int) -> list[tuple[int, int, int]]:
        """(item, first row, end row) in the item's own rows: what `sender` sends `receiver`."""
        lo, hi = wants[receiver]
        return [(i, max(lo, s) - s, min(hi, s + n) - s) for i, (s, n) in enumerate(zip(starts, counts, strict=True))
                if holders[i] == sender and max(lo, s) < min(hi, s + n)]

    outgoing = [[] if r == me else pieces(me, r) for r in range(P)]  # per receiver
    incoming = [[] if r == me else pieces(r, me) for r in range(P)]  # per sender
    send = [pixels[i][a:b] for out in outgoing for i, a, b in out]
    send = torch.cat(send).to(device) if send else torch.zeros(0, dim, device=device)  # (rows out, D)
    sizes_in = [b - a for inc in incoming for _, a, b in inc]  # per piece, arrival order
    recv = send.new_empty(sum(sizes_in), dim)  # (rows in, D)
    dist.all_to_all_single(recv, send, output_split_sizes=[sum(b - a for _, a, b in inc) for inc in incoming],
                           input_split_sizes=[sum(b - a for _, a, b in out) for out in outgoing], group=group)
    del send
    arrived = [(i, a) for inc in incoming for i, a, _ in inc]  # (item, first row) of each piece
    got = list(zip(arrived, recv.split(sizes_in), strict=True))
    got += [((i, a), pixels[i][a:b].to(device)) for i, a, b in pieces(me, me)]
    chunks = [chunk for _, chunk in sorted(got, key=lambda piece: piece[0])]  # item order
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks or [recv])


def encode_videos(model, grids: list[torch.Tensor], pixels: list[torch.Tensor | None], group,
                  parallel: bool = True, holders: list[int] | None = None) -> list[torch.Tensor]:
    """MR-SP stage 1 for a list of videos: one (N_i, C) embedding per video, in order.

    Video i is `pixels[i]` (pixel_values_videos, (rows, D)) with grid `grids[i]` (1, 3). All videos are encoded in one
    call, their temporal groups split across the SP `group` (parallel=True) or all on this rank (parallel=False, the
    ablation). `holders`: the SP rank that holds each video's pixels (the others may pass None); each rank then receives
    only the rows it encodes (`fetch_video_rows`): its share, or every row for the ablation. None: every rank holds
    every video's pixels. Autograd records the encoding only when grad mode is on and the vision tower is trained.
    """
    grid = torch.cat(grids)  # (videos, 3)
    P, v = dist.get_world_size(group), model.vision_tower().config
    dim = v.in_channels * v.temporal_patch_size * v.patch_size**2  # pixels per patch row
    if holders is None or P == 1:
        rows = (pixels[0] if len(pixels) == 1 else torch.cat(pixels)).to(model.device)  # (sum rows, D)
        embeds = parallel_encode(model, rows, grid, group) if parallel else model.encode_video(rows, grid)
    elif parallel:
        wants = [(start, end) for start, end, _ in split_temporal_groups(grid, P)]
        rows = fetch_video_rows(pixels, grids, holders, wants, group, dim, model.device)  # (this rank's rows, D)
        embeds = parallel_encode(model, rows, grid, group, share_only=True)
    else:
        total = int(grid.prod(1).sum())
        rows = fetch_video_rows(pixels, grids, holders, [(0, total)] * P, group, dim, model.device)  # (total, D)
        embeds = model.encode_video(rows, grid)
    return split_video_embeds(embeds, grid, model.config.spatial_merge_size)


def split_video_embeds(video_embeds: torch.Tensor, video_grid_thw: torch.Tensor,
                       spatial_merge_size: int) -> list[torch.Tensor]:
    """The embeddings of several videos encoded in one call, one (N_i, C) tensor per video."""
    counts = [t * h * w // spatial_merge_size**2 for t, h, w in video_grid_thw.tolist()]
    return list(video_embeds.split(counts))


# ----------------------------------------------------------------------------- log-probs


def shard_video_rows(input_ids: torch.Tensor, video_embeds: torch.Tensor | None, video_mask: torch.Tensor | None,
                     group):
    """This rank's chunk of input_ids (B, L/P), of video_mask, and the video embedding rows it holds.

    video_embeds (N, C) fill the video slots `video_mask` (B, L) of the whole micro-batch in row-major order
    (sequence 0's video first), so the rows of shard r are those whose slot falls in r.
    """
    ids = shard(input_ids, group, dim=1)  # (B, L/P)
    if video_embeds is None:
        return ids, None, None
    is_video = pad_to_multiple(video_mask, dist.get_world_size(group), dim=1, value=False)  # (B, Lp)
    order = (is_video.flatten().cumsum(0) - 1).view(is_video.shape)  # row of video_embeds per slot
    local_video = shard(is_video, group, dim=1)  # (B, L/P)
    local_order = shard(order, group, dim=1)
    return ids, video_embeds[local_order[local_video].to(video_embeds.device)], local_video  # (N_r, C)


def sp_token_logprobs(model, input_ids: torch.Tensor, video_embeds: torch.Tensor | None, positions: torch.Tensor,
                      targets: torch.Tensor, group, temperature: float = 1.0, with_entropy: bool = False,
                      video_mask: torch.Tensor | None = None):
    """MR-SP stage 2: per-token log-probs (B, L) of a micro-batch, sequence-parallel over `group`.

    input_ids (B, L) and positions (3, B, L) are the full right-padded micro-batch (identical on every rank);
    video_embeds (N, C) fill its <|video_pad|> tokens in row-major order (each sequence's own video, cached by
    stage 1); `video_mask` (B, L) marks those slots (default: every <|video_pad|> token; trainers pass the
    prompts' slots only). targets (B, L) holds at position i the token whose log-prob is wanted there, the
    next token `input_ids[i + 1]`, or IGNORE_INDEX where that is not a response token. Each rank runs the
    decoder on its shard with Ulysses attention and takes logits of its response rows only (never a
    full-vocabulary tensor over the video). Returns log-probs (B, L) of `logits / temperature`, 0 at ignored
    positions, the same on every rank and differentiable; with `with_entropy`, also the entropy (B, L) of
    those distributions. Every rank must then compute the same loss from them (see the module docstring).
    """
    L = input_ids.shape[1]
    if video_mask is None and video_embeds is not None:
        video_mask = input_ids == model.config.video_token_id
    ids, video_rows, mask = shard_video_rows(input_ids, video_embeds, video_mask, group)
    pos = shard(positions.to(model.device), group, dim=2)  # (3, B, L/P)
    tgt = shard(targets.to(model.device), group, dim=1, value=IGNORE_INDEX)  # (B, L/P)
    # the shard is embedded inside the forward (FSDP gathers embed_tokens there)
    hidden = model(None, pos, ulysses_attn_fn(group), input_ids=ids, video_embeds=video_rows,
                   video_mask=mask)  # (B, L/P, C)
    picked = tgt != IGNORE_INDEX  # (B, L/P)
    logp = torch.log_softmax(model.logits(hidden[picked]) / temperature, dim=-1)  # (N, V)
    token_logp = logp.gather(1, tgt[picked][:, None])[:, 0]  # (N,)
    logprobs = gather_sequence(scatter_rows(token_logp, picked), group, dim=1, length=L)  # (B, L)
    if not with_entropy:
        return logprobs
    entropy = -(logp.exp() * logp).sum(-1)  # (N,)
    return logprobs, gather_sequence(scatter_rows(entropy, picked), group, dim=1, length=L)


class _SumOverGroup(torch.autograd.Function):
    """All-reduce sum; backward: the gradient itself. Right when each rank contributes its own entries (zeros
    elsewhere) and every rank computes the same loss from the sum."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def sp_packed_logprobs(model, packed: Packed, video_embeds: torch.Tensor | None, group, temperature: float = 1.0,
                       with_entropy: bool = False):
    """`sp_token_logprobs` for shared-prefix packed groups (`minirl.packing`): log-probs (B, R) of the B responses'
    tokens, right-padded with 0 (`packed.response_slots()`), the same on every rank and differentiable; with
    `with_entropy`, also the entropies (B, R). The packed row is sharded along its length like any sequence; after
    Ulysses' all-to-all the grouped attention sees the whole row. A row may score several tokens (the last prompt row
    scores every response's first token), so outputs are indexed by pick, not by row: each rank scores the picks in its
    shard and one all-reduce (of zeros elsewhere) gives all of them to every rank. Exact: x + 0 = x, in any order."""
    P, rank = dist.get_world_size(group), dist.get_rank(group)
    ids, video_rows, mask = shard_video_rows(packed.input_ids, video_embeds, packed.video_mask, group)
    pos = shard(packed.positions.to(model.device), group, dim=2)  # (3, 1, L/P)
    attn = ulysses_attn_fn(group, grouped_attention(packed.spans, model.device))
    hidden = model(None, pos, attn, input_ids=ids, video_embeds=video_rows, video_mask=mask)[0]  # (L/P, C)
    rows = packed.pick_rows.to(model.device)
    here = rows // hidden.shape[0] == rank  # (N,) picks scored on this rank
    logp = torch.log_softmax(model.logits(hidden[rows[here] - rank * hidden.shape[0]]) / temperature, dim=-1)
    token_logp = logp.gather(1, packed.targets.to(model.device)[here][:, None])[:, 0]  # (N_r,)
    outs = [scatter_rows(token_logp, here)]  # (N,)
    if with_entropy:
        outs.append(scatter_rows(-(logp.exp() * logp).sum(-1), here))
    if P > 1:
        outs = [_SumOverGroup.apply(o, group) for o in outs]
    slots = packed.response_slots().to(model.device)  # (B, R)
    outs = [scatter_rows(o, slots) for o in outs]  # (B, R) each
    return tuple(outs) if with_entropy else outs[0]
