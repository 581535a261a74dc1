"""One set-up and one end for both trainers: what a run holds, its checkpoints, its log.

`start_run` builds everything a training run needs, in one order for SFT and RL: the process group and mesh, fp32 master
weights sharded with FSDP2, an unsharded copy in the compute dtype (the weights the sampler decodes with, for rollouts
and evaluation), the reference model when asked, the processor, AdamW with warmup + cosine, the datasets (every video
probed up front), the metrics log, and the state of the newest checkpoint when resuming. `Run.finish` ends it: the last
checkpoint, the Hugging Face export and the final evaluation.

Checkpoints are atomic and resume is exact. A checkpoint is a directory `step-000040/` holding the full (unsharded)
model and optimizer state, the scheduler, every rank's RNG states, the step and the trainer's own state (its data
position). It is written into `.tmp-step-000040/` first and renamed into place only once complete, so a kill in the
middle of a save leaves the previous checkpoint untouched and the partial one ignored. Full state dicts are gathered
with torch.distributed.checkpoint's state-dict helpers, which work the same for a plain module and an FSDP2-sharded one,
so a run can resume on a different number of ranks.
"""

import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from transformers import AutoProcessor

from minirl import config
from minirl.data import frame_sampling, load_dataset
from minirl.distributed import all_gather_objects, init_distributed, shard_model, validate_layout
from minirl.model import QwenVL, load_model, save_pretrained
from minirl.video import FrameSampling

# ----------------------------------------------------------------------------- set-up


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """`model.dtype` as a torch dtype: 'auto' is bfloat16 on CUDA and float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name in ("float32", "bfloat16"):
        return getattr(torch, name)
    raise ValueError(f"model.dtype={name!r}: choose auto, float32 or bfloat16")


def make_optimizer(model, lr: float, weight_decay: float, betas=(0.9, 0.999)):
    """AdamW; no weight decay on norms and biases (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=False)


def make_scheduler(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """Linear warmup, then cosine decay to min_lr_ratio * lr at total_steps."""

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class Run:
    """What a training run holds; built once by `start_run`."""

    cfg: object  # the trainer's config (sections model, data, optim, parallel, eval, run)
    rank: int
    world: int
    device: torch.device
    mesh: object  # DeviceMesh(("dp", "sp"))
    out: Path
    model: QwenVL  # the trained weights: fp32 masters, sharded with FSDP2 over every rank
    copy: QwenVL  # an unsharded copy in the compute dtype, synced before each use: the sampler's weights
    ref: QwenVL | None  # the frozen reference (sharded like `model`, compute dtype); None unless asked for
    processor: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train: list  # minirl.data.Example, every video probed
    test: list
    sampling: FrameSampling
    log: "MetricsLog"
    step: int = 0  # optimizer steps done (from the checkpoint when resuming)
    state: dict = field(default_factory=dict)  # the trainer's own state saved with the checkpoint

    @property
    def sp_group(self):
        return self.mesh["sp"].get_group()

    def save(self, step: int, state: dict):
        save_checkpoint(self.out, step, self.model, self.optimizer, self.scheduler, extra=state)

    def finish(self, step: int, state: dict, name: str, evaluate: Callable[["Run"], dict]):
        """The end of every run: the last checkpoint, the Hugging Face export, the final held-out
        table (`evaluate(run)`, evaluation.evaluate_run: it decodes with the sampler, a top-level
        module this library does not import), then the process group's end."""
        self.save(step, state)
        export_hf(self.model, self.out / "hf", self.cfg.model.path)
        if self.test:
            table = evaluate(self)
            self.log.log(step, {f"eval/{k}": v for k, v in table["overall"].items()})
        if self.rank == 0:
            print(f"{name} done: checkpoints in {self.out}, Hugging Face export in {self.out / 'hf'}", file=sys.stderr)
        dist.destroy_process_group()


def start_run(cfg, reference: bool = False) -> Run:
    """Everything a run needs (see the module docstring), built in the same order for both trainers."""
    rank, world, device, mesh = init_distributed(cfg.parallel.sp)
    out = Path(cfg.run.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        print(config.describe(cfg), file=sys.stderr)
    torch.manual_seed(cfg.run.seed)

    dtype = compute_dtype(cfg.model.dtype, device)
    model = load_model(cfg.model.path, torch.float32, device)  # fp32 master weights
    validate_layout(world, mesh["dp"].size(), cfg.parallel.sp, model.config.num_heads, model.config.num_kv_heads)
    model.gradient_checkpointing = cfg.model.gradient_checkpointing
    if model.visual is not None:
        model.visual.requires_grad_(cfg.model.train_vision)
    copy = QwenVL(model.hf_config).to(device, dtype).eval().requires_grad_(False)
    model = shard_model(model, device, dtype)
    ref = None
    if reference:  # sharded like the policy (after it: one full copy loaded at a time), no replica
        ref = shard_model(load_model(cfg.model.path, dtype, device).eval().requires_grad_(False), device, dtype)
    optimizer = make_optimizer(model, cfg.optim.lr, cfg.optim.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.optim.warmup_steps, cfg.optim.steps, cfg.optim.min_lr_ratio)
    data = cfg.data
    train = load_dataset(data.train, data.video_dir, data.bad_videos)
    test = load_dataset(data.test, data.video_dir, data.bad_videos) if data.test else []
    if cfg.eval.max_examples:
        test = test[: cfg.eval.max_examples]
    run = Run(cfg, rank, world, device, mesh, out, model, copy, ref, AutoProcessor.from_pretrained(cfg.model.path),
              optimizer, scheduler, train, test, frame_sampling(data), MetricsLog(out, rank, cfg.run.tensorboard))
    if cfg.run.resume and (ckpt := latest_checkpoint(out)) is not None:
        resumed = load_checkpoint(ckpt, model, optimizer, scheduler)
        run.step, run.state = resumed["step"], resumed["extra"]
        if rank == 0:
            print(f"resumed from {ckpt} at step {run.step}", file=sys.stderr)
    return run


# ----------------------------------------------------------------------------- log


@contextlib.contextmanager
def timed(times: dict, name: str):
    """Add the seconds the block takes to times[name] (perf_counter). On CUDA the queue is drained
    at both ends, so a stage is charged its kernels, not just their launches."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times[name] = times.get(name, 0.0) + time.perf_counter() - start


class MetricsLog:
    """Metrics per step to metrics.jsonl and the console (rank 0), TensorBoard when installed."""

    def __init__(self, out_dir, rank: int, tensorboard: bool = True):
        self.rank = rank
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if rank == 0 and tensorboard:
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tb"))

    def log(self, step: int, metrics: dict, keys_to_print=None):
        if self.rank != 0:
            return
        row = {"step": step, "time": time.time(), **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        shown = {k: metrics[k] for k in (keys_to_print or metrics) if k in metrics}
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        print(f"step {step}  {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- checkpoints

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(run_dir, step: int, model, optimizer, scheduler=None, extra: dict | None = None) -> Path:
    """Collective: every rank calls it; rank 0 writes. Returns the final checkpoint path."""
    run_dir = Path(run_dir)
    model_state = get_model_state_dict(model, options=_FULL)
    optim_state = get_optimizer_state_dict(model, optimizer, options=_FULL)
    rng_states = all_gather_objects(rng_state())
    final = run_dir / f"step-{step:06d}"
    if _rank() == 0:
        tmp = run_dir / f".tmp-step-{step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(model_state, tmp / "model.pt")
        torch.save(optim_state, tmp / "optimizer.pt")
        torch.save({"step": step, "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": rng_states, "extra": extra or {}}, tmp / "trainer.pt")
        if final.exists():  # re-saving the same step: move the old one out of the way first
            shutil.rmtree(final)
        os.replace(tmp, final)
    if dist.is_initialized():
        dist.barrier()
    return final


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint in run_dir (partial `.tmp-*` directories are ignored)."""
    done = sorted(p for p in Path(run_dir).glob("step-*") if (p / "trainer.pt").exists())
    return done[-1] if done else None


def load_checkpoint(path, model, optimizer, scheduler=None) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG; returns {'step', 'extra'}."""
    path = Path(path)
    if not (path / "trainer.pt").exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer.pt); pick another step-* dir")
    model_state = torch.load(path / "model.pt", map_location="cpu", weights_only=False)
    optim_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
    if scheduler is not None and trainer["scheduler"] is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    if len(trainer["rng"]) == (dist.get_world_size() if dist.is_initialized() else 1):
        set_rng_state(trainer["rng"][_rank()])
    return {"step": trainer["step"], "extra": trainer["extra"]}


PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                   "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "generation_config.json")


def export_hf(model, out_dir, source_dir):
    """Collective: write the model in Hugging Face format (+ the source's tokenizer/processor files)."""
    state = get_model_state_dict(model, options=_FULL)
    if _rank() == 0:
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(f".tmp-{out_dir.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(model, tmp, state_dict=state)
        for name in PROCESSOR_FILES:
            if (Path(source_dir) / name).exists():
                shutil.copy(Path(source_dir) / name, tmp / name)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    if dist.is_initialized():
        dist.barrier()
