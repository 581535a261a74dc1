"""Stage 2: GRPO on long videos with MR-SP. One step, top to bottom, in the paper's order.

    torchrun --nproc_per_node 2 train_rl.py --model.path runs/sft/hf \
        --data.train data/train.jsonl --data.test data/test.jsonl --parallel.sp 2 --run.out runs/rl

Layout: every rank rolls out its own prompts (data parallel over the world); the ranks of an SP
group then train on the union of their groups' sequences, each sequence split along its length
across the group (Ulysses), and FSDP2 shards the weights over all ranks.

A step:
1. `encode`   decode this step's videos once; MR-SP stage 1 encodes them across the SP group;
              the embeddings are cached, keyed by prompt, for everything below.
2. `rollout`  the batched KV-cache sampler (rollout.py) on an unsharded copy of the current
              weights (like the vLLM engine of Long-RL / veRL), n samples per prompt.
3. `reward`   reward.py per sample; optional DAPO dynamic sampling refills groups whose rewards
              are all equal.
4. `advantage` loss.py, per group of n.
5. `old/ref`  log-probs by sequence-parallel prefill (MR-SP stage 2) from the cached
              embeddings; skipped when exactly on-policy and the KL term is off.
6. `update`   mini-batches x ppo_epochs of the GRPO loss, FSDP2 + Ulysses, grad clip.
7. metrics, checkpoints; eval and the Hugging Face export at the end.

MR-SP ablations (bench.py mrsp measures them): `--mrsp.embed_cache false` re-encodes the video
for every rollout and every forward and prefills each rollout separately;
`--parallel.parallel_encode false` encodes on one rank; `--parallel.sp 1` turns off stage 2.
"""

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoProcessor

from eval import print_table
from minirl import config as C
from minirl.checkpoint import export_hf, latest_checkpoint, load_checkpoint, save_checkpoint
from minirl.data import IGNORE_INDEX, rl_example
from minirl.loss import compute_advantages, grpo_loss
from minirl.model import QwenVL, load_model
from minirl.reward import accuracy_reward, format_reward, load_reward_fn
from minirl.trainer import (
    MetricsLog,
    all_reduce_sum,
    backward,
    build_micro_batch,
    clip_grad_norm,
    encode_videos,
    evaluate_copy,
    frame_sampling,
    full_state,
    global_indices,
    load_dataset,
    make_optimizer,
    make_scheduler,
    sequence_positions,
    shard_model,
    sync_replicated_grads,
)
from rollout import SamplingParams, sample
from sp import init_distributed, sp_token_logprobs, validate_layout


@dataclasses.dataclass
class RolloutConfig:
    n: int = 8  # samples per prompt (the GRPO group)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    prefill_chunk: int = 4096


@dataclasses.dataclass
class AlgoConfig:
    adv_estimator: str = "grpo"  # grpo | rloo
    adv_scale: str = "group"  # group | batch | none (Dr. GRPO)
    clip_low: float = 0.2
    clip_high: float = 0.28  # DAPO clip-higher
    dual_clip: float = 0.0  # 0: off; else > 1
    kl_coef: float = 0.0  # 0: no reference model at all
    kl_kind: str = "k3"
    loss_agg: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm
    ppo_epochs: int = 1
    mini_batches: int = 1  # optimizer steps per epoch over one rollout batch
    micro_batch_size: int = 4  # sequences per forward, per SP group
    dynamic_sampling: bool = False  # DAPO: drop groups with zero reward variance and refill
    max_sampling_tries: int = 4
    reward: str = ""  # path/to/file.py:function, or '' for 0.9 * accuracy + 0.1 * format
    accuracy_weight: float = 0.9
    format_weight: float = 0.1


@dataclasses.dataclass
class OptimConfig:
    steps: int = 50
    batch_size: int = 8  # prompts per step, whole world (each yields rollout.n sequences)
    lr: float = 1e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0


@dataclasses.dataclass
class MRSPConfig:
    embed_cache: bool = True  # off: re-encode the video for every rollout and every forward


@dataclasses.dataclass
class RLConfig:
    model: C.ModelConfig = dataclasses.field(default_factory=C.ModelConfig)
    data: C.DataConfig = dataclasses.field(default_factory=C.DataConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    algo: AlgoConfig = dataclasses.field(default_factory=AlgoConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    parallel: C.ParallelConfig = dataclasses.field(default_factory=C.ParallelConfig)
    mrsp: MRSPConfig = dataclasses.field(default_factory=MRSPConfig)
    eval: C.EvalConfig = dataclasses.field(default_factory=C.EvalConfig)
    run: C.RunConfig = dataclasses.field(default_factory=lambda: C.RunConfig(out="runs/rl"))


@dataclasses.dataclass
class Sequence:
    """One rollout sample with everything the trainer needs; `key` names its prompt's video."""

    key: int  # index of the prompt's item in this SP group's step list (the embedding-cache key)
    prompt_ids: torch.Tensor
    response: list[int]
    sampler_logprobs: list[float]
    reward: float
    accuracy: float
    format: float
    advantage: float = 0.0


class Trainer:
    """Holds the models and the run state; `step()` is one RL step."""

    def __init__(self, cfg: RLConfig):
        self.cfg = cfg
        self.rank, self.world, self.device, mesh = init_distributed(cfg.parallel.sp)
        self.sp_group, self.sp = mesh["sp"].get_group(), cfg.parallel.sp
        self.sp_rank, self.dp = mesh["sp"].get_local_rank(), mesh["dp"].size()
        if cfg.rollout.n % cfg.algo.mini_batches:
            raise ValueError(f"rollout.n={cfg.rollout.n} must divide by algo.mini_batches={cfg.algo.mini_batches}: "
                             "each mini-batch takes the same share of every prompt's samples")
        if cfg.optim.batch_size % self.world:
            raise ValueError(f"optim.batch_size={cfg.optim.batch_size} prompts must divide by the world size "
                             f"{self.world}: every rank rolls out the same number of prompts")
        self.per_rank = cfg.optim.batch_size // self.world
        self.out = Path(cfg.run.out)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            print(C.describe(cfg), file=sys.stderr)
        torch.manual_seed(cfg.run.seed)

        model = load_model(cfg.model.path, torch.float32, self.device)
        validate_layout(self.world, self.dp, self.sp, model.config.num_heads, model.config.num_kv_heads)
        model.gradient_checkpointing = cfg.model.gradient_checkpointing
        if model.visual is not None:
            model.visual.requires_grad_(cfg.model.train_vision)
        self.rollout_model = QwenVL(model.hf_config).to(self.device).eval().requires_grad_(False)
        self.ref_model = None
        if cfg.algo.kl_coef > 0:
            self.ref_model = load_model(cfg.model.path, torch.float32, self.device).eval().requires_grad_(False)
        self.model = shard_model(model, self.device)
        self.processor = AutoProcessor.from_pretrained(cfg.model.path)
        self.eos = model.config.eos_token_id
        self.optimizer = make_optimizer(self.model, cfg.optim.lr, cfg.optim.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg.optim.warmup_steps, cfg.optim.steps)
        self.reward_fn = load_reward_fn(cfg.algo.reward) if cfg.algo.reward else None
        self.train = load_dataset(cfg.data.train, cfg.data.video_dir, cfg.data.bad_videos)
        self.test = load_dataset(cfg.data.test, cfg.data.video_dir, cfg.data.bad_videos) if cfg.data.test else []
        if cfg.eval.max_examples:
            self.test = self.test[: cfg.eval.max_examples]
        self.sampling = frame_sampling(cfg.data)
        self.log = MetricsLog(self.out, self.rank, cfg.run.tensorboard)
        self.step_num, self.cursor = 0, 0  # cursor: global position in the seeded data stream
        self.items: dict[int, dict] = {}  # this step's decoded prompts of the SP group, by key
        self.cache: dict[int, torch.Tensor] = {}  # their video embeddings, by key (MR-SP's cache)
        if cfg.run.resume and (ckpt := latest_checkpoint(self.out)) is not None:
            state = load_checkpoint(ckpt, self.model, self.optimizer, self.scheduler)
            self.step_num, self.cursor = state["step"], state["extra"]["cursor"]
            if self.rank == 0:
                print(f"resumed from {ckpt} at step {self.step_num}", file=sys.stderr)

    # ------------------------------------------------------------------ 1. decode + encode

    def load_prompts(self, counts: list[int]) -> list[dict]:
        """Decode the next prompts of the data stream: `counts[r]` of them for world rank r.

        Each item's `key` is its position in the seeded data stream: unique within a step and the
        same on every rank and under every dp/sp layout. It keys the embedding cache and seeds
        the prompt's rollouts, so a prompt's samples do not depend on which rank drew it.
        """
        start = self.cursor + sum(counts[: self.rank])
        indices = global_indices(len(self.train), self.cfg.run.seed, start, counts[self.rank])
        self.cursor += sum(counts)
        items = []
        for key, i in enumerate(indices, start):
            ex = self.train[i]
            try:
                item = rl_example(ex, self.processor, self.sampling, self.cfg.data.max_prompt_tokens)
            except (ValueError, OSError) as err:  # VideoError and PromptTooLong included
                raise RuntimeError(f"step {self.step_num + 1}: cannot use example {ex.id} (video {ex.video}): "
                                   f"{err}. Fix the file, or drop it with --data.bad_videos drop") from err
            items.append({**item, "key": key})
        return items

    def share_with_group(self, obj) -> list:
        """all_gather_object within the SP group: one entry per SP rank, in SP-rank order."""
        if self.sp == 1:
            return [obj]
        out = [None] * self.sp
        dist.all_gather_object(out, obj, group=self.sp_group)
        return out

    def encode(self, group_items: list[dict]) -> dict[int, torch.Tensor]:
        """MR-SP stage 1 for the SP group's new prompts: {key: video embeddings}, computed once."""
        if not group_items or not self.cfg.mrsp.embed_cache:
            return {}  # the no-cache ablation encodes at every use instead
        with torch.no_grad():
            embeds = encode_videos(self.model, group_items, self.sp_group, self.cfg.parallel.parallel_encode, False)
        return {it["key"]: e for it, e in zip(group_items, embeds, strict=True)}

    def video_embeds(self, item: dict) -> torch.Tensor:
        """A prompt's video embeddings: from the step's cache, or encoded afresh (ablation)."""
        if self.cfg.mrsp.embed_cache:
            return self.cache[item["key"]]
        with torch.no_grad():
            return self.rollout_model.encode_video(item["pixel_values_videos"], item["video_grid_thw"])

    # ------------------------------------------------------------------ 2-3. rollout + reward

    def rollout(self, items: list[dict]) -> list[Sequence]:
        """n samples for each of this rank's prompts, prefilled once from the cached embeddings."""
        cfg = self.cfg.rollout
        params = SamplingParams(n=cfg.n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_p=cfg.top_p, top_k=cfg.top_k, stop_token_ids=(self.eos,))
        seeds = [self.cfg.run.seed * 1_000_003 + it["key"] for it in items]
        positions = [sequence_positions(self.model, it, it["input_ids"], 0) for it in items]
        if self.cfg.mrsp.embed_cache:
            prompts = [(self.rollout_model.embed(it["input_ids"], self.cache[it["key"]])[None], pos)
                       for it, pos in zip(items, positions, strict=True)]
            samples = sample(self.rollout_model, prompts, params, cfg.prefill_chunk, seeds=seeds).samples
        else:  # ablation (the naive baseline): every rollout re-encodes its video and prefills its own
            # copy of the prompt, the n copies batched together (what generate(num_return_sequences=n) does)
            copies = [(self.rollout_model.embed(it["input_ids"], self.video_embeds(it))[None], pos)
                      for it, pos in zip(items, positions, strict=True) for _ in range(cfg.n)]
            one = dataclasses.replace(params, n=1)
            copy_seeds = [seed + j for seed in seeds for j in range(cfg.n)]  # sample j of prompt p, as above
            samples = sample(self.rollout_model, copies, one, cfg.prefill_chunk, seeds=copy_seeds).samples
            for s in samples:
                s.prompt_index //= cfg.n
        sequences = []
        for s in samples:
            it = items[s.prompt_index]
            text = self.processor.tokenizer.decode(s.tokens, skip_special_tokens=True)
            acc, fmt, total = self.score(text, it)
            sequences.append(Sequence(it["key"], it["input_ids"], s.tokens, s.logprobs, total, acc, fmt))
        return sequences

    def score(self, text: str, item: dict) -> tuple[float, float, float]:
        """(accuracy, format, reward) of one response; the reward may be the user's function."""
        acc = accuracy_reward(text, item["answer"], item["row"])
        fmt = format_reward(text)
        if self.reward_fn is not None:
            total = float(self.reward_fn(text, item["answer"], item["row"]))
        else:
            total = self.cfg.algo.accuracy_weight * acc + self.cfg.algo.format_weight * fmt
        return acc, fmt, total

    def collect(self) -> tuple[list[Sequence], dict]:
        """Steps 1-4 for this rank: prompts, cached embeddings, rollouts, rewards, advantages.

        With dynamic sampling, groups whose n rewards are all equal (zero advantage, no signal)
        are dropped and more prompts drawn, in lockstep over all ranks (the encode is collective),
        until every rank has `per_rank` groups or `max_sampling_tries` rounds have run.
        """
        cfg, n = self.cfg, self.cfg.rollout.n
        groups = []
        stats = {"encode": 0.0, "rollout": 0.0, "dropped_groups": 0, "rounds": 0}
        tries = cfg.algo.max_sampling_tries if cfg.algo.dynamic_sampling else 1
        while sum(counts := self.all_gather_ints(self.per_rank - len(groups))) > 0:
            if stats["rounds"] == tries:
                raise RuntimeError(
                    f"dynamic sampling: after {tries} rounds, {sum(counts)} of the {cfg.optim.batch_size} prompt "
                    "groups still have zero reward variance (all samples right, or all wrong): the data is too "
                    "easy or too hard for this model. Raise algo.max_sampling_tries or rollout.n, or turn off "
                    "algo.dynamic_sampling")
            stats["rounds"] += 1
            t0 = time.time()
            new_items = self.load_prompts(counts)
            group_items = [x for part in self.share_with_group(new_items) for x in part]
            self.items.update({it["key"]: it for it in group_items})
            self.cache.update(self.encode(group_items))
            stats["encode"] += time.time() - t0
            t0 = time.time()
            seqs = self.rollout(new_items) if new_items else []
            stats["rollout"] += time.time() - t0
            for p in range(len(new_items)):
                group = seqs[p * n:(p + 1) * n]
                rewards = [s.reward for s in group]
                if cfg.algo.dynamic_sampling and max(rewards) == min(rewards):
                    stats["dropped_groups"] += 1
                elif len(groups) < self.per_rank:
                    groups.append(group)
        rewards = torch.tensor([[s.reward for s in g] for g in groups])  # (G, n)
        adv = compute_advantages(rewards, cfg.algo.adv_estimator, cfg.algo.adv_scale)
        sequences = [s for g in groups for s in g]
        for s, a in zip(sequences, adv.tolist(), strict=True):
            s.advantage = a
        return sequences, stats

    def all_gather_ints(self, value: int) -> list[int]:
        t = torch.tensor([value], dtype=torch.long)
        if self.world == 1:
            return [value]
        out = [torch.zeros_like(t) for _ in range(self.world)]
        dist.all_gather(out, t)
        return [int(x) for x in out]

    # ------------------------------------------------------------------ 5-6. log-probs + update

    def micro_inputs(self, model, seqs: list[Sequence], for_update: bool = False) -> dict:
        """Right-padded micro-batch of (prompt + response) sequences, each with its own cached video.

        With a trainable vision tower the update encodes its micro-batch's videos again, with
        gradients (stage 1 again, across the SP group); the cache still serves the rollout and
        the old/ref forwards.
        """
        items = [self.items[s.key] for s in seqs]
        responses = [torch.tensor(s.response, dtype=torch.long) for s in seqs]
        if for_update and self.cfg.model.train_vision:
            video = encode_videos(self.model, items, self.sp_group, self.cfg.parallel.parallel_encode, True)
        else:
            video = [self.video_embeds(it) for it in items]
        return build_micro_batch(model, [s.prompt_ids for s in seqs], responses, video, items)

    def sp_logprobs(self, model, batch: dict, with_entropy: bool = False):
        return sp_token_logprobs(model, batch["input_ids"], batch["video_embeds"], batch["positions"],
                                 batch["targets"], self.sp_group, self.cfg.rollout.temperature, with_entropy,
                                 video_mask=batch["video_mask"])

    def logprobs(self, model, seqs) -> list[torch.Tensor]:
        """Per-sequence response log-probs (no grad), sequence-parallel (stage 2)."""
        out = []
        mb = self.cfg.algo.micro_batch_size
        with torch.no_grad():
            for m in range(0, len(seqs), mb):
                micro = seqs[m:m + mb]
                batch = self.micro_inputs(model, micro)
                logp = self.sp_logprobs(model, batch)
                out += [row[t != IGNORE_INDEX] for row, t in zip(logp, batch["targets"], strict=True)]
        return out

    def update(self, seqs: list[Sequence], old: list[torch.Tensor] | None, ref) -> dict:
        """Step 6: mini-batches x ppo_epochs of the GRPO loss; returns summed metrics."""
        cfg = self.cfg.algo
        sums: dict[str, float] = {}
        mb = cfg.micro_batch_size
        n, parts = self.cfg.rollout.n, cfg.mini_batches
        # Mini-batch m holds samples [m*n/M, (m+1)*n/M) of *every* prompt: the same global
        # mini-batches under every dp/sp layout (slicing each rank's list would not be).
        minis = [[i for i in range(len(seqs)) if (i % n) * parts // n == m] for m in range(parts)]
        for _ in range(cfg.ppo_epochs):
            for mini in minis:
                tokens = sum(len(seqs[i].response) for i in mini)
                global_tokens = all_reduce_sum(tokens) / self.sp  # SP ranks hold the same sequences
                global_seqs = all_reduce_sum(len(mini)) / self.sp
                for m in range(0, len(mini), mb):
                    idx = mini[m:m + mb]
                    micro = [seqs[i] for i in idx]
                    batch = self.micro_inputs(self.model, micro, for_update=True)
                    logp, entropy = self.sp_logprobs(self.model, batch, with_entropy=True)
                    mask = batch["targets"] != IGNORE_INDEX  # (B, L)
                    old_logp = torch.zeros_like(logp)
                    old_logp[mask] = torch.cat([old[i] for i in idx]) if old is not None else logp[mask].detach()
                    ref_logp = None
                    if ref is not None:
                        ref_logp = torch.zeros_like(logp)
                        ref_logp[mask] = torch.cat([ref[i] for i in idx])
                    adv = torch.tensor([s.advantage for s in micro], device=logp.device)
                    loss, metrics = grpo_loss(
                        logp, old_logp, adv, mask, ref_logp=ref_logp, kl_coef=cfg.kl_coef, kl_kind=cfg.kl_kind,
                        clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip or None,
                        agg=cfg.loss_agg, global_tokens=global_tokens, global_seqs=global_seqs,
                        max_response_len=self.cfg.rollout.max_new_tokens)
                    backward(loss)
                    metrics["entropy"] = float(entropy.detach()[mask].sum())
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v
                sync_replicated_grads(self.model)
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + clip_grad_norm(self.model, self.cfg.optim.grad_clip)
                sums["optimizer_steps"] = sums.get("optimizer_steps", 0) + 1
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return sums

    # ------------------------------------------------------------------ the step

    def step(self) -> dict:
        cfg = self.cfg
        t_step = time.time()
        self.rollout_model.load_state_dict(full_state(self.model), strict=False)  # weight sync

        # 1-4. decode + encode (stage 1, cached by prompt key), rollout, rewards, advantages
        self.items, self.cache = {}, {}
        mine, stats = self.collect()

        # the SP group trains on the union of its ranks' sequences (stage 2 splits each one);
        # their videos are already in every SP rank's cache
        seqs = [s for part in self.share_with_group(mine) for s in part]

        # 5. old-policy and reference log-probs (stage 2), skipped when exactly on-policy
        t0 = time.time()
        on_policy = cfg.algo.ppo_epochs == 1 and cfg.algo.mini_batches == 1
        old = None if on_policy else self.logprobs(self.model, seqs)
        t_old = time.time() - t0
        t0 = time.time()
        ref = self.logprobs(self.ref_model, seqs) if self.ref_model else None
        t_ref = time.time() - t0

        # 6. policy update
        t0 = time.time()
        sums = self.update(seqs, old, ref)
        t_update = time.time() - t0
        self.step_num += 1

        # 7. metrics (this rank's samples are reduced over the world)
        total = {k: all_reduce_sum(v) / self.sp for k, v in sums.items()}  # the SP group repeats the sums
        tokens = max(total.get("tokens", 0.0), 1.0)
        # one gather of every sample's (reward, accuracy, format, |advantage|, length) over the world
        rows = self.gather_rows([(s.reward, s.accuracy, s.format, abs(s.advantage), len(s.response)) for s in mine])
        rewards, accuracy, fmt, abs_adv, lengths = (list(col) for col in zip(*rows, strict=True))
        metrics = {
            "reward/overall": statistics.fmean(rewards),
            "reward/accuracy": statistics.fmean(accuracy),
            "reward/format": statistics.fmean(fmt),
            "reward/std": statistics.pstdev(rewards),
            "advantage/abs_mean": statistics.fmean(abs_adv),
            "actor/pg_loss": total["pg_loss"] / cfg.algo.ppo_epochs,
            "actor/kl_loss": total.get("kl_loss", 0.0) / cfg.algo.ppo_epochs,
            "actor/kl": total.get("kl", 0.0) / tokens,
            "actor/clipfrac_low": total["clipfrac_low"] / tokens,
            "actor/clipfrac_high": total["clipfrac_high"] / tokens,
            "actor/approx_kl": total["approx_kl"] / tokens,
            "actor/entropy": total["entropy"] / tokens,
            "actor/grad_norm": sums["grad_norm"] / sums["optimizer_steps"],
            "actor/lr": self.scheduler.get_last_lr()[0],
            "response_length/mean": statistics.fmean(lengths),
            "response_length/max": max(lengths),
            "response_length/clip_ratio": statistics.fmean(float(n == cfg.rollout.max_new_tokens) for n in lengths),
            "sampling/dropped_groups": all_reduce_sum(stats["dropped_groups"]),
            "sampling/rounds": stats["rounds"],
            "timing_s/encode": stats["encode"],
            "timing_s/rollout": stats["rollout"],
            "timing_s/old": t_old,
            "timing_s/ref": t_ref,
            "timing_s/update": t_update,
            "timing_s/step": time.time() - t_step,
        }
        return metrics

    def gather_rows(self, rows: list[tuple]) -> list[tuple]:
        """Every rank's rows, concatenated in rank order."""
        if self.world == 1:
            return list(rows)
        out = [None] * self.world
        dist.all_gather_object(out, list(rows))
        return [r for part in out for r in part]

    def evaluate(self):
        return evaluate_copy(self.model, self.rollout_model, self.processor, self.test, self.cfg.data,
                             self.cfg.eval, self.rank, self.world)

    def save(self):
        save_checkpoint(self.out, self.step_num, self.model, self.optimizer, self.scheduler,
                        extra={"cursor": self.cursor})


PRINTED = ["reward/overall", "reward/accuracy", "reward/format", "actor/pg_loss", "actor/clipfrac_high",
           "actor/entropy", "response_length/mean", "timing_s/step"]


def main(argv):
    cfg = C.parse(RLConfig, argv)
    trainer = Trainer(cfg)
    bar = tqdm(total=cfg.optim.steps, initial=trainer.step_num, desc="rl", disable=trainer.rank != 0)
    while trainer.step_num < cfg.optim.steps:
        metrics = trainer.step()
        bar.update(1)
        step = trainer.step_num
        if trainer.test and cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.optim.steps:
            metrics.update({f"eval/{k}": v for k, v in trainer.evaluate()["overall"].items()})
        trainer.log.log(step, metrics, PRINTED)
        if cfg.run.save_every and step % cfg.run.save_every == 0:
            trainer.save()
    trainer.save()
    export_hf(trainer.model, trainer.out / "hf", cfg.model.path)
    if trainer.test:
        table = trainer.evaluate()
        if trainer.rank == 0:
            print_table(table)
        trainer.log.log(trainer.step_num, {f"eval/{k}": v for k, v in table["overall"].items()})
    if trainer.rank == 0:
        print(f"RL done: checkpoints in {trainer.out}, Hugging Face export in {trainer.out / 'hf'}", file=sys.stderr)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
