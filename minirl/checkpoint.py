"""Atomic training checkpoints, exact resume, and Hugging Face export.

A checkpoint is a directory `step-000040/` holding the full (unsharded) model and optimizer
state, the scheduler, every rank's RNG states, the data position and the step. It is written
into `.tmp-step-000040/` first and renamed into place only once complete, so a kill in the
middle of a save leaves the previous checkpoint untouched and the partial one ignored.

Full state dicts are gathered with torch.distributed.checkpoint's state-dict helpers, which
work the same for a plain module and an FSDP2-sharded one, so a run can resume on a different
number of ranks.
"""

import os
import random
import shutil
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

from minirl.model import save_pretrained

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


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


def _all_gather_objects(obj) -> list:
    if not _distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def save_checkpoint(run_dir, step: int, model, optimizer, scheduler=None, extra: dict | None = None) -> Path:
    """Collective: every rank calls it; rank 0 writes. Returns the final checkpoint path."""
    run_dir = Path(run_dir)
    rank = dist.get_rank() if _distributed() else 0
    model_state = get_model_state_dict(model, options=_FULL)
    optim_state = get_optimizer_state_dict(model, optimizer, options=_FULL)
    rng_states = _all_gather_objects(rng_state())
    final = run_dir / f"step-{step:06d}"
    if rank == 0:
        tmp = run_dir / f".tmp-step-{step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(model_state, tmp / "model.pt")
        torch.save(optim_state, tmp / "optimizer.pt")
        torch.save({
            "step": step,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_states,
            "extra": extra or {},
        }, tmp / "trainer.pt")
        if final.exists():  # re-saving the same step: move the old one out of the way first
            shutil.rmtree(final)
        os.replace(tmp, final)
    if _distributed():
        dist.barrier()
    return final


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint in run_dir (partial `.tmp-*` directories are ignored)."""
    run_dir = Path(run_dir)
    done = sorted(p for p in run_dir.glob("step-*") if (p / "trainer.pt").exists())
    return done[-1] if done else None


def load_checkpoint(path, model, optimizer, scheduler=None) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG; returns {'step', 'extra'}."""
    path = Path(path)
    if not (path / "trainer.pt").exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no trainer.pt); pick another step-* dir")
    rank = dist.get_rank() if _distributed() else 0
    world = dist.get_world_size() if _distributed() else 1
    model_state = torch.load(path / "model.pt", map_location="cpu", weights_only=False)
    optim_state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
    if scheduler is not None and trainer["scheduler"] is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    if len(trainer["rng"]) == world:
        set_rng_state(trainer["rng"][rank])
    return {"step": trainer["step"], "extra": trainer["extra"]}


PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                   "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "generation_config.json")


def export_hf(model, out_dir, source_dir):
    """Collective: write the model in Hugging Face format (+ the source's tokenizer/processor files)."""
    state = get_model_state_dict(model, options=_FULL)
    rank = dist.get_rank() if _distributed() else 0
    if rank == 0:
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(f".tmp-{out_dir.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(model, tmp, state_dict=state)
        for name in PROCESSOR_FILES:
            if (Path(source_dir) / name).exists():
                shutil.copy(Path(source_dir) / name, tmp / name)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    if _distributed():
        dist.barrier()
    return out_dir
