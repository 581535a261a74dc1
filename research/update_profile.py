"""Where the update's time goes: one RL step of the shared-prefix bench workload (`python -m bench shared`: the
bench model, 4 prompts x 8 rollouts x 64 new tokens, 64 frames of 168 x 168, 1 process), its update under
torch.profiler, self CPU time grouped into matmul kernels, attention kernels and everything else.

    OMP_NUM_THREADS=1 python -m research.update_profile [--threads 1]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import free_port, join_world
from bench.mrsp import MRSP_SIZE
from minirl import config, synth
from minirl.tiny import build_tiny_model
from train_rl import RLConfig, Trainer

KERNELS = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm"), "attention": ("aten::_scaled_dot_product",)}


class ProfiledTrainer(Trainer):
    profile = False

    def update(self, *args, **kwargs):
        if not self.profile:
            return super().update(*args, **kwargs)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            out = super().update(*args, **kwargs)
            self.update_s = time.perf_counter() - start
        self.events = prof.key_averages()
        return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="update-profile-"))
    synth.generate(work / "data", train=4, test=0, frames=64, size=168, fps=8, per_video=1)
    build_tiny_model(work / "model", synth.corpus(num_videos=32), size=MRSP_SIZE, max_pixels=168**2)
    join_world(0, 1, free_port(), args.threads)
    argv = ["--model.path", work / "model", "--data.train", work / "data/train.jsonl", "--data.frames", 64,
            "--data.max_prompt_tokens", 1 << 20, "--rollout.n", 8, "--rollout.max_new_tokens", 64,
            "--optim.batch_size", 4, "--run.tensorboard", "false", "--run.out", work / "run"]
    trainer = ProfiledTrainer(config.parse(RLConfig, [str(a) for a in argv]))
    trainer.step()  # warm-up
    trainer.profile = True
    metrics = trainer.step()
    print({k: round(v, 2) for k, v in metrics.items() if k.startswith("timing_s/")})
    totals, other = dict.fromkeys([*KERNELS, "other"], 0.0), []
    for e in trainer.events:
        group = next((k for k, prefixes in KERNELS.items() if e.key.startswith(prefixes)), "other")
        totals[group] += e.self_cpu_time_total / 1e6
        if group == "other":
            other.append((e.self_cpu_time_total / 1e3, e.key, e.count))
    total = sum(totals.values())
    print(f"update {trainer.update_s:.2f} s: " + ", ".join(f"{k} {v:.2f} s ({100 * v / total:.1f}%)"
                                                        for k, v in totals.items()))
    for ms, key, count in sorted(other, reverse=True)[:10]:
        print(f"  {key:<48} {ms:8.1f} ms  {count} calls")


if __name__ == "__main__":
    main()
