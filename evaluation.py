"""The held-out scorer both trainers (`evaluate_run`) and the evaluation CLI (evaluate.py) use.

Each question's video is decoded and encoded once, its prompt built exactly as in training, its responses decoded by the
rollout sampler and scored by `minirl.reward`; the table holds, per category, the mean over questions of the mean over a
question's responses. A question whose video cannot be used (`VideoError`) or whose prompt cannot fit (`PromptTooLong`)
scores 0 and is counted in `errors`: never skipped, never replaced. With world > 1 rank r decodes examples[r::world] and
every rank gets the whole table, equal to the one-process table.
"""

from collections.abc import Iterator

import torch
import torch.distributed as dist
from tqdm import tqdm

from minirl.data import Example, PromptTooLong, rl_example
from minirl.distributed import sync_weights
from minirl.model import QwenVL, prepare_inputs
from minirl.reward import accuracy_reward, extract_answer, format_reward, normalize
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
            progress: bool = False, positions: list[int] | None = None, compile: bool = False) -> Iterator[dict]:
    """One scored prediction record per example, in order, decoded `batch_size` questions at a time
    (`compile`: with the sampler's compiled static-shape step, `rollout.sample`).

    Response j of the question at dataset position i (`positions`, default 0, 1, ...) is seeded params.seed + i * n + j:
    a question's responses depend neither on the batch size nor on which rank decodes it.
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
        samples = sample(model, prompts, params, prefill_chunk, seeds=seeds, compile=compile).samples if prompts else []
        decoded = iter(samples)
        for ex, record in zip(batch, records, strict=True):
            if record["error"] is not None:
                continue
            group = [next(decoded) for _ in range(params.n)]
            texts = [processor.tokenizer.decode(s.tokens, skip_special_tokens=True) for s in group]
            record.update(responses=texts, answers=[extract_answer(t) for t in texts],
                          accuracy=[accuracy_reward(t, ex.answer, ex.row) for t in texts],
                          format=[format_reward(t) for t in texts], response_tokens=[s.length for s in group],
                          stop_reasons=[s.stop_reason for s in group])
        yield from records
        bar.update(len(batch))
    bar.close()


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def majority_correct(record: dict) -> float:
    """The grade of the answer most of a question's responses give (0.0 with an error). Answers compare as the reward
    normalises them, except that one normalising to nothing keeps its lower-cased text (normalising drops articles:
    option "A" is not an empty answer) and two the reward grades differently never pool ("A B" names no option, "B"
    does). A tie goes to the earliest response among the tied answers: `max` returns the first maximal vote."""
    votes = [(normalize(a) or a.strip().lower(), grade)
             for a, grade in zip(record["answers"], record["accuracy"], strict=True)]
    return max(votes, key=votes.count)[1] if votes else 0.0


def make_table(records: list[dict]) -> dict:
    """{"categories": {name: row}, "overall": row}, row = questions, errors, accuracy, format_accuracy
    (fractions in [0, 1]; a question scores the mean over its responses, 0 when it has an error).
    With several responses a question, rows also hold the headroom GRPO can sharpen toward: pass_at_n
    (a question scores 1 if any response is right) and majority_at_n (`majority_correct`)."""
    sampled = any(len(r["accuracy"]) > 1 for r in records)

    def row(rs):
        out = dict(questions=len(rs), errors=sum(r["error"] is not None for r in rs),
                   accuracy=mean(mean(r["accuracy"]) for r in rs),
                   format_accuracy=mean(mean(r["format"]) for r in rs))
        if sampled:
            out.update(pass_at_n=mean(max(r["accuracy"], default=0.0) for r in rs),
                       majority_at_n=mean(majority_correct(r) for r in rs))
        return out

    by_category: dict[str, list[dict]] = {}
    for r in records:
        by_category.setdefault(r["category"] or NO_CATEGORY, []).append(r)
    return dict(categories={c: row(by_category[c]) for c in sorted(by_category)}, overall=row(records))


def format_table(table: dict) -> str:
    sampled = "pass_at_n" in table["overall"]

    def line(name, r):
        text = (f"{name:<20} {r['questions']:>9} {r['errors']:>6} {100 * r['accuracy']:>8.1f}% "
                f"{100 * r['format_accuracy']:>6.1f}%")
        return text + (f" {100 * r['pass_at_n']:>7.1f}% {100 * r['majority_at_n']:>10.1f}%" if sampled else "")

    header = (f"{'category':<20} {'questions':>9} {'errors':>6} {'accuracy':>9} {'format':>7}"
              + (f" {'pass@n':>8} {'majority@n':>11}" if sampled else ""))
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
             progress: bool = False, compile: bool = False) -> dict:
    """The table (see `make_table`) for `examples`. With world > 1 (an initialised process group),
    rank r decodes examples[r::world] and the records are all-gathered: every rank returns the
    same table, equal to the one-process table."""
    params = sampling_params(model, processor, max_new_tokens, n, temperature, seed)
    positions = list(range(rank, len(examples), world))
    records = list(predict(model, processor, examples[rank::world], sampling, max_prompt_tokens, params,
                           batch_size, prefill_chunk, progress, positions, compile))
    if world > 1:
        shards = [None] * world
        dist.all_gather_object(shards, records)
        records = merge_shards(shards)
    return make_table(records)


def evaluate_run(run, show: bool = False, compile: bool = False) -> dict:
    """The table for the current weights of a training run (`minirl.run.Run`): its sharded model
    synced into its plain copy, which the sampler decodes with; data-parallel over all ranks, as
    `evaluate`. `show`: print the table (rank 0); `compile`: the sampler's compiled step."""
    sync_weights(run.copy, run.model)
    cfg = run.cfg
    table = evaluate(run.copy, run.processor, run.test, run.sampling, cfg.data.max_prompt_tokens,
                     max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size, rank=run.rank,
                     world=run.world, compile=compile)
    if show and run.rank == 0:
        print_table(table)
    return table
