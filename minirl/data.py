"""The LongVideo-Reason jsonl schema, the one prompt template, SFT / RL examples, and the datasets the
trainers load (every video probed up front) with their seeded data stream.

A line of a dataset is a JSON object in the LongVideo-Reason / Long-RL schema:

    {"problem": str, "answer": str, "videos": ["rel/path.mp4"] (or "video": str),
     "options": ["A. ...", ...], "reasoning": str, "category": str, "id": str}

`options`, `reasoning` (needed for SFT), `category` and `id` are optional; other keys (the synthetic
benchmark's event metadata) are kept in `Example.row`. Video paths are resolved against a `video_dir`. A
malformed line is an error naming the file, the line and the fix.

The official Hugging Face LongVideo-Reason rows load unchanged (docs/longvideo-reason.md): `videos` may be one
path string or a one-element list; an answer wrapped in `<answer>...</answer>` is unwrapped ("B", the row
keeps the raw value); options embedded in `problem` as lines "A. ..." are split off it (`Example.options`), so
`build_prompt` prints the same text the row holds; `problem_type` temporal / goal / spatial / plot becomes the
category "Temporal" / "Goal & Purpose" / "Spatial" / "Plot & Narrative"; `problem_id` is the id when there is
no `id`. Videos may be mp4, webm or mkv: decord decodes all three (tests write each with PyAV).

SFT, RL and evaluation all build their prompt with `build_prompt`, the Qwen chat format with a single
`<|video_pad|>`; `encode_prompt` expands that placeholder into one token per merged video patch,
t*h*w / merge_size**2 of them, read off `video_grid_thw` (the same count the transformers processor inserts).

Token budget policy: a prompt longer than `max_prompt_tokens` gets fewer frames, never a cut question: the
frame count drops to the largest even number whose tokens fit (logged, and reported in the example's
`num_frames` / `frames_reduced`); if even 2 frames do not fit, `PromptTooLong` is raised.
"""

import dataclasses
import functools
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from minirl.reward import embedded_options
from minirl.video import (
    FrameCache,
    FrameSampling,
    VideoError,
    VideoMeta,
    num_sampled_frames,
    probe,
    process_video,
    read_video,
    video_tokens,
)

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are a helpful assistant."
INSTRUCTION = ("Think step by step inside <think> </think> tags, "
               "then give the letter of the correct option inside <answer> </answer> tags.")
INSTRUCTION_OPEN = ("Think step by step inside <think> </think> tags, "
                    "then give the final answer inside <answer> </answer> tags.")
VIDEO_PAD = "<|video_pad|>"
PROBLEM_TYPES = {"temporal": "Temporal", "goal": "Goal & Purpose", "spatial": "Spatial", "plot": "Plot & Narrative"}
ANSWER_TAG = re.compile(r"^\s*<answer>(.*?)</answer>\s*$", re.DOTALL)
IGNORE_INDEX = -100  # labels / targets of tokens that are not trained on (prompt, padding): no log-prob


class DataError(ValueError):
    """A malformed dataset line: names the file, the line number and the fix."""

    def __init__(self, path, line: int, problem: str, fix: str):
        super().__init__(f"{path}, line {line}: {problem}. Fix: {fix}")


class PromptTooLong(ValueError):
    """Even the minimum number of frames does not fit into max_prompt_tokens."""


@dataclass
class Example:
    """One dataset row, validated, with its video path resolved."""

    id: str
    problem: str
    answer: str
    video: Path
    options: list[str] | None = None
    reasoning: str | None = None
    category: str | None = None
    row: dict = dataclasses.field(default_factory=dict)  # the raw JSON object, extra keys included


REQUIRED = ("every line needs 'problem' (str), 'answer' (str) and 'videos' (a path or a one-element list) "
            "or 'video' (str)")


def _parse(row, path, line: int, video_dir: Path) -> Example:
    def fail(problem, fix=REQUIRED):
        raise DataError(path, line, problem, fix)

    if not isinstance(row, dict):
        fail(f"expected a JSON object, got {type(row).__name__}")
    for key in ("problem", "answer"):
        if key not in row:
            fail(f"missing field '{key}'")
    if not isinstance(row["problem"], str) or not row["problem"].strip():
        fail(f"'problem' must be a non-empty string, got {row['problem']!r}")
    answer = row["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        fail(f"'answer' must be a string (or a number), got {type(answer).__name__}")
    if "videos" in row:
        videos = [row["videos"]] if isinstance(row["videos"], str) else row["videos"]
        if not isinstance(videos, list) or len(videos) != 1 or not isinstance(videos[0], str):
            fail(f"'videos' must be a path string or a list of exactly one, got {row['videos']!r}",
                 "give one video per line as \"videos\": \"path.mp4\" or [\"path.mp4\"]")
        video = videos[0]
    elif "video" in row:
        video = row["video"]
        if not isinstance(video, str):
            fail(f"'video' must be a path string, got {type(video).__name__}")
    else:
        fail("missing field 'videos' (or 'video')")
    options = row.get("options")
    if options is not None and (not isinstance(options, list) or len(options) < 2
                                or not all(isinstance(o, str) for o in options)):
        fail(f"'options' must be a list of at least two strings, got {options!r}",
             "write options as [\"A. ...\", \"B. ...\"] or leave the field out")
    for key in ("reasoning", "category", "problem_type"):
        if row.get(key) is not None and not isinstance(row[key], str):
            fail(f"'{key}' must be a string, got {type(row[key]).__name__}", f"make '{key}' a string or drop it")
    for key in ("id", "problem_id"):
        if key in row and (isinstance(row[key], bool) or not isinstance(row[key], (str, int))):
            fail(f"'{key}' must be a string, got {type(row[key]).__name__}", f"make '{key}' a string or drop it")
    problem, answer = row["problem"], str(answer)
    if (wrapped := ANSWER_TAG.match(answer)) is not None:  # the official "<answer>B</answer>"
        answer = wrapped.group(1).strip()
    if options is None and (found := embedded_options(problem)):
        problem, options = problem[:found[0][0]].rstrip(), [text for _, text in found]
    category = row.get("category")
    if category is None and row.get("problem_type") is not None:
        category = PROBLEM_TYPES.get(row["problem_type"], row["problem_type"])
    return Example(id=str(row.get("id", row.get("problem_id", f"{Path(path).stem}-{line}"))), problem=problem,
                   answer=answer, video=video_dir / video, options=options, reasoning=row.get("reasoning"),
                   category=category, row=row)


def load_jsonl(path, video_dir=None) -> list[Example]:
    """Read and validate a dataset. Relative video paths resolve against video_dir (default: its folder)."""
    path = Path(path)
    video_dir = path.parent if video_dir is None else Path(video_dir)
    examples = []
    with open(path) as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(path, line, f"not valid JSON ({e.msg} at column {e.colno})",
                                "each line must be one complete JSON object") from e
            examples.append(_parse(row, path, line, video_dir))
    return examples


def build_prompt(problem: str, options: list[str] | None = None) -> str:
    """The chat-formatted prompt (one `<|video_pad|>`) that SFT, RL and eval all use."""
    lines = [problem.strip(), *(o.strip() for o in options or [])]
    lines.append(INSTRUCTION if options else INSTRUCTION_OPEN)
    question = "\n".join(lines)
    return (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n<|vision_start|>{VIDEO_PAD}<|vision_end|>{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def build_target(reasoning: str, answer: str) -> str:
    """The assistant turn SFT trains on; it ends with the stop token."""
    return f"<think>{reasoning.strip()}</think><answer>{answer}</answer><|im_end|>"


def _tokenize(processor, text: str) -> list[int]:
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt(processor, prompt: str, num_video_tokens: int) -> list[int]:
    """Token ids of `prompt` with its single `<|video_pad|>` expanded to num_video_tokens copies. The
    placeholder is a special token, so expanding after tokenising gives the same ids as tokenising the
    expanded text, without tokenising thousands of copies."""
    ids = _tokenize(processor, prompt)
    pad = processor.tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    if ids.count(pad) != 1:
        raise ValueError(f"prompt must hold exactly one {VIDEO_PAD}, found {ids.count(pad)}")
    at = ids.index(pad)
    return ids[:at] + [pad] * num_video_tokens + ids[at + 1:]


def fit_sampling(example: Example, processor, sampling: FrameSampling, max_prompt_tokens: int,
                 meta: VideoMeta) -> FrameSampling:
    """The sampling to use so the prompt fits max_prompt_tokens (see the module docstring); meta: the
    video's `probe`."""
    vp = processor.video_processor
    text_tokens = len(_tokenize(processor, build_prompt(example.problem, example.options))) - 1

    def tokens(n):
        return video_tokens(n, meta.height, meta.width, vp, sampling.min_pixels, sampling.max_pixels)

    n = num_sampled_frames(meta.num_frames, meta.fps, sampling, vp.temporal_patch_size)
    if text_tokens + tokens(n) <= max_prompt_tokens:
        return sampling
    step = vp.temporal_patch_size
    groups = (max_prompt_tokens - text_tokens) // tokens(step)
    if groups < 1:
        raise PromptTooLong(f"{example.id}: {text_tokens} text tokens + {tokens(step)} tokens for the minimum {step} "
                            f"frames exceed max_prompt_tokens={max_prompt_tokens}; raise it or lower max_pixels")
    fewer = groups * step
    logger.info("%s: %d frames (%d tokens) exceed max_prompt_tokens=%d, using %d frames",
                example.id, n, text_tokens + tokens(n), max_prompt_tokens, fewer)
    return dataclasses.replace(sampling, num_frames=fewer, fps=None)


def _video_inputs(example: Example, processor, sampling: FrameSampling, max_prompt_tokens: int,
                  cache: FrameCache | None = None) -> dict:
    meta = cache.probe(example.video) if cache else probe(example.video)  # the file's header, read once
    fitted = fit_sampling(example, processor, sampling, max_prompt_tokens, meta)
    tps = processor.video_processor.temporal_patch_size
    video = cache.read(example.video, fitted, tps) if cache else read_video(example.video, fitted, tps, meta)
    vision = process_video(processor, video.frames, video.sampled_fps, fitted.min_pixels, fitted.max_pixels)
    num_tokens = int(vision["video_grid_thw"].prod()) // processor.video_processor.merge_size**2
    prompt_ids = encode_prompt(processor, build_prompt(example.problem, example.options), num_tokens)
    return dict(prompt_ids=prompt_ids, **vision, id=example.id, answer=example.answer, category=example.category,
                num_frames=len(video.indices), frames_reduced=fitted is not sampling, timestamps=video.timestamps)


def sft_example(example: Example, processor, sampling: FrameSampling, max_prompt_tokens: int,
                cache: FrameCache | None = None) -> dict:
    """input_ids = prompt + `<think>reasoning</think><answer>X</answer><|im_end|>`, labels on the latter.
    cache: decoded frames kept from earlier epochs (see `FrameCache`)."""
    if example.reasoning is None:
        raise ValueError(f"{example.id}: SFT needs a 'reasoning' field (the chain of thought to imitate)")
    item = _video_inputs(example, processor, sampling, max_prompt_tokens, cache)
    prompt_ids = item.pop("prompt_ids")
    target = _tokenize(processor, build_target(example.reasoning, example.answer))
    item["input_ids"] = torch.tensor(prompt_ids + target, dtype=torch.long)
    item["labels"] = torch.tensor([IGNORE_INDEX] * len(prompt_ids) + target, dtype=torch.long)
    return item


def rl_example(example: Example, processor, sampling: FrameSampling, max_prompt_tokens: int) -> dict:
    """The prompt ids plus what the reward needs (answer, category, id, the raw row)."""
    item = _video_inputs(example, processor, sampling, max_prompt_tokens)
    item["input_ids"] = torch.tensor(item.pop("prompt_ids"), dtype=torch.long)
    item["row"] = example.row
    return item


def split_sft_item(item: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, target ids) of an SFT example: the target is where labels are not ignored."""
    start = int((item["labels"] != IGNORE_INDEX).nonzero()[0])
    return item["input_ids"][:start], item["input_ids"][start:]


# ----------------------------------------------------------------------------- datasets and the data stream


def frame_sampling(data_cfg, frames: int | None = None) -> FrameSampling:
    """The FrameSampling a DataConfig asks for (`frames` overrides data.frames)."""
    frames = data_cfg.frames if frames is None else frames
    return FrameSampling(num_frames=frames or None, fps=None if frames else data_cfg.fps,
                         max_frames=data_cfg.max_frames, max_pixels=data_cfg.max_pixels or None)


def frame_mix(data_cfg) -> list[FrameSampling]:
    """One FrameSampling per count of data.frames_mix, or just data.frames'. SFT takes them in turn by stream
    position, so one model learns to read every count it will be evaluated at (a chain of thought learned at
    32 frames only does not close at 64)."""
    if not data_cfg.frames_mix:
        return [frame_sampling(data_cfg)]
    counts = [c.strip() for c in data_cfg.frames_mix.split(",")]
    if not all(c.isdigit() and int(c) > 0 for c in counts):
        raise ValueError(f"data.frames_mix={data_cfg.frames_mix!r}: give positive frame counts separated by "
                         "commas, e.g. --data.frames_mix 32,64")
    return [frame_sampling(data_cfg, int(c)) for c in counts]


def load_dataset(path, video_dir, bad_videos: str = "error") -> list[Example]:
    """Load a jsonl and probe every video up front, so a broken file is found before step 1.
    bad_videos="error": raise, listing every unreadable video with its reason; "drop": remove those examples
    and print which (never replaced by other videos)."""
    examples = load_jsonl(path, video_dir or None)
    bad = {}
    for ex in examples:
        if ex.video not in bad:
            try:
                probe(ex.video)
            except VideoError as err:
                bad[ex.video] = err.reason
    if not bad:
        return examples
    listing = "\n".join(f"  {v}: {why}" for v, why in sorted(bad.items()))
    if bad_videos == "error":
        raise VideoError(path, f"{len(bad)} unreadable video(s):\n{listing}\n"
                         "fix or remove them, or pass --data.bad_videos drop to skip their examples")
    if bad_videos != "drop":
        raise ValueError(f"data.bad_videos must be 'error' or 'drop', got {bad_videos!r}")
    kept = [ex for ex in examples if ex.video not in bad]
    print(f"{path}: dropped {len(examples) - len(kept)} example(s) with unreadable videos:\n{listing}", file=sys.stderr)
    return kept


@functools.lru_cache(maxsize=4)
def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_examples, generator=g).tolist()


def global_indices(num_examples: int, seed: int, start: int, count: int) -> list[int]:
    """Dataset indices at global positions [start, start + count) of the seeded epoch stream. The data
    position is one integer, so resume is exact and independent of the rank layout."""
    return [epoch_order(num_examples, seed, p // num_examples)[p % num_examples] for p in range(start, start + count)]
