"""The shared prefix in training: an RL step with it on / off, and the update's saved activations per group,
packed vs unpacked.

    python -m bench shared [--prompts 4] [--n 8] [--frames 64] [--micro 4 8] [--train-vision] [--json PATH] ...

Builds its own model (the bench model of `python -m bench mrsp`) and synthetic videos in a temporary
directory, prints two tables and, with --json, writes the same figures as JSON.
"""

import statistics
import tempfile
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoProcessor

from bench import flops
from bench.common import write_json
from bench.mrsp import MRSP_SIZE, run_trainer
from minirl import memplan, synth
from minirl.data import load_jsonl, rl_example
from minirl.distributed import init_distributed
from minirl.model import load_model, rope_index
from minirl.packing import build_micro_batch, build_packed_batch
from minirl.tiny import build_tiny_model
from minirl.video import FrameSampling
from sp import sp_packed_logprobs, sp_token_logprobs


def add_args(parser):
    parser.add_argument("--prompts", type=int, default=4, help="prompts (videos) per step")
    parser.add_argument("--n", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--frames", type=int, default=64, help="frames per video (64 at 168x168: 1,152 video tokens)")
    parser.add_argument("--frame-size", type=int, default=168, help="square frame side, a multiple of 28")
    parser.add_argument("--new-tokens", type=int, default=64, help="max new tokens per rollout")
    parser.add_argument("--micro", type=int, nargs="+", default=[4, 8], help="shared-prefix micro-batch sizes to run")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per run, after 1 warm-up step (median)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every config, interleaved (median of runs)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of the one process")
    parser.add_argument("--train-vision", action="store_true", help="train the vision tower (the update re-encodes)")
    parser.add_argument("--json", default=None, help="also write the figures here")


def run(args):
    """The shared prefix in training: an RL step with it on and off, and the update's saved activations.

    Step: train_rl's Trainer in 1 fresh process per run (`bench.mrsp.run_trainer`), --prompts prompts x --n
    rollouts of --new-tokens tokens, defaults otherwise (on-policy: no old forward; KL off: no reference
    forward), the bench model (`bench.mrsp.MRSP_SIZE`). Configs: unshared (`--mrsp.shared_prefix false`,
    micro-batch 4) and shared at each --micro size; runs interleave over --rounds. Saved activations: one
    group (the first prompt, k random responses of --new-tokens tokens) through the update's forward, packed
    (`build_packed_batch` + `sp_packed_logprobs`) vs unpacked (`build_micro_batch` + `sp_token_logprobs`).
    """
    work = Path(tempfile.mkdtemp(prefix="minirl-bench-shared-"))
    synth.generate(work / "data", train=args.prompts, test=0, frames=max(64, args.frames), size=args.frame_size, fps=8,
                   per_video=1)
    model_dir = build_tiny_model(work / "model", synth.corpus(num_videos=32), size=MRSP_SIZE,
                                 max_pixels=args.frame_size**2)
    base = ["--model.path", model_dir, "--data.train", work / "data/train.jsonl", "--data.frames", args.frames,
            "--data.max_prompt_tokens", 1 << 20, "--rollout.n", args.n, "--rollout.max_new_tokens", args.new_tokens,
            "--optim.batch_size", args.prompts, "--model.train_vision", str(args.train_vision).lower(),
            "--run.tensorboard", "false"]
    configs = {"unshared, micro-batch 4": ["--mrsp.shared_prefix", "false", "--optim.micro_batch_size", 4]}
    configs |= {f"shared, micro-batch {m}": ["--mrsp.shared_prefix", "true", "--optim.micro_batch_size", m]
                for m in args.micro}
    runs = {name: [] for name in configs}
    for r in range(args.rounds):
        for i, (name, flags) in enumerate(configs.items()):
            argv = [*base, *flags, "--run.out", work / f"run{r}-{i}"]
            runs[name].append(run_trainer(work, f"run{r}-{i}", "stage1", argv, args.steps, world=1,
                                          threads=args.threads))
            assert "error" not in runs[name][-1], runs[name][-1]
    rows = []
    shape, peak = memplan.load_shape(str(model_dir)), flops.matmul_peak_gflops(args.threads)
    for name, rs in runs.items():
        med = {k: statistics.median(r["breakdown_s"].get(k, 0.0) for r in rs) for k in ("encode", "rollout", "update")}
        # model FLOPs (bench/flops.py): on-policy, KL off, so no old or reference forward
        response = round(statistics.median(r["breakdown_s"]["response_tokens"] for r in rs))
        work_per_prompt = (rs[0]["prompt_tokens"], rs[0]["video_tokens"], [response] * args.n)
        phases = flops.step_flops(shape, [work_per_prompt] * args.prompts)
        seconds = statistics.median(r["seconds"] for r in rs)
        rows.append(dict(config=name, seconds=seconds, **med,
                         times_s=[t for r in rs for t in r["times_s"]], prompt_tokens=rs[0]["prompt_tokens"],
                         video_tokens=rs[0]["video_tokens"], update_gflops=phases["update"] / med["update"] / 1e9,
                         step_of_peak=sum(phases.values()) / seconds / 1e9 / peak))
    print(f"\n{args.prompts} prompts x {args.n} rollouts x {args.new_tokens} new tokens, {rows[0]['video_tokens']} "
          f"video tokens per prompt ({rows[0]['prompt_tokens']} prompt tokens), 1 process, {args.threads} threads, "
          f"vision tower {'trained' if args.train_vision else 'frozen'}; median of {args.rounds} run(s) x "
          f"{args.steps} steps")
    print(f"{'config':<24} {'s/step':>7} {'update s':>9} {'update share':>13} {'update speedup':>15} "
          f"{'encode s':>9} {'rollout s':>10} {'update GFLOP/s':>15} {'step % peak':>12}")
    for row in rows:
        row["update_share"], row["update_speedup"] = row["update"] / row["seconds"], rows[0]["update"] / row["update"]
        print(f"{row['config']:<24} {row['seconds']:>7.2f} {row['update']:>9.2f} {row['update_share']:>12.0%} "
              f"{row['update_speedup']:>14.2f}x {row['encode']:>9.2f} {row['rollout']:>10.2f} "
              f"{row['update_gflops']:>15.2f} {100 * row['step_of_peak']:>11.1f}%")
    print(f"(GFLOP/s: model FLOPs, bench/flops.py, over seconds; % peak: of a dense fp32 matmul on {args.threads} "
          f"thread(s), {peak:.1f} GFLOP/s)")

    # saved activations of the update's forward, one group, this process (a world of one)
    _, _, device, mesh = init_distributed(sp=1)
    model = load_model(model_dir)
    item = rl_example(load_jsonl(work / "data/train.jsonl")[0], AutoProcessor.from_pretrained(model_dir),
                      FrameSampling(num_frames=args.frames), max_prompt_tokens=1 << 20)
    with torch.no_grad():
        video = model.encode_video(item["pixel_values_videos"], item["video_grid_thw"])  # the cache: no grad
    prompt, P, R, group = item["input_ids"], len(item["input_ids"]), args.new_tokens, mesh["sp"].get_group()
    positions = rope_index(prompt, item["video_grid_thw"], item["second_per_grid_ts"], model.config)  # (3, P)
    saved = []
    print(f"\nupdate forward, saved activations per group (prompt {P} tokens, k responses of {R} tokens, fp32):")
    print(f"{'k':>3} {'packed MB':>10} {'unpacked MB':>12} {'ratio':>7} {'(P + k(R-1)) / k(P + R)':>24}")
    for k in sorted({1, 2, 4, args.n}):
        responses = [torch.randint(0, model.config.vocab_size, (R,), generator=torch.Generator().manual_seed(j))
                     for j in range(k)]
        packed = build_packed_batch(model, [prompt], [positions], [responses], [video])
        plain = build_micro_batch(model, [prompt] * k, [positions] * k, responses, [video] * k)
        _, a = memplan.saved_bytes(partial(sp_packed_logprobs, model, packed["packed"], packed["video_embeds"], group),
                                   model.parameters())
        _, b = memplan.saved_bytes(partial(sp_token_logprobs, model, plain["input_ids"], plain["video_embeds"],
                                           plain["positions"], plain["targets"], group, video_mask=plain["video_mask"]),
                                   model.parameters())
        tokens = (P + k * (R - 1)) / (k * (P + R))
        saved.append(dict(k=k, packed_mb=a / 2**20, unpacked_mb=b / 2**20, ratio=a / b, token_ratio=tokens))
        print(f"{k:>3} {a / 2**20:>10.1f} {b / 2**20:>12.1f} {a / b:>7.3f} {tokens:>24.3f}")
    dist.destroy_process_group()
    if args.json:
        write_json(args.json, dict(workload=dict(vars(args), model_size=MRSP_SIZE, device=str(device)), step=rows,
                                   saved_activations=dict(prompt_tokens=P, response_tokens=R, groups=saved)))
