"""Stage 2: GRPO on long videos with MR-SP. One step, top to bottom, in the paper's order.

    torchrun --nproc_per_node 2 train_rl.py --model.path runs/sft/hf \
        --data.train data/train.jsonl --data.test data/test.jsonl --parallel.sp 2 --run.out runs/rl

Layout: every rank rolls out its own prompts (data parallel); an SP group trains on the union of its ranks'
sequences, each split along its length across the group (Ulysses); FSDP2 shards the weights over all ranks.

A step (`Trainer.step`), one call each:
1. `encode`     decode this rank's videos once (`load_prompts`, one `Prompt` each), share the prompts (not the
                pixels) over the SP group (`sp.share_prompts`); MR-SP stage 1 sends each rank only the frames
                it encodes and gathers the embeddings into the step's cache, {prompt key: video embeddings}, a
                value handed to every stage below.
2. `rollout`    the batched KV-cache sampler (rollout.py) on an unsharded copy of the current weights (like
                the vLLM engine of Long-RL / veRL), n samples per prompt.
3. `score`      reward.py per sample. `collect` runs 1-3; with DAPO dynamic sampling it drops groups whose
                rewards are all equal and runs them again for new prompts.
4. `advantages` loss.py, per group of n.
5. `logprobs`   old-policy and reference log-probs by sequence-parallel prefill (MR-SP stage 2) from the
                cached embeddings; skipped when exactly on-policy / when the KL is off. Here and in `update` a
                prompt's samples in a micro-batch share one copy of it (grouped attention, minirl/packing.py).
6. `update`     mini-batches x ppo_epochs of the GRPO loss, FSDP2 + Ulysses, grad clip; an optimizer step
                whose loss or gradient norm is NaN/inf is skipped on every rank.
7. `metrics`    this rank's samples reduced over the world.

Ablations: `--parallel.parallel_encode false` encodes each video on one rank, `--parallel.sp 1` turns off
stage 2, `--mrsp.shared_prefix false` runs one (prompt + response) row per sample; `python -m bench mrsp`
measures them against the naive baseline (bench/naive.py: no embedding cache, one prefill per rollout). The
set-up and the end of the run are minirl/run.py's, shared with SFT.
"""

import dataclasses
import re
import statistics
import sys
from collections import ChainMap
from functools import partial
from itertools import groupby

import torch
from tqdm import tqdm

from evaluation import evaluate_run
from minirl import config
from minirl.data import IGNORE_INDEX, global_indices, rl_example
from minirl.distributed import all_gather_objects, all_reduce_sum, backward, count_skipped, optimizer_step, sync_weights
from minirl.loss import compute_advantages, grpo_loss
from minirl.model import rope_index
from minirl.packing import build_micro_batch, build_packed_batch, micro_batches, scatter_rows
from minirl.reward import accuracy_reward, format_reward, load_reward_fn, reward
from minirl.run import start_run, timed
from rollout import Sample, SamplingParams, kv_waves, sample
from sp import encode_videos, share_prompts, sp_packed_logprobs, sp_token_logprobs


@dataclasses.dataclass
class RolloutConfig:
    n: int = 8  # samples per prompt (the GRPO group)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    prefill_chunk: int = 4096
    kv_budget_gib: float = 0.0  # KV cache of one rollout batch; prompts beyond it wait for the next wave (0: no bound)
    compile: bool = False  # decode (rollout and eval) with the static-shape step under torch.compile (rollout.py)


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
    # samples per old/ref log-prob forward (no grad, so no activations are kept); 0: optim.micro_batch_size. With
    # the shared prefix, rollout.n packs all of a prompt's samples with one copy of it (veRL: log_prob_micro_batch_size)
    logprob_micro_batch_size: int = 0
    dynamic_sampling: bool = False  # DAPO: drop groups with zero reward variance and refill
    shuffle_rewards: bool = False  # the random-reward control: advantages from the step's rewards permuted
    max_sampling_tries: int = 4
    reward: str = ""  # path/to/file.py:function, or '' for reward.reward (accuracy and format weights below)
    accuracy_weight: float = 0.9
    format_weight: float = 0.1


def rl_optim() -> config.OptimConfig:
    """RL's optimizer defaults. batch_size: prompts per step, whole world (each yields rollout.n sequences);
    micro_batch_size: samples per forward, per SP group; with mrsp.shared_prefix whole groups of
    k = n / mini_batches samples, as many as fit (minirl.packing.micro_batches): 8 fits the default group,
    one prompt computation per group."""
    return config.OptimConfig(steps=50, batch_size=8, micro_batch_size=8, lr=1e-5, warmup_steps=0)


@dataclasses.dataclass
class RLConfig:
    model: config.ModelConfig = dataclasses.field(default_factory=config.ModelConfig)
    data: config.DataConfig = dataclasses.field(default_factory=config.DataConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    algo: AlgoConfig = dataclasses.field(default_factory=AlgoConfig)
    optim: config.OptimConfig = dataclasses.field(default_factory=rl_optim)
    parallel: config.ParallelConfig = dataclasses.field(default_factory=config.ParallelConfig)
    mrsp: config.MRSPConfig = dataclasses.field(default_factory=config.MRSPConfig)
    eval: config.EvalConfig = dataclasses.field(default_factory=config.EvalConfig)
    run: config.RunConfig = dataclasses.field(default_factory=lambda: config.RunConfig(out="runs/rl"))


@dataclasses.dataclass
class Prompt:
    """One RL prompt as it flows through a step.

    `load_prompts` builds it on the rank that decodes its video (its `holder`); `share_prompts` gives every SP
    rank a copy without the pixels; `encode` frees the holder's pixels once the cache holds the video's
    embeddings (unless a trained vision tower encodes it again in the update). Later stages find it by `key`.
    """

    key: int  # position in the seeded data stream: unique in a step, the same on every rank and dp/sp layout;
    # it keys the embedding cache and seeds the prompt's rollouts, so they do not depend on which rank drew it
    input_ids: torch.Tensor  # (L,) the chat prompt, one <|video_pad|> slot per video token
    positions: torch.Tensor  # (3, L) its M-RoPE positions, computed once: the sampler's and the trainer's
    video_grid_thw: torch.Tensor  # (1, 3)
    answer: str
    row: dict  # the jsonl row (what a custom reward may read)
    category: str | None  # for per-category metrics
    holder: int = 0  # the SP rank that decoded the video: the one rank holding its pixels
    pixel_values_videos: torch.Tensor | None = None  # (rows, D) on the holder, until `encode` frees them


@dataclasses.dataclass
class Sequence:
    """One rollout sample with everything the trainer needs."""

    key: int  # its prompt's key
    response: list[int]
    sampler_logprobs: list[float]
    reward: float
    accuracy: float
    format: float
    advantage: float = 0.0
    category: str | None = None  # the question's category, for per-category metrics


class Trainer:
    """Holds the run (minirl.run.Run: models, optimizer, data, log) and the RL state; `step()` is one RL step."""

    def __init__(self, cfg: RLConfig):
        self.cfg = cfg
        if cfg.optim.micro_batch_size < 1 or cfg.algo.logprob_micro_batch_size < 0:
            raise ValueError(f"optim.micro_batch_size={cfg.optim.micro_batch_size} must be >= 1 and "
                             f"algo.logprob_micro_batch_size={cfg.algo.logprob_micro_batch_size} >= 0 (0: the former)")
        if cfg.rollout.n % cfg.algo.mini_batches:
            raise ValueError(f"rollout.n={cfg.rollout.n} must divide by algo.mini_batches={cfg.algo.mini_batches}: "
                             "each mini-batch takes the same share of every prompt's samples")
        self.run = start_run(cfg, reference=cfg.algo.kl_coef > 0)
        # the policy (fp32 masters, FSDP2), its unsharded copy the sampler decodes with, the reference (or None)
        self.model, self.rollout_model, self.ref_model = self.run.model, self.run.copy, self.run.ref
        self.rank, self.world, self.sp_group = self.run.rank, self.run.world, self.run.sp_group
        if cfg.optim.batch_size % self.world:
            raise ValueError(f"optim.batch_size={cfg.optim.batch_size} prompts must divide by the world size "
                             f"{self.world}: every rank rolls out the same number of prompts")
        self.per_rank = cfg.optim.batch_size // self.world
        k, mb = cfg.rollout.n // cfg.algo.mini_batches, cfg.optim.micro_batch_size  # k: samples of a prompt per mini
        if cfg.mrsp.shared_prefix and mb < k and self.rank == 0:
            print(f"warning: optim.micro_batch_size={mb} cuts the {k} samples of a prompt in a mini-batch: the update "
                  f"computes each prompt {-(-k // mb)} times; {k} or more computes it once", file=sys.stderr)
        self.on_policy = cfg.algo.ppo_epochs == 1 and cfg.algo.mini_batches == 1  # old log-probs = current
        self.params = SamplingParams(n=cfg.rollout.n, max_new_tokens=cfg.rollout.max_new_tokens,
                                     temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                     top_k=cfg.rollout.top_k, stop_token_ids=(self.model.config.eos_token_id,))
        self.reward_fn = load_reward_fn(cfg.algo.reward) if cfg.algo.reward else partial(
            reward, accuracy_weight=cfg.algo.accuracy_weight, format_weight=cfg.algo.format_weight)
        self.step_num = self.run.step
        self.cursor = self.run.state.get("cursor", 0)  # global position in the seeded data stream
        self.skipped_in_a_row = self.run.state.get("skipped_in_a_row", 0)  # NaN/inf optimizer steps in a row

    # ------------------------------------------------------------------ the step

    def step(self) -> dict:
        """One RL step: encode -> rollout -> reward -> advantage -> old/ref -> update -> metrics."""
        times = {}
        with timed(times, "step"):
            sync_weights(self.rollout_model, self.model)
            groups, prompts, cache, stats = self.collect(times)  # 1-3
            local = self.advantages(groups)  # 4: this rank's sequences
            # the SP group trains on the union of its ranks' sequences, their videos in every SP rank's cache
            seqs = [s for part in all_gather_objects(local, self.sp_group) for s in part]
            with timed(times, "old"):  # 5
                old = None if self.on_policy else self.logprobs(self.model, seqs, prompts, cache)
            with timed(times, "ref"):
                ref = self.logprobs(self.ref_model, seqs, prompts, cache) if self.ref_model else None
            with timed(times, "update"):  # 6
                sums = self.update(seqs, old, ref, prompts, cache)
        self.step_num += 1
        return self.metrics(local, sums, stats, times)  # 7

    # ------------------------------------------------------------------ 1-3. encode, rollout, reward

    def collect(self, times: dict) -> tuple[list[list[Sequence]], dict[int, Prompt], ChainMap, dict]:
        """Steps 1-3 for this rank: (per_rank groups of n scored sequences, the SP group's prompts by key,
        their embedding cache, sampling stats). With DAPO's dynamic sampling, groups whose n rewards are all
        equal (zero advantage, no signal) are dropped and `draw` runs again for the missing ones, in lockstep
        over all ranks (the encode is collective), for at most `max_sampling_tries` rounds."""
        algo = self.cfg.algo
        tries = algo.max_sampling_tries if algo.dynamic_sampling else 1
        groups, prompts, caches, dropped = [], {}, [], 0
        need = [self.per_rank] * self.world  # prompts each rank still needs
        for rounds in range(1, tries + 1):
            new_prompts, cache, new_groups = self.draw(need, times)
            prompts.update(new_prompts)
            caches.append(cache)
            if algo.dynamic_sampling:
                kept = [g for g in new_groups if len({s.reward for s in g}) > 1]
                dropped += len(new_groups) - len(kept)
                new_groups = kept
            groups += new_groups
            need = all_gather_objects(self.per_rank - len(groups))  # a collective: every rank calls it
            if not any(need):
                # ChainMap: one {key: embeds} view over the rounds' caches, read lazily (the naive
                # baseline, bench/naive.py, encodes at every read)
                return groups, prompts, ChainMap(*caches), dict(dropped_groups=dropped, rounds=rounds)
        raise RuntimeError(
            f"dynamic sampling: after {tries} rounds, {sum(need)} of the {self.cfg.optim.batch_size} prompt "
            "groups still have zero reward variance (all samples right, or all wrong): the data is too easy or "
            "too hard for this model. Raise algo.max_sampling_tries or rollout.n, or turn off algo.dynamic_sampling")

    def draw(self, counts: list[int], times: dict) -> tuple[dict[int, Prompt], dict, list[list[Sequence]]]:
        """One round of steps 1-3: `counts[r]` new prompts for world rank r. Returns the SP group's
        new prompts by key, their embedding cache, and this rank's groups of n scored sequences."""
        with timed(times, "decode"):  # decord + the processor, this rank's prompts
            local = self.load_prompts(counts)
        with timed(times, "share"):
            group_prompts = share_prompts(local, self.sp_group)
        with timed(times, "encode"):  # MR-SP stage 1 only
            cache = self.encode(group_prompts)
        with timed(times, "rollout"):
            samples = self.rollout(local, cache)
        return {p.key: p for p in group_prompts}, cache, self.score(local, samples)

    def load_prompts(self, counts: list[int]) -> list[Prompt]:
        """Decode the data stream's next prompts, `counts[r]` for world rank r (keys: see `Prompt.key`)."""
        start = self.cursor + sum(counts[: self.rank])
        indices = global_indices(len(self.run.train), self.cfg.run.seed, start, counts[self.rank])
        self.cursor += sum(counts)
        prompts = []
        for key, i in enumerate(indices, start):
            ex = self.run.train[i]
            try:
                item = rl_example(ex, self.run.processor, self.run.sampling, self.cfg.data.max_prompt_tokens)
            except (ValueError, OSError) as err:  # VideoError and PromptTooLong included
                raise RuntimeError(f"step {self.step_num + 1}: cannot use example {ex.id} (video {ex.video}): "
                                   f"{err}. Fix the file, or drop it with --data.bad_videos drop") from err
            ids, grid = item["input_ids"], item["video_grid_thw"]
            positions = rope_index(ids, grid, item["second_per_grid_ts"], self.model.config)  # (3, L)
            prompts.append(Prompt(key, ids, positions, grid, item["answer"], item["row"], item["category"],
                                  pixel_values_videos=item["pixel_values_videos"]))
        return prompts

    def encode(self, prompts: list[Prompt]) -> dict[int, torch.Tensor]:
        """Step 1, MR-SP stage 1 for the SP group's prompts: {key: video embeddings (N, C)}, each
        video encoded once for the whole step, each rank receiving only the frames it encodes."""
        if not prompts:  # the same on every rank of the group: they share their prompts
            return {}
        with torch.no_grad():
            embeds = encode_videos(self.model, [p.video_grid_thw for p in prompts],
                                   [p.pixel_values_videos for p in prompts], self.sp_group,
                                   self.cfg.parallel.parallel_encode,
                                   holders=[p.holder for p in prompts])  # pixels fetched from their holder
        if not self.cfg.model.train_vision:  # every later forward reads the cache: free the decoded frames now
            for p in prompts:
                p.pixel_values_videos = None
        # cached in the compute dtype (every forward casts them to it anyway): the fp32 vision tower's
        # output would double the cache, which holds the whole SP group's videos on every rank
        return {p.key: e.to(self.rollout_model.dtype) for p, e in zip(prompts, embeds, strict=True)}

    def rollout(self, prompts: list[Prompt], cache) -> list[Sample]:
        """Step 2: n samples of each of this rank's prompts, prompt-major, each prompt prefilled once from its
        cached embeddings. Prompts go in waves whose KV cache fits `rollout.kv_budget_gib` (`kv_waves`); a
        sample depends only on its prompt and seed, so waves change the memory, not the samples."""
        cfg, seeds, samples = self.rollout_model.config, self.rollout_seeds(prompts), []
        per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * self.rollout_model.dtype.itemsize
        for wave in kv_waves([len(p.input_ids) for p in prompts], self.params.n, self.params.max_new_tokens,
                             per_token, self.cfg.rollout.kv_budget_gib * 2**30):
            inputs = [self.prompt_inputs(prompts[i], cache) for i in wave]
            for s in sample(self.rollout_model, inputs, self.params, self.cfg.rollout.prefill_chunk,
                            seeds=[seeds[i] for i in wave], compile=self.cfg.rollout.compile).samples:
                s.prompt_index = wave[s.prompt_index]  # its index among all of this rank's prompts
                samples.append(s)
        return samples

    def prompt_inputs(self, prompt: Prompt, cache) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs_embeds (1, L, C), positions (3, 1, L)) of a prompt, its video from `cache`."""
        return self.rollout_model.embed(prompt.input_ids, cache[prompt.key])[None], prompt.positions[:, None]

    def rollout_seeds(self, prompts: list[Prompt]) -> list[int]:
        """Sample j of a prompt is seeded rollout_seeds[p] + j: from its key, not its rank."""
        return [self.cfg.run.seed * 1_000_003 + p.key for p in prompts]

    def score(self, prompts: list[Prompt], samples: list[Sample]) -> list[list[Sequence]]:
        """Step 3: every sample's reward (`reward.reward`, or the user's function), accuracy and
        format; returned as one group of n sequences per prompt."""
        seqs = []
        for s in samples:
            p = prompts[s.prompt_index]
            text = self.run.processor.tokenizer.decode(s.tokens, skip_special_tokens=True)
            total = float(self.reward_fn(text, p.answer, p.row))
            seqs.append(Sequence(p.key, s.tokens, s.logprobs, total, accuracy_reward(text, p.answer, p.row),
                                 format_reward(text), category=p.category))
        n = self.params.n
        return [seqs[i * n:(i + 1) * n] for i in range(len(prompts))]

    # ------------------------------------------------------------------ 4-6. advantages, log-probs, update

    def advantages(self, groups: list[list[Sequence]]) -> list[Sequence]:
        """Step 4: group advantages (loss.py) written into the sequences; returned flat, group-major. The
        random-reward control (`algo.shuffle_rewards`) computes them from `shuffled_rewards` instead: the same
        rewards landing on responses they say nothing about, so what a run gains over it is what the reward
        taught, not the format or the update's mere size. The logged rewards stay the real ones."""
        rewards = torch.tensor([[s.reward for s in g] for g in groups])  # (G, n)
        if self.cfg.algo.shuffle_rewards:
            rewards = self.shuffled_rewards(groups)
        adv = compute_advantages(rewards, self.cfg.algo.adv_estimator, self.cfg.algo.adv_scale)
        seqs = [s for g in groups for s in g]
        for s, a in zip(seqs, adv.flatten().tolist(), strict=True):
            s.advantage = a
        return seqs

    def shuffled_rewards(self, groups: list[list[Sequence]]) -> torch.Tensor:
        """This rank's (G, n) rewards after a permutation of every reward of the step, all ranks' samples,
        seeded by the run seed and the step: one collective, the same permutation under every layout."""
        local = [(s.key, j, s.reward) for g in groups for j, s in enumerate(g)]
        every = sorted(entry for part in all_gather_objects(local) for entry in part)  # by (prompt key, sample)
        order = torch.randperm(len(every), generator=torch.Generator().manual_seed(
            self.cfg.run.seed * 1_000_003 + self.step_num))
        landed = {(key, j): every[i][2] for (key, j, _), i in zip(every, order.tolist(), strict=True)}
        return torch.tensor([[landed[(s.key, j)] for j, s in enumerate(g)] for g in groups])  # (G, n)

    def micro_inputs(self, model, seqs: list[Sequence], prompts: dict[int, Prompt], cache,
                     for_update: bool = False) -> dict:
        """The forward inputs of a micro-batch, each prompt with its own cached video. Shared prefix
        (default): a prompt's samples in the micro-batch (consecutive: sequences are prompt-major) are packed
        with it into one group, its video once. Ablation: one right-padded (prompt + response) row per sample,
        a video copy each. With a trainable vision tower the update encodes the videos again, with gradients
        (stage 1 again, across the SP group); the cache still serves the rollout and the old/ref forwards."""
        if self.cfg.mrsp.shared_prefix:
            groups = [list(g) for _, g in groupby(seqs, key=lambda s: s.key)]
        else:
            groups = [[s] for s in seqs]
        owners = [prompts[g[0].key] for g in groups]  # each group's prompt
        if for_update and self.cfg.model.train_vision:
            video = encode_videos(self.model, [p.video_grid_thw for p in owners],
                                  [p.pixel_values_videos for p in owners], self.sp_group,
                                  self.cfg.parallel.parallel_encode, holders=[p.holder for p in owners])
        else:
            video = [cache[p.key] for p in owners]
        ids, positions = [p.input_ids for p in owners], [p.positions for p in owners]
        responses = [[torch.tensor(s.response, dtype=torch.long) for s in g] for g in groups]
        if self.cfg.mrsp.shared_prefix:
            return build_packed_batch(model, ids, positions, responses, video)
        return build_micro_batch(model, ids, positions, [r for (r,) in responses], video)

    def micro_batches(self, seqs: list[Sequence], size: int = 0) -> list[list[int]]:
        """Positions of `seqs` per forward (at most `size`, 0: optim.micro_batch_size): whole groups with the
        shared prefix, else plain chunks."""
        size = size or self.cfg.optim.micro_batch_size
        return micro_batches([s.key for s in seqs], size, self.cfg.mrsp.shared_prefix)

    def sp_logprobs(self, model, batch: dict, with_entropy: bool = False):
        """Log-probs (and entropies) laid out like batch["targets"], 0 where it is IGNORE_INDEX."""
        if "packed" in batch:
            return sp_packed_logprobs(model, batch["packed"], batch["video_embeds"], self.sp_group,
                                      self.cfg.rollout.temperature, with_entropy)
        return sp_token_logprobs(model, batch["input_ids"], batch["video_embeds"], batch["positions"],
                                 batch["targets"], self.sp_group, self.cfg.rollout.temperature, with_entropy,
                                 video_mask=batch["video_mask"])

    def logprobs(self, model, seqs: list[Sequence], prompts: dict[int, Prompt], cache) -> list[torch.Tensor]:
        """Step 5: per-sequence response log-probs (no grad), sequence-parallel (stage 2)."""
        out = []
        with torch.no_grad():
            for idx in self.micro_batches(seqs, self.cfg.algo.logprob_micro_batch_size):
                batch = self.micro_inputs(model, [seqs[i] for i in idx], prompts, cache)
                logp = self.sp_logprobs(model, batch)  # (B, L)
                out += [row[t != IGNORE_INDEX] for row, t in zip(logp, batch["targets"], strict=True)]
        return out

    def update(self, seqs: list[Sequence], old: list[torch.Tensor] | None, ref, prompts: dict[int, Prompt],
               cache) -> dict:
        """Step 6: mini-batches x ppo_epochs of the GRPO loss; returns summed metrics. An optimizer step whose
        loss or gradient norm is NaN/inf on any rank is skipped by all (`optimizer_step`) and counted;
        `optim.max_skipped_steps` in a row stop the run."""
        cfg = self.cfg.algo
        sums = {"grad_norm": 0.0, "optimizer_steps": 0, "skipped_steps": 0}
        n, parts = self.cfg.rollout.n, cfg.mini_batches
        # Mini-batch m holds samples [m*n/M, (m+1)*n/M) of *every* prompt: the same global
        # mini-batches under every dp/sp layout (slicing each rank's list would not be).
        minis = [[i for i in range(len(seqs)) if (i % n) * parts // n == m] for m in range(parts)]
        for _ in range(cfg.ppo_epochs):
            for mini in minis:
                tokens = sum(len(seqs[i].response) for i in mini)
                sp = self.cfg.parallel.sp  # SP ranks hold the same sequences
                global_tokens, global_seqs = all_reduce_sum(tokens) / sp, all_reduce_sum(len(mini)) / sp
                loss_sum = 0.0
                micros = [[mini[j] for j in part] for part in self.micro_batches([seqs[i] for i in mini])]
                for m, idx in enumerate(micros):
                    # gradients accumulate unsharded; FSDP reduce-scatters once, after the last micro-batch
                    self.model.set_requires_gradient_sync(m == len(micros) - 1)
                    micro = [seqs[i] for i in idx]
                    batch = self.micro_inputs(self.model, micro, prompts, cache, for_update=True)
                    logp, entropy = self.sp_logprobs(self.model, batch, with_entropy=True)  # (B, L) each
                    mask = (batch["targets"] != IGNORE_INDEX).to(logp.device)  # (B, L)
                    # old/ref log-probs per sequence, laid out like logp
                    old_logp = (logp.detach() if old is None
                                else scatter_rows(torch.cat([old[i] for i in idx]).to(logp), mask))
                    ref_logp = None if ref is None else scatter_rows(torch.cat([ref[i] for i in idx]).to(logp), mask)
                    adv = torch.tensor([s.advantage for s in micro], device=logp.device)
                    loss, metrics = grpo_loss(
                        logp, old_logp, adv, mask, ref_logp=ref_logp, kl_coef=cfg.kl_coef, kl_kind=cfg.kl_kind,
                        clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip or None,
                        agg=cfg.loss_agg, global_tokens=global_tokens, global_seqs=global_seqs,
                        max_response_len=self.cfg.rollout.max_new_tokens)
                    backward(loss)
                    loss_sum += float(loss.detach())
                    metrics["entropy"] = float(entropy.detach()[mask].sum())
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v
                norm, stepped = optimizer_step(self.model, self.run.optimizer, self.cfg.optim.grad_clip, loss_sum)
                self.skipped_in_a_row = count_skipped(self.skipped_in_a_row, stepped, self.cfg.optim.max_skipped_steps)
                sums["grad_norm"] += norm if stepped else 0.0
                sums["optimizer_steps" if stepped else "skipped_steps"] += 1
        self.run.scheduler.step()
        return sums

    # ------------------------------------------------------------------ 7. metrics

    def metrics(self, local: list[Sequence], sums: dict, stats: dict, times: dict) -> dict:
        """The step's metrics: this rank's samples and loss sums reduced over the world."""
        cfg = self.cfg
        total = {k: all_reduce_sum(v) / cfg.parallel.sp for k, v in sums.items()}  # the SP group repeats the sums
        tokens = max(total.get("tokens", 0.0), 1.0)
        # one gather of every sample's (reward, accuracy, format, |advantage|, length, category) over the world
        rows = [(s.reward, s.accuracy, s.format, abs(s.advantage), len(s.response), s.category) for s in local]
        rows = [r for part in all_gather_objects(rows) for r in part]
        rewards, accuracy, fmt, abs_adv, lengths, categories = (list(col) for col in zip(*rows, strict=True))
        steps = sums["optimizer_steps"]  # the same on every rank
        return {
            "reward/overall": statistics.fmean(rewards), "reward/accuracy": statistics.fmean(accuracy),
            "reward/format": statistics.fmean(fmt), "reward/std": statistics.pstdev(rewards),
            "advantage/abs_mean": statistics.fmean(abs_adv),
            "actor/pg_loss": total["pg_loss"] / cfg.algo.ppo_epochs,
            "actor/kl_loss": total.get("kl_loss", 0.0) / cfg.algo.ppo_epochs,
            "actor/kl": total.get("kl", 0.0) / tokens, "actor/clipfrac_low": total["clipfrac_low"] / tokens,
            "actor/clipfrac_high": total["clipfrac_high"] / tokens,
            "actor/approx_kl": total["approx_kl"] / tokens, "actor/entropy": total["entropy"] / tokens,
            "actor/grad_norm": sums["grad_norm"] / steps if steps else float("nan"),
            "actor/skipped_steps": sums["skipped_steps"],
            "actor/lr": self.run.scheduler.get_last_lr()[0],
            "response_length/mean": statistics.fmean(lengths), "response_length/max": max(lengths),
            "response_length/clip_ratio": statistics.fmean(float(n == cfg.rollout.max_new_tokens) for n in lengths),
            "sampling/dropped_groups": all_reduce_sum(stats["dropped_groups"]), "sampling/rounds": stats["rounds"],
            **category_metrics(categories, accuracy, abs_adv),
            **{f"timing_s/{k}": v for k, v in times.items()},
        }

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        """What a checkpoint keeps of the RL state besides the step (resume is exact)."""
        return {"cursor": self.cursor, "skipped_in_a_row": self.skipped_in_a_row}

    def save(self):
        self.run.save(self.step_num, self.state())


def category_metrics(categories: list, accuracy: list[float], abs_adv: list[float]) -> dict:
    """Per question category: the samples' accuracy and the category's share of the step's summed |advantage|
    (which questions push the update; with dynamic sampling, only kept groups). Empty without categories."""
    total = sum(abs_adv) or 1.0
    out = {}
    for cat in sorted({c for c in categories if c}):
        members = [i for i, c in enumerate(categories) if c == cat]
        slug = re.sub(r"[^a-z0-9]+", "_", cat.lower()).strip("_")
        out[f"reward/accuracy/{slug}"] = statistics.fmean(accuracy[i] for i in members)
        out[f"advantage/share/{slug}"] = sum(abs_adv[i] for i in members) / total
    return out


PRINTED = ["reward/overall", "reward/accuracy", "reward/format", "actor/pg_loss", "actor/clipfrac_high",
           "actor/entropy", "response_length/mean", "timing_s/step"]


def main(argv):
    cfg = config.parse(RLConfig, argv)
    trainer = Trainer(cfg)
    run = trainer.run
    score = partial(evaluate_run, compile=cfg.rollout.compile)  # the held-out table, decoded as the rollout is
    bar = tqdm(total=cfg.optim.steps, initial=trainer.step_num, desc="rl", disable=trainer.rank != 0)
    while trainer.step_num < cfg.optim.steps:
        metrics = trainer.step()
        bar.update(1)
        step = trainer.step_num
        if run.test and cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.optim.steps:
            metrics.update({f"eval/{k}": v for k, v in score(run)["overall"].items()})
        run.log.log(step, metrics, PRINTED)
        if cfg.run.save_every and step % cfg.run.save_every == 0:
            trainer.save()
    run.finish(trainer.step_num, trainer.state(), "RL", lambda r: score(r, show=True))


if __name__ == "__main__":
    main(sys.argv[1:])
