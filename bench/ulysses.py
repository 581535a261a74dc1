"""Sequence-parallel (Ulysses) prefill + backward: per-rank activation memory and time vs sp.

    python -m bench sp [--lengths 4096 8192 16384 32768] [--sp 1 2 4] [--checkpoint] [--json PATH] ...

A random decoder (or --model's), sp processes on gloo launched here; prints a table and, with --json,
writes the same figures as JSON.
"""

import json
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import Qwen2Config

from bench import flops
from bench.common import free_port, join_world, longest_within, measure, worker_threads, write_json
from minirl import memplan
from minirl.data import IGNORE_INDEX
from minirl.distributed import init_distributed
from minirl.model import QwenVL, load_model
from sp import sp_token_logprobs


def add_args(parser):
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

    def forward_backward() -> int:
        loss, saved = memplan.saved_bytes(  # the input embeddings are made inside: not counted either
            lambda: -sp_token_logprobs(model, input_ids, None, positions, targets, group).sum(), model.parameters())
        loss.backward()
        return saved

    dist.barrier(group)
    saved, seconds, _, peak = measure(forward_backward, device)
    return dict(saved_mb=saved / 2**20, peak_rss_mb=peak / 2**20, seconds=seconds)


def _sp_worker(rank, world, port, args, out_path):
    join_world(rank, world, port)
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


def run(args):
    """Sequence-parallel prefill + backward: per-rank activation memory and time vs sp.

    One long sequence of random embeddings (the vision tower is not the point here) with a
    response of --response tokens at its end; loss = -sum of the response log-probs, as the
    policy loss; sp processes on gloo, one CPU thread each, launched here. Per rank, the worst
    rank is reported: saved activations (see `_sp_step`), peak resident memory added during
    the step, and wall time of forward + backward.
    """
    work = Path(tempfile.mkdtemp(prefix="minirl-bench-sp-"))
    rows = []
    with worker_threads(1):
        for degree in args.sp:
            out = work / f"sp{degree}.json"
            mp.start_processes(_sp_worker, args=(degree, free_port(), args, str(out)), nprocs=degree,
                               start_method="spawn")
            rows += json.loads(out.read_text())
    base = {r["length"]: r for r in rows if r["sp"] == 1}
    for r in rows:
        r["saved_vs_sp1"] = r["saved_mb"] / base[r["length"]]["saved_mb"] if r["length"] in base else None
    budget = args.budget_mb or (base[args.lengths[0]]["saved_mb"] if base else None)
    longest = {}
    if budget is not None and len(args.lengths) > 1:
        longest = {d: longest_within([r for r in rows if r["sp"] == d], budget) for d in args.sp}

    model = _sp_model(args)
    cfg = model.config
    # forward + backward (twice the forward) of the sequence, logits at its response rows (bench/flops.py),
    # against the matmul peak of the run's single-thread processes
    shape = memplan.Shape(hidden=cfg.hidden_size, ffn=cfg.intermediate_size, layers=cfg.num_layers,
                          heads=cfg.num_heads, kv_heads=cfg.num_kv_heads, vocab=cfg.vocab_size,
                          tied=cfg.tie_word_embeddings, v_hidden=0, v_ffn=0, v_depth=0, v_out=0)
    peak_1 = flops.matmul_peak_gflops(threads=1)
    for r in rows:
        length = r["length"]
        forward = (flops.token_flops(shape) * length + flops.attention_flops(shape, length * (length + 1) // 2)
                   + flops.logits_flops(shape, args.response))
        r["gflops"] = 3 * forward / r["seconds"] / 1e9
        r["of_peak"] = r["gflops"] / (r["sp"] * peak_1)
    print(f"model: {'checkpoint ' + args.model if args.model else 'random'}, hidden {cfg.hidden_size}, "
          f"{cfg.num_layers} layers, {cfg.num_heads} heads / {cfg.num_kv_heads} KV heads, "
          f"vocab {cfg.vocab_size}; "
          f"response {args.response} tokens; gradient checkpointing {'on' if args.checkpoint else 'off'}; "
          f"gloo on CPU, 1 thread per rank")
    print(f"\n{'length':>7} {'sp':>3} {'saved act. MB/rank':>19} {'vs sp=1':>8} {'peak RSS+ MB/rank':>18} "
          f"{'time s':>7} {'GFLOP/s':>8} {'% peak':>7}")
    for r in rows:
        ratio = f"{r['saved_vs_sp1']:.3f}" if r["saved_vs_sp1"] is not None else ""
        print(f"{r['length']:>7} {r['sp']:>3} {r['saved_mb']:>19.1f} {ratio:>8} {r['peak_rss_mb']:>18.1f} "
              f"{r['seconds']:>7.2f} {r['gflops']:>8.2f} {100 * r['of_peak']:>6.1f}%")
    print("\nsaved act.: bytes of the distinct storages autograd keeps for backward (parameters and input "
          "embeddings excluded), worst rank;\npeak RSS+: resident set size polled every 1 ms during "
          "forward + backward, peak minus the level at the start, worst rank; time: forward + backward, "
          f"slowest rank; GFLOP/s: its model FLOPs (bench/flops.py) / time, % of sp x the {peak_1:.1f} GFLOP/s "
          "matmul peak of one thread.")
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
