"""The memory plan (minirl/memplan.py): the formula per GPU, held against measured RL steps, and an hour-long
video on a laptop.

    python -m bench plan [--table] [--model M] [--frames F ...] ...     the plan per GPU, no model built
                                                  (the flags of `python -m minirl.memplan`)
    python -m bench plan validate [VARIANT=FRAMES ...] [--json PATH]   the plan vs measured step peaks on CPU
                                                  (default: the 7 configurations of PLAN_CHECKS)
    python -m bench plan hour [--frames 3600] [--variants naive shared] [--json PATH]
                                                  one RL step on hour-long videos (3,600 frames at 1 fps): seconds
                                                  and GFLOP/s per phase against a matmul peak measured in the same run

validate and hour run `python -m bench mrsp` steps (one train_rl Trainer step per run, 2 fresh processes, gloo,
fp32, the bench model, 2 prompts x n = 4 rollouts x 16 new tokens, KL on, 2 mini-batches; 1 warm-up, 1 timed and
1 memory step) and put next to each measured peak the plan's `step_added` for the same shapes: the bench model's
config.json, the measured prompt's token counts, one prompt per process, the variant's sp, shared prefix and
checkpointing (`variant_setup`), the CPU's flash SDPA.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from bench import flops, mrsp
from bench.common import write_json
from minirl import memplan, synth
from minirl.tiny import build_tiny_model

# sp 1 / 2, 64 - 1,024 frames, shared prefix off / on, checkpointing off / on
PLAN_CHECKS = [("stage1", 64), ("stage1", 512), ("stage1", 1024), ("stage1+2", 256), ("stage1+2", 1024),
               ("shared", 1024), ("shared+ckpt", 1024)]
WORKLOAD = argparse.Namespace(n=4, new_tokens=16, prompts=2, steps=1)  # bench mrsp's defaults, 1 timed step


def workspace(prefix: str, frames: int, fps: int) -> tuple[Path, Path]:
    """(work folder, model folder): `WORKLOAD.prompts` synthetic videos of `frames` frames at `fps`, and the
    bench model."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    synth.generate(work / "data", train=WORKLOAD.prompts, test=0, frames=frames, size=56, fps=fps, per_video=1)
    model_dir = build_tiny_model(work / "model", synth.corpus(num_videos=32), size=mrsp.MRSP_SIZE, max_pixels=56**2)
    return work, model_dir


def variant_setup(variant: str) -> dict:
    """The plan's `Setup` fields of a `bench.mrsp` variant, read off the trainer and the train_rl flags it runs
    with, so that every variant the validator accepts is planned as it runs (a variant the plan cannot model
    is refused by name)."""
    if variant not in mrsp.MRSP_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: the plan models {', '.join(mrsp.MRSP_VARIANTS)}")
    trainer, argv = mrsp.MRSP_VARIANTS[variant]
    flags = dict(zip(argv[::2], argv[1::2], strict=True))
    sp = int(flags["--parallel.sp"])
    return dict(sp=sp, ulysses=sp > 1, parallel_encode=trainer is not mrsp.NaiveTrainer,
                shared_prefix=flags.get("--mrsp.shared_prefix") == "true",
                grad_ckpt=flags.get("--model.gradient_checkpointing") == "true",
                micro_batch=mrsp.forward_sizes(variant, WORKLOAD.n)["micro_batch_size"])


def planned_mb(shape: memplan.Shape, variant: str, frames: int, run: dict) -> float:
    """The plan's peak MB a step adds per process for one `bench.mrsp` run of `variant` (its measured token counts)."""
    setup = memplan.Setup(gpus=2, frames=frames, tokens_per_frame=run["video_tokens"] / frames,
                          text_tokens=run["prompt_tokens"] - run["video_tokens"], n=WORKLOAD.n,
                          response=WORKLOAD.new_tokens, prompts_per_gpu=1, kl=True, compute_bytes=4,
                          host_is_device=True, **variant_setup(variant))
    return memplan.plan(shape, setup)["step_added"] / 2**20


def validate(checks=PLAN_CHECKS, json_path=None) -> list[dict]:
    """Predicted vs measured peak per process, one `bench.mrsp` run per (variant, frames) in `checks`."""
    for variant, _ in checks:
        variant_setup(variant)  # refuse what the plan cannot model before any run
    work, model_dir = workspace("minirl-plan-check-", max(64, *(f for _, f in checks)), fps=8)
    shape = memplan.load_shape(str(model_dir))
    rows = []
    print(f"{'variant':<9} {'frames':>6} {'tokens':>6} {'plan MB':>8} {'measured MB':>12} {'plan/measured':>14}")
    for variant, frames in checks:
        run = mrsp.run_variant(work, model_dir, variant, frames, WORKLOAD)
        if "error" in run:
            continue
        predicted = planned_mb(shape, variant, frames, run)
        rows.append(dict(variant=variant, frames=frames, prompt_tokens=run["prompt_tokens"], plan_mb=predicted,
                         measured_mb=run["peak_mb"], ratio=predicted / run["peak_mb"]))
        print(f"{variant:<9} {frames:>6} {run['prompt_tokens']:>6} {predicted:>8.1f} {run['peak_mb']:>12.1f} "
              f"{predicted / run['peak_mb']:>14.2f}", flush=True)
    within = sum(abs(r["ratio"] - 1) <= 0.25 for r in rows)
    print(f"{within} of {len(rows)} within 25%")
    if json_path:
        write_json(json_path, dict(rows=rows, within_25_percent=within))
    return rows


PHASES = ["decode", "encode", "vision", "rollout", "old", "ref", "update", "step"]


def hour(frames=3600, variants=("naive", "shared"), json_path=None) -> list[dict]:
    """An hour-long video on a laptop: one RL step of the bench model on `frames`-frame videos sampled at
    1 fps (3,600: an hour), every frame kept, per variant of `bench.mrsp`: tokens per prompt, peak MB a step adds
    on each rank against the plan's, the Trainer's seconds per phase (vision: inside the vision tower, any
    phase: where the naive variant's re-encoding goes) and, as `bench mrsp` reports them, the model FLOPs'
    GFLOP/s per phase against the matmul peak of the run's 2 single-thread processes."""
    work, model_dir = workspace("minirl-hour-", frames, fps=1)
    shape = memplan.load_shape(str(model_dir))
    rows = []
    for variant in variants:
        run = mrsp.run_variant(work, model_dir, variant, frames, WORKLOAD)
        if "error" not in run:
            run["plan_mb"] = planned_mb(shape, variant, frames, run)
        rows.append(run)
    print(f"\n{frames} frames at 1 fps ({frames / 3600:.2f} h), {WORKLOAD.prompts} prompts x n = {WORKLOAD.n} x "
          f"{WORKLOAD.new_tokens} new tokens, KL on; seconds: 1 step, slowest rank; MB: peak a step adds")
    print(f"{'variant':<9} {'prompt':>7} {'video':>7} {'MB rank 0 / 1':>14} {'plan MB':>8} {'plan/meas':>9} "
          + " ".join(f"{p:>7}" for p in PHASES))
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<9} FAILED: {r['error']} (log: {r['log']})")
            continue
        seconds = dict(r["breakdown_s"], step=r["seconds"])
        print(f"{r['variant']:<9} {r['prompt_tokens']:>7} {r['video_tokens']:>7} "
              f"{' / '.join(f'{mb:.0f}' for mb in r['peak_mb_ranks']):>14} {r['plan_mb']:>8.0f} "
              f"{r['plan_mb'] / r['peak_mb']:>9.2f} " + " ".join(f"{seconds.get(p, 0.0):>7.1f}" for p in PHASES))
    peak = 2 * flops.matmul_peak_gflops(threads=1)  # once, after the runs, as bench mrsp measures it
    print(f"\nGFLOP/s per phase: model FLOPs (bench/flops.py) / the seconds above ('-': under 0.01 s, the phase's "
          f"work runs inside others, as naive's encode);\nGFLOP: one step's; % peak: the step's GFLOP/s, of the "
          f"measured matmul peak of 2 single-thread processes, {peak:.1f} GFLOP/s")
    shown = ["encode", "rollout", "old", "ref", "update", "step"]
    print(f"{'variant':<9} {'GFLOP':>7} " + " ".join(f"{p:>7}" for p in shown) + f" {'% peak':>7}")
    for r in rows:
        if "error" in r:
            continue
        table = mrsp.run_flops(shape, r, WORKLOAD.n, WORKLOAD.prompts, peak)
        r["flops"] = dict(peak_gflops=peak, phases=list(table.values()))
        cells = [f"{table[p]['gflops']:.2f}" if table[p]["seconds"] >= 0.01 else "-" for p in shown]
        print(f"{r['variant']:<9} {table['step']['gflop']:>7.2f} " + " ".join(f"{c:>7}" for c in cells)
              + f" {100 * table['step']['of_peak']:>6.1f}%")
    if json_path:
        write_json(json_path, dict(frames=frames, fps=1, workload=vars(WORKLOAD), runs=rows))
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] not in (["validate"], ["hour"]):  # the formula alone: its own flags (python -m minirl.memplan -h)
        return memplan.main(argv)
    parser = argparse.ArgumentParser(prog="python -m bench plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    validate_args = sub.add_parser("validate", help=validate.__doc__.splitlines()[0])
    validate_args.add_argument("checks", nargs="*", metavar="VARIANT=FRAMES", help="e.g. shared=1024")
    validate_args.add_argument("--json", default=None)
    hour_args = sub.add_parser("hour", help=hour.__doc__.splitlines()[0])
    hour_args.add_argument("--frames", type=int, default=3600, help="frames per video, 1 per second")
    hour_args.add_argument("--variants", nargs="+", choices=list(mrsp.MRSP_VARIANTS), default=["naive", "shared"])
    hour_args.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.command == "validate":
        checks = [(v, int(f)) for v, f in (c.split("=") for c in args.checks)] or PLAN_CHECKS
        validate(checks, args.json)
    else:
        hour(args.frames, args.variants, args.json)


if __name__ == "__main__":
    main()
