"""Per category: accuracy, and how often each letter is answered against how often it is right.

    python studies/answer_prior.py PREDICTIONS.jsonl [PREDICTIONS.jsonl ...]

Reads eval.py's `--out` files (first response of each question). A model that reads the video answers
each letter about as often as it is the gold letter; a model that has collapsed onto a prior answers
one or two letters for most questions of a category, whatever the video shows (what GRPO does to the
quadrant questions, README "What `make demo` shows").
"""

import json
import sys
from collections import Counter


def table(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    print(path)
    print(f"  {'category':<18} {'acc':>6}  answered A/B/C/D      gold A/B/C/D     top letter share")
    for cat in sorted({r["category"] for r in rows}):
        rs = [r for r in rows if r["category"] == cat]
        said = Counter(r["answers"][0] for r in rs)
        gold = Counter(r["answer"] for r in rs)
        acc = sum(r["accuracy"][0] for r in rs) / len(rs)
        letters = "ABCD"
        print(f"  {cat:<18} {100 * acc:>5.1f}  {' '.join(f'{said[x]:>4}' for x in letters)}   "
              f"{' '.join(f'{gold[x]:>4}' for x in letters)}   {max(said.values()) / len(rs):>6.2f}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        table(p)
