"""Shared-prefix packing: a group's k responses trained against one copy of their video prompt.

The sampler prefills a prompt once and decodes its n samples against that one KV cache
(rollout.py). This is the training-side twin: old/ref log-probs and the update run a group as
one packed sequence

    [prompt | r_1[:-1] | r_2[:-1] | ... | r_k[:-1]]

with grouped attention: prompt tokens are causal among themselves; each response attends to the
whole prompt and causally to itself, never to another response. Every token then sees exactly
the keys it sees in its own unpacked (prompt + response) sequence, at the same positions, so
log-probs, entropies and gradients are today's (the k responses' gradients accumulate into the
one prompt computation; "Prefix Grouper", arXiv 2506.05433). The prompt, > 95% of the tokens of a
long-video group, is computed once instead of k times.

Bookkeeping that makes it exact:
- A response's last token is never an input (nothing after it is scored), and its first token
  is scored from the prompt's last hidden state, so the last prompt row is *picked* k times:
  `pick_rows` lists, for every response token in the unpacked order (group, response, token),
  the packed row whose next-token distribution scores it. A length-1 response adds no input.
- Positions: the prompt's own (3-D M-RoPE) positions; response token t sits at
  max(prompt positions) + 1 + t on all three axes, the sampler's rule
  (`minirl.model.next_position`, `minirl.trainer.sequence_positions`).
- Video slots are the prompt's <|video_pad|> tokens only; the same id in a response is text.
- Several groups (different videos) pack into one row one after another; a group never sees
  another. Pads after the last group (Ulysses pads to a multiple of sp) get zero output.

This module is plain torch (no model, no process group), so the layout is testable alone;
`sp.sp_packed_logprobs` runs it on the model, sequence-parallel.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
        """(B, R) bool, B responses right-padded to the longest: token t of response b exists.
        Row-major, its set entries are the picks in order."""
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
    """(R, prompt_len + R) bool mask of a group's R response rows over its [prompt | responses]
    keys: every prompt key, and causally the keys of the row's own response only."""
    R = sum(input_lens)
    owner = torch.repeat_interleave(torch.arange(len(input_lens), device=device),
                                    torch.tensor(input_lens, device=device))  # (R,) response of each row
    row = torch.arange(R, device=device)
    own = (owner[:, None] == owner[None, :]) & (row[None, :] <= row[:, None])  # (R, R) block-diagonal causal
    return torch.cat([torch.ones(R, prompt_len, dtype=torch.bool, device=device), own], dim=1)


def grouped_attention(spans: list[Span], device=None):
    """An `attn_fn` (q (1, L, Hq, D), k, v (1, L, Hkv, D) -> (1, L, Hq, D)) for a packed row.

    Per group, two SDPA calls: the prompt rows causally over the prompt keys (no mask tensor, so
    a flash kernel applies on CUDA), and the response rows over the group's contiguous
    [prompt | responses] keys with `response_mask` (R x (P + R) booleans, built once here and
    reused by every layer; never a P x P mask). Rows past the last group (SP padding) output 0.
    Under Ulysses this runs after the all-to-all on the full packed row, so it is `inner`.
    """
    masks = [response_mask(s.prompt_end - s.start, s.input_lens, device) if s.end > s.prompt_end else None
             for s in spans]

    def attn(q, k, v, layer_idx=None):
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
        pad = q.shape[2] - spans[-1].end
        if pad:
            outs.append(q.new_zeros(*q.shape[:2], pad, q.shape[3]))  # (1, Hq, pad, D)
        return torch.cat(outs, dim=2).transpose(1, 2)  # (1, L, Hq, D)

    return attn
