"""Evaluate a checkpoint on a LongVideo-Reason-style jsonl: the LongVideo-Reason-eval table.

    python evaluate.py --model runs/rl/hf --data data/test.jsonl [--video-dir DIR] [--frames 16] [--n 1]
        [--temperature 0] [--max-new-tokens 512] [--out PRED.jsonl] [--json TABLE.json]
        [--video-ablation] [--curate KEPT.jsonl [--curate-ablation]] [--headroom HEADROOM.json]

The scorer is evaluation.py's (the one the trainers use): per category and overall, the number
of questions, the accuracy and the format accuracy (a response in
`<think>...</think><answer>...</answer>` form), means over a question's `--n` responses, then
over the questions; with `--n` > 1 also pass@n and majority@n, the headroom above the mean sample
that GRPO can sharpen toward. `--temperature 0` (the default) decodes greedily and needs `--n 1`. Below
the table, under `lmms_eval`, the metrics lmms-eval's `longvideo_reason` task reports
(`lmms_metrics`: lenient and strict accuracy, wellformed, format, one per problem type, in
percent), so a number here can be set beside a published one.

Predictions are written one line per question, in dataset order, as they are decoded. The
predictions file is never overwritten: an explicit `--out` that exists is an error; without
`--out` the first free name of `<data stem>.predictions.jsonl`, `<data stem>.predictions.1.jsonl`,
... in the current directory is used. `--json` (the table) is a summary and is overwritten.

`--video-ablation` gives each question another question's video: the control that shows a model
reads the video (its accuracy must fall toward chance). `--curate OUT` (with `--n k` and a
temperature) writes the questions answered right sometimes but not always, with their pass rate:
the data filter the paper applies before RL. Among four options a sampler is sometimes right by
luck, so `--curate-ablation` also decodes every question with the video ablated (the same seeds,
predictions in `<out stem>.ablated.jsonl`, never overwritten) and keeps only the questions also
answered right more often with their own video than with another's: the questions where a right
answer is evidence of reading the video. `--headroom JSON` writes, per category and overall, mean
sample accuracy, pass@n and majority@n (and, with `--curate-ablation`, the same for the ablated
video and pass@n real - pass@n ablated: the gain RL can learn from the video).
"""

import argparse
import dataclasses
import json
import re
import sys
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoProcessor

from evaluation import make_table, mean, predict, print_table, sampling_params
from minirl.data import PROBLEM_TYPES, Example, load_jsonl
from minirl.model import load_model
from minirl.reward import OPTION_PREFIX, choice_letter
from minirl.video import FrameSampling

# lmms-eval's `longvideo_reason` task (lmms_eval/tasks/longvideo_reason/utils.py), which ports the
# official LongVideo-Reason-eval scorer: these regexes are the official ones.
OFFICIAL_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
OFFICIAL_PHRASE = re.compile(r"<answer>Therefore the final answer is: (.*?)</answer>", re.DOTALL)
OFFICIAL_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
BOXED = re.compile(r"\\boxed\{\s*([A-Za-z])\s*\}")
THINK = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.DOTALL)
LMMS_TYPES = {name: key for key, name in PROBLEM_TYPES.items()}  # "Goal & Purpose" -> "goal"
HEADROOM_METRICS = ("accuracy", "pass_at_n", "majority_at_n")


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
            score=mean(float(lenient_letter(t, options) == gold) for t in texts),
            strict=mean(float(official_answer(t) == r["answer"].strip()) for t in texts),
            format=mean(float(bool(OFFICIAL_FORMAT.match(t))) for t in texts),
        ))

    def pct(key, rows):
        return 100 * mean(s[key] for s in rows)

    out = {"longvideo_reason_overall_accuracy": pct("score", scored),
           "longvideo_reason_strict_accuracy": pct("strict", scored),
           "longvideo_reason_wellformed_accuracy": pct("score", [s for s in scored if s["wellformed"]]),
           "longvideo_reason_format_accuracy": pct("format", scored)}
    for t in PROBLEM_TYPES:
        out[f"longvideo_reason_{t}_accuracy"] = pct("score", [s for s in scored if s["type"] == t])
    return out


def swap_videos(examples: list[Example]) -> list[Example]:
    """The video ablation: question i gets the video of question i + N/2 (mod N), a different video
    whenever the set has more than one, so the text is the same and the pictures are wrong."""
    n = len(examples)
    swapped = [dataclasses.replace(ex, video=examples[(i + n // 2) % n].video) for i, ex in enumerate(examples)]
    if n > 1 and any(a.video == b.video for a, b in zip(examples, swapped, strict=True)):
        raise ValueError("video ablation: some question kept its own video (several questions share a video "
                         "half the set apart); shuffle the jsonl or use another subset")
    return swapped


def curate(examples: list[Example], records: list[dict], path, ablated_records: list[dict] | None = None) -> Counter:
    """Write the rows whose sampled responses were right sometimes but not always, with pass_rate;
    return how many questions each filter keeps: "diverse", "kept" and, with `ablated_records`,
    "real_above_ablated".

    The paper keeps RL data "with diverse responses": a question always or never answered right
    gives every sample the same reward, so GRPO's advantage is zero and it teaches nothing. With
    `ablated_records` (the same questions decoded with another question's video), a row is kept
    only if also right more often with its own video than with the other (real_above_ablated; an
    error in either decode fails it), and carries ablated_pass_rate: a question answered as well
    without its video is answered by guessing, and RL on it rewards guessing. Video paths are
    written absolute, so the file works from any folder.
    """
    counts = Counter()
    ablated_records = [None] * len(records) if ablated_records is None else ablated_records
    with open(path, "w") as f:
        for ex, record, ablated in zip(examples, records, ablated_records, strict=True):
            rate = mean(record["accuracy"])
            row = {**ex.row, "videos": [str(Path(ex.video).resolve())], "pass_rate": rate}
            row.pop("video", None)
            keep = record["error"] is None and 0 < rate < 1
            counts["diverse"] += keep
            if ablated is not None:
                row["ablated_pass_rate"] = mean(ablated["accuracy"])
                reads = record["error"] is None and ablated["error"] is None and rate > row["ablated_pass_rate"]
                counts["real_above_ablated"] += reads
                keep = keep and reads
            if keep:
                f.write(json.dumps(row) + "\n")
                counts["kept"] += 1
    return counts


def headroom(n: int, table: dict, ablated_table: dict | None = None) -> dict:
    """Where GRPO can gain, per category and overall: it sharpens what the sampler already does, so
    pass@n and majority@n above the mean sample accuracy bound its gain, and pass@n real - pass@n
    ablated is the part of that gain that comes from reading the video (with `ablated_table`)."""

    def metrics(row):  # a table in which no question was decoded has no pass@n, majority@n: all score 0
        return {key: row.get(key, 0.0) for key in HEADROOM_METRICS}

    def entry(real, ablated):
        out = {"real": metrics(real)}
        if ablated is not None:
            out["ablated"] = metrics(ablated)
            out["pass_at_n_real_minus_ablated"] = out["real"]["pass_at_n"] - out["ablated"]["pass_at_n"]
        return out

    ablated = ablated_table or {"categories": {}, "overall": None}
    categories = {c: entry(row, ablated["categories"].get(c)) for c, row in table["categories"].items()}
    return dict(n=n, categories=categories, overall=entry(table["overall"], ablated["overall"]))


def decode(model, processor, examples: list[Example], sampling: FrameSampling, params, args, path: Path) -> list[dict]:
    """The scored records of `examples`, each written to `path` as it is decoded ("x": fails rather
    than overwrite, even if the file appeared meanwhile)."""
    records = []
    with open(path, "x") as f:
        for record in predict(model, processor, examples, sampling, args.max_prompt_tokens, params,
                              args.batch_size, args.prefill_chunk, progress=True, compile=args.compile):
            f.write(json.dumps(record) + "\n")
            f.flush()
            records.append(record)
    return records


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
    parser.add_argument("--compile", action="store_true",
                        help="decode with the sampler's static-shape step under torch.compile (the same responses)")
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
    parser.add_argument("--curate-ablation", action="store_true",
                        help="also decode every question with another question's video (the same seeds) and "
                             "keep only questions with a pass rate above that one's, each with ablated_pass_rate")
    parser.add_argument("--headroom", default=None, metavar="JSON",
                        help="write accuracy, pass@n and majority@n per category (needs --n > 1; with "
                             "--curate-ablation also the ablated video's and pass@n real - pass@n ablated)")
    args = parser.parse_args(argv)
    for flag in ("curate", "headroom"):
        if getattr(args, flag) and args.n < 2:
            parser.error(f"--{flag} needs --n > 1 sampled responses per question (and a --temperature > 0)")
    if args.curate_ablation and (not args.curate or args.video_ablation):
        parser.error("--curate-ablation needs --curate, and decodes the real and the ablated videos itself "
                     "(without --video-ablation)")

    if args.out is not None and Path(args.out).exists():
        parser.error(f"--out {args.out} exists; predictions are never overwritten: choose another name")
    out = Path(args.out) if args.out else free_path(Path(f"{Path(args.data).stem}.predictions.jsonl"))
    ablated_out = out.with_name(f"{out.stem}.ablated.jsonl")
    if args.curate_ablation and ablated_out.exists():
        parser.error(f"{ablated_out} (the ablated predictions) exists; predictions are never overwritten: "
                     "choose another --out")
    examples = load_jsonl(args.data, args.video_dir)
    if args.limit:
        examples = examples[:args.limit]
    if args.video_ablation:
        examples = swap_videos(examples)
    model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    params = sampling_params(model, processor, args.max_new_tokens, args.n, args.temperature, args.seed)
    sampling = FrameSampling(num_frames=args.frames, max_pixels=args.max_pixels)

    records = decode(model, processor, examples, sampling, params, args, out)
    table = make_table(records)
    table["lmms_eval"] = lmms_metrics(records)
    print_table(table)
    print(f"predictions: {out}", file=sys.stderr)
    ablated_records = ablated_table = None
    if args.curate_ablation:
        ablated_records = decode(model, processor, swap_videos(examples), sampling, params, args, ablated_out)
        ablated_table = make_table(ablated_records)
        print("\nvideo ablated (each question with another question's video, the same seeds):")
        print_table(ablated_table)
        print(f"ablated predictions: {ablated_out}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    if args.headroom:
        Path(args.headroom).write_text(json.dumps(headroom(args.n, table, ablated_table), indent=2) + "\n")
    if args.curate:
        counts = curate(examples, records, args.curate, ablated_records)
        if ablated_records is None:
            print(f"curated: kept {counts['kept']} of {len(examples)} questions (0 < pass rate < 1) in {args.curate}",
                  file=sys.stderr)
        else:
            print(f"curated: of {len(examples)} questions, 0 < pass rate < 1 keeps {counts['diverse']}, a pass "
                  f"rate above the ablated video's keeps {counts['real_above_ablated']}, both keep {counts['kept']}, "
                  f"written to {args.curate}", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
