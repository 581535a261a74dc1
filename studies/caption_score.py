"""Score generated captions (eval.py predictions on a `synth --captions` test set) event by event.

    python eval.py --model M --data DIR/test.jsonl --frames 32 --max-new-tokens 96 --out P.jsonl
    python studies/caption_score.py --data DIR/test.jsonl --predictions P.jsonl

For the i-th event of the true caption and the i-th event of the generated one: is the colour,
the shape, the row (top/bottom), the column (left/right) right; and is the number of events right.
"""

import argparse
import json
import re

EVENT = re.compile(r"the (red|green|blue|yellow) (square|circle) at the (top|bottom)-(left|right)")


def score(truth: str, response: str) -> dict[str, list[bool]]:
    want, got = EVENT.findall(truth), EVENT.findall(response)
    marks = {"colour": [], "shape": [], "row": [], "column": [], "count": [len(want) == len(got)]}
    for i, w in enumerate(want):
        g = got[i] if i < len(got) else ("",) * 4
        for k, name in enumerate(("colour", "shape", "row", "column")):
            marks[name].append(w[k] == g[k])
    return marks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--predictions", required=True)
    args = ap.parse_args()
    truth = {r["id"]: r["reasoning"] for r in map(json.loads, open(args.data))}
    total: dict[str, list[bool]] = {}
    for p in map(json.loads, open(args.predictions)):
        for name, marks in score(truth[p["id"]], p["responses"][0]).items():
            total.setdefault(name, []).extend(marks)
    print(json.dumps({k: round(100 * sum(v) / len(v), 1) for k, v in total.items()}))


if __name__ == "__main__":
    main()
