"""Study: does the reasoning tier fail at reading (the listed events) or at deriving (the answer from the list)?

    python -m research.reasoning_listing DATA/test.jsonl PREDICTIONS.jsonl [--frames 32]

For each greedy prediction: the events its chain of thought lists ("Shapes appear: ...") against the events
the sampled frames show (uniform sampling of --frames, as evaluate.py does); and whether its answer is the one
its own list implies (recomputed with the tier's rule), i.e. whether the derivation is right even when the
reading is wrong.
"""

import argparse
import json
import re
from collections import defaultdict

from minirl.reward import accuracy_reward, extract_answer
from minirl.synth import name, on_screen
from minirl.video import uniform_indices

LIST = re.compile(r"Shapes appear: ([^.]*)\.")


def derive(kind: str, task: dict, seen: list[str], events: list[dict]) -> str | None:
    """The answer the tier's rule gives on the list `seen` (names), for the templates that read only the order."""
    subject = name(events[task["subject"]]) if "subject" in task else None
    if kind == "next_shape" and subject in seen:
        i = seen.index(subject) + (1 if task["side"] == "after" else -1)
        return seen[i] if 0 <= i < len(seen) else None
    if kind == "side_count" and subject in seen:
        i = seen.index(subject)
        return str(len(seen) - 1 - i if task["side"] == "after" else i)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("predictions")
    ap.add_argument("--frames", type=int, default=32)
    args = ap.parse_args()
    rows = {r["id"]: r for r in map(json.loads, open(args.data))}
    stats = defaultdict(lambda: defaultdict(float))
    for pred in map(json.loads, open(args.predictions)):
        row, text = rows[pred["id"]], pred["responses"][0]
        events, kind = row["events"], row["task"]["kind"]
        frames = uniform_indices(row["num_frames"], args.frames)
        visible = [name(e) for e in events if any(on_screen(e, f) for f in frames)]
        found = LIST.search(text)
        listed = [s.strip() for s in found.group(1).split(",")] if found else []
        s = stats[kind]
        s["questions"] += 1
        s["all visible"] += len(visible) == len(events)
        s["list = all events"] += listed == [name(e) for e in events]
        s["list exact"] += listed == visible
        s["count right"] += len(listed) == len(visible)
        s["right"] += pred["accuracy"][0]
        derived = derive(kind, row["task"], listed, events)
        if derived is not None:
            s["derivable"] += 1
            s["own"] += accuracy_reward(extract_answer(text), derived) == 1.0
    print(f"{'template':<15} {'questions':>9} {'all visible':>12} {'list exact':>11} {'list = all':>11} "
          f"{'count right':>12} {'accuracy':>9} {'answer = own list':>18}")
    for kind, s in sorted(stats.items()):
        q = s["questions"]
        own = f"{100 * s['own'] / s['derivable']:.1f}%" if s["derivable"] else "-"
        print(f"{kind:<15} {q:>9.0f} {100 * s['all visible'] / q:>11.1f}% {100 * s['list exact'] / q:>10.1f}% "
              f"{100 * s['list = all events'] / q:>10.1f}% {100 * s['count right'] / q:>11.1f}% "
              f"{100 * s['right'] / q:>8.1f}% {own:>18}")


if __name__ == "__main__":
    main()
