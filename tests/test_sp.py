"""MR-SP equals one process: all-to-all placement, Ulysses attention, parallel encoding, and
log-probs + every parameter gradient of the tiny Qwen2.5-VL on real videos, at sp = 1, 2, 3, 4.

Workers are started once per world size (gloo, torchrun-style environment with a free port;
world 1 goes through the no-torchrun path) and run every check; the parent computes the
one-process references once and compares. Workers only report numbers: assertions live here.
"""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import START_METHOD, free_port
from torch.distributed.device_mesh import init_device_mesh

import sp
from minirl.data import IGNORE_INDEX
from minirl.distributed import init_distributed, validate_layout
from minirl.model import load_model, rope_index, sdpa_attention
from minirl.packing import build_micro_batch

TOL = 1e-5
MODEL_FOR_WORLD = {1: "tiny_dir", 2: "tiny_dir", 3: "odd_dir", 4: "tiny_dir"}  # sp=3 needs 3 heads


# ----------------------------------------------------------------------------- inputs and references


def _video(processor, frames: np.ndarray):
    """Processor outputs for a chat prompt around one decoded clip (2 fps: 1 s per temporal group)."""
    from transformers.video_utils import VideoMetadata

    meta = VideoMetadata(total_num_frames=len(frames), fps=2.0, frames_indices=list(range(len(frames))))
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], videos=[torch.from_numpy(frames)], video_metadata=[meta],
                     do_sample_frames=False, return_tensors="pt", cap_pixels_per_frame=True)


def _sequence(model, video, residue: int, generator):
    """prompt + random response whose total length L has L % 12 == residue (12 = lcm of 2, 3, 4)."""
    prompt = video["input_ids"][0]
    k = 5 + (residue - len(prompt) - 5) % 12
    response = torch.randint(20, model.config.vocab_size, (k,), generator=generator)
    ids = torch.cat([prompt, response])
    targets = torch.full((1, len(ids)), IGNORE_INDEX)
    targets[0, len(prompt) - 1:-1] = response  # position i predicts token i + 1
    positions = rope_index(ids, video["video_grid_thw"], video["second_per_grid_ts"], model.config)
    return dict(prompt=prompt, response=response, ids=ids, positions=positions[:, None], targets=targets,
                video=video)


def _reference(model, seqs, weights):
    """One process, no SP: each sequence alone, its own video, full logits; loss and grads."""
    model.zero_grad(set_to_none=True)
    logprobs, entropies, loss = [], [], 0.0
    for i, s in enumerate(seqs):
        video_embeds = model.encode_video(s["video"]["pixel_values_videos"], s["video"]["video_grid_thw"])
        hidden = model(model.embed(s["ids"], video_embeds)[None], s["positions"])  # (1, L, C)
        logp = torch.log_softmax(model.logits(hidden[0]), dim=-1)  # (L, V)
        mask = s["targets"][0] != IGNORE_INDEX
        lp = torch.where(mask, logp.gather(1, s["targets"][0].clamp(min=0)[:, None])[:, 0], 0.0)
        ent = torch.where(mask, -(logp.exp() * logp).sum(-1), 0.0)
        loss = loss + (lp * weights[i, :len(lp)]).sum() + 0.1 * ent.sum()
        logprobs.append(lp.detach())
        entropies.append(ent.detach())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return dict(logprobs=logprobs, entropies=entropies, grads=grads)


def _plan(model_dir, mp4_path):
    """Everything the workers need (inputs only) and the one-process expectations."""
    import decord
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    frames = decord.VideoReader(str(mp4_path)).get_batch(list(range(12))).asnumpy()
    clips = {"a": frames[0:10], "b": frames[[11, 9, 7, 5, 3, 1]], "c": frames[2:6]}  # 5, 3, 2 groups
    videos = {name: _video(processor, clip) for name, clip in clips.items()}
    model = load_model(model_dir)
    g = torch.Generator().manual_seed(0)
    cases = {
        "divides": [_sequence(model, videos["a"], 0, g)],
        "ragged": [_sequence(model, videos["a"], 1, g)],
        "batch": [_sequence(model, videos["a"], 5, g), _sequence(model, videos["b"], 2, g)],
    }
    inputs, expected = {}, {}
    for name, seqs in cases.items():
        weights = 0.5 + torch.rand(len(seqs), max(len(s["ids"]) for s in seqs), generator=g)
        inputs[name] = dict(seqs=seqs, weights=weights)
        expected[name] = _reference(model, seqs, weights)
    encode_sets = [["a"], ["c"], ["a", "b"], ["b", "c", "a"]]
    with torch.no_grad():
        for names in encode_sets:
            pixels = torch.cat([videos[n]["pixel_values_videos"] for n in names])
            grid = torch.cat([videos[n]["video_grid_thw"] for n in names])
            expected["+".join(names)] = model.encode_video(pixels, grid)
    return dict(model_dir=str(model_dir), cases=inputs, videos=videos, encode_sets=encode_sets), expected


# ----------------------------------------------------------------------------- worker checks


def _hash(B, L, H, D, offset=0.0):
    """value = f(batch, seq, head, dim), exact in fp32, so any misplaced element shows."""
    b, s, h, d = torch.meshgrid(*(torch.arange(n) for n in (B, L, H, D)), indexing="ij")
    return (((b * 64 + s) * 16 + h) * 4 + d).float() + offset  # (B, L, H, D)


def _primitives(group, offset=0.0):
    """Max abs errors of the all-to-alls and the sequence gather against `full.chunk(P, dim)`."""
    P, r = dist.get_world_size(group), dist.get_rank(group)
    full, weight = _hash(2, 3 * P, 2 * P, 3, offset), -_hash(2, 3 * P, 2 * P, 3) - 7
    err = {}
    x = full.chunk(P, 1)[r].clone().requires_grad_()
    y = sp.seq_to_heads(x, group)  # (B, L, H/P, D)
    err["seq_to_heads"] = (y - full.chunk(P, 2)[r]).abs().max().item()
    err["round_trip"] = (sp.heads_to_seq(y, group) - x).abs().max().item()
    (y * weight.chunk(P, 2)[r]).sum().backward()
    err["seq_to_heads_grad"] = (x.grad - weight.chunk(P, 1)[r]).abs().max().item()
    h = full.chunk(P, 2)[r].clone().requires_grad_()
    z = sp.heads_to_seq(h, group)  # (B, L/P, H, D)
    err["heads_to_seq"] = (z - full.chunk(P, 1)[r]).abs().max().item()
    (z * weight.chunk(P, 1)[r]).sum().backward()
    err["heads_to_seq_grad"] = (h.grad - weight.chunk(P, 2)[r]).abs().max().item()
    L = 3 * P + 1  # not divisible by P: padded, then trimmed
    full, weight = _hash(2, L, 3, 2, offset), -_hash(2, L, 3, 2) - 7
    x = sp.shard(full, group, dim=1).clone().requires_grad_()
    gathered = sp.gather_sequence(x, group, dim=1, length=L)
    err["gather"] = (gathered - full).abs().max().item()
    (gathered * weight).sum().backward()
    err["gather_grad"] = (x.grad - sp.shard(weight, group, dim=1)).abs().max().item()
    return err


def _attention(group):
    """Ulysses attention (with KV replication where Hkv < P) vs one-process SDPA, values and grads."""
    P = dist.get_world_size(group)
    err = {}
    for hq, hkv in [(2 * P, 1), (2 * P, 2), (P, P)]:
        g = torch.Generator().manual_seed(hq * 10 + hkv)
        full = [torch.randn(2, 4 * P + 3, h, 8, generator=g, requires_grad=True) for h in (hq, hkv, hkv)]
        weight = torch.randn(2, 4 * P + 3, hq, 8, generator=g)
        (sdpa_attention(*full) * weight).sum().backward()
        local = [sp.shard(t.detach(), group, dim=1).requires_grad_() for t in full]
        out = sp.ulysses_attn_fn(group)(*local, 0)
        (out * sp.shard(weight, group, dim=1)).sum().backward()
        with torch.no_grad():  # real rows only: a pad row's output is never used
            err[f"attn_{hq}q{hkv}kv"] = (sp.gather_sequence(out, group, 1, full[0].shape[1])
                                         - sdpa_attention(*full)).abs().max().item()
        err[f"attn_{hq}q{hkv}kv_grad"] = max((t.grad - sp.shard(f.grad, group, dim=1)).abs().max().item()
                                             for t, f in zip(local, full, strict=True))
    return err


def _model_case(model, case, group):
    """encode_videos -> the trainers' build_micro_batch -> sp_token_logprobs (embeds each shard) -> backward."""
    seqs = case["seqs"]
    model.zero_grad(set_to_none=True)
    videos = [s["video"] for s in seqs]
    video_embeds = sp.encode_videos(model, [v["video_grid_thw"] for v in videos],
                                    [v["pixel_values_videos"] for v in videos], group)  # one parallel encode
    positions = [rope_index(s["prompt"], v["video_grid_thw"], v["second_per_grid_ts"], model.config)
                 for s, v in zip(seqs, videos, strict=True)]  # (3, Lp) each
    batch = build_micro_batch(model, [s["prompt"] for s in seqs], positions, [s["response"] for s in seqs],
                              video_embeds)
    logprobs, entropy = sp.sp_token_logprobs(model, batch["input_ids"], batch["video_embeds"], batch["positions"],
                                             batch["targets"], group, with_entropy=True,
                                             video_mask=batch["video_mask"])
    ((logprobs * case["weights"]).sum() + 0.1 * entropy.sum()).backward()
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(grad, group=group)  # each rank holds its shard's share of the gradient
        grads[name] = grad
    return dict(logprobs=logprobs.detach(), entropies=entropy.detach(), grads=grads)


def _worker(rank, world, port, plan_path, out_dir):
    torch.set_num_threads(1)
    if world > 1:  # what torchrun would set
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    else:  # the no-torchrun path
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(key, None)
    got_rank, got_world, device, mesh = init_distributed(sp=world)
    group = mesh.get_group("sp")
    out = dict(init=(got_rank, got_world, str(device), tuple(mesh.shape), mesh.mesh_dim_names))
    out["errors"] = {**_primitives(group), **_attention(group)}
    if world == 4:  # dp=2 x sp=2: group-local ranks, and nothing crosses between the dp replicas
        mesh22 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "sp"))
        dp_index = mesh22.get_local_rank("dp")
        errors = _primitives(mesh22.get_group("sp"), offset=10_000.0 * dp_index)
        out["errors"].update({f"dp2xsp2_{k}": v for k, v in errors.items()})
    plan = torch.load(plan_path, weights_only=False)
    model = load_model(plan["model_dir"])
    with torch.no_grad():
        for names in plan["encode_sets"]:
            pixels = torch.cat([plan["videos"][n]["pixel_values_videos"] for n in names])
            grid = torch.cat([plan["videos"][n]["video_grid_thw"] for n in names])
            out["+".join(names)] = sp.parallel_encode(model, pixels, grid, group)
            for pattern in ("alternating", "last"):  # a rank's items need not be contiguous, or exist
                holders = [i % world if pattern == "alternating" else world - 1 for i in range(len(names))]
                items = [{k: v for k, v in plan["videos"][n].items() if h == rank or k != "pixel_values_videos"}
                         for n, h in zip(names, holders, strict=True)]  # pixels on their holder only
                for parallel in (True, False):
                    out[f"held_{pattern}_{parallel}_" + "+".join(names)] = torch.cat(
                        sp.encode_videos(model, [it["video_grid_thw"] for it in items],
                                         [it.get("pixel_values_videos") for it in items], group, parallel, holders))
        # one video per rank, encoded where it was decoded: the rank's share is its own rows, not a copy
        own = plan["videos"]["a"]["pixel_values_videos"]
        grids = [plan["videos"]["a"]["video_grid_thw"]] * world
        pixels = [own if r == rank else None for r in range(world)]
        wants = [(a, b) for a, b, _ in sp.split_temporal_groups(torch.cat(grids), world)]
        rows = sp.fetch_video_rows(pixels, grids, list(range(world)), wants, group, own.shape[1], "cpu")
        out["own_share_is_a_view"] = rows.shape == own.shape and rows.data_ptr() == own.data_ptr()
    for name, case in plan["cases"].items():
        out[name] = _model_case(model, case, group)
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
    mp.start_processes(_worker, args=(world, free_port(), str(tmp / "plan.pt"), str(tmp)),
                       nprocs=world, start_method=START_METHOD)  # one thread each: see conftest
    results = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]
    return world, results, expected


def test_init_distributed_builds_the_mesh(run):
    world, results, _ = run
    for rank, out in enumerate(results):
        assert out["init"] == (rank, world, "cpu", (1, world), ("dp", "sp"))


def test_all_to_all_and_gather_are_exact(run):
    _, results, _ = run
    for out in results:
        exact = {k: v for k, v in out["errors"].items() if not k.startswith("attn_")}
        assert exact and all(v == 0.0 for v in exact.values()), exact


def test_ulysses_attention_with_kv_replication(run):
    _, results, _ = run
    for out in results:
        attn = {k: v for k, v in out["errors"].items() if k.startswith("attn_")}
        assert len(attn) == 6 and max(attn.values()) <= TOL, attn


def test_parallel_encode_equals_one_process(run):
    _, results, expected = run
    for out in results:
        for key in ("a", "c", "a+b", "b+c+a"):  # 5, 2, 8 and 10 temporal groups
            assert torch.equal(out[key], expected[key]), key


def test_encode_from_holders_equals_one_process(run):
    """Pixels only on the rank that decoded each video: each rank fetches its share's rows (or, without
    parallel encoding, every row) and the embeddings are exactly one process's."""
    _, results, expected = run
    for out in results:
        for key in ("a", "c", "a+b", "b+c+a"):
            for pattern in ("alternating", "last"):
                for parallel in (True, False):
                    assert torch.equal(out[f"held_{pattern}_{parallel}_{key}"], expected[key]), (key, pattern)


def test_own_share_is_not_copied(run):
    """Stage 1 at one prompt per rank: each rank encodes the rows it decoded, in place (no pixel copy)."""
    _, results, _ = run
    assert all(out["own_share_is_a_view"] for out in results)


@pytest.mark.parametrize("case", ["divides", "ragged", "batch"])
def test_logprobs_and_grads_equal_one_process(run, case):
    world, results, expected = run
    ref = expected[case]
    for out in results:
        got = out[case]
        for i, (lp, ent) in enumerate(zip(ref["logprobs"], ref["entropies"], strict=True)):
            L = len(lp)
            assert (got["logprobs"][i, :L] - lp).abs().max() <= TOL
            assert (got["entropies"][i, :L] - ent).abs().max() <= TOL
            assert not got["logprobs"][i, L:].any()  # right padding carries no log-prob
        assert got["grads"].keys() == ref["grads"].keys()
        for name, g in ref["grads"].items():
            err = (got["grads"][name] - g).abs().max().item()
            assert err <= TOL * max(1.0, g.abs().max().item()), f"sp={world} {case} {name}: {err}"
    assert any(n.startswith("visual.") and g.abs().max() > 0 for n, g in ref["grads"].items())


def test_kv_replication_keeps_gqa_grouping():
    cases = [(4, 2, 4, 2), (3, 1, 3, 3), (8, 2, 2, 1), (4, 2, 2, 1), (8, 2, 4, 2), (12, 4, 6, 3)]
    for hq, hkv, p, rep in cases:
        assert sp.kv_replication(hq, hkv, p) == rep
        new_kv = torch.arange(hkv).repeat_interleave(rep)  # the head each replicated KV head copies
        per_rank_q, per_rank_kv = hq // p, hkv * rep // p
        for j in range(hq):  # query head j on rank j // per_rank_q, local index j % per_rank_q
            local_kv = (j % per_rank_q) // (per_rank_q // per_rank_kv)
            assert new_kv[(j // per_rank_q) * per_rank_kv + local_kv] == j // (hq // hkv)


def test_invalid_layouts_name_the_numbers(monkeypatch):
    with pytest.raises(ValueError, match=r"dp=1 x sp=3 = 3 does not equal the world size 4.*\[1, 2, 4\]"):
        validate_layout(4, 1, 3)
    with pytest.raises(ValueError, match=r"sp=2 does not divide num_heads=3.*\[1, 3\]"):
        validate_layout(4, 2, 2, num_heads=3, num_kv_heads=1)
    with pytest.raises(ValueError, match=r"num_kv_heads=3 does not divide num_heads=4"):
        validate_layout(2, 1, 2, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match=r"sp=0 must both be >= 1"):
        validate_layout(2, 2, 0)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match=r"sp=3 = 3 does not equal the world size 4"):
        init_distributed(sp=3)  # checked before any process group exists
    with pytest.raises(ValueError, match=r"sp=8 = 8 does not equal the world size 4"):
        init_distributed(sp=8)
    assert not dist.is_initialized()


def test_split_temporal_groups_uneven():
    grid = torch.tensor([[5, 4, 6], [3, 2, 2]])  # 5 groups of 24 rows, then 3 groups of 4 rows
    shares = sp.split_temporal_groups(grid, 3)
    assert [(s, e) for s, e, _ in shares] == [(0, 48), (48, 120), (120, 132)]
    assert [g.tolist() for _, _, g in shares] == [[[2, 4, 6]], [[3, 4, 6]], [[3, 2, 2]]]
    shares = sp.split_temporal_groups(torch.tensor([[2, 4, 6]]), 4)  # fewer groups than ranks
    assert [(s, e, len(g)) for s, e, g in shares] == [(0, 0, 0), (0, 24, 1), (24, 24, 0), (24, 48, 1)]
