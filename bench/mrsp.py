"""MR-SP end to end: RL step time and memory vs frames, naive vs stage 1 vs stages 1+2 (the paper's Figure 2).

    python -m bench mrsp [--quick] [--frames 16 32 ...] [--variants naive shared] [--max-frames naive=512]
                         [--json PATH] [--plot PATH]

Every run is one `train_rl.Trainer` step as a user runs it, in 2 fresh processes. The five variants:
(a) naive: `NaiveTrainer` (bench/naive.py), the baseline the paper compares against: no embedding cache (every
rollout and every old/ref/update forward encodes its video again) and one prefill per rollout; dp = 2.
(b) stage 1: train_rl as it is, sp = 1: each video encoded once, its embeddings cached, one prefill per
prompt; dp = 2. (c) stages 1+2: train_rl with sp = 2: frames encoded across the 2 ranks, Ulysses SP for the
old/ref/update forwards, one row per sample (`--mrsp.shared_prefix false`). (d) = (c) with the shared prefix:
each forward packs a prompt's k = n/2 samples of a mini-batch with one copy of the prompt (minirl/packing.py).
(e) = (d) with activation checkpointing (`--model.gradient_checkpointing true`): the update keeps each layer's
input only and recomputes the rest in the backward, trading one more forward for the prompt's activations.
Builds its own model and synthetic videos in a temporary directory. `python -m bench shared` measures the shared
prefix alone (a 1-process RL step with it on and off, and the update's saved activations per group).
"""

import ctypes
import gc
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoConfig

from bench import flops
from bench.common import PeakMemory, free_port, join_world, longest_within, worker_threads, write_json
from bench.naive import NaiveTrainer
from minirl import config, memplan, synth
from minirl.data import rl_example
from minirl.tiny import build_tiny_model
from train_rl import RLConfig, Trainer

# The paper's Figure 2 variants: a trainer and its train_rl.py flags; each runs on 2 processes (dp = 2 / sp).
MRSP_VARIANTS = {
    "naive": (NaiveTrainer, ["--parallel.sp", "1"]),
    "stage1": (Trainer, ["--parallel.sp", "1"]),
    "stage1+2": (Trainer, ["--parallel.sp", "2", "--mrsp.shared_prefix", "false"]),
    "shared": (Trainer, ["--parallel.sp", "2", "--mrsp.shared_prefix", "true"]),
    "shared+ckpt": (Trainer, ["--parallel.sp", "2", "--mrsp.shared_prefix", "true",
                              "--model.gradient_checkpointing", "true"]),
}
MRSP_LABELS = {"naive": "(a) naive, dp=2", "stage1": "(b) stage 1: embedding cache, dp=2",
               "stage1+2": "(c) stages 1+2: cache + parallel encode + Ulysses SP, sp=2",
               "shared": "(d) stages 1+2 + shared prefix in old/ref/update, sp=2",
               "shared+ckpt": "(e) (d) + activation checkpointing in the update, sp=2"}

# The bench model: minirl.tiny's `bench` decoder with a vision tower sized so that vision FLOPs per merged
# video token / decoder FLOPs per token is Qwen2.5-VL-7B's (`video_token_flops`). The ratio decides what
# re-encoding a video costs next to running the decoder over it, i.e. what the embedding cache can save.
MRSP_SIZE = dict(hidden=256, layers=8, heads=8, kv_heads=2, ffn=768, v_hidden=128, v_depth=2, v_heads=4)


def qwen25_vl_7b_config():
    """The shapes of Qwen2.5-VL-7B-Instruct's config.json (no weights), to count its FLOPs."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           in_channels=3, patch_size=14, temporal_patch_size=2, spatial_merge_size=2))


def video_token_flops(hf_config, context: int = 0) -> tuple[float, float]:
    """(vision tower, decoder) matmul FLOPs per merged video token of a Qwen2.5-VL config, as bench/flops.py
    counts them (attention's QK^T and AV left out). With `context` > 0 the decoder figure includes them for a
    causal sequence of `context` tokens: context / 2 keys per token on average."""
    shape = memplan.from_config(hf_config.to_dict())
    return flops.vision_flops(shape, 1), flops.token_flops(shape) + flops.attention_flops(shape, context) // 2


class _VisionClock:
    """Wall seconds and calls inside the vision tower(s), through forward hooks.

    Needed because the naive variant encodes inside rollout/old/ref/update, where train_rl's
    timing_s/encode (stage 1 only) cannot show it.
    """

    def __init__(self, models):
        self.seconds, self.calls = 0.0, 0
        for model in models:
            if model is not None and model.visual is not None:
                model.visual.register_forward_pre_hook(self._start)
                model.visual.register_forward_hook(self._stop)

    def _start(self, module, args):
        self._t0 = time.perf_counter()

    def _stop(self, module, args, output):
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1


class _StepPeak(PeakMemory):
    """`PeakMemory` for a whole RL step on CPU, with the resident set made to follow the live tensors.

    The peak is the kernel's own high-water mark of the resident set (VmHWM), reset on entry by writing 5
    to /proc/self/clear_refs: exact, no polling. But glibc keeps freed heap blocks resident and reuses them
    in another order, so a step's RSS peak also counts whatever earlier stages freed (by default about
    100 MB of allocator history on every figure here). So a thread hands freed pages back to the OS every
    2 ms (malloc_trim) while the step runs, as CUDA's max_memory_allocated counts live tensors only. That
    slows the step, so the bench times other steps. CUDA: unchanged.
    """

    @staticmethod
    def hwm() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) * 1024

    def __enter__(self):
        if self.device.type == "cuda":
            return super().__enter__()
        gc.collect()
        ctypes.CDLL(None).malloc_trim(0)
        self._base = self.rss()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := the current resident set
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trim, daemon=True)
        self._thread.start()
        return self

    def _trim(self):
        libc = ctypes.CDLL(None)
        while not self._stop.is_set():
            libc.malloc_trim(0)  # every arena: free pages go back to the OS (ctypes releases the GIL)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            return super().__exit__(*exc)
        self._stop.set()
        self._thread.join()
        self.peak = self.hwm() - self._base


# The modules a run's worker processes need, imported once by the fork server (`run_trainer`).
FORKSERVER_PRELOAD = ["bench.mrsp", "train_rl"]


def _mrsp_worker(rank, world, port, variant, argv, steps, log_path, out_path, threads=1):
    """One (variant, frames) run in fresh processes: the variant's Trainer, 1 warm-up step, `steps` timed
    steps, 1 memory step.

    Per timed step: train_rl's timing_s/* breakdown, this process's CPU seconds and the seconds inside the
    vision tower. The memory step: the peak resident memory it adds (`_StepPeak`, which slows the step it
    measures, hence a step of its own). Fresh processes: no other run's peak leaks in.
    Everything the trainer prints goes to `log_path`, so the bench's own output stays a table.
    """
    join_world(rank, world, port, threads)
    with open(log_path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    trainer_class, _ = MRSP_VARIANTS[variant]
    trainer = trainer_class(config.parse(RLConfig, argv))
    clock = _VisionClock([trainer.model, trainer.rollout_model, trainer.ref_model])
    trainer.step()  # warm-up: allocator, thread pools, the optimizer's state
    rows = []
    for _ in range(steps):
        dist.barrier()
        clock.seconds, clock.calls = 0.0, 0
        cpu = time.process_time()
        metrics = trainer.step()
        row = {k.removeprefix("timing_s/"): v for k, v in metrics.items() if k.startswith("timing_s/")}
        rows.append(dict(row, cpu=time.process_time() - cpu, vision=clock.seconds, vision_calls=clock.calls,
                         response_tokens=metrics["response_length/mean"]))
    dist.barrier()
    with _StepPeak(trainer.run.device) as mem:
        trainer.step()
    run = trainer.run
    prompts = [rl_example(ex, run.processor, run.sampling, trainer.cfg.data.max_prompt_tokens)["input_ids"]
               for ex in run.train]
    video_id = trainer.model.config.video_token_id
    mine = dict(steps=rows, peak_mb=mem.peak / 2**20, prompt_tokens=max(len(p) for p in prompts),
                video_tokens=max(int((p == video_id).sum()) for p in prompts), rss_mb=_StepPeak.rss() / 2**20)
    every = [None] * world
    dist.all_gather_object(every, mine)
    if rank == 0:
        Path(out_path).write_text(json.dumps(every))
    dist.destroy_process_group()


def run_trainer(work: Path, name: str, variant: str, argv: list, steps: int, world: int = 2, threads: int = 1) -> dict:
    """Spawn the `world` workers of one run (`variant`'s trainer class, train_rl flags `argv`); per timed step the
    slowest / largest rank, then the median over steps. A run that fails (an exception, or a worker killed for
    memory) is reported as {"error": ...}, not raised."""
    log, out = work / f"{name}.log", work / f"{name}.json"
    start = time.perf_counter()
    # Workers are forked from a server that imported torch, transformers and train_rl once (seconds saved per
    # run) and never ran a step: every run still gets fresh processes.
    mp.set_forkserver_preload(FORKSERVER_PRELOAD)
    try:
        with worker_threads(threads):
            mp.start_processes(_mrsp_worker, args=(world, free_port(), variant, [str(a) for a in argv], steps,
                                                   str(log), str(out), threads),
                               nprocs=world, start_method="forkserver")
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
        return dict(error=str(err).strip().splitlines()[-1], log=str(log))
    ranks = json.loads(out.read_text())
    steps = [{k: max(r["steps"][i][k] for r in ranks) for k in ranks[0]["steps"][i]} for i in range(steps)]
    for i, step in enumerate(steps):  # CPU: the work of all processes together
        step["cpu"] = sum(r["steps"][i]["cpu"] for r in ranks)
    breakdown = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
    return dict(seconds=breakdown.pop("step"), cpu_s=breakdown.pop("cpu"), times_s=[s["step"] for s in steps],
                breakdown_s=breakdown, peak_mb=max(r["peak_mb"] for r in ranks),
                peak_mb_ranks=[r["peak_mb"] for r in ranks], rss_after_mb=max(r["rss_mb"] for r in ranks),
                prompt_tokens=ranks[0]["prompt_tokens"], video_tokens=ranks[0]["video_tokens"],
                run_wall_s=time.perf_counter() - start)


def forward_sizes(variant: str, n: int) -> dict:
    """Samples per forward: one sequence each, except with the shared prefix, where an update forward packs the
    k = n/2 samples of a prompt in a mini-batch with the prompt, and an old/ref forward (no grad) all n."""
    if variant.startswith("shared"):
        return dict(micro_batch_size=max(1, n // 2), logprob_micro_batch_size=n)
    return dict(micro_batch_size=1, logprob_micro_batch_size=0)


def trainer_argv(work: Path, model_dir: Path, variant: str, frames: int, args) -> list:
    """train_rl.py flags of one (variant, frames) run of the Figure-2 workload (args: n, new_tokens, prompts)."""
    argv = [
        "--model.path", model_dir, "--data.train", work / "data/train.jsonl", "--data.frames", frames,
        "--data.max_frames", frames, "--data.max_prompt_tokens", 1 << 20, "--rollout.n", args.n,
        "--rollout.max_new_tokens", args.new_tokens, "--optim.batch_size", args.prompts, "--optim.steps", 100,
        "--algo.kl_coef", 0.01, "--algo.mini_batches", 2,
        "--run.out", work / "runs" / f"{variant}-{frames}", "--run.tensorboard", "false", *MRSP_VARIANTS[variant][1],
    ]
    sizes = forward_sizes(variant, args.n)
    return argv + ["--optim.micro_batch_size", sizes["micro_batch_size"],
                   "--algo.logprob_micro_batch_size", sizes["logprob_micro_batch_size"]]


def run_variant(work: Path, model_dir: Path, variant: str, frames: int, args) -> dict:
    """One (variant, frames) run of the Figure-2 workload on 2 processes (`run_trainer`)."""
    name = f"{variant}-{frames}"
    argv = trainer_argv(work, model_dir, variant, frames, args)
    row = dict(variant=variant, frames=frames, **run_trainer(work, name, variant, argv, args.steps))
    if "error" in row:
        print(f"{frames:>6} {variant:<9} FAILED: {row['error']} (log: {row['log']})", flush=True)
        return row
    print(f"{frames:>6} {variant:<9} {row['seconds']:>7.2f} s/step  {row['cpu_s']:>6.2f} CPU s  "
          f"peak +{row['peak_mb']:.0f} MB  "
          f"({row['prompt_tokens']} prompt tokens; run {row['run_wall_s']:.0f} s)", flush=True)
    return row


def run_flops(shape: memplan.Shape, run: dict, n: int, prompts: int, peak_gflops: float) -> dict[str, dict]:
    """{phase: `flops.phase_table` row} of one run of the Figure-2 workload (`prompts` prompts x `n` rollouts, KL
    on, 2 mini-batches), so that `bench mrsp` and `bench plan hour` count a step's model FLOPs alike."""
    responses = [round(run["breakdown_s"]["response_tokens"])] * n
    phase = flops.step_flops(shape, [(run["prompt_tokens"], run["video_tokens"], responses)] * prompts,
                             mini_batches=2, kl=True, on_policy=False)
    rows = flops.phase_table(phase, dict(run["breakdown_s"], step=run["seconds"]), peak_gflops)
    return {r["phase"]: r for r in rows}


def add_args(parser):
    parser.add_argument("--frames", type=int, nargs="+", default=None,
                        help="frame counts, ascending (default 16 32 64 128 256 512; --quick: 16 32 64 128)")
    parser.add_argument("--quick", action="store_true", help="frames 16 32 64 128 only (about 4 minutes)")
    parser.add_argument("--variants", nargs="+", choices=list(MRSP_VARIANTS), default=list(MRSP_VARIANTS),
                        help="which of (a)-(e) to run (default: all five)")
    parser.add_argument("--max-frames", nargs="+", default=[], metavar="VARIANT=FRAMES",
                        help="run VARIANT only up to FRAMES frames (a time box), e.g. naive=512")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per run, after 1 warm-up step (median)")
    parser.add_argument("--prompts", type=int, default=2, help="prompts (videos) per step, whole world")
    parser.add_argument("--n", type=int, default=4, help="rollouts per prompt")
    parser.add_argument("--new-tokens", type=int, default=16, help="max new tokens per rollout")
    parser.add_argument("--frame-size", type=int, default=56, help="square frame side, a multiple of 28")
    parser.add_argument("--budget-mb", type=float, default=None,
                        help="per-process memory budget: peak MB a step may add (default: the naive variant's "
                             "peak at the second-largest frame count it ran)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--plot", default=None, help="also plot seconds per step vs frames to this PNG")


def _cache_speedup_from_flops(n: int, r: float) -> float:
    """(a)/(b) from FLOPs alone for this workload, in decoder passes over one prompt per prompt (r: the vision
    tower's cost per pass). Naive: the tower runs for each of the n rollouts and for every old, ref and update
    forward (4n r), each rollout prefills its own copy (n); cached: one encode (r), one prefill (1). Both run
    n old + n ref + n update passes, the update's backward counted as 2 more. Decode, rewards, collectives and
    per-call overheads are left out."""
    return n * (4 * r + 6) / (r + 1 + 5 * n)


def _largest_within(rows, budget_mb: float) -> tuple[int | None, int | None]:
    """(largest frame count whose peak fits the budget, smallest larger one that exceeds it or fails)."""
    fits = [r["frames"] for r in rows if "error" not in r and r["peak_mb"] <= budget_mb]
    largest = max(fits, default=None)
    over = [r["frames"] for r in rows if ("error" in r or r["peak_mb"] > budget_mb)
            and (largest is None or r["frames"] > largest)]
    return largest, min(over, default=None)


def _mrsp_plot(path, rows, frames, budget_mb: float | None):
    """Seconds per step vs frames (log-x), one line per variant; hollow markers: runs over the memory budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for variant in MRSP_VARIANTS:
        runs = [r for r in rows if r["variant"] == variant and "error" not in r]
        if not runs:
            continue
        line, = ax.plot([r["frames"] for r in runs], [r["seconds"] for r in runs], "o-", label=MRSP_LABELS[variant])
        over = [r for r in runs if budget_mb is not None and r["peak_mb"] > budget_mb]
        ax.plot([r["frames"] for r in over], [r["seconds"] for r in over], "o", mfc="white", color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xticks(frames, [str(f) for f in frames])
    ax.set_xlabel("frames per video")
    ax.set_ylabel("seconds per RL step")
    budget = f" (hollow: over the {budget_mb:.0f} MB per-process budget)" if budget_mb is not None else ""
    ax.set_title(f"RL step time, 2 processes{budget}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def run(args):
    """The paper's Figure 2, small: RL step time and memory vs frames, naive vs stage 1 vs stages 1+2 (Figure 2).

    One Trainer step of train_rl.py, as a user runs it: 2 processes (gloo, 1 thread each, spawned here), the
    same model, data and global batch for every variant (--prompts prompts x --n rollouts of --new-tokens
    tokens, KL on so a reference forward runs, 2 mini-batches so old log-probs are recomputed, one sequence
    per forward; (d): one packed group of k = n/2 samples per forward). Every (variant, frames) pair runs in
    fresh processes: 1 warm-up step, the median of --steps timed steps, then 1 memory step: the peak resident
    memory it adds, worst rank (see `_mrsp_worker`). --variants and --max-frames time-box a run.
    """
    frames = args.frames or ([16, 32, 64, 128] if args.quick else [16, 32, 64, 128, 256, 512])
    work = Path(tempfile.mkdtemp(prefix="minirl-bench-mrsp-"))
    synth.generate(work / "data", train=args.prompts, test=0, frames=max(512, *frames), size=args.frame_size, fps=8,
                   per_video=1)
    model_dir = build_tiny_model(work / "model", synth.corpus(num_videos=32), size=MRSP_SIZE,
                                 max_pixels=args.frame_size**2)
    ours, qwen7b = AutoConfig.from_pretrained(model_dir), qwen25_vl_7b_config()
    per_token = {"qwen2.5-vl-7b": video_token_flops(qwen7b), "bench": video_token_flops(ours)}
    ratio = {k: v / lm for k, (v, lm) in per_token.items()}
    t, v = ours.text_config, ours.vision_config
    print(f"bench model: decoder hidden {t.hidden_size}, {t.num_hidden_layers} layers, {t.num_attention_heads} / "
          f"{t.num_key_value_heads} KV heads, MLP {t.intermediate_size}; vision tower hidden {v.hidden_size}, depth "
          f"{v.depth}, MLP {v.intermediate_size}")
    print("vision tower / decoder matmul FLOPs per merged video token (attention's QK^T and AV left out):")
    for key, (vis, lm) in per_token.items():
        print(f"  {key:<14} vision {vis / 1e6:>9.2f} MFLOP  decoder {lm / 1e6:>10.2f} MFLOP  ratio {ratio[key]:.3f}")
    print(f"  bench / 7B ratio: {ratio['bench'] / ratio['qwen2.5-vl-7b']:.3f}")
    print(f"workload: {args.prompts} prompts x n={args.n} rollouts x {args.new_tokens} new tokens, KL on, "
          f"2 mini-batches, 1 sequence per forward ((d), (e): a group of {max(1, args.n // 2)} in the update, "
          f"of {args.n} in old/ref); "
          f"{args.frame_size}x{args.frame_size} frames;\n2 processes, gloo, "
          f"1 thread each; fresh processes per run: 1 warm-up, {args.steps} timed steps, 1 memory step\n", flush=True)

    caps = {v: int(n) for v, n in (c.split("=") for c in args.max_frames)}
    names = [v for v in MRSP_VARIANTS if v in args.variants]
    rows = []
    for f in frames:  # frames outermost: a busy machine slows the variants of one frame count alike
        rows += [run_variant(work, model_dir, v, f, args) for v in names if f <= caps.get(v, f)]

    by = {(r["variant"], r["frames"]): r for r in rows}
    ok = {key: r for key, r in by.items() if "error" not in r}

    def ratio_of(a, b, f, field="seconds"):
        return ok[(a, f)][field] / ok[(b, f)][field] if (a, f) in ok and (b, f) in ok else None

    pairs = {"a/e": "shared+ckpt", "a/d": "shared", "a/c": "stage1+2", "a/b": "stage1"}
    speedup = {k: {f: ratio_of("naive", v, f) for f in frames} for k, v in pairs.items()}
    speedup_cpu = {k: {f: ratio_of("naive", v, f, "cpu_s") for f in frames} for k, v in pairs.items()}
    naive_frames = sorted(f for (v, f) in by if v == "naive")
    budget_frames = naive_frames[-2] if len(naive_frames) > 1 else (naive_frames or [None])[-1]
    budget = args.budget_mb or (ok[("naive", budget_frames)]["peak_mb"] if ("naive", budget_frames) in ok else None)
    budget_why = "--budget-mb" if args.budget_mb else f"the naive variant's peak at {budget_frames} frames"

    def cell(key, field, fmt):
        return format(ok[key][field], fmt) if key in ok else "fail" if key in by else "-"

    def fx(x):
        return f"{x:.2f}x" if x is not None else "-"

    print(f"\n{'frames':>6} {'tokens':>6} | {'seconds per step':^35} | {'speedup':^20} | {'CPU speedup':^20} | "
          f"{'peak MB added per process':^35}")
    print(f"{'':>6} {'':>6} | " + " ".join(f"{n:>8}" for n in names) + " | " + " ".join(f"{k:>6}" for k in pairs)
          + " | " + " ".join(f"{k:>6}" for k in pairs) + " | " + " ".join(f"{n:>8}" for n in names))
    for f in frames:
        tokens = next((r["prompt_tokens"] for (v, g), r in ok.items() if g == f), 0)
        print(f"{f:>6} {tokens:>6} | " + " ".join(f"{cell((n, f), 'seconds', '.2f'):>8}" for n in names)
              + " | " + " ".join(f"{fx(speedup[k][f]):>6}" for k in speedup) + " | "
              + " ".join(f"{fx(speedup_cpu[k][f]):>6}" for k in speedup_cpu) + " | "
              + " ".join(f"{cell((n, f), 'peak_mb', '.0f'):>8}" for n in names))

    print("\nwhere the time goes (median seconds, slowest rank; CPU: all processes; decode: decord + processor; "
          "encode: stage 1;\nvision: inside the vision tower, any stage; encodes: vision tower calls per process)")
    parts = ["decode", "encode", "vision", "rollout", "old", "ref", "update"]
    print(f"{'frames':>6} {'variant':<11} {'step':>7} {'CPU':>7} " + " ".join(f"{p:>7}" for p in parts)
          + f" {'encodes':>8}")
    for (variant, f), r in ok.items():
        b = r["breakdown_s"]
        print(f"{f:>6} {variant:<11} {r['seconds']:>7.2f} {r['cpu_s']:>7.2f} "
              + " ".join(f"{b.get(p, 0.0):>7.2f}" for p in parts) + f" {b['vision_calls']:>8.0f}")

    # model FLOPs per phase (bench/flops.py) against the matmul peak of this run's 2 single-thread processes
    peak = 2 * flops.matmul_peak_gflops(threads=1)
    shape = memplan.load_shape(str(model_dir))
    print(f"\nGFLOP/s per phase: model FLOPs (bench/flops.py: the same for every variant) / median seconds ('-': the "
          f"phase's work runs inside others, as (a)'s encode);\n% peak: the step's, of the measured matmul peak of "
          f"2 single-thread processes, {peak:.1f} GFLOP/s")
    shown = ["encode", "rollout", "old", "ref", "update", "step"]
    print(f"{'frames':>6} {'variant':<11} {'GFLOP':>7} " + " ".join(f"{p:>7}" for p in shown) + f" {'% peak':>7}")
    for (variant, f), r in ok.items():
        table = run_flops(shape, r, args.n, args.prompts, peak)
        r["flops"] = dict(peak_gflops=peak, phases=list(table.values()))
        cells = [f"{table[p]['gflops']:.2f}" if table[p]["seconds"] >= 0.01 else "-" for p in shown]
        print(f"{f:>6} {variant:<11} {table['step']['gflop']:>7.2f} " + " ".join(f"{c:>7}" for c in cells)
              + f" {100 * table['step']['of_peak']:>6.1f}%")

    longest, targets = {}, {}
    if budget is not None:
        print(f"\nmemory budget: {budget:.0f} MB added per process in a step ({budget_why}); largest frame count "
              "within it,\nmeasured and from a least-squares line through the measured (frames, MB) points:")
        for variant in names:
            runs = [r for r in rows if r["variant"] == variant]
            largest, over = _largest_within(runs, budget)
            points = [dict(length=r["frames"], saved_mb=r["peak_mb"]) for r in runs if "error" not in r]
            fit = longest_within(points, budget) if len(points) > 1 else None
            longest[variant] = dict(largest=largest, exceeds_at=over, lower_bound=over is None, linear_fit=fit)
            over_text = f"exceeds it at {over}" if over else "fits every frame count measured"
            fit_text = f"{fit:.0f}" if fit is not None else "-"
            print(f"  {MRSP_LABELS[variant]:<58} {largest} frames ({over_text}); fit {fit_text} frames")
    a_max = longest.get("naive", {}).get("largest")
    # targets: (d), (e) 2.1x at 512 frames, 3x at the longest (a) runs, 4x its frames; (c) 2.1x there, 2x the frames
    for key, at_512, at_max, more_target in (("a/e", 2.1, 3.0, 4.0), ("a/d", 2.1, 3.0, 4.0), ("a/c", None, 2.1, 2.0)):
        variant = pairs[key]
        wanted = {512: at_512} if at_512 else {}  # frames: target; at the longest (a) runs, the larger one
        if a_max is not None:
            wanted[a_max] = max(at_max, wanted.get(a_max, 0))
        for f, target in wanted.items():
            if speedup[key].get(f) is not None:
                x, x_cpu = speedup[key][f], speedup_cpu[key][f]
                targets[f"{key} at {f}"] = dict(speedup=x, speedup_cpu=x_cpu, target=target, met=x >= target)
                print(f"target: {key} at {f} frames{' (the longest (a) runs within budget)' if f == a_max else ''} = "
                      f"{fx(x)}, on CPU time {fx(x_cpu)} (>= {target}x: {'met' if x >= target else 'MISSED'})")
        largest_frames = longest.get(variant, {}).get("largest")
        if a_max and largest_frames:
            more, bound = largest_frames / a_max, "at least " if longest[variant]["lower_bound"] else ""
            fits = [longest[v]["linear_fit"] for v in ("naive", variant)]
            fit = fits[1] / fits[0] if None not in fits and fits[0] > 0 else None
            targets[f"{variant} frames / naive frames"] = dict(
                naive=a_max, frames=largest_frames, ratio=more, linear_fit_ratio=fit, lower_bound=bound != "",
                target=more_target, met=more >= more_target)
            print(f"target: {MRSP_LABELS[variant][:3]} fits {bound}{largest_frames} frames vs (a) {a_max} in the same "
                  f"budget: {bound}{more:.1f}x, linear fit {fx(fit)} (>= {more_target}x: "
                  f"{'met' if more >= more_target else 'MISSED'})")
    longest_prompt = max((r["prompt_tokens"] for r in ok.values()), default=0)
    bound = {}
    if longest_prompt:
        with_attn = {k: video_token_flops(c, longest_prompt) for k, c in (("qwen2.5-vl-7b", qwen7b), ("bench", ours))}
        print(f"\nwith attention's QK^T and AV over a {longest_prompt}-token prompt the vision/decoder ratio would be "
              + ", ".join(f"{k} {v / lm:.3f}" for k, (v, lm) in with_attn.items())
              + " (the small decoder's attention weighs more, so the bench under-states what re-encoding costs 7B)")
        vis, lm = with_attn["bench"]
        bound = {"per_token_ratio": _cache_speedup_from_flops(args.n, ratio["bench"]),
                 "with_attention": _cache_speedup_from_flops(args.n, vis / lm)}
        print(f"(a)/(b) from FLOPs alone (see _cache_speedup_from_flops): {fx(bound['per_token_ratio'])} at the "
              f"per-token ratio, {fx(bound['with_attention'])} with attention at {longest_prompt} tokens")

    if args.json:
        write_json(args.json, dict(
            workload=dict(frames=frames, prompts=args.prompts, n=args.n, new_tokens=args.new_tokens, kl_coef=0.01,
                          mini_batches=2, forward_sizes={v: forward_sizes(v, args.n) for v in names},
                          max_frames=caps, frame_size=args.frame_size, processes=2,
                          threads_per_process=1, timed_steps=args.steps, model_size=MRSP_SIZE,
                          variants={k: " ".join([cls.__name__, *flags]) for k, (cls, flags) in MRSP_VARIANTS.items()}),
            flops_per_video_token={k: dict(vision=v, decoder=lm, ratio=v / lm) for k, (v, lm) in per_token.items()},
            runs=rows, speedup={k: {str(f): x for f, x in d.items()} for k, d in speedup.items()},
            speedup_cpu={k: {str(f): x for f, x in d.items()} for k, d in speedup_cpu.items()},
            memory=dict(budget_mb=budget, budget=budget_why, longest_within_budget=longest), targets=targets,
            cache_speedup_from_flops=bound))
    if args.plot:
        _mrsp_plot(args.plot, rows, frames, budget)
