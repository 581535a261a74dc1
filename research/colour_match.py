"""Does supervising the colour match teach it? Adds one "Which number is the red shape?" row per SFT row.

    python -m research.colour_match DATA/train_sft.jsonl OUT.jsonl

Each added row uses the same video, asks for the number of a random shape of it named by colour, and is
worked as the reasoning tier's chain of thought: the numbered caption, "The red one is (2).", the answer "2".
Train on OUT.jsonl with the demo's SFT command, then score with research.reasoning_steps.
"""

import json
import random
import sys

from minirl.reasoning import _caption


def main():
    source, out = sys.argv[1], sys.argv[2]
    rng = random.Random("colour-match")
    rows = [json.loads(line) for line in open(source)]
    added = []
    for row in rows:
        events = row["events"]
        i = rng.randrange(len(events))
        colour = events[i]["colour"]
        added.append({**row, "id": row["id"] + "-match", "problem": f"Which number is the {colour} shape?",
                      "answer": str(i + 1), "category": "Match", "task": dict(kind="match", subject=i),
                      "reasoning": f"{_caption(events)} The {colour} one is ({i + 1}). So the answer is {i + 1}."})
    mixed = rows + added
    rng.shuffle(mixed)
    with open(out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in mixed)
    print(f"{len(rows)} rows + {len(added)} colour-match rows -> {out}")


if __name__ == "__main__":
    main()
