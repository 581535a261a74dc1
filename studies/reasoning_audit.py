"""Study: where between the video and the letter does a CoT-SFT model go wrong?

For each kind of question, from eval.py's predictions and the benchmark rows they answer:
  correct          the graded answer
  reads            the reasoning (before "So the answer") names the correct option's text
  subject          the reasoning copies the question's "<colour> <shape>" (kinds that name one)
  consistent       the answer is an option the reasoning names (the option lookup)

    python studies/reasoning_audit.py runs/exp/sft_m4c_450.pred.jsonl runs/demo_m4c/data/test.jsonl
"""

import json
import re
import sys
from collections import Counter

SUBJECT = re.compile(r"(red|green|blue|yellow) (circle|square)")


def audit(predictions: list[dict], rows: dict[str, dict]) -> dict[str, dict]:
    counts: dict[str, Counter] = {}
    for p in predictions:
        row = rows[p["id"]]
        c = counts.setdefault(row["task"]["kind"], Counter())
        options = {o[0]: o[3:] for o in row["options"]}  # "B. red circle" -> {"B": "red circle"}
        body = p["responses"][0].split("So the answer")[0]
        named = [letter for letter, text in options.items() if text in body]
        subject = SUBJECT.search(row["problem"])
        c["n"] += 1
        c["correct"] += p["accuracy"][0]
        c["reads"] += options[row["answer"]] in body
        c["consistent"] += p["answers"][0] in named
        if subject:
            c["named"] += 1
            c["subject"] += subject.group(0) in body
    return {kind: dict(n=c["n"], correct=c["correct"] / c["n"], reads=c["reads"] / c["n"],
                       consistent=c["consistent"] / c["n"],
                       subject=c["subject"] / c["named"] if c["named"] else None)
            for kind, c in sorted(counts.items())}


def main():
    predictions = [json.loads(x) for x in open(sys.argv[1]) if x.strip()]
    rows = {r["id"]: r for r in (json.loads(x) for x in open(sys.argv[2]) if x.strip())}
    print(f"{'kind':<10}{'n':>4}{'correct':>9}{'reads':>7}{'subject':>9}{'consistent':>12}")
    for kind, a in audit(predictions, rows).items():
        subject = "—" if a["subject"] is None else f"{100 * a['subject']:.0f}"
        print(f"{kind:<10}{a['n']:>4}{100 * a['correct']:>9.0f}{100 * a['reads']:>7.0f}{subject:>9}"
              f"{100 * a['consistent']:>12.0f}")


if __name__ == "__main__":
    main()
