"""`python -m bench mrsp` without its timings: the naive baseline (bench/naive.py) samples exactly what train_rl's
cached, shared-prefix rollout samples (only slower), the FLOPs accounting that sizes the bench model, and the
largest-frames-within-budget rule. (The timings themselves live in bench/mrsp.py, never in a test.)"""

import dataclasses
import os

import pytest
import torch
import torch.multiprocessing as mp

from bench import flops as F
from bench.mrsp import MRSP_SIZE, _largest_within, qwen25_vl_7b_config, run_flops, video_token_flops
from minirl import memplan, synth
from minirl.tiny import make_config, make_processor
from tests.conftest import CORPUS, START_METHOD


def _rollouts(rank, model_dir, data_dir, out_file):
    torch.set_num_threads(1)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)
    from bench.naive import NaiveTrainer
    from minirl import config
    from minirl.distributed import sync_weights
    from sp import share_prompts
    from train_rl import RLConfig, Trainer

    cfg = config.parse(RLConfig, ["--model.path", model_dir, "--data.train", f"{data_dir}/train.jsonl", "--data.frames",
                             "8", "--rollout.n", "3", "--rollout.max_new_tokens", "6", "--optim.batch_size", "2",
                             "--run.out", f"{data_dir}/run", "--run.tensorboard", "false"])
    trainer = NaiveTrainer(cfg)
    sync_weights(trainer.rollout_model, trainer.model)
    calls = []
    trainer.rollout_model.visual.register_forward_hook(lambda *_: calls.append(1))
    items = share_prompts(trainer.load_prompts([2]), trainer.sp_group)
    copies = [dataclasses.replace(p) for p in items]  # train_rl's encode frees the pixels the naive one reads again
    cached = Trainer.rollout(trainer, items, Trainer.encode(trainer, items))  # train_rl's path
    assert all(p.pixel_values_videos is None for p in items)
    encodes_cached = len(calls)
    naive = trainer.rollout(copies, trainer.encode(copies))
    torch.save(dict(cached=cached, naive=naive, encodes=(encodes_cached, len(calls) - encodes_cached)), out_file)


def test_naive_baseline_samples_what_the_cached_rollout_samples(tiny_dir, tmp_path):
    synth.generate(tmp_path, train=2, test=0, frames=64, size=56, fps=8, per_video=1)
    mp.start_processes(_rollouts, args=(str(tiny_dir), str(tmp_path), str(tmp_path / "out.pt")), nprocs=1,
                       start_method=START_METHOD)
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    assert out["encodes"] == (0, 2 * 3)  # cached: the trainer's encode; naive: once per rollout, on the copy
    assert [(s.prompt_index, s.tokens) for s in out["naive"]] == [(s.prompt_index, s.tokens) for s in out["cached"]]
    for a, b in zip(out["naive"], out["cached"], strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_7b_flops_per_video_token_by_hand():
    """Qwen2.5-VL-7B, written out: 4 patches x (patch embedding + 32 blocks) + the merger; 28 decoder layers."""
    vision, decoder = video_token_flops(qwen25_vl_7b_config())
    block = 4 * 1280**2 + 3 * 1280 * 3420  # q, k, v, proj; gate, up, down
    assert vision == 2 * (4 * (3 * 2 * 14 * 14 * 1280 + 32 * block) + 5120 * (5120 + 3584))
    layer = 3584 * 3584 * 2 + 3584 * (4 * 128) * 2 + 3 * 3584 * 18944  # q, o; k, v (4 KV heads); MLP
    assert decoder == 2 * 28 * layer
    assert vision / decoder == pytest.approx(0.394, abs=1e-3)
    # attention's score/value products over a 100k-token video: the decoder's figure grows, per token
    _, long = video_token_flops(qwen25_vl_7b_config(), context=100_000)
    assert long - decoder == 2 * 28 * 100_000 * 3584


def test_bench_model_keeps_7b_vision_to_decoder_ratio():
    hf_config = make_config(make_processor(CORPUS).tokenizer, MRSP_SIZE)
    vision, decoder = video_token_flops(hf_config)
    vision_7b, decoder_7b = video_token_flops(qwen25_vl_7b_config())
    assert (vision / decoder) / (vision_7b / decoder_7b) == pytest.approx(1.0, abs=0.10)


def test_largest_frames_within_budget():
    rows = [dict(frames=16, peak_mb=100), dict(frames=32, peak_mb=150), dict(frames=64, peak_mb=260),
            dict(frames=128, error="killed")]
    assert _largest_within(rows, 200) == (32, 64)
    assert _largest_within(rows, 300) == (64, 128)  # a failed run counts as over the budget
    assert _largest_within(rows[:3], 300) == (64, None)  # fits every frame count measured
    assert _largest_within(rows, 50) == (None, 16)


def test_run_flops_divides_the_workloads_flops_by_the_run_seconds():
    """`bench mrsp` and `bench plan hour` print these: 2 prompts x n = 4 rollouts, KL on, 2 mini-batches."""
    s = memplan.Shape(hidden=4, ffn=6, layers=1, heads=2, kv_heads=1, vocab=10, tied=False, v_hidden=2, v_ffn=3,
                      v_depth=1, v_out=4, patch=1, temporal=1, merge=1, channels=1)
    run = dict(prompt_tokens=3, video_tokens=2, seconds=8.0,
               breakdown_s=dict(encode=0.5, rollout=2.0, old=1.0, ref=1.0, update=3.0, response_tokens=2.2))
    table = run_flops(s, run, n=4, prompts=2, peak_gflops=10.0)
    phase = F.step_flops(s, [(3, 2, [2] * 4)] * 2, mini_batches=2, kl=True, on_policy=False)
    assert list(table) == ["encode", "rollout", "old", "ref", "update", "step"]
    step = table["step"]
    assert step["gflop"] == pytest.approx(sum(phase.values()) / 1e9) and step["seconds"] == 8.0
    assert step["gflops"] == pytest.approx(step["gflop"] / 8.0)
    assert step["of_peak"] == pytest.approx(step["gflops"] / 10.0)
    assert table["update"]["gflops"] == pytest.approx(phase["update"] / 1e9 / 3.0)
    assert table["rollout"]["gflop"] == pytest.approx((phase["prefill"] + phase["decode"]) / 1e9)
