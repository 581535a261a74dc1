"""The performance figures of the two MR-SP engines, each against the path it replaces.

    python bench.py rollout [--json PATH]   our KV-cache sampler vs transformers' generate
    python bench.py sp      [--json PATH]   sequence-parallel prefill + backward: memory and time vs sp
    python bench.py shared  [--json PATH]   the shared prefix in training: an RL step with it on / off, and
                                            the update's saved activations per group, packed vs unpacked
    python bench.py plan    [--table ...]   the memory plan per GPU (minirl/memplan.py; no model is built)

Each subcommand builds its own tiny model (and synthetic videos) in a temporary directory, prints
a table and, with --json, writes the same figures as JSON. A whole RL step, naive vs stage 1 vs
stages 1+2 (+ shared prefix) vs frames, is bench_mrsp.py, which shares the helpers below; the plan
against measured steps, and an hour-long video, bench_plan.py.
"""

import argparse
import ctypes
import gc
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, Qwen2Config

from minirl import memplan, synth
from minirl.data import IGNORE_INDEX, load_jsonl, rl_example
from minirl.model import QwenVL, load_model, prepare_inputs
from minirl.tiny import build_tiny_model
from minirl.video import FrameSampling
from rollout import SamplingParams, sample
from sp import init_distributed, sp_token_logprobs

# ----------------------------------------------------------------------------- shared helpers


class PeakMemory:
    """Peak memory while the block runs, in bytes.

    CUDA: torch's max_memory_allocated (reset on entry). CPU: tracemalloc cannot see torch's
    allocations, and resource's ru_maxrss is a process-lifetime peak that never goes down, so a
    thread polls the resident set size (/proc/self/statm, Linux) every millisecond and we report
    the peak *above the level at entry*: what the block itself added. Freed heap memory is handed
    back to the OS first (glibc malloc_trim), or the block would reuse it unseen.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self):
        while not self._stop.is_set():
            self._max = max(self._max, self.rss())
            time.sleep(0.001)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            gc.collect()
            ctypes.CDLL(None).malloc_trim(0)
            self._base = self._max = self.rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, self.rss()) - self._base


def timed(fn, device: torch.device):
    """(result, wall seconds, CPU seconds, peak bytes) of one call. CPU seconds are this process's,
    all threads: unlike wall time they do not grow while other processes hold the cores."""
    with PeakMemory(device) as mem:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return result, seconds, cpu, mem.peak


def write_json(path, figures: dict):
    Path(path).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- rollout


def rollout_args(parser):
    parser.add_argument("--prompts", type=int, default=4, help="prompts (videos) per batch")
    parser.add_argument("--n", type=int, nargs="+", default=[8, 1], help="samples per prompt, one run each")
    parser.add_argument("--frames", type=int, default=64, help="frames per video")
    parser.add_argument("--frame-size", type=int, default=168, help="square frame side, a multiple of 28")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine and n (median)")
    parser.add_argument("--model-size", default="bench", help="a minirl.tiny size (hidden 256 for 'bench')")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the figures here")


def bench_rollout(args):
    """Our sampler vs transformers' generate(num_return_sequences=n), same weights, same prompts.

    Both start from the same processor outputs and both pay the vision tower: ours encodes each
    video once (the embedding cache) and prefills each prompt once; transformers' generate
    expands every prompt n times, video included, as TRL's non-vLLM path does (4 prompts in one
    left-padded batch). Temperature 1, no top-k/top-p, no eos: both generate exactly
    --new-tokens tokens per sample. Runs of the two engines alternate, so a busy machine slows
    both alike.
    """
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="minirl-bench-rollout-") as tmp:
        _bench_rollout(args, Path(tmp), torch.device(args.device))


def _bench_rollout(args, work: Path, device: torch.device):
    synth.generate(work / "data", train=0, test=args.prompts, frames=args.frames, size=args.frame_size,
                   fps=8, per_video=1)
    model_dir = build_tiny_model(work / "model", synth.corpus(num_videos=32), size=args.model_size,
                                 max_pixels=args.frame_size**2)
    processor = AutoProcessor.from_pretrained(model_dir)
    items = [rl_example(ex, processor, FrameSampling(num_frames=args.frames), max_prompt_tokens=1 << 20)
             for ex in load_jsonl(work / "data/test.jsonl")]
    ours_model = load_model(model_dir, device=device).eval()
    hf_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).to(device).eval()
    cfg, video_id = ours_model.config, hf_model.config.video_token_id
    lengths = [len(it["input_ids"]) for it in items]
    video_tokens = [int((it["input_ids"] == video_id).sum()) for it in items]
    print(f"model: hidden {cfg.hidden_size}, {cfg.num_layers} layers, {cfg.num_heads} heads / "
          f"{cfg.num_kv_heads} KV heads, vision depth {hf_model.config.vision_config.depth}; "
          f"device {device}, {torch.get_num_threads()} threads")
    print(f"prompts: {len(items)}, lengths {lengths} tokens ({video_tokens} video tokens, {args.frames} "
          f"frames of {args.frame_size}x{args.frame_size}); {args.new_tokens} new tokens per sample")

    # transformers: one left-padded batch, as TRL builds it
    longest = max(lengths)
    pad = processor.tokenizer.pad_token_id
    hf_batch = {"input_ids": torch.full((len(items), longest), pad),
                "attention_mask": torch.zeros(len(items), longest, dtype=torch.long)}
    for b, it in enumerate(items):
        hf_batch["input_ids"][b, longest - len(it["input_ids"]):] = it["input_ids"]
        hf_batch["attention_mask"][b, longest - len(it["input_ids"]):] = 1
    hf_batch["mm_token_type_ids"] = (hf_batch["input_ids"] == video_id).long() * 2  # 2 marks a video token
    for key in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        hf_batch[key] = torch.cat([it[key] for it in items])
    hf_batch = {k: v.to(device) for k, v in hf_batch.items()}
    # its DynamicCache holds every row of the n-times expanded, padded batch at full length
    bytes_per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * ours_model.dtype.itemsize

    def run_hf(n, new_tokens) -> int:
        out = hf_model.generate(**hf_batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                num_return_sequences=n, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                eos_token_id=None, pad_token_id=pad)
        assert out.shape == (len(items) * n, longest + new_tokens), out.shape
        return bytes_per_token * out.numel()

    def run_ours(n, new_tokens) -> int:
        with torch.no_grad():
            prompts = [prepare_inputs(ours_model, it["input_ids"], it["pixel_values_videos"],
                                      it["video_grid_thw"], it["second_per_grid_ts"]) for it in items]
        result = sample(ours_model, prompts, SamplingParams(n=n, max_new_tokens=new_tokens, seed=0))
        assert all(s.length == new_tokens for s in result.samples)
        return result.prompt_cache_bytes + result.response_cache_bytes

    engines = {"minirl": run_ours, "transformers": run_hf}
    for fn in engines.values():  # warm-up (allocator, thread pools, lazy imports): prefill + 2 tokens
        fn(1, 2)
    rows, speedup, speedup_cpu = [], {}, {}
    for n in args.n:
        runs = {engine: [] for engine in engines}  # engine -> [(KV bytes, wall s, CPU s, peak bytes)]
        for _ in range(args.repeats):  # interleaved
            for engine, fn in engines.items():
                runs[engine].append(timed(partial(fn, n, args.new_tokens), device))
        figures = {}
        for engine, rs in runs.items():
            seconds, cpu = statistics.median(r[1] for r in rs), statistics.median(r[2] for r in rs)
            figures[engine] = dict(n=n, engine=engine, median_s=seconds, times_s=[r[1] for r in rs],
                                   median_cpu_s=cpu, tokens_per_s=len(items) * n * args.new_tokens / seconds,
                                   peak_mem_mb=max(r[3] for r in rs) / 2**20, kv_cache_mb=rs[0][0] / 2**20)
        speedup[str(n)] = figures["transformers"]["median_s"] / figures["minirl"]["median_s"]
        speedup_cpu[str(n)] = figures["transformers"]["median_cpu_s"] / figures["minirl"]["median_cpu_s"]
        rows += [figures["minirl"], figures["transformers"]]

    mem = "peak CUDA alloc" if device.type == "cuda" else "peak RSS added"
    print(f"\n{'n':>3} {'engine':<13} {'time s':>8} {'CPU s':>7} {'tokens/s':>9} {mem + ' MB':>20} "
          f"{'KV cache MB':>12} {'speedup (CPU)':>15}")
    for r in rows:
        key = str(r["n"])
        ratio = f"{speedup[key]:.1f}x {speedup_cpu[key]:.1f}x" if r["engine"] == "minirl" else ""
        print(f"{r['n']:>3} {r['engine']:<13} {r['median_s']:>8.2f} {r['median_cpu_s']:>7.2f} "
              f"{r['tokens_per_s']:>9.0f} {r['peak_mem_mb']:>20.0f} {r['kv_cache_mb']:>12.1f} {ratio:>15}")
    mem_how = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
               else "resident set size polled every 1 ms, peak minus the level at the start of the run")
    print(f"\ntime: median wall time of {args.repeats} interleaved runs, video encoding + prefill + decode; "
          "CPU s: this process's CPU time, all threads (robust to other processes' load); "
          f"speedup = transformers / minirl; {mem}: {mem_how}; KV cache: ours = the tensors allocated, "
          "transformers' = its padded, n-times expanded cache.")
    if args.json:
        workload = dict(prompts=len(items), prompt_tokens=lengths, video_tokens=video_tokens,
                        frames=args.frames, frame_size=args.frame_size, new_tokens=args.new_tokens,
                        model_size=args.model_size,
                        hidden_size=cfg.hidden_size, device=str(device), threads=torch.get_num_threads(),
                        repeats=args.repeats)
        write_json(args.json, dict(workload=workload, runs=rows, speedup=speedup, speedup_cpu=speedup_cpu))


# ----------------------------------------------------------------------------- sp


def sp_args(parser):
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768],
                        help="sequence lengths, ascending")
    parser.add_argument("--sp", type=int, nargs="+", default=[1, 2, 4], help="sequence-parallel degrees")
    parser.add_argument("--model", default=None, help="checkpoint dir whose decoder is used (default: random)")
    parser.add_argument("--hidden", type=int, default=128, help="random model: hidden size")
    parser.add_argument("--layers", type=int, default=2, help="random model: decoder layers")
    parser.add_argument("--heads", type=int, default=4, help="random model: attention heads")
    parser.add_argument("--kv-heads", type=int, default=2, help="random model: KV heads (< sp: replicated)")
    parser.add_argument("--ffn", type=int, default=384, help="random model: MLP size")
    parser.add_argument("--vocab", type=int, default=2048, help="random model: vocabulary")
    parser.add_argument("--response", type=int, default=256, help="response tokens at the end of the sequence")
    parser.add_argument("--checkpoint", action="store_true", help="gradient checkpointing per decoder layer")
    parser.add_argument("--budget-mb", type=float, default=None,
                        help="per-rank activation budget for the longest-fit column (default: sp=1 at the "
                             "shortest length)")
    parser.add_argument("--json", default=None, help="also write the figures here")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sp_model(args) -> QwenVL:
    if args.model:
        return load_model(args.model)
    torch.manual_seed(0)
    return QwenVL(Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
                              num_hidden_layers=args.layers, num_attention_heads=args.heads,
                              num_key_value_heads=args.kv_heads))


def _sp_step(model, length: int, response: int, group, device):
    """One prefill + backward of -sum(response log-probs); returns the figures of this rank.

    Saved activations: the bytes of every distinct storage autograd keeps for backward (packed
    through `saved_tensors_hooks`), except the parameters and the input embeddings, which exist
    before and after the step; with gradient checkpointing these are the layer inputs only.
    """
    g = torch.Generator().manual_seed(length)
    input_ids = torch.randint(0, model.config.vocab_size, (1, length), generator=g)  # a prompt's tokens
    positions = torch.arange(length).expand(3, 1, length)  # (3, 1, L)
    targets = torch.full((1, length), IGNORE_INDEX)
    targets[0, length - response - 1:-1] = torch.randint(0, model.config.vocab_size, (response,), generator=g)
    model.zero_grad(set_to_none=False)  # keep the grad buffers: they are not activations
    dist.barrier(group)
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        loss, saved = memplan.saved_bytes(  # the input embeddings are made inside: not counted either
            lambda: -sp_token_logprobs(model, input_ids, None, positions, targets, group).sum(), model.parameters())
        loss.backward()
        seconds = time.perf_counter() - start
    return dict(saved_mb=saved / 2**20, peak_rss_mb=mem.peak / 2**20, seconds=seconds)


def _sp_worker(rank, world, port, args, out_path):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    _, _, device, mesh = init_distributed(sp=world)
    group = mesh.get_group("sp")
    model = _sp_model(args).to(device)
    model.gradient_checkpointing = args.checkpoint
    _sp_step(model, 256 * world, min(args.response, 128), group, device)  # warm-up; allocates the grads
    rows = []
    for length in args.lengths:
        mine = _sp_step(model, length, args.response, group, device)
        every = [None] * world
        dist.all_gather_object(every, mine, group=group)
        rows.append(dict(length=length, sp=world, **{k: max(r[k] for r in every) for k in mine}))
    if rank == 0:
        Path(out_path).write_text(json.dumps(rows))
    dist.destroy_process_group()


def longest_within(rows, budget_mb: float) -> float:
    """Longest length whose saved activations fit `budget_mb`, from a least-squares line through the
    measured (length, MB) points: activations are linear in length (flash attention, no L x L)."""
    xs, ys = [r["length"] for r in rows], [r["saved_mb"] for r in rows]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = covariance / sum((x - mean_x) ** 2 for x in xs)
    return (budget_mb - (mean_y - slope * mean_x)) / slope


def bench_sp(args):
    """Sequence-parallel prefill + backward: per-rank activation memory and time vs sp.

    One long sequence of random embeddings (the vision tower is not the point here) with a
    response of --response tokens at its end; loss = -sum of the response log-probs, as the
    policy loss; sp processes on gloo, one CPU thread each, launched here. Per rank, the worst
    rank is reported: saved activations (see `_sp_step`), peak resident memory added during
    the step, and wall time of forward + backward.
    """
    work = Path(tempfile.mkdtemp(prefix="minirl-bench-sp-"))
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    rows = []
    try:
        for degree in args.sp:
            out = work / f"sp{degree}.json"
            mp.start_processes(_sp_worker, args=(degree, free_port(), args, str(out)), nprocs=degree,
                               start_method="spawn")
            rows += json.loads(out.read_text())
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    base = {r["length"]: r for r in rows if r["sp"] == 1}
    for r in rows:
        r["saved_vs_sp1"] = r["saved_mb"] / base[r["length"]]["saved_mb"] if r["length"] in base else None
    budget = args.budget_mb or (base[args.lengths[0]]["saved_mb"] if base else None)
    longest = {}
    if budget is not None and len(args.lengths) > 1:
        longest = {d: longest_within([r for r in rows if r["sp"] == d], budget) for d in args.sp}

    model = _sp_model(args)
    cfg = model.config
    print(f"model: {'checkpoint ' + args.model if args.model else 'random'}, hidden {cfg.hidden_size}, "
          f"{cfg.num_layers} layers, {cfg.num_heads} heads / {cfg.num_kv_heads} KV heads, "
          f"vocab {cfg.vocab_size}; "
          f"response {args.response} tokens; gradient checkpointing {'on' if args.checkpoint else 'off'}; "
          f"gloo on CPU, 1 thread per rank")
    print(f"\n{'length':>7} {'sp':>3} {'saved act. MB/rank':>19} {'vs sp=1':>8} {'peak RSS+ MB/rank':>18} "
          f"{'time s':>7}")
    for r in rows:
        ratio = f"{r['saved_vs_sp1']:.3f}" if r["saved_vs_sp1"] is not None else ""
        print(f"{r['length']:>7} {r['sp']:>3} {r['saved_mb']:>19.1f} {ratio:>8} {r['peak_rss_mb']:>18.1f} "
              f"{r['seconds']:>7.2f}")
    print("\nsaved act.: bytes of the distinct storages autograd keeps for backward (parameters and input "
          "embeddings excluded), worst rank;\npeak RSS+: resident set size polled every 1 ms during "
          "forward + backward, peak minus the level at the start, worst rank; time: forward + backward, "
          "slowest rank.")
    if longest:
        print(f"\nlongest sequence within {budget:.1f} MB of saved activations per rank (linear fit over the "
              "measured lengths):")
        for d, n in longest.items():
            print(f"  sp={d}: {n:>9.0f} tokens  ({n / longest[args.sp[0]]:.2f}x sp={args.sp[0]})")
    if args.json:
        write_json(args.json, dict(
            workload=dict(model=args.model, hidden_size=cfg.hidden_size, layers=cfg.num_layers,
                          heads=cfg.num_heads, kv_heads=cfg.num_kv_heads, vocab=cfg.vocab_size, response=args.response,
                          gradient_checkpointing=args.checkpoint, lengths=args.lengths, sp=args.sp),
            runs=rows, budget_mb=budget, longest_within_budget={str(d): n for d, n in longest.items()}))


# ----------------------------------------------------------------------------- shared prefix


def shared_args(parser):
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


def bench_shared(args):
    """The shared prefix in training: an RL step with it on and off, and the update's saved activations.

    Step: train_rl's Trainer in 1 fresh process per run (bench_mrsp's worker), --prompts prompts x --n rollouts
    of --new-tokens tokens, defaults otherwise (on-policy: no old forward; KL off: no reference forward), the
    bench_mrsp model. Configs: unshared (`--mrsp.shared_prefix false`, micro-batch 4, the old default) and
    shared at each --micro size; runs interleave over --rounds. Saved activations: one group (the first
    prompt, k random responses of --new-tokens tokens) through the update's forward, packed
    (`build_packed_batch` + `sp_packed_logprobs`) vs unpacked (`build_micro_batch` + `sp_token_logprobs`).
    """
    from bench_mrsp import MRSP_SIZE, run_trainer
    from minirl.trainer import build_micro_batch, build_packed_batch
    from sp import sp_packed_logprobs

    work = Path(tempfile.mkdtemp(prefix="minirl-bench-shared-"))
    synth.generate(work / "data", train=args.prompts, test=0, frames=max(64, args.frames), size=args.frame_size, fps=8,
                   per_video=1)
    model_dir = build_tiny_model(work / "model", synth.corpus(num_videos=32), size=MRSP_SIZE,
                                 max_pixels=args.frame_size**2)
    base = ["--model.path", model_dir, "--data.train", work / "data/train.jsonl", "--data.frames", args.frames,
            "--data.max_prompt_tokens", 1 << 20, "--rollout.n", args.n, "--rollout.max_new_tokens", args.new_tokens,
            "--optim.batch_size", args.prompts, "--model.train_vision", str(args.train_vision).lower(),
            "--run.tensorboard", "false"]
    configs = {"unshared, micro-batch 4": ["--mrsp.shared_prefix", "false", "--algo.micro_batch_size", 4]}
    configs |= {f"shared, micro-batch {m}": ["--mrsp.shared_prefix", "true", "--algo.micro_batch_size", m]
                for m in args.micro}
    mp.set_forkserver_preload(["bench_mrsp", "train_rl"])
    runs = {name: [] for name in configs}
    for r in range(args.rounds):
        for i, (name, flags) in enumerate(configs.items()):
            argv = [*base, *flags, "--run.out", work / f"run{r}-{i}"]
            runs[name].append(run_trainer(work, f"run{r}-{i}", "stage1", argv, args.steps, world=1,
                                          threads=args.threads))
            assert "error" not in runs[name][-1], runs[name][-1]
    rows = []
    for name, rs in runs.items():
        med = {k: statistics.median(r["breakdown_s"].get(k, 0.0) for r in rs) for k in ("encode", "rollout", "update")}
        rows.append(dict(config=name, seconds=statistics.median(r["seconds"] for r in rs), **med,
                         times_s=[t for r in rs for t in r["times_s"]], prompt_tokens=rs[0]["prompt_tokens"],
                         video_tokens=rs[0]["video_tokens"]))
    print(f"\n{args.prompts} prompts x {args.n} rollouts x {args.new_tokens} new tokens, {rows[0]['video_tokens']} "
          f"video tokens per prompt ({rows[0]['prompt_tokens']} prompt tokens), 1 process, {args.threads} threads, "
          f"vision tower {'trained' if args.train_vision else 'frozen'}; median of {args.rounds} run(s) x "
          f"{args.steps} steps")
    print(f"{'config':<24} {'s/step':>7} {'update s':>9} {'update share':>13} {'update speedup':>15} "
          f"{'encode s':>9} {'rollout s':>10}")
    for row in rows:
        row["update_share"], row["update_speedup"] = row["update"] / row["seconds"], rows[0]["update"] / row["update"]
        print(f"{row['config']:<24} {row['seconds']:>7.2f} {row['update']:>9.2f} {row['update_share']:>12.0%} "
              f"{row['update_speedup']:>14.2f}x {row['encode']:>9.2f} {row['rollout']:>10.2f}")

    # saved activations of the update's forward, one group, this process (a world of one)
    _, _, device, mesh = init_distributed(sp=1)
    model = load_model(model_dir)
    item = rl_example(load_jsonl(work / "data/train.jsonl")[0], AutoProcessor.from_pretrained(model_dir),
                      FrameSampling(num_frames=args.frames), max_prompt_tokens=1 << 20)
    with torch.no_grad():
        video = model.encode_video(item["pixel_values_videos"], item["video_grid_thw"])  # the cache: no grad
    prompt, P, R, group = item["input_ids"], len(item["input_ids"]), args.new_tokens, mesh["sp"].get_group()
    saved = []
    print(f"\nupdate forward, saved activations per group (prompt {P} tokens, k responses of {R} tokens, fp32):")
    print(f"{'k':>3} {'packed MB':>10} {'unpacked MB':>12} {'ratio':>7} {'(P + k(R-1)) / k(P + R)':>24}")
    for k in sorted({1, 2, 4, args.n}):
        responses = [torch.randint(0, model.config.vocab_size, (R,), generator=torch.Generator().manual_seed(j))
                     for j in range(k)]
        packed = build_packed_batch(model, [item], [prompt], [responses], [video])
        plain = build_micro_batch(model, [prompt] * k, responses, [video] * k, [item] * k)
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


# ----------------------------------------------------------------------------- main

COMMANDS = {"rollout": (rollout_args, bench_rollout), "sp": (sp_args, bench_sp), "shared": (shared_args, bench_shared)}


def main():
    if sys.argv[1:2] == ["plan"]:  # a formula, not a measurement: its own options (python -m minirl.memplan -h)
        return memplan.main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, run) in COMMANDS.items():
        add_args(sub.add_parser(name, help=run.__doc__.splitlines()[0]))
    args = parser.parse_args()
    COMMANDS[args.command][1](args)


if __name__ == "__main__":
    main()
