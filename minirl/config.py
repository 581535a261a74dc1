"""Dataclass configs with a YAML/JSON file and `--section.key value` command-line overrides.

A config is a dataclass whose fields are dataclasses (sections) of plain values. Overrides are
written `--rollout.n 8`, or `--n 8` when the key names exactly one field; a file given with
`--config run.yaml` is applied first, then the command line. Unknown or ambiguous keys are
errors naming the key and the known ones: a typo must never be silently ignored.
"""

import dataclasses
import json
import types
import typing
from pathlib import Path


def _field_type(tp):
    """The concrete type to parse a value into (unwrapping `X | None`)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _parse_value(text, tp, key):
    tp = _field_type(tp)
    if not isinstance(text, str):
        return text
    if text.lower() in ("none", "null") and tp is not str:
        return None
    try:
        if tp is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if tp in (int, float, str):
            return tp(text)
        return json.loads(text)  # lists / dicts
    except ValueError as err:
        raise ValueError(f"--{key}: cannot parse {text!r} as {getattr(tp, '__name__', tp)}") from err


def _index(cfg) -> dict[str, tuple[object, dataclasses.Field]]:
    """'section.key' -> (section object, field)."""
    out = {}
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        for f in dataclasses.fields(obj):
            out[f"{section.name}.{f.name}"] = (obj, f)
    return out


def set_value(cfg, key: str, value):
    """Set `section.key` (or an unambiguous bare `key`) from a string or a parsed value."""
    index = _index(cfg)
    key = key.replace("-", "_")
    if key not in index:
        matches = [k for k in index if k.split(".", 1)[1] == key]
        if len(matches) != 1:
            why = "is ambiguous between " + ", ".join(matches) if matches else "is not a config key"
            raise ValueError(f"--{key} {why}; known keys: {', '.join(sorted(index))}")
        key = matches[0]
    obj, f = index[key]
    setattr(obj, f.name, _parse_value(value, f.type, key))


def load_file(cfg, path):
    """Apply a YAML or JSON file of {section: {key: value}} (or flat {"section.key": value})."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    for section, values in data.items():
        if isinstance(values, dict):
            for key, value in values.items():
                set_value(cfg, f"{section}.{key}", value)
        else:
            set_value(cfg, section, values)


def parse(cfg_cls, argv: list[str]):
    """Build `cfg_cls()` and apply `--config FILE` then every `--key value` in argv, in order."""
    cfg = cfg_cls()
    args = list(argv)
    if "--config" in args:
        i = args.index("--config")
        load_file(cfg, args[i + 1])
        del args[i: i + 2]
    while args:
        flag = args.pop(0)
        if not flag.startswith("--"):
            raise ValueError(f"unexpected argument {flag!r}; options are written --section.key value")
        key, eq, value = flag[2:].partition("=")
        if not eq:  # a bare flag switches a boolean on; any other type rejects "true"
            value = args.pop(0) if args and not args[0].startswith("--") else "true"
        set_value(cfg, key, value)
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def describe(cfg) -> str:
    """Every section and value, one line each, for the start of a run's log."""
    return "\n".join(f"[{section}] " + "  ".join(f"{k}={v}" for k, v in values.items())
                     for section, values in to_dict(cfg).items())


# ----------------------------------------------------------------------------- sections shared by the trainers


@dataclasses.dataclass
class ModelConfig:
    path: str = "runs/tiny-model"  # a Hugging Face checkpoint directory
    dtype: str = "auto"  # compute dtype of forwards, rollout and reference copies: auto (bfloat16 on CUDA,
    # float32 on CPU) | float32 | bfloat16; master weights and optimizer state are always float32
    train_vision: bool = False  # the vision tower is frozen by default
    gradient_checkpointing: bool = False


@dataclasses.dataclass
class DataConfig:
    train: str = ""  # jsonl in the LongVideo-Reason schema
    test: str = ""
    video_dir: str = ""  # relative video paths resolve against this ('' = the jsonl's folder)
    frames: int = 16  # frames sampled uniformly per video (0: use fps)
    frames_mix: str = ""  # SFT: comma-separated frame counts (e.g. 32,64) taken in turn instead of `frames`
    fps: float = 0.0  # frames per second of video, capped by max_frames (used when frames = 0)
    max_frames: int = 768
    max_pixels: int = 0  # per-frame pixel budget (0: the processor's own)
    max_prompt_tokens: int = 16384  # longer prompts get fewer frames, never a cut question
    bad_videos: str = "error"  # error: stop and list them; drop: remove those examples, say which
    frame_cache_mb: float = 0  # SFT: keep decoded frames of up to this many MB per rank for later epochs


@dataclasses.dataclass
class OptimConfig:
    steps: int = 100
    batch_size: int = 8  # per optimizer step, whole world: sequences (SFT) or prompts of rollout.n samples (RL)
    micro_batch_size: int = 2  # sequences per forward, per SP group
    lr: float = 1e-3
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # the cosine decays the lr to this fraction of lr at the last step (1: constant)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_skipped_steps: int = 3  # stop after this many NaN/inf optimizer steps in a row (0: never)


@dataclasses.dataclass
class ParallelConfig:
    sp: int = 1  # sequence-parallel degree; dp = world / sp
    parallel_encode: bool = True  # MR-SP stage 1: split each video's frames across the sp group


@dataclasses.dataclass
class MRSPConfig:
    # old/ref/update forwards run each prompt once per micro-batch, packed with its samples under
    # grouped attention (minirl.packing); false: one (prompt + response) row per sample (the ablation)
    shared_prefix: bool = True


@dataclasses.dataclass
class EvalConfig:
    every: int = 0  # evaluate every N steps (0: only at the end)
    max_examples: int = 0  # 0: the whole test set
    max_new_tokens: int = 128
    batch_size: int = 8  # prompts decoded together


@dataclasses.dataclass
class RunConfig:
    out: str = "runs/run"
    seed: int = 0
    save_every: int = 0  # checkpoint every N steps (0: only at the end)
    resume: bool = False  # continue from the newest complete checkpoint in `out`
    tensorboard: bool = True  # when installed
