"""The trainers' batches: right-padded (prompt + response) rows, or shared-prefix packing, where a group's k
responses are trained against one copy of their video prompt.

The sampler prefills a prompt once and decodes its n samples against that one KV cache (rollout.py). This is
the training-side twin: old/ref log-probs and the update run a group as one packed sequence

    [prompt | r_1[:-1] | r_2[:-1] | ... | r_k[:-1]]

with grouped attention: prompt tokens are causal among themselves; each response attends to the whole prompt
and causally to itself, never to another response. Every token then sees exactly the keys it sees in its own
unpacked (prompt + response) sequence, at the same positions, so log-probs, entropies and gradients equal the
unpacked ones (the k responses' gradients accumulate into the one prompt computation; "Prefix Grouper",
arXiv 2506.05433). The prompt, > 95% of the tokens of a long-video group, is computed once instead of k times.

Bookkeeping that makes it exact:
- A response's last token is never an input (nothing after it is scored), and its first token is scored from
  the prompt's last hidden state, so the last prompt row is *picked* k times: `pick_rows` lists, for every
  response token in the unpacked order (group, response, token), the packed row whose next-token distribution
  scores it. A length-1 response adds no input.
- Positions: the prompt's own (3-D M-RoPE) positions, then the sampler's rule (`sequence_positions`).
- Video slots are the prompt's <|video_pad|> tokens only; the same id in a response is text.
- Several groups (different videos) pack into one row one after another; a group never sees another. Pads
  after the last group (Ulysses pads to a multiple of sp) get zero output.

This module is plain torch (no model, no process group), so the layout is testable alone;
`sp.sp_packed_logprobs` runs it on the model, sequence-parallel.
"""

from dataclasses import dataclass
from itertools import groupby

import torch
import torch.nn.functional as F

from minirl.data import IGNORE_INDEX
from minirl.model import next_position

try:  # optional, CUDA only; >= 2.1 for the bottom-right causal alignment `varlen_layout` relies on
    import flash_attn
    from flash_attn import flash_attn_varlen_func

    if tuple(int(x) for x in flash_attn.__version__.split(".")[:2]) < (2, 1):
        flash_attn_varlen_func = None
except ImportError:
    flash_attn_varlen_func = None


@dataclass
class Span:
    """One group in packed coordinates: prompt rows [start, prompt_end), response inputs
    [prompt_end, end), response i holding `input_lens[i]` = len(r_i) - 1 of them."""

    start: int
    prompt_end: int
    end: int
    input_lens: list[int]


@dataclass
class Packed:
    """A micro-batch of groups packed into one row (batch size 1)."""

    input_ids: torch.Tensor  # (1, L)
    positions: torch.Tensor  # (3, 1, L)
    video_mask: torch.Tensor  # (1, L): the prompts' <|video_pad|> slots
    pick_rows: torch.Tensor  # (N,): the row scoring each response token, unpacked order
    targets: torch.Tensor  # (N,): the response tokens themselves, same order
    lengths: list[int]  # response lengths, unpacked order
    spans: list[Span]

    def response_slots(self) -> torch.Tensor:
        """(B, R) bool, B responses right-padded to the longest: token t of response b exists. Row-major, its
        set entries are the picks in order."""
        lengths = torch.tensor(self.lengths)
        return torch.arange(int(lengths.max()))[None] < lengths[:, None]


def pack(groups: list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]], video_token_id: int | None) -> Packed:
    """Pack groups of (prompt ids (Lp,), prompt positions (3, Lp), [response ids (R_i,), ...])."""
    ids, pos, vmask, picks, targets, lengths, spans = [], [], [], [], [], [], []
    start = 0
    for prompt, prompt_pos, responses in groups:
        if any(len(r) == 0 for r in responses) or not responses or len(prompt) == 0:
            raise ValueError("a group needs a non-empty prompt and at least one response, each non-empty")
        prompt_end = start + len(prompt)
        first = int(prompt_pos.max()) + 1  # the sampler's position of a response's first token
        ids.append(prompt)
        pos.append(prompt_pos)
        vmask.append(prompt == video_token_id if video_token_id is not None else torch.zeros_like(prompt).bool())
        cursor = prompt_end
        for r in responses:
            inputs = r[:-1]
            ids.append(inputs)
            pos.append((first + torch.arange(len(inputs))).expand(3, -1))  # (3, R_i - 1)
            vmask.append(torch.zeros(len(inputs), dtype=torch.bool))
            # token 0 is scored at the last prompt row, token t > 0 at its own input t - 1
            picks.append(torch.cat([torch.tensor([prompt_end - 1]), cursor + torch.arange(len(inputs))]))
            targets.append(r)
            lengths.append(len(r))
            cursor += len(inputs)
        spans.append(Span(start, prompt_end, cursor, [len(r) - 1 for r in responses]))
        start = cursor
    return Packed(input_ids=torch.cat(ids)[None].long(), positions=torch.cat(pos, dim=1)[:, None].long(),
                  video_mask=torch.cat(vmask)[None], pick_rows=torch.cat(picks), targets=torch.cat(targets).long(),
                  lengths=lengths, spans=spans)


def response_mask(prompt_len: int, input_lens: list[int], device=None) -> torch.Tensor:
    """(R, prompt_len + R) bool mask of a group's R response rows over its [prompt | responses] keys: every
    prompt key, and causally the keys of the row's own response only."""
    R = sum(input_lens)
    owner = torch.repeat_interleave(torch.arange(len(input_lens), device=device),
                                    torch.tensor(input_lens, device=device))  # (R,) response of each row
    row = torch.arange(R, device=device)
    own = (owner[:, None] == owner[None, :]) & (row[None, :] <= row[:, None])  # (R, R) block-diagonal causal
    return torch.cat([torch.ones(R, prompt_len, dtype=torch.bool, device=device), own], dim=1)


def varlen_layout(spans: list[Span], device=None):
    """The packed row as varlen (flash-attn) sequences: (cu_q, cu_k, kv_index, max_q, max_k). Query sequences
    are the row's own segments in order: each prompt, then each response's input rows. A prompt's keys are
    itself; a response's keys are [its prompt | itself], gathered from the row by `kv_index` (L_k,). Causal
    with the bottom-right alignment flash-attn applies when a sequence has more keys than queries (query j
    sees keys up to j + L_k - L_q) then gives exactly the grouped mask: a response row sees its whole prompt
    and its own rows up to itself. cu_q / cu_k (S + 1,) int32 are the cumulative lengths."""
    q_lens, keys = [], []
    for s in spans:
        prompt, cursor = torch.arange(s.start, s.prompt_end), s.prompt_end
        q_lens.append(len(prompt))
        keys.append(prompt)
        for n in s.input_lens:
            if n:  # a length-1 response has no input rows
                q_lens.append(n)
                keys.append(torch.cat([prompt, torch.arange(cursor, cursor + n)]))
                cursor += n
    k_lens = [len(k) for k in keys]

    def cumulative(lens):
        return F.pad(torch.tensor(lens).cumsum(0), (1, 0)).to(device, torch.int32)

    return cumulative(q_lens), cumulative(k_lens), torch.cat(keys).to(device), max(q_lens), max(k_lens)


def grouped_attention(spans: list[Span], device=None, varlen=None):
    """An `attn_fn` (q (1, L, Hq, D), k, v (1, L, Hkv, D) -> (1, L, Hq, D)) for a packed row. SDPA (CPU, fp32,
    and the fallback): per group, two calls: the prompt rows causally over the prompt keys (no mask tensor, so
    a flash kernel applies on CUDA), and the response rows over the group's contiguous [prompt | responses]
    keys with `response_mask` (R x (P + R) booleans, built once, reused by every layer; never a P x P mask).

    Varlen (`varlen` = flash-attn's `flash_attn_varlen_func`, the default on CUDA in fp16/bf16 when
    importable): one kernel call for the whole row over `varlen_layout`, no mask. The price: each response's
    key sequence carries its own copy of the prompt's K/V rows (Hkv heads wide, transient per layer under
    gradient checkpointing), since a varlen query sequence pairs with exactly one key sequence. `varlen` may
    be any function of flash-attn's signature (the tests pass a torch reference). Either way rows past the
    last group (SP padding) output 0. Under Ulysses it is `inner`, seeing the full packed row.
    """
    flash = varlen is None and flash_attn_varlen_func is not None and torch.device(device or "cpu").type == "cuda"
    varlen = flash_attn_varlen_func if flash else varlen
    layout = varlen_layout(spans, device) if varlen is not None else None
    masks = [response_mask(s.prompt_end - s.start, s.input_lens, device) if s.end > s.prompt_end else None
             for s in spans]

    def use_varlen(q) -> bool:  # flash-attn's kernels take fp16/bf16 and head_dim <= 256 only
        return layout is not None and (not flash or (q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256))

    def attn(q, k, v, layer_idx=None):
        end = spans[-1].end
        if use_varlen(q):
            cu_q, cu_k, kv_index, max_q, max_k = layout
            out = varlen(q[0, :end], k[0, kv_index], v[0, kv_index], cu_q, cu_k, max_q, max_k,
                         causal=True)  # (end, Hq, D)
            return F.pad(out, (0, 0, 0, 0, 0, q.shape[1] - end))[None]  # (1, L, Hq, D)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (1, H, L, D)
        outs = []
        for s, mask in zip(spans, masks, strict=True):
            p = slice(s.start, s.prompt_end)
            outs.append(F.scaled_dot_product_attention(q[:, :, p], k[:, :, p], v[:, :, p], is_causal=True,
                                                       enable_gqa=True))  # (1, Hq, P, D)
            if mask is not None:
                keys = slice(s.start, s.end)
                outs.append(F.scaled_dot_product_attention(q[:, :, s.prompt_end:s.end], k[:, :, keys],
                                                           v[:, :, keys], attn_mask=mask,
                                                           enable_gqa=True))  # (1, Hq, R, D)
        pad = q.shape[2] - end
        if pad:
            outs.append(q.new_zeros(*q.shape[:2], pad, q.shape[3]))  # (1, Hq, pad, D)
        return torch.cat(outs, dim=2).transpose(1, 2)  # (1, L, Hq, D)

    return attn


def micro_batches(keys: list, size: int, whole_groups: bool = True) -> list[list[int]]:
    """Positions 0..len(keys)-1 cut, in order, into micro-batches of at most `size` samples. keys[i] is sample
    i's prompt; a prompt's samples are consecutive (a group). With `whole_groups` (the shared prefix) a
    micro-batch holds whole groups, as many as fit: a packed forward computes each of its groups' prompts
    once, so a cut inside a group computes that prompt twice. A group larger than `size` is cut into pieces of
    `size`: the memory cap wins. Without, plain chunks."""
    if not whole_groups:
        return [list(range(i, min(i + size, len(keys)))) for i in range(0, len(keys), size)]
    out, current = [], []
    for _, group in groupby(range(len(keys)), key=keys.__getitem__):
        group = list(group)
        for piece in (group[i:i + size] for i in range(0, len(group), size)):
            if len(current) + len(piece) > size:
                out.append(current)
                current = []
            current += piece
    return out + [current] if current else out


# ----------------------------------------------------------------------------- the trainers' batches


def sequence_positions(prompt_positions: torch.Tensor, response_len: int) -> torch.Tensor:
    """(3, Lp + R) M-RoPE positions of prompt + response, exactly as the sampler assigns them. The prompt's
    3-D positions (3, Lp) come from its video grid (`minirl.model.rope_index`); response token t sits at
    max(prompt positions) + 1 + t on all three axes (transformers' rope_deltas rule for generated tokens).
    Recomputing the response's positions from the full sequence would put them elsewhere whenever a video's
    time axis outruns its height/width, so the trainers never do."""
    response = (next_position(prompt_positions) + torch.arange(response_len)).expand(3, -1)  # (3, R)
    return torch.cat([prompt_positions, response], dim=1)


def build_micro_batch(model, prompts: list[torch.Tensor], prompt_positions: list[torch.Tensor],
                      responses: list[torch.Tensor], video_embeds: list[torch.Tensor]) -> dict:
    """A right-padded micro-batch of (prompt + response) sequences for `sp.sp_token_logprobs`. Returns
    input_ids (B, L), video_embeds (N, C), video_mask (B, L), positions (3, B, L) and targets (B, L): at
    position i the token i + 1 when it is a response token, else IGNORE_INDEX. Sequence b carries *its own*
    video (video_embeds[b], keyed to its prompt), concatenated in batch order, which is the order the video
    slots are filled: frames can never land in another sample. Only the prompt's <|video_pad|> tokens are
    slots; the same id inside a sampled response is text, as it was for the sampler."""
    sequences = [torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]
    L = max(len(s) for s in sequences)
    pad_id = model.config.pad_token_id or 0
    input_ids = torch.full((len(sequences), L), pad_id, dtype=torch.long)
    video_mask = torch.zeros(len(sequences), L, dtype=torch.bool)
    targets = torch.full((len(sequences), L), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros(3, len(sequences), L, dtype=torch.long)
    for b, (p, pos, r) in enumerate(zip(prompts, prompt_positions, responses, strict=True)):
        input_ids[b, :len(p) + len(r)] = sequences[b]
        video_mask[b, :len(p)] = p == model.config.video_token_id
        targets[b, len(p) - 1:len(p) + len(r) - 1] = r  # position i predicts token i + 1
        positions[:, b, :len(p) + len(r)] = sequence_positions(pos, len(r))
    return dict(input_ids=input_ids, video_embeds=torch.cat(video_embeds), video_mask=video_mask,
                positions=positions, targets=targets)


def build_packed_batch(model, prompts: list[torch.Tensor], prompt_positions: list[torch.Tensor],
                       responses: list[list[torch.Tensor]], video_embeds: list[torch.Tensor]) -> dict:
    """`build_micro_batch` with each prompt's samples packed into one row with it (one group per prompt,
    `pack`), for `sp.sp_packed_logprobs`. Returns packed (a `Packed`), video_embeds (N, C) (each group's own
    video, once, in group order) and targets (B, R): the B responses in order, right-padded with IGNORE_INDEX,
    laid out like sp_packed_logprobs' log-probs; `pack` gives the responses the sampler's positions."""
    packed = pack(list(zip(prompts, prompt_positions, responses, strict=True)), model.config.video_token_id)
    slots = packed.response_slots()  # (B, R)
    targets = torch.full(slots.shape, IGNORE_INDEX, dtype=torch.long).masked_scatter(slots, packed.targets)
    return dict(packed=packed, video_embeds=torch.cat(video_embeds), targets=targets)


def scatter_rows(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like `mask` holding `values` where `mask` is set, in row-major order, 0 elsewhere
    (differentiable in `values`): per-token values laid out like a micro-batch's log-probs."""
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)
