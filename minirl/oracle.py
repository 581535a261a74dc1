"""The oracle of LongVideo-Reason-Synth: how well a perfect reader of k sampled frames can answer.

It sees, on each sampled frame, which shapes are on screen and where, and knows the benchmark's
rules (minirl/synth.py); guessing among the options it cannot rule out gives its expected
accuracy.

    python -m minirl.oracle DIR/test.jsonl      # the table for k = 8, 16, 32, ... frames and all frames

The dependency runs one way: the oracle reads the generator's rules, the generator knows nothing of it.
"""

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from minirl.synth import CATEGORIES, LETTERS, MIN_EVENT_FRAMES, on_screen
from minirl.video import uniform_indices


def _unsampled_room(indices: np.ndarray, num_frames: int, a: int, b: int) -> bool:
    """Could a whole event hide strictly between frames a and b (-1 / num_frames: the ends)?

    True iff some run of at least MIN_EVENT_FRAMES consecutive frames in (a, b) was not sampled.
    """
    inside = [a] + [int(i) for i in indices if a < i < b] + [b]
    return any(hi - lo - 1 >= MIN_EVENT_FRAMES for lo, hi in itertools.pairwise(inside))


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
    seen = {}  # event -> sampled frames it was on screen, in order
    for f in indices.tolist():
        for i, e in enumerate(events):
            if on_screen(e, f):
                seen.setdefault(i, []).append(f)

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


def oracle_accuracy(rows: list[dict], k: int | None) -> dict[str, float]:
    """Expected accuracy per category (and 'overall') seeing k uniformly sampled frames (None: all)."""
    scores = {c: [] for c in CATEGORIES}
    for row in rows:
        n = row["num_frames"] if k is None else min(k, row["num_frames"])
        candidates = oracle_candidates(row, uniform_indices(row["num_frames"], n))
        truth = LETTERS.index(row["answer"])
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
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minirl.oracle", description="oracle accuracy versus frames seen")
    parser.add_argument("data", help="a jsonl written by minirl.synth (e.g. DIR/test.jsonl)")
    print(report(parser.parse_args(argv).data))


if __name__ == "__main__":
    main()
