"""Peak memory of each phase of one RL step: where the peak of a `bench_mrsp.py` run is.

    python studies/phase_peak.py VARIANT FRAMES       e.g. shared+ckpt 2048

The bench_mrsp workload (2 processes, 2 prompts x n = 4 x 16 new tokens, KL on, 2 mini-batches); after a warm-up
step, one step whose `timed` phases (decode, share, encode, rollout, old, ref, update) each run under
bench_mrsp's `_StepPeak`. Prints rank 0's peak MB per phase above the step's start, and where the phase began.
"""

import argparse
import contextlib
import ctypes
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_mrsp as bm  # noqa: E402
import train_rl  # noqa: E402
from bench import free_port  # noqa: E402
from minirl import config as C  # noqa: E402
from minirl import synth  # noqa: E402
from minirl.tiny import build_tiny_model  # noqa: E402


def worker(rank, world, port, variant, argv, out):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    trainer = bm.MRSP_VARIANTS[variant][0](C.parse(train_rl.RLConfig, argv))
    trainer.step()  # warm-up
    peaks, plain = {}, train_rl.timed

    @contextlib.contextmanager
    def timed(times, name):  # train_rl's `timed`, with each phase's peak recorded
        if name == "step":
            gc.collect()
            ctypes.CDLL(None).malloc_trim(0)
            peaks["start"] = bm._StepPeak.rss()
            with plain(times, name):
                yield
            return
        with bm._StepPeak(trainer.device) as mem, plain(times, name):
            yield
        mb = (mem._base + mem.peak - peaks["start"]) / 2**20
        peaks[name] = max(peaks.get(name, mb), mb)
        peaks.setdefault(f"{name} starts at", (mem._base - peaks["start"]) / 2**20)

    train_rl.timed = timed
    trainer.step()
    if rank == 0:
        Path(out).write_text(json.dumps({k: round(v, 1) for k, v in peaks.items() if k != "start"}))
    dist.destroy_process_group()


def main(variant: str, frames: int):
    work = Path(tempfile.mkdtemp(prefix="minirl-phase-peak-"))
    synth.generate(work / "data", train=2, test=0, frames=frames, size=56, fps=8, per_video=1)
    model = build_tiny_model(work / "model", synth.corpus(num_videos=32), size=bm.MRSP_SIZE, max_pixels=56**2)
    argv = bm.trainer_argv(work, model, variant, frames, argparse.Namespace(n=4, new_tokens=16, prompts=2))
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.start_processes(worker, args=(2, free_port(), variant, [str(a) for a in argv], str(work / "out.json")),
                       nprocs=2, start_method="spawn")
    print(variant, frames, "frames, MB above the step's start:", (work / "out.json").read_text())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
