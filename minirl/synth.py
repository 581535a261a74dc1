"""LongVideo-Reason-Synth: a synthetic long-video reasoning benchmark with real mp4 files.

Each video is a plain dark screen on which a handful of brief, sparse events happen: a solid
coloured square or circle (red/green/blue/yellow) appears in one of the four quadrants for 2-4
frames and disappears; one object per video instead moves from one quadrant to another over 6
frames. Events are spread over the whole video (one per equal time slot) and every (colour,
shape) identity occurs at most once, so each question has exactly one answer. Sampling too few
frames misses events; the oracle (minirl/oracle.py) measures how much.

Questions come in the four LongVideo-Reason-eval categories, all four-option multiple choice:
- Temporal: what appeared right after X; which of these appeared first / last.
- Spatial: where X appeared; what appeared in a given quadrant.
- Goal & Purpose: where the moving object is heading; which object moves to a quadrant.
- Plot & Narrative: how many shapes appeared; the order in which three shapes appeared.
Categories cycle question by question and each category's answer letters are dealt from
shuffled blocks of A-D, so both are balanced, not merely random. Every question carries a short
chain of thought citing the evidence with timestamps, written from the event metadata. --easy asks
one fact per category among fixed options; --reasoning asks open questions that compose facts
(minirl/reasoning.py), each category's templates dealt in shuffled blocks, on videos of 3-4 events
of distinct colours that K sampled frames (--seen-at) all show.

    python -m minirl.synth --out DIR [--train N --test N --frames F --size S --fps R --per-video Q
                                      --seed S --no-timestamps --easy --reasoning --seen-at K --captions K --dense]
    python -m minirl.oracle DIR/test.jsonl      # what k sampled frames can answer (minirl/oracle.py)

The default (3000 train / 600 test questions, 4 per video, 256 frames of 56x56 at 8 fps, about
30 s to write) needs about half the frames for a perfect oracle and is near chance at 8. Events
stay 2-6 frames long at any length, so an hour-scale video (--frames 28800) needs ~14k frames:
a stress test for long-context training. --size must be a multiple of 28 (patch 14 x merge 2);
at 56 px each merged video token is one quadrant over two frames.

Layout: DIR/train.jsonl, DIR/test.jsonl, DIR/videos/{train,test}/NNNNN.mp4 (paths relative to DIR).
Output is a deterministic function of the arguments, mp4 bytes included (libx264 runs single-threaded).
"""

import argparse
import itertools
import json
import multiprocessing
import os
import random
import time
from pathlib import Path

import av
import numpy as np

from minirl.data import INSTRUCTION, INSTRUCTION_OPEN, SYSTEM_PROMPT
from minirl.reasoning import EVENTS as REASONING_EVENTS
from minirl.reasoning import TEMPLATES as REASONING_TEMPLATES
from minirl.reasoning import make_question as reasoning_question
from minirl.video import uniform_indices

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 90, 230), "yellow": (235, 210, 40)}
SHAPES = ("square", "circle")
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
CATEGORIES = ("Temporal", "Spatial", "Goal & Purpose", "Plot & Narrative")
LETTERS = "ABCD"
BACKGROUND = (30, 30, 30)
EVENTS_PER_VIDEO = (5, 8)  # inclusive range; 8 = every (colour, shape) identity once
STATIC_FRAMES = (2, 4)  # inclusive range of how long a static shape stays on screen
MOVER_FRAMES = 6  # the moving object: first frame at its start, last frame at its goal
MIN_EVENT_FRAMES = STATIC_FRAMES[0]  # the oracle knows no event is shorter than this
MIN_VIDEO_FRAMES = 64
CAPTION_PROMPT = "Describe the video."


# ----------------------------------------------------------------------------- events


def make_events(rng: random.Random, num_frames: int, dense: bool = False, counts: tuple[int, int] = EVENTS_PER_VIDEO,
                seen_at: int = 0, one_per_colour: bool = False) -> list[dict]:
    """A video's script: `counts` (inclusive) events, one per equal time slot, in time order.

    dense: 1-3 events that each fill half to all of their slot (the mover crosses slowly), a
    video where every event covers many video tokens: the easy end of the perception curriculum.
    seen_at > 0: every event is on screen in one of `seen_at` uniformly sampled frames; one_per_colour: no two
    events share a colour (both: the reasoning tier).
    """
    n = rng.randint(1, 3) if dense else rng.randint(*counts)
    identities = ([(c, rng.choice(SHAPES)) for c in rng.sample(list(COLOURS), n)] if one_per_colour
                  else rng.sample(list(itertools.product(COLOURS, SHAPES)), n))
    mover = rng.randrange(n)
    slot = num_frames // n
    grid = uniform_indices(num_frames, seen_at) if seen_at else None
    events = []
    for i, (colour, shape) in enumerate(identities):
        frames = rng.randint(slot // 2, slot) if dense else MOVER_FRAMES if i == mover else rng.randint(*STATIC_FRAMES)
        if grid is None:
            start = i * slot + rng.randint(0, slot - frames)
        else:
            start = rng.choice([s for s in range(i * slot, (i + 1) * slot - frames + 1)
                                if any(s <= f < s + frames for f in grid)])
        pos = rng.choice(QUADRANTS)
        to = rng.choice([q for q in QUADRANTS if q != pos]) if i == mover else None
        events.append(dict(colour=colour, shape=shape, start=start, frames=frames, pos=pos, to=to))
    return events


def name(event: dict) -> str:
    return f"{event['colour']} {event['shape']}"


def centre(quadrant: str) -> tuple[float, float]:
    """(x, y) of a quadrant's centre as fractions of the frame size."""
    return (0.25 if quadrant.endswith("left") else 0.75), (0.25 if quadrant.startswith("top") else 0.75)


def position(event: dict, frame: int) -> tuple[float, float]:
    """Where the event's shape is at `frame` (fractions); a mover goes in a straight line."""
    x0, y0 = centre(event["pos"])
    if event["to"] is None:
        return x0, y0
    x1, y1 = centre(event["to"])
    a = (frame - event["start"]) / (event["frames"] - 1)
    return x0 + a * (x1 - x0), y0 + a * (y1 - y0)


def on_screen(event: dict, frame: int) -> bool:
    return event["start"] <= frame < event["start"] + event["frames"]


def render(events: list[dict], frame: int, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 frame: the background plus whatever is on screen."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = BACKGROUND
    y, x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres, (size, size) each
    radius = 0.18 * size
    for event in events:
        if on_screen(event, frame):
            cx, cy = (c * size for c in position(event, frame))
            if event["shape"] == "square":
                mask = (np.abs(x - cx) <= radius) & (np.abs(y - cy) <= radius)
            else:
                mask = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
            image[mask] = COLOURS[event["colour"]]
    return image


def write_mp4(path: Path, events: list[dict], num_frames: int, size: int, fps: int):
    """H.264 (libx264, yuv420p, single thread so the bytes are reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blank = render([], 0, size)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"threads": "1", "crf": "18"}
        for f in range(num_frames):
            visible = [e for e in events if on_screen(e, f)]
            image = render(visible, f, size) if visible else blank
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ----------------------------------------------------------------------------- questions
# Each template takes (events, rng, slot, fps) and returns (problem, choices, task, evidence) or
# None when the video cannot support it. `choices` are the four options as structured values
# (event indices, quadrants, counts or orders of event indices) with the answer at index `slot`;
# `task` is what the oracle reads; `evidence` is the chain of thought.


def _t(frame: int, fps: int) -> str:
    return f"{frame / fps:.1f}s"


def _at(frame: int, fps: int | None, word: str = " at ") -> str:
    """" at 3.2s", or nothing when the reasoning is untimed (fps None): timestamps are most of a
    timed chain of thought's tokens and a tiny model cannot read them off the video."""
    return f"{word}{_t(frame, fps)}" if fps else ""


def _place(answer, distractors: list, slot: int, rng: random.Random) -> list:
    distractors = list(distractors)
    rng.shuffle(distractors)
    return distractors[:slot] + [answer] + distractors[slot:]


def _statics(events):
    return [i for i, e in enumerate(events) if e["to"] is None]


def _mover(events) -> int:
    return next(i for i, e in enumerate(events) if e["to"] is not None)


def q_after(events, rng, slot, fps):
    i = rng.randrange(len(events) - 1)
    others = [j for j in range(len(events)) if j not in (i, i + 1)]
    choices = _place(i + 1, rng.sample(others, 3), slot, rng)
    a, b = events[i], events[i + 1]
    evidence = (f"The {name(a)} appears{_at(a['start'], fps)}. "
                f"The next shape is the {name(b)}{_at(b['start'], fps, ', at ')}.")
    return f"What appeared right after the {name(a)}?", choices, dict(kind="after", subject=i), evidence


def q_first_last(events, rng, slot, fps):
    kind = rng.choice(["first", "last"])
    picked = sorted(rng.sample(range(len(events)), 4))
    answer = picked[0] if kind == "first" else picked[-1]
    choices = _place(answer, [j for j in picked if j != answer], slot, rng)
    a, b, c = (f"the {name(events[j])}{_at(events[j]['start'], fps, ' (')}{')' if fps else ''}"
               for j in picked if j != answer)
    word = "before" if kind == "first" else "after"
    e = events[answer]
    evidence = f"The {name(e)} appears{_at(e['start'], fps)}, {word} {a}, {b} and {c}."
    return f"Which of these appeared {kind}?", choices, dict(kind=kind), evidence


def q_where(events, rng, slot, fps):
    i = rng.choice(_statics(events))
    e = events[i]
    choices = _place(e["pos"], [q for q in QUADRANTS if q != e["pos"]], slot, rng)
    evidence = f"{_at(e['start'], fps, 'At ')}{' the' if fps else 'The'} {name(e)} appears at the {e['pos']}."
    return f"Where did the {name(e)} appear?", choices, dict(kind="where", subject=i), evidence


def q_which_at(events, rng, slot, fps):
    """Needs a quadrant where exactly one static shape, and no moving one, ever was."""
    touched = {q: [i for i, e in enumerate(events) if q in (e["pos"], e["to"])] for q in QUADRANTS}
    singles = [q for q in QUADRANTS if len(touched[q]) == 1 and events[touched[q][0]]["to"] is None]
    if not singles:
        return None
    quadrant = rng.choice(singles)
    i = touched[quadrant][0]
    choices = _place(i, rng.sample([j for j in range(len(events)) if j != i], 3), slot, rng)
    evidence = (f"{_at(events[i]['start'], fps, 'At ')}{' the' if fps else 'The'} {name(events[i])} appears at "
                f"the {quadrant}; nothing else appears there.")
    return (f"Which shape appeared at the {quadrant}?", choices, dict(kind="which_at", quadrant=quadrant),
            evidence)


DIRECTIONS = {(1, 0): "right", (-1, 0): "left", (0, -1): "up", (0, 1): "down", (1, -1): "up and right",
              (-1, -1): "up and left", (1, 1): "down and right", (-1, 1): "down and left"}


def _journey(e, fps) -> str:
    (x0, y0), (x1, y1) = centre(e["pos"]), centre(e["to"])
    direction = DIRECTIONS[(int(np.sign(x1 - x0)), int(np.sign(y1 - y0)))]
    end = e["start"] + e["frames"] - 1
    return (f"{_at(e['start'], fps, 'At ')}{' the' if fps else 'The'} {name(e)} is at the {e['pos']}. "
            f"It moves {direction} and reaches the {e['to']}{_at(end, fps)}.")


def q_heading(events, rng, slot, fps):
    i = _mover(events)
    e = events[i]
    choices = _place(e["to"], [q for q in QUADRANTS if q != e["to"]], slot, rng)
    problem = f"The {name(e)} moves across the screen. Where is it heading?"
    return problem, choices, dict(kind="heading", subject=i), _journey(e, fps)


def q_mover(events, rng, slot, fps):
    i = _mover(events)
    choices = _place(i, rng.sample([j for j in range(len(events)) if j != i], 3), slot, rng)
    problem = f"One shape moves to the {events[i]['to']}. Which one?"
    return problem, choices, dict(kind="mover", subject=i), _journey(events[i], fps)


def q_count(events, rng, slot, fps):
    n = len(events)
    choices = list(range(n - slot, n - slot + 4))  # ascending, the answer at `slot`
    if fps:
        seen = "Shapes appear at " + ", ".join(_t(e["start"], fps) for e in events)
    else:
        seen = "Shapes appear: " + ", ".join(name(e) for e in events)
    return "How many shapes appeared in the video?", choices, dict(kind="count"), f"{seen}: {n} in total."


def q_order(events, rng, slot, fps):
    picked = sorted(rng.sample(range(len(events)), 3))
    wrong = [list(p) for p in itertools.permutations(picked) if list(p) != picked]
    choices = _place(picked, rng.sample(wrong, 3), slot, rng)
    shown = rng.sample(picked, 3)
    problem = ("In which order did these appear: " + ", ".join(f"the {name(events[j])}" for j in shown) + "?")
    a, b, c = (events[j] for j in picked)
    if fps:
        evidence = (f"The {name(a)} appears at {_t(a['start'], fps)}, the {name(b)} at {_t(b['start'], fps)}, "
                    f"and the {name(c)} at {_t(c['start'], fps)}.")
    else:
        evidence = f"The {name(a)} appears first, then the {name(b)}, then the {name(c)}."
    return problem, choices, dict(kind="order"), evidence


TEMPLATES = {
    "Temporal": (q_after, q_first_last),
    "Spatial": (q_where, q_which_at),
    "Goal & Purpose": (q_heading, q_mover),
    "Plot & Narrative": (q_count, q_order),
}


# Easy mode (--easy): one template per category whose four options are the same fixed list in
# the same order for every question (quadrants, colours, counts 5-8), so the answer letter is a
# fixed function of what was seen and a tiny model need not learn to look options up; the chain
# of thought names exactly the seen fact the answer rests on. Each returns (problem, choices,
# task, evidence, index of the answer).
COUNTS = tuple(range(EVENTS_PER_VIDEO[0], EVENTS_PER_VIDEO[1] + 1))
assert len(COUNTS) == 4


def e_first_colour(events, rng, fps):
    e = events[0]
    choices = list(COLOURS)
    return ("What colour was the first shape?", choices, dict(kind="first_colour"),
            f"The first shape is the {name(e)}.", choices.index(e["colour"]))


def e_where(events, rng, fps):
    i = rng.choice(_statics(events))
    e = events[i]
    choices = list(QUADRANTS)
    return (f"Where did the {name(e)} appear?", choices, dict(kind="where", subject=i),
            f"The {name(e)} appears at the {e['pos']}.", choices.index(e["pos"]))


def e_heading(events, rng, fps):
    i = _mover(events)
    e = events[i]
    choices = list(QUADRANTS)
    return (f"The {name(e)} moves across the screen. Where is it heading?", choices,
            dict(kind="heading", subject=i), f"The {name(e)} moves to the {e['to']}.", choices.index(e["to"]))


def e_count(events, rng, fps):
    choices = list(COUNTS)
    seen = "Shapes appear: " + ", ".join(e["colour"] for e in events)
    return ("How many shapes appeared in the video?", choices, dict(kind="count"),
            f"{seen}: {len(events)} in total.", choices.index(len(events)))


EASY_TEMPLATES = {
    "Temporal": e_first_colour,
    "Spatial": e_where,
    "Goal & Purpose": e_heading,
    "Plot & Narrative": e_count,
}


# The reasoning tier's open answers from synth's vocabulary (its counts: minirl/reasoning.py's EVENTS).
ANSWER_SPACES = dict(shape=[f"{c} {s}" for c, s in itertools.product(COLOURS, SHAPES)], colour=list(COLOURS),
                     place=list(QUADRANTS))


def option_text(events: list[dict], kind: str, choice) -> str:
    """How a structured choice reads as an option: an event index, a quadrant, a count or an order."""
    if kind in ("where", "heading", "count", "first_colour"):
        return str(choice)
    if kind == "order":
        return ", ".join(name(events[j]) for j in choice)
    return name(events[choice])


def make_question(events, category, slot, rng, fps, easy: bool = False) -> dict:
    """One multiple-choice question of `category` whose answer is the letter LETTERS[slot]
    (easy: the letter of the answer in the fixed option list; `slot` is ignored)."""
    if easy:
        problem, choices, task, evidence, slot = EASY_TEMPLATES[category](events, rng, fps)
    else:
        templates = list(TEMPLATES[category])
        rng.shuffle(templates)
        for template in templates:
            made = template(events, rng, slot, fps)
            if made is not None:
                break
        problem, choices, task, evidence = made
    task["choices"] = choices
    letter = LETTERS[slot]
    return dict(
        problem=problem,
        options=[f"{LETTERS[k]}. {option_text(events, task['kind'], c)}" for k, c in enumerate(choices)],
        answer=letter,
        reasoning=f"{evidence} So the answer is {letter}.",
        category=category,
        task=task,
    )


def caption(events: list[dict], visible_at: int, num_frames: int) -> tuple[str, int]:
    """A dense caption of what `visible_at` uniformly sampled frames show, and how many events.

    Every event on screen in at least one sampled frame, in time order, with its quadrant (and
    the moving object's goal): the perception-pretraining target of the embedded base model. An
    event no sampled frame shows is left out, so the target never asks for what cannot be seen.
    """
    indices = uniform_indices(num_frames, visible_at).tolist()
    seen = [e for e in events if any(on_screen(e, f) for f in indices)]
    parts = [f"the {name(e)} at the {e['pos']}" + (f" moves to the {e['to']}" if e["to"] else "") for e in seen]
    return ("First " + ", then ".join(parts) + "." if parts else "Nothing appears."), len(seen)


def caption_row(events: list[dict], visible_at: int, num_frames: int) -> dict:
    text, count = caption(events, visible_at, num_frames)
    return dict(problem=CAPTION_PROMPT, answer=str(count), reasoning=f"{text} {count} in total.",
                category="Caption", task=dict(kind="caption", visible_at=visible_at))


def make_split(split: str, num_questions: int, num_frames: int, fps: int, per_video: int, seed: int,
               timestamps: bool = True, easy: bool = False, captions: int = 0, dense: bool = False,
               reasoning: bool = False, seen_at: int = 32):
    """(videos, rows): the event scripts and the jsonl rows of one split, no files written.

    Question q has category CATEGORIES[q % 4]; each category deals its answer letters from
    shuffled blocks of A-D (reasoning: its templates, from shuffled blocks of all of them).
    Train and test use different random streams and video folders.
    captions > 0: one caption row per video instead (see `caption`), of what that many
    uniformly sampled frames show, of `dense` videos (see `make_events`) or the benchmark's.
    """
    if num_frames < MIN_VIDEO_FRAMES:
        raise ValueError(f"--frames must be at least {MIN_VIDEO_FRAMES}, got {num_frames}")
    rng = random.Random(f"minirl-synth/{seed}/{split}")
    dealt = {c: [] for c in CATEGORIES}
    videos, rows = [], []
    for q in range(num_questions):
        if captions:
            videos.append(make_events(rng, num_frames, dense))
            row = caption_row(videos[-1], captions, num_frames)
            row.update(videos=[f"videos/{split}/{q:05d}.mp4"], id=f"{split}-{q:05d}", events=videos[-1],
                       num_frames=num_frames, fps=fps)
            rows.append(row)
            continue
        if q % per_video == 0:
            videos.append(make_events(rng, num_frames, counts=REASONING_EVENTS, seen_at=seen_at, one_per_colour=True)
                          if reasoning else make_events(rng, num_frames))
        v = len(videos) - 1
        category = CATEGORIES[q % len(CATEGORIES)]
        block = len(REASONING_TEMPLATES[category]) if reasoning else 4
        if not dealt[category]:
            dealt[category] = rng.sample(range(block), block)
        if reasoning:
            row = reasoning_question(videos[v], category, dealt[category].pop(), rng, ANSWER_SPACES)
        else:
            row = make_question(videos[v], category, dealt[category].pop(), rng, fps if timestamps else None,
                                easy)
        row.update(
            videos=[f"videos/{split}/{v:05d}.mp4"], id=f"{split}-{v:05d}-{q % per_video}",
            events=videos[v], num_frames=num_frames, fps=fps,
        )
        rows.append(row)
    return videos, rows


def generate(out, train: int = 3000, test: int = 600, frames: int = 256, size: int = 56, fps: int = 8,
             per_video: int = 4, seed: int = 0, timestamps: bool = True, easy: bool = False,
             captions: int = 0, dense: bool = False, workers: int = 1, reasoning: bool = False,
             seen_at: int = 32) -> dict:
    """Write the benchmark to `out`; returns {split: number of rows}. reasoning: the open reasoning tier, whose
    events are all on screen in `seen_at` uniformly sampled frames.

    workers > 1 encodes the mp4s in that many processes: the same bytes (every video is its own
    single-threaded encode of a script drawn beforehand), in half the time on 2 cores."""
    if size % 28 or size < 28:
        # Qwen's processor resizes every frame to multiples of 28 (patch 14 x merge 2); frames that
        # already are pass through unresampled, so blobs stay crisp.
        raise ValueError(f"--size must be a positive multiple of 28, got {size}")
    if reasoning and (easy or captions):
        raise ValueError("--reasoning is a tier of its own: drop --easy and --captions")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        videos, rows = make_split(split, n, frames, fps, per_video, seed, timestamps, easy, captions, dense,
                                  reasoning, seen_at)
        jobs = [(out / f"videos/{split}/{v:05d}.mp4", events, frames, size, fps) for v, events in enumerate(videos)]
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.Pool(workers) as pool:
                pool.starmap(write_mp4, jobs, chunksize=8)
        else:
            for job in jobs:
                write_mp4(*job)
        with open(out / f"{split}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return {"train": train, "test": test}


# One static shape on screen for the whole video and one question about it with fixed options, so
# the answer letter is a fixed function of what the video shows: the smallest task that a model
# can only answer by looking (tests/test_learning.py).
ONE_SHAPE_QUESTIONS = {  # asked property -> (its values, question, reasoning before "So the answer is")
    "colour": (list(COLOURS), "What colour is the shape?", "The shape is {}."),
    "pos": (list(QUADRANTS), "Where is the shape?", "The shape is at the {}."),
}


def one_shape_questions(out: Path, videos: int, seed: int, asked: str, frames: int = 64) -> Path:
    """`videos` 56-px mp4s under `out/` and `out`.jsonl, one question each about the `asked` property.

    Its values are dealt balanced and in no fixed period (eval's ablation swaps video i with i + N/2,
    which must not hand a question a video with the same answer); the other properties are drawn at
    random, in the order colour, shape, place.
    """
    values, problem, reasoning = ONE_SHAPE_QUESTIONS[asked]
    rng = random.Random(f"{'where' if asked == 'pos' else asked}-question/{seed}")
    dealt = rng.sample(values * (videos // len(values) + 1), videos)
    draws = {"colour": list(COLOURS), "shape": SHAPES, "pos": QUADRANTS}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".jsonl"), "w") as f:
        for v, value in enumerate(dealt):
            event = {key: value if key == asked else rng.choice(choices) for key, choices in draws.items()}
            event.update(start=0, frames=frames, to=None)
            write_mp4(out / f"{v:03d}.mp4", [event], frames, 56, 8)
            letter = LETTERS[values.index(value)]
            f.write(json.dumps(dict(
                id=f"{seed}-{v}", videos=[f"{out.name}/{v:03d}.mp4"], problem=problem,
                options=[f"{LETTERS[k]}. {x}" for k, x in enumerate(values)], answer=letter,
                reasoning=f"{reasoning.format(value)} So the answer is {letter}.", category="Spatial")) + "\n")
    return out.with_suffix(".jsonl")


def corpus(num_videos: int = 256, frames: int = 256, fps: int = 8, seed: int = 0, timestamps: bool = True,
           easy: bool = False) -> list[str]:
    """Texts for training the tiny model's tokenizer: questions, options, reasoning and the prompt."""
    _, rows = make_split("corpus", 4 * num_videos, frames, fps, 4, seed, timestamps, easy)
    _, captions = make_split("corpus", num_videos, frames, fps, 1, seed, captions=frames)
    texts = [SYSTEM_PROMPT, INSTRUCTION, INSTRUCTION_OPEN, "system", "user", "assistant"]
    for row in rows + captions:
        texts += [row["problem"], *row.get("options", []), row["reasoning"]]
    return texts


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minirl.synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=3000, help="training questions")
    parser.add_argument("--test", type=int, default=600, help="held-out questions")
    parser.add_argument("--frames", type=int, default=256, help="frames per video")
    parser.add_argument("--size", type=int, default=56, help="frame side in pixels, a multiple of 28")
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--per-video", type=int, default=4, help="questions per video")
    parser.add_argument("--no-timestamps", action="store_true",
                        help="reasoning without timestamps: about half the tokens, learnable by a tiny model")
    parser.add_argument("--easy", action="store_true",
                        help="one template per category with fixed option lists (a tiny-model demo)")
    parser.add_argument("--reasoning", action="store_true",
                        help="open questions that compose what was seen (minirl/reasoning.py): a step RL can improve")
    parser.add_argument("--seen-at", type=int, default=32, metavar="K",
                        help="with --reasoning: every event is on screen in one of K uniformly sampled frames")
    parser.add_argument("--captions", type=int, default=0, metavar="K",
                        help="one dense-caption row per video (what K uniform frames show) instead of questions")
    parser.add_argument("--dense", action="store_true",
                        help="with --captions: 1-3 long events per video (the easy end of the curriculum)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="processes that encode the mp4s (default: one per core; the bytes do not depend on it)")
    args = parser.parse_args(argv)
    if args.dense and not args.captions:
        parser.error("--dense applies to --captions data only")
    start = time.perf_counter()
    counts = generate(args.out, args.train, args.test, args.frames, args.size, args.fps, args.per_video,
                      args.seed, not args.no_timestamps, args.easy, args.captions, args.dense, args.workers,
                      args.reasoning, args.seen_at)
    print(f"wrote {counts['train']} train / {counts['test']} test questions to {args.out} "
          f"in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
