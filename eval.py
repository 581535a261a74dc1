"""Accuracy per category on a LongVideo-Reason-style jsonl: the LongVideo-Reason-eval table.

    python eval.py --model runs/rl/hf --data data/test.jsonl [--video-dir DIR] [--frames 16] [--n 1]
        [--temperature 0] [--max-new-tokens 512] [--out PRED.jsonl] [--json TABLE.json]
        [--video-ablation] [--curate KEPT.jsonl]

Each question's video is decoded and encoded once, its prompt built exactly as in training
(`minirl.data`), and `--n` responses decoded by the rollout sampler (rollout.py) in batches of
`--batch-size` questions; `minirl.reward` scores them. The table gives, per category and
overall, the number of questions, the accuracy and the format accuracy (a response in
`<think>...</think><answer>...</answer>` form). Below it, under `lmms_eval`, the metrics lmms-eval's
`longvideo_reason` task reports (`lmms_metrics`: lenient and strict accuracy, wellformed, format,
one per problem type, in percent), so a number here can be set beside a published one.

Policies:
- Accuracy and format accuracy are means over all n responses of a question, then over the
  questions (with n > 1 it is the average accuracy of a sample, not pass@n). `--temperature 0`
  (the default) decodes greedily and needs `--n 1`.
- A question whose video cannot be used (`VideoError`: missing, truncated, not a video) or
  whose prompt cannot fit even with 2 frames (`PromptTooLong`) is scored 0, counted in the
  `errors` column and recorded with its error in the predictions: never skipped, never replaced.
- Predictions are written one line per question, in dataset order, as they are decoded. The
  predictions file is never overwritten: an explicit `--out` that exists is an error; without
  `--out` the first free name of `<data stem>.predictions.jsonl`, `<data stem>.predictions.1.jsonl`,
  ... in the current directory is used. `--json` (the table) is a summary and is overwritten.

`--video-ablation` gives each question another question's video: the control that shows a model
reads the video (its accuracy must fall toward chance). `--curate OUT` (with `--n k` and a
temperature) writes the questions answered right sometimes but not always, with their pass rate:
the data filter the paper applies before RL.

Trainers call `evaluate_copy`: the current (sharded) weights are copied into a plain model and
`evaluate` runs data-parallel over their ranks: every rank decodes examples[rank::world] and
every rank gets the whole table back.
"""

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoProcessor

from minirl.data import PROBLEM_TYPES, Example, PromptTooLong, load_jsonl, rl_example
from minirl.model import QwenVL, load_model, prepare_inputs
from minirl.reward import OPTION_PREFIX, accuracy_reward, choice_letter, extract_answer, format_reward
from minirl.trainer import frame_sampling, sync_weights
from minirl.video import FrameSampling, VideoError
from rollout import SamplingParams, sample

NO_CATEGORY = "(none)"


def sampling_params(model: QwenVL, processor, max_new_tokens: int = 512, n: int = 1, temperature: float = 0.0,
                    seed: int = 0) -> SamplingParams:
    """Evaluation decoding: greedy at temperature 0, stopping at <|im_end|> or <|endoftext|>."""
    if temperature == 0 and n > 1:
        raise ValueError(f"n={n} greedy responses would all be the same: set a temperature > 0 or n = 1")
    tok = processor.tokenizer
    stops = {model.config.eos_token_id, tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")} - {None}
    greedy = temperature == 0
    return SamplingParams(n=n, max_new_tokens=max_new_tokens, temperature=1.0 if greedy else temperature,
                          greedy=greedy, stop_token_ids=tuple(sorted(stops)), seed=seed)


def predict(model: QwenVL, processor, examples: list[Example], sampling: FrameSampling,
            max_prompt_tokens: int, params: SamplingParams, batch_size: int = 8, prefill_chunk: int = 4096,
            progress: bool = False, positions: list[int] | None = None) -> Iterator[dict]:
    """One scored prediction record per example, in order, decoded `batch_size` questions at a time.

    Response j of the question at dataset position i (`positions`, default 0, 1, ...) is seeded
    params.seed + i * n + j: a question's responses depend neither on the batch size nor on which
    rank decodes it.
    """
    positions = list(range(len(examples))) if positions is None else positions
    bar = tqdm(total=len(examples), desc="eval", unit="question", disable=not progress)
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        records, prompts, seeds = [], [], []
        for i, ex in zip(positions[start:start + batch_size], batch, strict=True):
            record = dict(id=ex.id, category=ex.category, problem=ex.problem, options=ex.options,
                          answer=ex.answer, video=str(ex.video), error=None)
            try:
                item = rl_example(ex, processor, sampling, max_prompt_tokens)
            except (VideoError, PromptTooLong) as e:
                record.update(error=str(e), responses=[], answers=[], accuracy=[], format=[])
            else:
                with torch.no_grad():
                    prompts.append(prepare_inputs(model, item["input_ids"], item["pixel_values_videos"],
                                                  item["video_grid_thw"], item["second_per_grid_ts"]))
                seeds.append(params.seed + i * params.n)
                record.update(num_frames=item["num_frames"], frames_reduced=item["frames_reduced"],
                              prompt_tokens=len(item["input_ids"]))
            records.append(record)
        samples = sample(model, prompts, params, prefill_chunk, seeds=seeds).samples if prompts else []
        decoded = iter(samples)
        for ex, record in zip(batch, records, strict=True):
            if record["error"] is not None:
                continue
            group = [next(decoded) for _ in range(params.n)]
            texts = [processor.tokenizer.decode(s.tokens, skip_special_tokens=True) for s in group]
            record.update(
                responses=texts,
                answers=[extract_answer(t) for t in texts],
                accuracy=[accuracy_reward(t, ex.answer, ex.row) for t in texts],
                format=[format_reward(t) for t in texts],
                response_tokens=[s.length for s in group],
                stop_reasons=[s.stop_reason for s in group],
            )
        yield from records
        bar.update(len(batch))
    bar.close()


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def make_table(records: list[dict]) -> dict:
    """{"categories": {name: row}, "overall": row}, row = questions, errors, accuracy, format_accuracy
    (fractions in [0, 1]; a question scores the mean over its responses, 0 when it has an error)."""

    def row(rs):
        return dict(questions=len(rs), errors=sum(r["error"] is not None for r in rs),
                    accuracy=_mean(_mean(r["accuracy"]) for r in rs),
                    format_accuracy=_mean(_mean(r["format"]) for r in rs))

    by_category: dict[str, list[dict]] = {}
    for r in records:
        by_category.setdefault(r["category"] or NO_CATEGORY, []).append(r)
    return dict(categories={c: row(by_category[c]) for c in sorted(by_category)}, overall=row(records),
                lmms_eval=lmms_metrics(records))


# lmms-eval's `longvideo_reason` task (lmms_eval/tasks/longvideo_reason/utils.py), which ports the
# official LongVideo-Reason-eval scorer: these regexes are the official ones.
OFFICIAL_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
OFFICIAL_PHRASE = re.compile(r"<answer>Therefore the final answer is: (.*?)</answer>", re.DOTALL)
OFFICIAL_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
BOXED = re.compile(r"\\boxed\{\s*([A-Za-z])\s*\}")
THINK = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.DOTALL)
LMMS_TYPES = {name: key for key, name in PROBLEM_TYPES.items()}  # "Goal & Purpose" -> "goal"


def official_answer(response: str) -> str:
    """The official extraction: the <answer> span (after "Therefore the final answer is:" when the
    response says it), else the whole stripped response."""
    found = (OFFICIAL_PHRASE if "Therefore the final answer is:" in response else OFFICIAL_ANSWER).search(response)
    return found.group(1).strip() if found else response.strip()


def lenient_letter(response: str, options: list[str]) -> str:
    """lmms-eval's lenient reading: the official span if it is one offered letter, else \\boxed{X},
    else one option named in the span, then in the response without its <think> block ("" if none).
    lmms-eval names the option with its shared `extract_mcq_answer`; we use our reward's answer
    grammar (`choice_letter`), which never reads a list of letters or a negated letter as a choice."""
    choices = "".join(o.strip()[0] for o in options if OPTION_PREFIX.match(o) and o.strip()[0].isupper())
    official = official_answer(response)
    letters = re.sub(r"[^A-Za-z]", "", official).upper()
    if len(letters) == 1 and letters in choices:
        return letters
    for scope in (official, THINK.sub(" ", response)):
        boxed = BOXED.findall(scope)
        if boxed and boxed[-1].upper() in choices:
            return boxed[-1].upper()
        if choices and (letter := choice_letter(scope, options, choices)):
            return letter
    return ""


def lmms_metrics(records: list[dict]) -> dict:
    """The metrics lmms-eval's `longvideo_reason` task reports, in percent, under its names:
    overall (lenient) accuracy, strict accuracy (the official byte-exact comparison of the answer
    spans, the paper's number), wellformed accuracy (questions offering exactly four options),
    format accuracy (the official, unanchored-at-the-end regex) and one accuracy per problem_type.
    A question scores the mean over its responses; one with an error scores 0 everywhere."""
    scored = []
    for r in records:
        options = r["options"] or []
        texts = r["responses"] if r["error"] is None else []
        gold = re.sub(r"[^A-Za-z]", "", r["answer"]).upper()
        scored.append(dict(
            type=LMMS_TYPES.get(r["category"], r["category"]),
            wellformed=len(options) == 4,
            score=_mean(float(lenient_letter(t, options) == gold) for t in texts),
            strict=_mean(float(official_answer(t) == r["answer"].strip()) for t in texts),
            format=_mean(float(bool(OFFICIAL_FORMAT.match(t))) for t in texts),
        ))

    def pct(key, rows):
        return 100 * _mean(s[key] for s in rows)

    out = {"longvideo_reason_overall_accuracy": pct("score", scored),
           "longvideo_reason_strict_accuracy": pct("strict", scored),
           "longvideo_reason_wellformed_accuracy": pct("score", [s for s in scored if s["wellformed"]]),
           "longvideo_reason_format_accuracy": pct("format", scored)}
    for t in PROBLEM_TYPES:
        out[f"longvideo_reason_{t}_accuracy"] = pct("score", [s for s in scored if s["type"] == t])
    return out


def format_table(table: dict) -> str:
    def line(name, r):
        return (f"{name:<20} {r['questions']:>9} {r['errors']:>6} {100 * r['accuracy']:>8.1f}% "
                f"{100 * r['format_accuracy']:>6.1f}%")

    header = f"{'category':<20} {'questions':>9} {'errors':>6} {'accuracy':>9} {'format':>7}"
    rows = [line(name, r) for name, r in table["categories"].items()]
    lines = [header, *rows, "-" * len(header), line("Overall", table["overall"])]
    if "lmms_eval" in table:
        lines.append("lmms-eval longvideo_reason: " + ", ".join(
            f"{key.removeprefix('longvideo_reason_').removesuffix('_accuracy')} {value:.1f}%"
            for key, value in table["lmms_eval"].items()))
    return "\n".join(lines)


def print_table(table: dict):
    print(format_table(table))


def merge_shards(shards: list[list]) -> list:
    """Undo the round-robin split: shards[r] holds items r, r + world, r + 2 * world, ..."""
    merged = []
    for i in range(max((len(s) for s in shards), default=0)):
        merged += [s[i] for s in shards if i < len(s)]
    return merged


def evaluate(model: QwenVL, processor, examples: list[Example], sampling: FrameSampling,
             max_prompt_tokens: int = 16384, max_new_tokens: int = 512, n: int = 1, temperature: float = 0.0,
             seed: int = 0, batch_size: int = 8, prefill_chunk: int = 4096, rank: int = 0, world: int = 1,
             progress: bool = False) -> dict:
    """The table (see `make_table`) for `examples`. With world > 1 (an initialised process group),
    rank r decodes examples[r::world] and the records are all-gathered: every rank returns the
    same table, equal to the one-process table."""
    params = sampling_params(model, processor, max_new_tokens, n, temperature, seed)
    positions = list(range(rank, len(examples), world))
    records = list(predict(model, processor, examples[rank::world], sampling, max_prompt_tokens, params,
                           batch_size, prefill_chunk, progress, positions))
    if world > 1:
        shards = [None] * world
        dist.all_gather_object(shards, records)
        records = merge_shards(shards)
    return make_table(records)


def evaluate_copy(model, eval_model: QwenVL, processor, examples: list[Example], data_cfg, eval_cfg, rank: int,
                  world: int) -> dict:
    """The table for the current weights of the trainer's (sharded) `model`, synced into the plain
    `eval_model` the sampler decodes with; data-parallel over all ranks, as `evaluate`."""
    sync_weights(eval_model, model)
    return evaluate(eval_model, processor, examples, frame_sampling(data_cfg), data_cfg.max_prompt_tokens,
                    max_new_tokens=eval_cfg.max_new_tokens, batch_size=eval_cfg.batch_size, rank=rank, world=world)


def swap_videos(examples: list[Example]) -> list[Example]:
    """The video ablation: question i gets the video of question i + N/2 (mod N), a different video
    whenever the set has more than one, so the text is the same and the pictures are wrong."""
    n = len(examples)
    swapped = [dataclasses.replace(ex, video=examples[(i + n // 2) % n].video) for i, ex in enumerate(examples)]
    if n > 1 and any(a.video == b.video for a, b in zip(examples, swapped, strict=True)):
        raise ValueError("--video-ablation: some question kept its own video (several questions share a video "
                         "half the set apart); shuffle the jsonl or use another subset")
    return swapped


def curate(examples: list[Example], records: list[dict], path) -> int:
    """Write the rows whose sampled responses were right sometimes but not always, with pass_rate.

    The paper keeps RL data "with diverse responses": a question always or never answered right
    gives every sample the same reward, so GRPO's advantage is zero and it teaches nothing. Video
    paths are written absolute, so the file works from any folder.
    """
    kept = 0
    with open(path, "w") as f:
        for ex, record in zip(examples, records, strict=True):
            rate = _mean(record["accuracy"])
            if record["error"] is None and 0 < rate < 1:
                row = {**ex.row, "videos": [str(Path(ex.video).resolve())], "pass_rate": rate}
                row.pop("video", None)
                f.write(json.dumps(row) + "\n")
                kept += 1
    return kept


def free_path(path: Path) -> Path:
    """`path` if it does not exist, else the first of stem.1.suffix, stem.2.suffix, ... that does not."""
    candidate, k = path, 0
    while candidate.exists():
        k += 1
        candidate = path.with_name(f"{path.stem}.{k}{path.suffix}")
    return candidate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--data", required=True, help="jsonl in the LongVideo-Reason schema")
    parser.add_argument("--video-dir", default=None,
                        help="relative video paths resolve here (default: the jsonl's folder)")
    parser.add_argument("--frames", type=int, default=16, help="frames sampled uniformly per video")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="per-frame pixel budget (default: the processor's)")
    parser.add_argument("--max-prompt-tokens", type=int, default=16384,
                        help="longer prompts get fewer frames")
    parser.add_argument("--n", type=int, default=1, help="responses per question")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="questions decoded together")
    parser.add_argument("--prefill-chunk", type=int, default=4096, help="prompt tokens per prefill step")
    parser.add_argument("--limit", type=int, default=0, help="only the first N questions (0: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", default=None, help="predictions jsonl; must not exist (default: a free "
                        "<data stem>.predictions[.k].jsonl in the current directory)")
    parser.add_argument("--json", default=None, help="also write the table here as JSON")
    parser.add_argument("--video-ablation", action="store_true",
                        help="give every question another question's video (the control: accuracy must drop)")
    parser.add_argument("--curate", default=None, metavar="JSONL",
                        help="write the questions answered right sometimes but not always (0 < pass rate < 1, "
                             "needs --n > 1), each with its pass_rate: the paper's RL data filter")
    args = parser.parse_args(argv)
    if args.curate and args.n < 2:
        parser.error("--curate needs --n > 1 sampled responses per question (and a --temperature > 0)")

    if args.out is not None and Path(args.out).exists():
        parser.error(f"--out {args.out} exists; predictions are never overwritten: choose another name")
    out = Path(args.out) if args.out else free_path(Path(f"{Path(args.data).stem}.predictions.jsonl"))
    examples = load_jsonl(args.data, args.video_dir)
    if args.limit:
        examples = examples[:args.limit]
    if args.video_ablation:
        examples = swap_videos(examples)
    model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    params = sampling_params(model, processor, args.max_new_tokens, args.n, args.temperature, args.seed)
    sampling = FrameSampling(num_frames=args.frames, max_pixels=args.max_pixels)

    records = []
    with open(out, "x") as f:  # "x": fails rather than overwrite, even if the file appeared meanwhile
        for record in predict(model, processor, examples, sampling, args.max_prompt_tokens, params,
                              args.batch_size, args.prefill_chunk, progress=True):
            f.write(json.dumps(record) + "\n")
            f.flush()
            records.append(record)
    table = make_table(records)
    print_table(table)
    print(f"predictions: {out}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    if args.curate:
        kept = curate(examples, records, args.curate)
        print(f"curated: kept {kept} of {len(examples)} questions (0 < pass rate < 1) in {args.curate}",
              file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
