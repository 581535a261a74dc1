"""Our KV-cache sampler, eager and compiled, vs transformers' generate: time, tokens/s, decode ms per step,
GFLOP/s, peak memory, KV-cache bytes, and what the compile costs.

    python -m bench rollout [--prompts 4] [--n 8 1] [--frames 64] [--new-tokens 128] [--json PATH] ...

Builds its own tiny model and synthetic videos in a temporary directory, prints a table and, with
--json, writes the same figures as JSON.
"""

import statistics
import tempfile
from functools import partial
from pathlib import Path

import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from bench import flops
from bench.common import measure, write_json
from minirl import memplan, synth
from minirl.data import load_jsonl, rl_example
from minirl.model import load_model, prepare_inputs
from minirl.tiny import build_tiny_model
from minirl.video import FrameSampling
from rollout import SamplingParams, sample


def add_args(parser):
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


def run(args):
    """Our sampler, eager and compiled (`sample(compile=True)`), vs transformers'
    generate(num_return_sequences=n), same weights, same prompts.

    All start from the same processor outputs and all pay the vision tower: ours encodes each
    video once (the embedding cache) and prefills each prompt once; transformers' generate
    expands every prompt n times, video included, as TRL's non-vLLM path does (4 prompts in one
    left-padded batch). Temperature 1, no top-k/top-p, no eos: all generate exactly
    --new-tokens tokens per sample. Runs of the engines alternate, so a busy machine slows
    all alike. A decode step's time is (a run of --new-tokens tokens - a run of 1 token) /
    (--new-tokens - 1): the second run pays the same encode and prefill and decodes nothing. The
    compiled sampler's first run of each n compiles its step (once per shape); that run is timed
    apart, and its excess over the steady run is the compile time the table's figures exclude.
    """
    if args.new_tokens < 2:
        raise SystemExit("--new-tokens must be >= 2: the table times decode steps")
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

    def run_ours(n, new_tokens, compile=False) -> int:
        with torch.no_grad():
            prompts = [prepare_inputs(ours_model, it["input_ids"], it["pixel_values_videos"],
                                      it["video_grid_thw"], it["second_per_grid_ts"]) for it in items]
        result = sample(ours_model, prompts, SamplingParams(n=n, max_new_tokens=new_tokens, seed=0), compile=compile)
        assert all(s.length == new_tokens for s in result.samples)
        return result.prompt_cache_bytes + result.response_cache_bytes

    engines = {"minirl": run_ours, "minirl compiled": partial(run_ours, compile=True), "transformers": run_hf}
    for engine in ("minirl", "transformers"):  # warm-up (allocator, thread pools, lazy imports): prefill + 2
        engines[engine](1, 2)  # tokens; the compiled sampler's first run of each n is its compile, timed below
    rows, compiles = [], {}
    shape = memplan.load_shape(str(model_dir))
    peak = flops.matmul_peak_gflops(torch.get_num_threads()) if device.type == "cpu" else None
    for n in args.n:
        # model FLOPs of the rollout (bench/flops.py): each video encoded once, each prompt prefilled once, every
        # sampled token decoded once: the same for every engine, whatever each computes on top
        phases = flops.step_flops(shape, [(p, v, [args.new_tokens] * n) for p, v in zip(lengths, video_tokens,
                                                                                         strict=True)])
        gflop = (phases["encode"] + phases["prefill"] + phases["decode"]) / 1e9
        first_compiled = measure(partial(engines["minirl compiled"], n, args.new_tokens), device)[1]  # compiles
        runs = {engine: [] for engine in engines}  # engine -> [(KV bytes, wall s, CPU s, peak bytes)]
        no_decode = {engine: [] for engine in engines}  # engine -> [wall s of a 1-token run]
        for _ in range(args.repeats):  # interleaved
            for engine, fn in engines.items():
                runs[engine].append(measure(partial(fn, n, args.new_tokens), device))
                no_decode[engine].append(measure(partial(fn, n, 1), device)[1])
        figures = {}
        for engine, rs in runs.items():
            seconds, cpu = statistics.median(r[1] for r in rs), statistics.median(r[2] for r in rs)
            decode_s = seconds - statistics.median(no_decode[engine])
            figures[engine] = dict(n=n, engine=engine, median_s=seconds, times_s=[r[1] for r in rs],
                                   median_cpu_s=cpu, tokens_per_s=len(items) * n * args.new_tokens / seconds,
                                   peak_mem_mb=max(r[3] for r in rs) / 2**20, kv_cache_mb=rs[0][0] / 2**20,
                                   gflop=gflop, gflops=gflop / seconds,
                                   of_peak=gflop / seconds / peak if peak else None,
                                   decode_ms_per_step=decode_s / (args.new_tokens - 1) * 1e3,
                                   decode_gflops=phases["decode"] / 1e9 / decode_s,
                                   decode_of_peak=phases["decode"] / 1e9 / decode_s / peak if peak else None)
        for r in figures.values():
            r["speedup"] = figures["transformers"]["median_s"] / r["median_s"]
            r["speedup_cpu"] = figures["transformers"]["median_cpu_s"] / r["median_cpu_s"]
        eager, compiled = figures["minirl"], figures["minirl compiled"]
        saved_s = (eager["decode_ms_per_step"] - compiled["decode_ms_per_step"]) / 1e3  # per decode step
        compile_s = first_compiled - compiled["median_s"]
        compiles[str(n)] = dict(compile_s=compile_s, decode_ratio=eager["decode_ms_per_step"]
                                / compiled["decode_ms_per_step"],
                                break_even_steps=compile_s / saved_s if saved_s > 0 else None)
        rows += list(figures.values())

    mem = "peak CUDA alloc" if device.type == "cuda" else "peak RSS added"
    print(f"\n{'n':>3} {'engine':<16} {'time s':>7} {'CPU s':>7} {'tokens/s':>8} {'GFLOP/s':>8} {'% peak':>7} "
          f"{'decode ms/step':>14} {'GFLOP/s':>8} {'% peak':>7} {mem + ' MB':>20} {'KV cache MB':>11} "
          f"{'speedup (CPU)':>14}")
    for r in rows:
        ratio = f"{r['speedup']:.1f}x {r['speedup_cpu']:.1f}x" if r["engine"] != "transformers" else ""
        of_peak, decode_of_peak = (f"{100 * r[k]:.1f}%" if r[k] is not None else "-"
                                   for k in ("of_peak", "decode_of_peak"))
        print(f"{r['n']:>3} {r['engine']:<16} {r['median_s']:>7.2f} {r['median_cpu_s']:>7.2f} "
              f"{r['tokens_per_s']:>8.0f} {r['gflops']:>8.2f} {of_peak:>7} {r['decode_ms_per_step']:>14.1f} "
              f"{r['decode_gflops']:>8.2f} {decode_of_peak:>7} {r['peak_mem_mb']:>20.0f} {r['kv_cache_mb']:>11.1f} "
              f"{ratio:>14}")
    for n, c in compiles.items():
        pays = (f"pays for itself after {c['break_even_steps']:.0f} decode steps of this batch"
                if c["break_even_steps"] is not None else "never pays for itself here")
        print(f"n={n}: compiling the static decode step took {c['compile_s']:.1f} s (once per shape); decode "
              f"{c['decode_ratio']:.2f}x the eager sampler's speed: the compile {pays}.")
    mem_how = ("torch.cuda.max_memory_allocated" if device.type == "cuda"
               else "resident set size polled every 1 ms, peak minus the level at the start of the run")
    print(f"\ntime: median wall time of {args.repeats} interleaved runs, video encoding + prefill + decode; "
          "CPU s: this process's CPU time, all threads (robust to other processes' load); "
          "decode ms/step: (time - the median time of a 1-token run) / (new tokens - 1), its GFLOP/s of the decode "
          "FLOPs alone; minirl compiled: the same sampler with its static decode step under torch.compile, its "
          "compile excluded (compile: the first compiled run's excess over the median; inductor's on-disk cache "
          "makes a later process's compile of the same shapes shorter); "
          f"speedup = transformers / minirl; {mem}: {mem_how}; KV cache: ours = the tensors allocated, "
          "transformers' = its padded, n-times expanded cache; GFLOP/s: the rollout's model FLOPs (bench/flops.py, "
          "the same for every engine) / time; % peak: of a dense fp32 matmul on this process's "
          f"{torch.get_num_threads()} threads{f', {peak:.1f} GFLOP/s' if peak else ''}.")
    if args.json:
        workload = dict(prompts=len(items), prompt_tokens=lengths, video_tokens=video_tokens,
                        frames=args.frames, frame_size=args.frame_size, new_tokens=args.new_tokens,
                        model_size=args.model_size,
                        hidden_size=cfg.hidden_size, device=str(device), threads=torch.get_num_threads(),
                        repeats=args.repeats)
        write_json(args.json, dict(workload=workload, runs=rows, compile=compiles))
