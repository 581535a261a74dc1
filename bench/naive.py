"""The naive MR-SP baseline, the one the paper compares against: train_rl's step without the embedding cache
and without the shared prefill.

`NaiveTrainer` is `train_rl.Trainer` with two methods replaced:
- `encode` caches nothing: it returns `EncodeOnRead`, which runs the vision tower again at every read, so every
  rollout and every old / reference / update forward encodes its video again;
- `rollout` prefills n copies of each prompt, each with its video encoded again, batched together (what
  generate(num_return_sequences=n) does), instead of one prefill per prompt shared by its n samples.
Sample j of a prompt keeps the seed it has in the shared-prefix sampler, so both draw the same tokens
(tests/test_bench_mrsp.py); only the time and memory differ. `python -m bench mrsp` runs it as variant (a).
"""

import dataclasses
from collections.abc import Mapping

import torch

from rollout import Sample, sample
from train_rl import Prompt, Trainer


class EncodeOnRead(Mapping):
    """The naive baseline's stand-in for the embedding cache: {key: video embeddings}, but every read
    runs the vision tower again (on this rank, no grad), as a pipeline without the cache does."""

    def __init__(self, model, prompts: list[Prompt]):
        self.model, self.prompts = model, {p.key: p for p in prompts}

    def __getitem__(self, key) -> torch.Tensor:
        prompt = self.prompts[key]
        with torch.no_grad():
            return self.model.encode_video(prompt.pixel_values_videos, prompt.video_grid_thw)  # (N, C)

    def __iter__(self):
        return iter(self.prompts)

    def __len__(self):
        return len(self.prompts)


class NaiveTrainer(Trainer):
    """train_rl's step without MR-SP's embedding cache and shared prefill (see the module docstring)."""

    def encode(self, prompts: list[Prompt]) -> EncodeOnRead:
        return EncodeOnRead(self.rollout_model, prompts)

    def rollout(self, prompts: list[Prompt], cache) -> list[Sample]:
        n = self.params.n
        copies = [self.prompt_inputs(p, cache) for p in prompts for _ in range(n)]
        seeds = [seed + j for seed in self.rollout_seeds(prompts) for j in range(n)]
        samples = sample(self.rollout_model, copies, dataclasses.replace(self.params, n=1),
                         self.cfg.rollout.prefill_chunk, seeds=seeds).samples
        for s in samples:
            s.prompt_index //= n  # copy c is of prompt c // n
        return samples
