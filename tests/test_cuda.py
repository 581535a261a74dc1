"""GPU checks, run only where CUDA is present (skipped on CPU with the reason).

Run once on one H200 (README, "On a GPU"): the first and last pass (the last after its first run
found the update's loss mask left on the CPU); the nccl check needs 2 GPUs and has not run.
- bf16 (flash-attn when importable, else SDPA) vs fp32 eager attention: logits and log-probs of the
  tiny model on a real video within 0.05 absolute (logits, whose largest is ~1, and log-probs; mean
  log-prob error 0.01). The same comparison on CPU (bf16 SDPA vs fp32) gives 0.008 (logits), 0.005
  (log-probs, max) and 0.0014 (mean): the bounds leave ~6x for other kernels' summation orders
  and stay tight enough to catch a wrong mask, position or dtype (those move log-probs by units).
- SP over nccl (2 processes, 2 GPUs) vs one process: log-probs and every gradient, fp32 with TF32
  off, within 1e-4 (the CPU tests' 1e-5, loosened for GPU reduction orders).
- One RL step of train_rl.py on one GPU (bf16 by `--model.dtype auto`), KL on: finite metrics, an export.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from transformers import AutoProcessor

import sp
from minirl import synth
from minirl.data import IGNORE_INDEX, build_prompt, encode_prompt
from minirl.distributed import init_distributed
from minirl.model import load_model, rope_index, sdpa_attention
from minirl.tiny import build_tiny_model, default_corpus
from minirl.video import FrameSampling, process_video, read_video

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: GPU-only checks")
ROOT = Path(__file__).resolve().parents[1]
LOGIT_TOL, LOGPROB_TOL, LOGPROB_MEAN_TOL, SP_TOL = 0.05, 0.05, 0.01, 1e-4


def _exact_fp32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def eager_attention(q, k, v, layer_idx=None):
    """Causal attention written out in fp32: the reference the fused kernels are held against."""
    B, L, H, D = q.shape
    k, v = (t.repeat_interleave(H // t.shape[2], dim=2) for t in (k, v))  # GQA: (B, L, H, D)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / D**0.5
    scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.float()).to(q.dtype)


def sequence(model_dir, mp4_path, response_tokens: int = 17):
    """A real prompt (8 frames of the mp4) plus a random response, with targets and 3-D positions."""
    processor = AutoProcessor.from_pretrained(model_dir)
    video = read_video(mp4_path, FrameSampling(num_frames=8))
    vision = process_video(processor, video.frames, video.sampled_fps)
    tokens = int(vision["video_grid_thw"].prod()) // processor.video_processor.merge_size**2
    prompt = torch.tensor(encode_prompt(processor, build_prompt("Which colour?", ["A. red", "B. blue"]), tokens))
    model = load_model(model_dir)
    generator = torch.Generator().manual_seed(0)
    response = torch.randint(20, model.config.vocab_size, (response_tokens,), generator=generator)
    ids = torch.cat([prompt, response])
    targets = torch.full((1, len(ids)), IGNORE_INDEX)
    targets[0, len(prompt) - 1:-1] = response  # position i predicts token i + 1
    positions = rope_index(ids, vision["video_grid_thw"], vision["second_per_grid_ts"], model.config)[:, None]
    return dict(ids=ids, targets=targets, positions=positions, **vision)


def forward(model, s, attn_fn):
    """(logits (L, V) fp32, log-probs of the response tokens) of one sequence, no grad."""
    dev = model.device
    with torch.no_grad():
        embeds = model.encode_video(s["pixel_values_videos"].to(dev, model.dtype), s["video_grid_thw"].to(dev))
        hidden = model(model.embed(s["ids"].to(dev), embeds)[None], s["positions"].to(dev), attn_fn)
        logits = model.logits(hidden[0])  # (L, V) fp32
    mask = s["targets"][0] != IGNORE_INDEX
    logp = torch.log_softmax(logits, -1)[mask.to(dev)].gather(1, s["targets"][0][mask][:, None].to(dev))[:, 0]
    return logits.cpu(), logp.cpu()


def test_bf16_matches_fp32_eager(tiny_dir, mp4_path):
    _exact_fp32()
    s = sequence(tiny_dir, mp4_path)
    fp32_cpu = forward(load_model(tiny_dir), s, sdpa_attention)
    fp32 = forward(load_model(tiny_dir, device="cuda"), s, eager_attention)
    assert (fp32[1] - fp32_cpu[1]).abs().max() <= 1e-4  # the same model on both devices
    bf16 = forward(load_model(tiny_dir, dtype=torch.bfloat16, device="cuda"), s, sdpa_attention)  # flash-attn if any
    assert (bf16[0] - fp32[0]).abs().max() <= LOGIT_TOL
    err = (bf16[1] - fp32[1]).abs()
    assert err.max() <= LOGPROB_TOL and err.mean() <= LOGPROB_MEAN_TOL, (err.max(), err.mean())


def _sp_worker(rank, world, port, model_dir, seq_path, out_path):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    _exact_fp32()
    _, _, device, mesh = init_distributed(sp=world)  # nccl on CUDA
    assert dist.get_backend() == "nccl"
    group = mesh.get_group("sp")
    s = torch.load(seq_path, weights_only=False)
    model = load_model(model_dir, device=device)
    embeds = model.encode_video(s["pixel_values_videos"].to(device), s["video_grid_thw"].to(device))
    logp = sp.sp_token_logprobs(model, s["ids"][None], embeds, s["positions"], s["targets"], group)
    logp.sum().backward()
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(grad, group=group)  # each rank holds its shard's share
        grads[name] = grad.cpu()
    if rank == 0:
        torch.save(dict(logp=logp.detach().cpu(), grads=grads), out_path)
    dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs: SP over nccl")
def test_sp_nccl_matches_one_process(tiny_dir, mp4_path, tmp_path):
    _exact_fp32()
    s = sequence(tiny_dir, mp4_path)
    torch.save(s, tmp_path / "seq.pt")
    mp.start_processes(_sp_worker, args=(2, free_port(), str(tiny_dir), str(tmp_path / "seq.pt"),
                                         str(tmp_path / "out.pt")), nprocs=2, start_method="spawn")
    got = torch.load(tmp_path / "out.pt", weights_only=False)
    model = load_model(tiny_dir, device="cuda")
    embeds = model.encode_video(s["pixel_values_videos"].cuda(), s["video_grid_thw"].cuda())
    hidden = model(model.embed(s["ids"].cuda(), embeds)[None], s["positions"].cuda())
    logp = torch.log_softmax(model.logits(hidden[0]), -1)  # (L, V)
    mask = (s["targets"][0] != IGNORE_INDEX).cuda()
    want = torch.where(mask, logp.gather(1, s["targets"][0].clamp(min=0)[:, None].cuda())[:, 0], 0.0)
    want.sum().backward()
    assert (got["logp"][0] - want.detach().cpu()).abs().max() <= SP_TOL
    for name, p in model.named_parameters():
        ref = p.grad.cpu() if p.grad is not None else torch.zeros_like(got["grads"][name])
        assert (got["grads"][name] - ref).abs().max() <= SP_TOL * max(1.0, ref.abs().max().item()), name


def test_one_rl_step_on_gpu(tmp_path):
    synth.generate(tmp_path / "data", train=4, test=0, frames=64, per_video=2, seed=3)
    build_tiny_model(tmp_path / "model", default_corpus(tmp_path / "data/train.jsonl"), seed=0)
    cmd = [sys.executable, "train_rl.py", "--model.path", str(tmp_path / "model"), "--data.train",
           str(tmp_path / "data/train.jsonl"), "--data.frames", "8", "--rollout.n", "4", "--rollout.max_new_tokens",
           "16", "--optim.batch_size", "2", "--optim.steps", "1", "--algo.kl_coef", "0.05", "--run.out",
           str(tmp_path / "rl"), "--run.tensorboard", "false"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    (row,) = [json.loads(line) for line in (tmp_path / "rl/metrics.jsonl").read_text().splitlines()]
    numbers = [v for v in row.values() if isinstance(v, float)]
    assert numbers and all(v == v and abs(v) != float("inf") for v in numbers), row
    assert (tmp_path / "rl/hf/config.json").is_file()
