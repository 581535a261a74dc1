"""Stage 1: chain-of-thought SFT on long videos, sequence-parallel like the RL stage.

    torchrun --nproc_per_node 2 train_sft.py --model.path runs/tiny-model \
        --data.train data/train.jsonl --data.test data/test.jsonl --parallel.sp 2 --run.out runs/sft

Cross-entropy on the assistant tokens (`<think>reasoning</think><answer>X</answer><|im_end|>`)
only, summed over every response token of the global batch and divided by their global count,
so the gradient does not depend on the dp/sp layout or the micro-batch split. The same MR-SP
machinery as RL: frames encoded across the SP group, the sequence split across it with Ulysses
attention, FSDP2 over all ranks. AdamW with warmup + cosine, gradient clipping, NaN/inf steps
skipped on every rank, periodic eval with evaluation.py's scorer, atomic checkpoints, exact resume,
and a final Hugging Face export; the set-up and the end are minirl/run.py's, shared with RL.
"""

import dataclasses
import sys

from tqdm import tqdm

from evaluation import evaluate_run
from minirl import config
from minirl.data import IGNORE_INDEX, frame_mix, global_indices, sft_example, split_sft_item
from minirl.distributed import all_reduce_sum, backward, count_skipped, optimizer_step
from minirl.model import rope_index
from minirl.packing import build_micro_batch
from minirl.run import start_run, timed
from minirl.video import FrameCache
from sp import encode_videos, sp_token_logprobs


@dataclasses.dataclass
class SFTConfig:
    model: config.ModelConfig = dataclasses.field(default_factory=config.ModelConfig)
    data: config.DataConfig = dataclasses.field(default_factory=config.DataConfig)
    optim: config.OptimConfig = dataclasses.field(default_factory=config.OptimConfig)
    parallel: config.ParallelConfig = dataclasses.field(default_factory=config.ParallelConfig)
    eval: config.EvalConfig = dataclasses.field(default_factory=config.EvalConfig)
    run: config.RunConfig = dataclasses.field(default_factory=lambda: config.RunConfig(out="runs/sft"))


def main(argv):
    cfg = config.parse(SFTConfig, argv)
    samplings = frame_mix(cfg.data)  # before start_run: a bad data.frames_mix fails before the model loads
    run = start_run(cfg)
    dp, dp_rank = run.mesh["dp"].size(), run.mesh["dp"].get_local_rank()
    if cfg.optim.batch_size % dp:
        raise ValueError(f"optim.batch_size={cfg.optim.batch_size} must divide by dp={dp} (world {run.world} / sp "
                         f"{cfg.parallel.sp})")
    model, sp_group = run.model, run.sp_group
    frame_cache = FrameCache(cfg.data.frame_cache_mb)
    skipped_in_a_row = run.state.get("skipped_in_a_row", 0)

    per_group = cfg.optim.batch_size // dp
    for step in tqdm(range(run.step, cfg.optim.steps), desc="sft", disable=run.rank != 0):
        times = {}  # seconds: decode (decord + processor), encode (stage 1), update (forward, backward, step)
        with timed(times, "step"):
            first = step * cfg.optim.batch_size + dp_rank * per_group  # stream position of this group's first
            indices = global_indices(len(run.train), cfg.run.seed, first, per_group)  # this SP group's sequences
            items = []
            with timed(times, "decode"):
                for position, i in enumerate(indices, first):
                    try:
                        items.append(sft_example(run.train[i], run.processor, samplings[position % len(samplings)],
                                                 cfg.data.max_prompt_tokens, frame_cache))
                    except Exception as err:  # name the file and the step, then stop (see data.bad_videos)
                        raise RuntimeError(f"step {step}: example {run.train[i].id} ({run.train[i].video}): "
                                           f"{err}") from err
            local_tokens = sum(int((it["labels"] != IGNORE_INDEX).sum()) for it in items)
            global_tokens = all_reduce_sum(local_tokens) / cfg.parallel.sp  # SP ranks hold the same sequences
            loss_sum = 0.0
            for m in range(0, len(items), cfg.optim.micro_batch_size):
                micro = items[m:m + cfg.optim.micro_batch_size]
                with timed(times, "encode"):  # with grad when the vision tower trains: its backward is in update
                    video_embeds = encode_videos(model, [it["video_grid_thw"] for it in micro],
                                                 [it["pixel_values_videos"] for it in micro], sp_group,
                                                 cfg.parallel.parallel_encode)
                with timed(times, "update"):
                    prompts, targets = zip(*[split_sft_item(it) for it in micro], strict=True)
                    positions = [rope_index(p, it["video_grid_thw"], it["second_per_grid_ts"], model.config)
                                 for p, it in zip(prompts, micro, strict=True)]  # (3, Lp) each
                    batch = build_micro_batch(model, prompts, positions, targets, video_embeds)
                    logp = sp_token_logprobs(model, batch["input_ids"], batch["video_embeds"], batch["positions"],
                                             batch["targets"], sp_group, video_mask=batch["video_mask"])  # (B, L)
                    loss = -logp.sum() / global_tokens  # this group's share of the global mean
                    backward(loss)
                    loss_sum += float(loss.detach())
            with timed(times, "update"):
                grad_norm, stepped = optimizer_step(model, run.optimizer, cfg.optim.grad_clip, loss_sum)
        skipped_in_a_row = count_skipped(skipped_in_a_row, stepped, cfg.optim.max_skipped_steps)
        run.scheduler.step()
        metrics = {
            "sft/loss": all_reduce_sum(loss_sum) / cfg.parallel.sp,
            "sft/grad_norm": grad_norm,
            "sft/skipped_steps": int(not stepped),
            "sft/lr": run.scheduler.get_last_lr()[0],
            "sft/tokens": global_tokens,
            **{f"timing_s/{k}": v for k, v in times.items()},
        }
        if run.test and cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < cfg.optim.steps:
            metrics.update({f"eval/{k}": v for k, v in evaluate_run(run)["overall"].items()})
        run.log.log(step + 1, metrics)
        if cfg.run.save_every and (step + 1) % cfg.run.save_every == 0:
            run.save(step + 1, {"skipped_in_a_row": skipped_in_a_row})
    run.finish(cfg.optim.steps, {"skipped_in_a_row": skipped_in_a_row}, "SFT", lambda r: evaluate_run(r, show=True))


if __name__ == "__main__":
    main(sys.argv[1:])
