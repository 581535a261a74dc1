"""Shared-prefix packing equals the unpacked path: per-token log-probs, entropies and every
parameter's gradient of the tiny Qwen2.5-VL on real videos, at sp = 1, 2, 3, 4, for groups of
k = 1, 2, 5, 8 ragged responses (lengths 1 included), packed lengths not divisible by sp, a
micro-batch of two groups with different videos, vision tower frozen and trained.

Workers (gloo, as in test_sp.py) run both paths on the same inputs: `sp.sp_packed_logprobs`
on one packed row per micro-batch, and `sp.sp_token_logprobs` on the right-padded
(prompt + response) sequences of `build_micro_batch`, each sequence with its own copy of the
video. The parent computes the one-process, one-sequence-at-a-time reference and compares.
"""

import os
from functools import partial

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import START_METHOD, free_port
from test_train import REWARD, max_diff, rl_args, run_rl

import sp
from minirl import synth
from minirl.distributed import init_distributed
from minirl.model import load_model, rope_index
from minirl.packing import (
    build_micro_batch,
    grouped_attention,
    micro_batches,
    pack,
    response_mask,
    sequence_positions,
    varlen_layout,
)
from minirl.tiny import build_tiny_model, default_corpus

TOL = 1e-5
MODEL_FOR_WORLD = {1: "tiny_dir", 2: "tiny_dir", 3: "odd_dir", 4: "tiny_dir"}  # sp=3 needs 3 heads
# name: [(video, response lengths, residue of the packed length mod 12 set by the last length)]
CASES = {
    "k1": [("a", [None], 1)],
    "k2": [("a", [1, None], 7)],
    "k5": [("b", [3, 1, 9, 4, None], 5)],
    "k8": [("a", [2, 7, 1, 5, 3, 11, 6, None], 0)],
    "two_videos": [("a", [2, 5, None], 4), ("b", [1, None], 11)],
}


# ----------------------------------------------------------------------------- inputs and references


def _video(processor, frames: np.ndarray):
    """Processor outputs for a chat prompt around one decoded clip (2 fps: 1 s per temporal group)."""
    from transformers.video_utils import VideoMetadata

    meta = VideoMetadata(total_num_frames=len(frames), fps=2.0, frames_indices=list(range(len(frames))))
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], videos=[torch.from_numpy(frames)], video_metadata=[meta],
                          do_sample_frames=False, return_tensors="pt", cap_pixels_per_frame=True))


def _groups(model, videos, spec, generator):
    """[(video name, prompt ids, [responses])]; the last response's length sets the packed length's
    residue mod 12 (lcm of 2, 3, 4), and one response carries a <|video_pad|> id as text."""
    groups, packed_len = [], 0
    for name, lengths, residue in spec:
        prompt = videos[name]["input_ids"][0]
        packed_len += len(prompt) + sum(n - 1 for n in lengths[:-1])
        last = 1 + (residue - packed_len) % 12  # its inputs add last - 1 rows
        packed_len += last - 1
        responses = [torch.randint(20, model.config.vocab_size, (n,), generator=generator)
                     for n in [*lengths[:-1], last]]
        longest = max(responses, key=len)
        longest[len(longest) // 2] = model.config.video_token_id
        groups.append((name, prompt, responses))
    return groups


def _reference(model, videos, groups, weights, train_vision):
    """One process, each (prompt + response) alone with full logits; loss and grads."""
    model.zero_grad(set_to_none=True)
    logprobs, entropies = [], []
    for name, prompt, responses in groups:
        v = videos[name]
        for r in responses:
            with torch.set_grad_enabled(train_vision):
                video_embeds = model.encode_video(v["pixel_values_videos"], v["video_grid_thw"])
            ids = torch.cat([prompt, r])
            slots = torch.cat([prompt == model.config.video_token_id, torch.zeros(len(r), dtype=torch.bool)])
            prompt_pos = rope_index(prompt, v["video_grid_thw"], v["second_per_grid_ts"], model.config)
            positions = sequence_positions(prompt_pos, len(r))[:, None]  # (3, 1, L)
            hidden = model(model.embed(ids, video_embeds, slots)[None], positions)[0]  # (L, C)
            logp = torch.log_softmax(model.logits(hidden[len(prompt) - 1:-1]), dim=-1)  # (R, V)
            logprobs.append(logp.gather(1, r[:, None])[:, 0])
            entropies.append(-(logp.exp() * logp).sum(-1))
    lp, ent = torch.cat(logprobs), torch.cat(entropies)
    ((lp * weights).sum() + 0.1 * ent.sum()).backward()
    grads = {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
    return dict(logprobs=lp.detach(), entropies=ent.detach(), grads=grads)


def _plan(model_dir, mp4_path):
    import decord
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    frames = decord.VideoReader(str(mp4_path)).get_batch(list(range(12))).asnumpy()
    videos = {"a": _video(processor, frames[0:10]), "b": _video(processor, frames[[11, 9, 7, 5, 3, 1]])}
    model = load_model(model_dir)
    g = torch.Generator().manual_seed(0)
    cases, expected = {}, {}
    for name, spec in CASES.items():
        groups = _groups(model, videos, spec, g)
        weights = 0.5 + torch.rand(sum(len(r) for _, _, rs in groups for r in rs), generator=g)
        cases[name] = dict(groups=groups, weights=weights)
        for train_vision in (False, True):
            expected[name, train_vision] = _reference(model, videos, groups, weights, train_vision)
    return dict(model_dir=str(model_dir), cases=cases, videos=videos), expected


# ----------------------------------------------------------------------------- worker


def _grads(model, group):
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(grad, group=group)  # each rank holds its shard's share of the gradient
        grads[name] = grad
    return grads


def _encode(model, videos, names, group, train_vision):
    """Stage 1 for the listed videos in one call, split back per video."""
    pixels = torch.cat([videos[n]["pixel_values_videos"] for n in names])
    grid = torch.cat([videos[n]["video_grid_thw"] for n in names])
    with torch.set_grad_enabled(train_vision):
        embeds = sp.parallel_encode(model, pixels, grid, group)
    return sp.split_video_embeds(embeds, grid, model.config.spatial_merge_size)


def _packed(model, videos, case, group, train_vision):
    """The packed path: each group's video encoded once, one packed row for the micro-batch."""
    model.zero_grad(set_to_none=True)
    groups = case["groups"]
    embeds = _encode(model, videos, [name for name, _, _ in groups], group, train_vision)
    packed = pack([(prompt, rope_index(prompt, videos[name]["video_grid_thw"], videos[name]["second_per_grid_ts"],
                                       model.config), responses) for name, prompt, responses in groups],
                  model.config.video_token_id)
    lp, ent = sp.sp_packed_logprobs(model, packed, torch.cat(embeds), group, with_entropy=True)  # (B, R) each
    slots = packed.response_slots()
    assert not lp[~slots].any() and not ent[~slots].any()
    lp, ent = lp[slots], ent[slots]  # row-major: the unpacked order
    ((lp * case["weights"]).sum() + 0.1 * ent.sum()).backward()
    return dict(logprobs=lp.detach(), entropies=ent.detach(), grads=_grads(model, group),
                length=packed.input_ids.shape[1])


def _unpacked(model, videos, case, group, train_vision):
    """The unpacked path: one right-padded row per (prompt + response), each with its own video copy."""
    model.zero_grad(set_to_none=True)
    seqs = [(name, prompt, r) for name, prompt, responses in case["groups"] for r in responses]
    embeds = _encode(model, videos, [name for name, _, _ in seqs], group, train_vision)
    positions = [rope_index(p, videos[name]["video_grid_thw"], videos[name]["second_per_grid_ts"], model.config)
                 for name, p, _ in seqs]  # (3, Lp) each
    batch = build_micro_batch(model, [p for _, p, _ in seqs], positions, [r for _, _, r in seqs], embeds)
    lp, ent = sp.sp_token_logprobs(model, batch["input_ids"], batch["video_embeds"], batch["positions"],
                                   batch["targets"], group, with_entropy=True, video_mask=batch["video_mask"])
    picked = batch["targets"] != sp.IGNORE_INDEX  # (B, L), row-major = the unpacked order
    lp, ent = lp[picked], ent[picked]
    ((lp * case["weights"]).sum() + 0.1 * ent.sum()).backward()
    return dict(logprobs=lp.detach(), entropies=ent.detach(), grads=_grads(model, group))


def _worker(rank, world, port, plan_path, out_dir):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _, _, _, mesh = init_distributed(sp=world)
    group = mesh.get_group("sp")
    plan = torch.load(plan_path, weights_only=False)
    model = load_model(plan["model_dir"])
    out = {}
    for name, case in plan["cases"].items():
        for train_vision in (False, True):
            model.visual.requires_grad_(train_vision)
            out[name, train_vision, "packed"] = _packed(model, plan["videos"], case, group, train_vision)
            out[name, train_vision, "unpacked"] = _unpacked(model, plan["videos"], case, group, train_vision)
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def plans(tiny_dir, odd_dir, mp4_path):
    return {"tiny_dir": _plan(tiny_dir, mp4_path), "odd_dir": _plan(odd_dir, mp4_path)}


@pytest.fixture(scope="module", params=[1, 2, 3, 4], ids=lambda w: f"sp{w}")
def run(request, plans, tmp_path_factory):
    """Start `world` workers once; returns (world, per-rank results, one-process expectations)."""
    world = request.param
    inputs, expected = plans[MODEL_FOR_WORLD[world]]
    tmp = tmp_path_factory.mktemp(f"sp{world}")
    torch.save(inputs, tmp / "plan.pt")
    mp.start_processes(_worker, args=(world, free_port(), str(tmp / "plan.pt"), str(tmp)), nprocs=world,
                       start_method=START_METHOD)
    return world, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)], expected


def _errors(got, ref):
    """Max abs errors of log-probs and entropies, and max relative (to max(1, |g|)) grad error."""
    grad = max((got["grads"][n] - g).abs().max().item() / max(1.0, g.abs().max().item())
               for n, g in ref["grads"].items())
    return dict(logprobs=(got["logprobs"] - ref["logprobs"]).abs().max().item(),
                entropies=(got["entropies"] - ref["entropies"]).abs().max().item(), grads=grad)


@pytest.mark.parametrize("train_vision", [False, True], ids=["frozen_vision", "train_vision"])
@pytest.mark.parametrize("case", list(CASES))
def test_packed_equals_unpacked(run, case, train_vision):
    world, results, expected = run
    ref = expected[case, train_vision]
    assert any(n.startswith("visual.") and g.abs().max() > 0 for n, g in ref["grads"].items()) == train_vision
    for out in results:
        packed, unpacked = out[case, train_vision, "packed"], out[case, train_vision, "unpacked"]
        assert packed["grads"].keys() == ref["grads"].keys()
        for other, what in [(ref, "one process"), (unpacked, f"unpacked sp={world}")]:
            err = _errors(packed, other)
            assert max(err.values()) <= TOL, f"sp={world} {case} vs {what}: {err}"


def test_packed_lengths_cover_sp_residues(plans):
    """The cases' packed lengths include ones divisible by none of 2, 3, 4 and by all of them."""
    cases = plans["tiny_dir"][0]["cases"]
    lengths = {name: sum(len(p) + sum(len(r) - 1 for r in rs) for _, p, rs in c["groups"])
               for name, c in cases.items()}
    assert {n % 12 for n in lengths.values()} == {1, 7, 5, 0, 11}


# ----------------------------------------------------------------------------- layout, no model


def test_pack_layout_by_hand():
    prompt = torch.tensor([10, 99, 99, 11])  # 99: the video token
    prompt_pos = torch.tensor([[0, 1, 1, 3], [0, 1, 2, 3], [0, 2, 1, 3]])  # (3, 4), max 3
    packed = pack([(prompt, prompt_pos, [torch.tensor([20, 99, 22]), torch.tensor([30])]),
                   (torch.tensor([12]), torch.zeros(3, 1, dtype=torch.long), [torch.tensor([40, 41])])], 99)
    assert packed.input_ids.tolist() == [[10, 99, 99, 11, 20, 99, 12, 40]]
    assert packed.video_mask.tolist() == [[False, True, True, False, False, False, False, False]]
    assert packed.positions[:, 0].tolist() == [[0, 1, 1, 3, 4, 5, 0, 1], [0, 1, 2, 3, 4, 5, 0, 1],
                                               [0, 2, 1, 3, 4, 5, 0, 1]]
    assert packed.pick_rows.tolist() == [3, 4, 5, 3, 6, 7]
    assert packed.targets.tolist() == [20, 99, 22, 30, 40, 41]
    assert packed.lengths == [3, 1, 2]
    assert [(s.start, s.prompt_end, s.end, s.input_lens) for s in packed.spans] == [(0, 4, 6, [2, 0]),
                                                                                    (6, 7, 8, [1])]
    with pytest.raises(ValueError, match="non-empty"):
        pack([(prompt, prompt_pos, [torch.tensor([], dtype=torch.long)])], 99)


def test_response_mask_by_hand():
    expected = [[1, 1, 1, 0, 0, 0],
                [1, 1, 1, 1, 0, 0],
                [1, 1, 0, 0, 1, 0],
                [1, 1, 0, 0, 1, 1]]  # 2 prompt keys, then responses of 2 and 2 inputs
    assert response_mask(2, [2, 0, 2]).int().tolist() == expected


def test_packed_positions_are_the_trainers(tiny_dir, mp4_path):
    """Response positions in the packed row equal `sequence_positions`, the sampler's rule."""
    import decord
    from transformers import AutoProcessor

    model = load_model(tiny_dir)
    frames = decord.VideoReader(str(mp4_path)).get_batch(list(range(12))).asnumpy()
    video = _video(AutoProcessor.from_pretrained(tiny_dir), frames)  # 6 groups: time outruns height/width
    prompt = video["input_ids"][0]
    prompt_pos = rope_index(prompt, video["video_grid_thw"], video["second_per_grid_ts"], model.config)
    packed = pack([(prompt, prompt_pos, [torch.arange(5), torch.arange(3)])], model.config.video_token_id)
    full = sequence_positions(prompt_pos, 4)  # (3, Lp + 4)
    P = len(prompt)
    assert torch.equal(packed.positions[:, 0, :P + 4], full)
    assert torch.equal(packed.positions[:, 0, P + 4:], full[:, P:P + 2])


def test_grouped_attention_equals_separate_sequences():
    """Outputs and q/k/v gradients of a packed row (two groups, SP padding) vs causal SDPA run on
    each (prompt + response) alone; a prompt's rows are owned by its group's first sequence."""
    g = torch.Generator().manual_seed(0)
    zeros = partial(torch.zeros, dtype=torch.long)
    packed = pack([(zeros(5), zeros(3, 5), [zeros(n) for n in (1, 4, 3)]), (zeros(2), zeros(3, 2), [zeros(2)])],
                  None)
    L = packed.input_ids.shape[1] + 2  # two pad rows
    q = torch.randn(1, L, 4, 8, generator=g, requires_grad=True)  # GQA: 4 query heads, 2 KV heads
    k, v = (torch.randn(1, L, 2, 8, generator=g, requires_grad=True) for _ in range(2))
    weight = torch.randn(1, L, 4, 8, generator=g)
    out = grouped_attention(packed.spans)(q, k, v)
    (out * weight).sum().backward()
    ref_out, ref_grads = torch.zeros_like(out), [torch.zeros_like(t) for t in (q, k, v)]
    for s in packed.spans:
        prompt, cursor = torch.arange(s.start, s.prompt_end), s.prompt_end
        for i, n in enumerate(s.input_lens):
            rows = torch.cat([prompt, torch.arange(cursor, cursor + n)])  # this sequence's rows
            own = slice(0 if i == 0 else len(prompt), None)
            sub = [t.detach()[:, rows].requires_grad_() for t in (q, k, v)]  # (1, Lp + n, H, D)
            o = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in sub), is_causal=True,
                                               enable_gqa=True).transpose(1, 2)  # (1, Lp + n, 4, 8)
            ref_out[:, rows[own]] = o[:, own].detach()
            (o[:, own] * weight[:, rows[own]]).sum().backward()
            for ref, t in zip(ref_grads, sub, strict=True):
                ref[:, rows] += t.grad
            cursor += n
    assert (out - ref_out).abs().max() <= 1e-6 and not out[:, -2:].any()
    for ref, t in zip(ref_grads, (q, k, v), strict=True):
        assert (ref - t.grad).abs().max() <= 1e-6


def _torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=True):
    """flash-attn's `flash_attn_varlen_func` in plain torch, as documented: per sequence, causal
    aligned to the bottom-right corner (query j sees keys up to j + L_k - L_q)."""
    assert causal and max_q == int((cu_q[1:] - cu_q[:-1]).max()) and max_k == int((cu_k[1:] - cu_k[:-1]).max())
    outs = []
    for i in range(len(cu_q) - 1):
        qs, ks, vs = (t[c[i]:c[i + 1]].transpose(0, 1)[None] for t, c in ((q, cu_q), (k, cu_k), (v, cu_k)))
        Lq, Lk = qs.shape[2], ks.shape[2]
        mask = torch.arange(Lk)[None] <= torch.arange(Lq)[:, None] + Lk - Lq  # (Lq, Lk)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)[0].transpose(0, 1))
    return torch.cat(outs)  # (total_q, Hq, D)


def test_varlen_layout_by_hand():
    """Every prompt and every response is a query sequence; a response's keys are [prompt | itself]."""
    zeros = partial(torch.zeros, dtype=torch.long)
    packed = pack([(zeros(3), zeros(3, 3), [zeros(3), zeros(1), zeros(2)]), (zeros(2), zeros(3, 2), [zeros(2)])],
                  None)  # rows: prompt 0-2, r1 3-4, r3 5; prompt 6-7, r 8
    cu_q, cu_k, kv_index, max_q, max_k = varlen_layout(packed.spans)
    assert cu_q.tolist() == [0, 3, 5, 6, 8, 9] and cu_q.dtype == torch.int32
    assert kv_index.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 5, 6, 7, 6, 7, 8]
    assert cu_k.tolist() == [0, 3, 8, 12, 14, 17] and (max_q, max_k) == (3, 5)


def test_varlen_path_equals_sdpa_path():
    """The flash-attn varlen layout (run by a torch reference of its documented semantics, as flash-attn
    itself cannot run here) vs the SDPA path: outputs and q/k/v gradients, pads included."""
    g = torch.Generator().manual_seed(1)
    zeros = partial(torch.zeros, dtype=torch.long)
    packed = pack([(zeros(5), zeros(3, 5), [zeros(n) for n in (1, 4, 3)]), (zeros(2), zeros(3, 2), [zeros(2)])],
                  None)
    L = packed.input_ids.shape[1] + 3  # SP pad rows
    inputs = [torch.randn(1, L, h, 8, generator=g) for h in (4, 2, 2)]  # GQA: 4 query heads, 2 KV heads
    weight = torch.randn(1, L, 4, 8, generator=g)
    results = []
    for varlen in (None, _torch_varlen):
        q, k, v = (t.clone().requires_grad_() for t in inputs)
        out = grouped_attention(packed.spans, varlen=varlen)(q, k, v)
        (out * weight).sum().backward()
        results.append((out.detach(), q.grad, k.grad, v.grad))
    for a, b in zip(*results, strict=True):
        assert (a - b).abs().max() <= 1e-6
    assert not results[1][0][:, -3:].any()


def test_micro_batches_hold_whole_groups():
    keys = ["a"] * 4 + ["b"] * 4 + ["c"] * 2 + ["d"] * 9
    assert micro_batches(keys, 8) == [list(range(0, 8)), [8, 9], list(range(10, 18)), [18]]  # d: cut by the cap
    assert micro_batches(keys, 6) == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9], list(range(10, 16)), [16, 17, 18]]
    assert micro_batches(keys[:8], 3) == [[0, 1, 2], [3], [4, 5, 6], [7]]  # below k: a prompt per piece
    assert micro_batches(keys[:8], 3, whole_groups=False) == [[0, 1, 2], [3, 4, 5], [6, 7]]  # the unshared path
    assert micro_batches([], 4) == []


# ----------------------------------------------------------------------------- a whole RL step


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """test_train.py's RL setup: synthetic videos, the tiny model, a dense toy reward."""
    root = tmp_path_factory.mktemp("rl")
    synth.generate(root / "data", train=8, test=4, frames=64, per_video=2, seed=3)
    build_tiny_model(root / "model", default_corpus(root / "data" / "train.jsonl"), seed=0)
    (root / "reward.py").write_text(REWARD)
    return root


@pytest.mark.parametrize("world", [2, 4], ids=["dp1xsp2", "dp2xsp2"])
def test_rl_step_equals_the_unshared_step(setup, tmp_path, world):
    """One step (2 mini-batches of k = 2 samples per prompt, KL on; micro-batches of two packed
    groups; shared: the old/ref forwards pack up to 8 samples, every sample of a prompt) with
    `mrsp.shared_prefix` on and off: the same weights and metrics.

    lr 1e-5, the default: Adam's first steps move every weight by about lr whatever its gradient,
    so a rounding-level difference on a near-zero gradient shows at the scale of lr (1.7e-6 at
    lr 1e-4, for weights that moved 2e-4).
    """
    args = {"optim.lr": 1e-5, "parallel.sp": 2, "optim.micro_batch_size": 4}
    before = load_model(setup / "model").state_dict()
    shared = run_rl(world, rl_args(setup, tmp_path / "on", **args, **{"algo.logprob_micro_batch_size": 8}), tmp_path)
    plain = run_rl(world, rl_args(setup, tmp_path / "off", **args, **{"mrsp.shared_prefix": "false"}), tmp_path)
    assert max_diff(shared["state"], before) > 1e-5  # the step really changed the weights (2 Adam steps)
    assert max_diff(shared["state"], plain["state"]) <= 1e-6
    print(f"world {world}: weights max |shared - unshared|", max_diff(shared["state"], plain["state"]))
    # pg_loss sums terms that cancel (a group's advantages sum to 0): rounding shows at abs ~1e-7
    for key in ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/grad_norm"):
        assert shared["metrics"][0][key] == pytest.approx(plain["metrics"][0][key], rel=1e-5, abs=1e-6), key


def test_sampler_logprobs_equal_packed_old_logprobs(setup, tmp_path):
    """The sampler's log-probs vs the packed sequence-parallel recompute (fp32): same bound as the unpacked path."""
    args = {"parallel.sp": 2, "rollout.max_new_tokens": 16, "optim.micro_batch_size": 4, "mrsp.shared_prefix": "true"}
    result = run_rl(2, rl_args(setup, tmp_path / "lp", **args), tmp_path, task="logprobs")
    assert result["tokens"] > 50
    assert result["diff"] <= 1e-4
