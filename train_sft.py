"""Stage 1: chain-of-thought SFT on long videos, sequence-parallel like the RL stage.

    torchrun --nproc_per_node 2 train_sft.py --model.path runs/tiny-model \
        --data.train data/train.jsonl --data.test data/test.jsonl --parallel.sp 2 --run.out runs/sft

Cross-entropy on the assistant tokens (`<think>reasoning</think><answer>X</answer><|im_end|>`)
only, summed over every response token of the global batch and divided by their global count,
so the gradient does not depend on the dp/sp layout or the micro-batch split. The same MR-SP
machinery as RL: frames encoded across the SP group, the sequence split across it with Ulysses
attention, FSDP2 over all ranks. AdamW with warmup + cosine, gradient clipping, NaN/inf steps
skipped on every rank, periodic eval with eval.py's scorer, atomic checkpoints, exact resume, and
a final Hugging Face export.
"""

import dataclasses
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoProcessor

from eval import evaluate_copy, print_table
from minirl import config as C
from minirl.checkpoint import export_hf, latest_checkpoint, load_checkpoint, save_checkpoint
from minirl.data import IGNORE_INDEX, sft_example
from minirl.model import QwenVL, load_model
from minirl.trainer import (
    MetricsLog,
    all_reduce_sum,
    backward,
    build_micro_batch,
    compute_dtype,
    count_skipped,
    frame_sampling,
    global_indices,
    load_dataset,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    shard_model,
    split_sft_item,
    timed,
)
from minirl.video import FrameCache
from sp import encode_videos, init_distributed, sp_token_logprobs, validate_layout


@dataclasses.dataclass
class OptimConfig:
    steps: int = 100
    batch_size: int = 8  # sequences per optimizer step, whole world
    micro_batch_size: int = 2  # sequences per forward, per SP group
    lr: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_skipped_steps: int = 3  # stop after this many NaN/inf optimizer steps in a row (0: never)


@dataclasses.dataclass
class SFTConfig:
    model: C.ModelConfig = dataclasses.field(default_factory=C.ModelConfig)
    data: C.DataConfig = dataclasses.field(default_factory=C.DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    parallel: C.ParallelConfig = dataclasses.field(default_factory=C.ParallelConfig)
    eval: C.EvalConfig = dataclasses.field(default_factory=C.EvalConfig)
    run: C.RunConfig = dataclasses.field(default_factory=lambda: C.RunConfig(out="runs/sft"))


def main(argv):
    cfg = C.parse(SFTConfig, argv)
    rank, world, device, mesh = init_distributed(cfg.parallel.sp)
    sp_group, dp = mesh["sp"].get_group(), mesh["dp"].size()
    dp_rank = mesh["dp"].get_local_rank()
    out = Path(cfg.run.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        print(C.describe(cfg), file=sys.stderr)
    torch.manual_seed(cfg.run.seed)

    dtype = compute_dtype(cfg.model.dtype, device)
    model = load_model(cfg.model.path, torch.float32, device)  # fp32 master weights
    validate_layout(world, dp, cfg.parallel.sp, model.config.num_heads, model.config.num_kv_heads)
    if cfg.optim.batch_size % dp:
        raise ValueError(f"optim.batch_size={cfg.optim.batch_size} must divide by dp={dp} (world {world} / sp "
                         f"{cfg.parallel.sp})")
    model.gradient_checkpointing = cfg.model.gradient_checkpointing
    if model.visual is not None:
        model.visual.requires_grad_(cfg.model.train_vision)
    eval_model = QwenVL(model.hf_config).to(device, dtype).eval()  # the unsharded copy eval decodes with
    model = shard_model(model, device, dtype)
    processor = AutoProcessor.from_pretrained(cfg.model.path)
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.optim.warmup_steps, cfg.optim.steps)
    train = load_dataset(cfg.data.train, cfg.data.video_dir, cfg.data.bad_videos)
    test = load_dataset(cfg.data.test, cfg.data.video_dir, cfg.data.bad_videos) if cfg.data.test else []
    if cfg.eval.max_examples:
        test = test[: cfg.eval.max_examples]
    sampling = frame_sampling(cfg.data)
    frame_cache = FrameCache(cfg.data.frame_cache_mb)
    log = MetricsLog(out, rank, cfg.run.tensorboard)

    start, skipped_in_a_row = 0, 0
    if cfg.run.resume and (ckpt := latest_checkpoint(out)) is not None:
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        start, skipped_in_a_row = state["step"], state["extra"].get("skipped_in_a_row", 0)
        if rank == 0:
            print(f"resumed from {ckpt} at step {start}", file=sys.stderr)

    per_group = cfg.optim.batch_size // dp
    for step in tqdm(range(start, cfg.optim.steps), desc="sft", disable=rank != 0):
        times = {}  # seconds: decode (decord + processor), encode (stage 1), update (forward, backward, step)
        with timed(times, "step"):
            indices = global_indices(len(train), cfg.run.seed, step * cfg.optim.batch_size, cfg.optim.batch_size)
            mine = indices[dp_rank * per_group:(dp_rank + 1) * per_group]  # this SP group's sequences
            items = []
            with timed(times, "decode"):
                for i in mine:
                    try:
                        items.append(sft_example(train[i], processor, sampling, cfg.data.max_prompt_tokens,
                                                 frame_cache))
                    except Exception as err:  # name the file and the step, then stop (see data.bad_videos)
                        raise RuntimeError(f"step {step}: example {train[i].id} ({train[i].video}): {err}") from err
            local_tokens = sum(int((it["labels"] != IGNORE_INDEX).sum()) for it in items)
            global_tokens = all_reduce_sum(local_tokens) / cfg.parallel.sp  # SP ranks hold the same sequences
            loss_sum = 0.0
            for m in range(0, len(items), cfg.optim.micro_batch_size):
                micro = items[m:m + cfg.optim.micro_batch_size]
                with timed(times, "encode"):  # with grad when the vision tower trains: its backward is in update
                    video_embeds = encode_videos(model, micro, sp_group, cfg.parallel.parallel_encode)
                with timed(times, "update"):
                    prompts, targets = zip(*[split_sft_item(it) for it in micro], strict=True)
                    batch = build_micro_batch(model, prompts, targets, video_embeds, micro)
                    logp = sp_token_logprobs(model, batch["input_ids"], batch["video_embeds"], batch["positions"],
                                             batch["targets"], sp_group, video_mask=batch["video_mask"])  # (B, L)
                    loss = -logp.sum() / global_tokens  # this group's share of the global mean
                    backward(loss)
                    loss_sum += float(loss.detach())
            with timed(times, "update"):
                grad_norm, stepped = optimizer_step(model, optimizer, cfg.optim.grad_clip, loss_sum)
        skipped_in_a_row = count_skipped(skipped_in_a_row, stepped, cfg.optim.max_skipped_steps)
        scheduler.step()
        metrics = {
            "sft/loss": all_reduce_sum(loss_sum) / cfg.parallel.sp,
            "sft/grad_norm": grad_norm,
            "sft/skipped_steps": int(not stepped),
            "sft/lr": scheduler.get_last_lr()[0],
            "sft/tokens": global_tokens,
            **{f"timing_s/{k}": v for k, v in times.items()},
        }
        if test and cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < cfg.optim.steps:
            table = evaluate_copy(model, eval_model, processor, test, cfg.data, cfg.eval, rank, world)
            metrics.update({f"eval/{k}": v for k, v in table["overall"].items()})
        log.log(step + 1, metrics)
        if cfg.run.save_every and (step + 1) % cfg.run.save_every == 0:
            save_checkpoint(out, step + 1, model, optimizer, scheduler, extra={"skipped_in_a_row": skipped_in_a_row})

    save_checkpoint(out, cfg.optim.steps, model, optimizer, scheduler, extra={"skipped_in_a_row": skipped_in_a_row})
    export_hf(model, out / "hf", cfg.model.path)
    if test:
        table = evaluate_copy(model, eval_model, processor, test, cfg.data, cfg.eval, rank, world)
        if rank == 0:
            print_table(table)
            log.log(cfg.optim.steps, {f"eval/{k}": v for k, v in table["overall"].items()})
    if rank == 0:
        print(f"SFT done: checkpoints in {out}, Hugging Face export in {out / 'hf'}", file=sys.stderr)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
