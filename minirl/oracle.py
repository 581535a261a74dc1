"""The oracle of LongVideo-Reason-Synth: how well a perfect reader of k sampled frames can answer.

It sees, on each sampled frame, which shapes are on screen and where, and knows the benchmark's
rules (minirl/synth.py); guessing among the options it cannot rule out gives its expected
accuracy. An open question of the reasoning tier (minirl/reasoning.py) is guessed among the answers left
of its template's answer space; its table also prints what a guess that sees nothing scores.

    python -m minirl.oracle DIR/test.jsonl      # the table for k = 8, 16, 32, ... frames and all frames

The dependency runs one way: the oracle reads the generator's rules, the generator knows nothing of it.
"""

import argparse
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np

from minirl.reasoning import answer_space
from minirl.synth import (
    ANSWER_SPACES,
    CATEGORIES,
    COLOURS,
    EVENTS_PER_VIDEO,
    LETTERS,
    MIN_EVENT_FRAMES,
    SHAPES,
    name,
    on_screen,
)
from minirl.video import uniform_indices


def _hideable(indices: np.ndarray, num_frames: int, a: int, b: int) -> int:
    """How many whole events could hide strictly between frames a and b (-1 / num_frames: the ends)?

    Events do not overlap, so a run of unsampled frames in (a, b) holds one per MIN_EVENT_FRAMES frames.
    """
    inside = [a] + [int(i) for i in indices if a < i < b] + [b]
    return sum((hi - lo - 1) // MIN_EVENT_FRAMES for lo, hi in itertools.pairwise(inside))


def _unsampled_room(indices: np.ndarray, num_frames: int, a: int, b: int) -> bool:
    """Could a whole event hide strictly between frames a and b (-1 / num_frames: the ends)?"""
    return _hideable(indices, num_frames, a, b) > 0


def _sightings(events: list[dict], indices: np.ndarray) -> dict[int, list[int]]:
    """event -> the sampled frames it was on screen, in order (only the events seen)."""
    seen = {}
    for f in indices.tolist():
        for i, e in enumerate(events):
            if on_screen(e, f):
                seen.setdefault(i, []).append(f)
    return seen


def _seen_moving(event: dict, frames: list[int]) -> bool:
    """Whether sightings `frames` of a moving event show it move: two (at two places), or one off a
    quadrant centre (at its first and last frame it sits on one, like a shape standing still)."""
    return len(frames) >= 2 or any(0 < f - event["start"] < event["frames"] - 1 for f in frames)


def oracle_candidates(row: dict, indices) -> list[int]:
    """The options (as indices 0-3) still possible to a reader who sees only frames `indices`.

    The reader sees, on each sampled frame, which shapes are on screen and where, and knows the
    rules of the benchmark (one event per identity, none shorter than MIN_EVENT_FRAMES frames).
    It never rules out the true answer; guessing uniformly among what is left gives the
    expected accuracy `1 / len(candidates)`.
    """
    events, task, num_frames = row["events"], row["task"], row["num_frames"]
    indices = np.unique(np.asarray(indices))
    choices, everything = task["choices"], list(range(len(task["choices"])))
    seen = _sightings(events, indices)  # event -> sampled frames it was on screen, in order

    def room(a, b):
        return _unsampled_room(indices, num_frames, a, b)

    def unseen_if(possible):
        return [k for k in everything if choices[k] not in seen] if possible else []

    kind = task["kind"]
    if kind == "first_colour":
        if not seen:
            return everything
        first = min(seen, key=lambda i: seen[i][0])
        found = choices.index(events[first]["colour"])
        hidden = {events[i]["colour"] for i in range(len(events)) if i not in seen}
        if room(-1, seen[first][0]):
            return sorted({found} | {choices.index(c) for c in hidden}) if hidden else [found]
        return [found]
    if kind == "after":
        x = task["subject"]
        if x not in seen:
            return everything
        fx = seen[x][0]
        later = [i for i in seen if seen[i][0] > fx]
        nxt = min(later, key=lambda i: seen[i][0]) if later else None
        gap_end = seen[nxt][0] if nxt is not None else num_frames
        found = [choices.index(nxt)] if nxt in choices else []
        return found + unseen_if(room(seen[x][-1], gap_end)) or everything
    if kind in ("first", "last"):
        shown = [k for k in everything if choices[k] in seen]
        if not shown:
            return everything
        if kind == "first":
            k = min(shown, key=lambda k: seen[choices[k]][0])
            return [k] + unseen_if(room(-1, seen[choices[k]][0]))
        k = max(shown, key=lambda k: seen[choices[k]][-1])
        return [k] + unseen_if(room(seen[choices[k]][-1], num_frames))
    if kind == "where":
        return [choices.index(events[task["subject"]]["pos"])] if task["subject"] in seen else everything
    if kind == "which_at":
        there = [k for k in everything
                 if choices[k] in seen and events[choices[k]]["pos"] == task["quadrant"]]
        return there or unseen_if(room(-1, num_frames)) or everything
    if kind in ("heading", "mover"):
        i = task["subject"]
        e = events[i]
        steps = [f - e["start"] for f in seen.get(i, [])]
        between = [s for s in steps if 0 < s < e["frames"] - 1]  # off a quadrant centre: moving
        if len(steps) >= 2 or (between and kind == "mover"):
            return [choices.index(e["to"] if kind == "heading" else i)]
        if kind == "heading":
            # one sighting on the way: it goes between the two ends of that line, either way; one
            # at a quadrant centre may be its start or its goal
            return sorted([choices.index(e["pos"]), choices.index(e["to"])]) if between else everything
        # a shape seen twice in the same place is not the one that moves
        return [k for k in everything if len(seen.get(choices[k], [])) < 2]
    if kind == "count":
        n = len(seen)
        return [k for k in everything if choices[k] == n or (choices[k] > n and room(-1, num_frames))]
    if kind == "order":
        shown = [i for i in choices[0] if i in seen]
        truth = sorted(shown, key=lambda i: seen[i][0])  # the order the reader saw
        return [k for k in everything if sorted(shown, key=choices[k].index) == truth]
    raise ValueError(f"unknown task kind {kind!r}")


def open_candidates(row: dict, indices) -> list[str]:
    """The answers to an open reasoning-tier question still possible to a reader of frames `indices`.

    The reader of `oracle_candidates`, who also knows that a hidden event may be any identity it did not see,
    and that events are one per equal time slot (of at least num_frames // 8 frames), so only as many fit
    between two sightings as slots do. Until it has seen the question's subjects (the moving shape: seen
    moving) it can only guess; then it knows the nearest shape seen on the asked side, and how many events
    could hide on that side.
    """
    events, task, num_frames = row["events"], row["task"], row["num_frames"]
    indices = np.unique(np.asarray(indices))
    seen = _sightings(events, indices)
    space = answer_space(task, events, ANSWER_SPACES)
    kind = task["kind"]
    subjects = task.get("subjects", [task.get("subject")])
    moving = kind in ("mover_colour", "mover_count")  # the subject is "the moving shape"
    if not all(i in seen for i in subjects) or (moving and not _seen_moving(events[subjects[0]], seen[subjects[0]])):
        return space
    hidden = [(c, s) for c, s in itertools.product(COLOURS, SHAPES)
              if (c, s) not in {(events[i]["colour"], events[i]["shape"]) for i in seen}]
    slot = num_frames // EVENTS_PER_VIDEO[1]

    def most(k, lo, hi):  # the most events between frames lo and hi, k of them seen: slots and gaps bound it
        return min((hi - lo - 1) // slot, k + _hideable(indices, num_frames, lo, hi), k + len(hidden))

    if kind == "between_count":
        a, b = sorted(subjects, key=lambda i: seen[i][0])
        lo, hi = seen[a][-1], seen[b][0]
        k = sum(lo < seen[i][0] < hi for i in seen)
        return [c for c in space if k <= int(c) <= most(k, lo, hi)]
    x = task["subject"]
    if task["side"] == "after":  # others: the shapes seen on that side; gap: up to the nearest of them
        others = [i for i in seen if seen[i][0] > seen[x][-1]]
        near = min(others, key=lambda i: seen[i][0], default=None)
        side = (seen[x][-1], num_frames)
        gap = (side[0], side[1] if near is None else seen[near][0])
    else:
        others = [i for i in seen if seen[i][-1] < seen[x][0]]
        near = max(others, key=lambda i: seen[i][-1], default=None)
        side = (-1, seen[x][0])
        gap = (side[0] if near is None else seen[near][-1], side[1])
    if kind.endswith("count"):
        return [c for c in space if len(others) <= int(c) <= most(len(others), *side)]
    found = [] if near is None else [events[near]]
    room = most(0, *gap) > 0
    if kind == "next_shape":
        left = [name(e) for e in found] + ([f"{c} {s}" for c, s in hidden] if room else [])
    elif kind == "next_place":
        left = [e["pos"] for e in found] + (space if room else [])  # a hidden shape may be anywhere
    else:
        left = [e["colour"] for e in found] + ([c for c, _ in hidden] if room else [])
    return [a for a in space if a in left]


def oracle_accuracy(rows: list[dict], k: int | None) -> dict[str, float]:
    """Expected accuracy per category (and 'overall') seeing k uniformly sampled frames (None: all)."""
    scores = {c: [] for c in CATEGORIES}
    for row in rows:
        n = row["num_frames"] if k is None else min(k, row["num_frames"])
        indices = uniform_indices(row["num_frames"], n)
        if "options" in row:
            candidates, truth = oracle_candidates(row, indices), LETTERS.index(row["answer"])
        else:
            candidates, truth = open_candidates(row, indices), row["answer"]
        scores[row["category"]].append(1.0 / len(candidates) if truth in candidates else 0.0)
    result = {c: float(np.mean(s)) for c, s in scores.items() if s}
    result["overall"] = float(np.mean([x for s in scores.values() for x in s]))
    return result


def report(path) -> str:
    """The oracle's accuracy table for k = 8, 16, 32, ... frames and all frames."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    most = max(r["num_frames"] for r in rows)
    ks = [k for k in (2**p for p in range(3, 20)) if k < most] + [None]
    columns = [c for c in CATEGORIES if any(r["category"] == c for r in rows)] + ["overall"]
    lines = [f"oracle accuracy with k uniformly sampled frames: {len(rows)} questions, {most} frames/video",
             f"{'k':>6}  " + "  ".join(f"{c:>16}" for c in columns)]
    for k in ks:
        acc = oracle_accuracy(rows, k)
        cells = "  ".join(f"{100 * acc[c]:>15.1f}%" for c in columns)
        lines.append(f"{'all' if k is None else k:>6}  {cells}")
    if all("guess_rate" in r["task"] for r in rows):
        lines += guess_rates(rows, columns)
    return "\n".join(lines)


def guess_rates(rows: list[dict], columns: list[str]) -> list[str]:
    """The open tier's floor beside the oracle: per category the mean guess rate (a uniform guess over each
    template's answers, what a reader of no frame scores), then per template that rate and the rate of its
    most common answer said every time (what a model that learnt only the answers' prior scores)."""
    def mean(rs):
        return float(np.mean([r["task"]["guess_rate"] for r in rs]))

    by_category = {c: [r for r in rows if r["category"] == c] for c in columns[:-1]}
    cells = "  ".join(f"{100 * mean(rs):>15.1f}%" for rs in [*by_category.values(), rows])
    lines = [f"{'guess':>6}  {cells}", "",
             f"{'category':<18}{'template':<15}{'questions':>9}  {'guess':>6}  most common answer"]
    for category, rs in by_category.items():
        for kind in sorted({r["task"]["kind"] for r in rs}):
            of_kind = [r for r in rs if r["task"]["kind"] == kind]
            answer, times = Counter(r["answer"] for r in of_kind).most_common(1)[0]
            lines.append(f"{category:<18}{kind:<15}{len(of_kind):>9}  {100 * mean(of_kind):>5.1f}%  "
                         f"{100 * times / len(of_kind):>5.1f}% ({answer!r})")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minirl.oracle", description="oracle accuracy versus frames seen")
    parser.add_argument("data", help="a jsonl written by minirl.synth (e.g. DIR/test.jsonl)")
    print(report(parser.parse_args(argv).data))


if __name__ == "__main__":
    main()
