"""Which step of the reasoning tier's derivation fails? Each step of each prediction, scored against the video.

    python -m research.reasoning_steps DATA/test.jsonl PRED.jsonl [PRED2.jsonl ...]

For every response of an evaluate.py predictions file: is the numbered caption exact (names in order), or
shorter than the video; for a shape named by colour, is the colour the derivation writes the question's, and
is the number after it that colour's number in the response's own caption; is the shape the question names
found at its number ("The red one is (2)"); is the step to its neighbour right (after: +1, before: -1); does
the number looked up name the right shape; is the subtraction right; is the answer right. Rates are over all
responses of the template (a step the response does not write counts wrong).
"""

import argparse
import collections
import json
import re

NAME = re.compile(r"\(\d\) the (red|green|blue|yellow) (square|circle) at the")
FOUND = re.compile(r"(?:one|moves, it) is \((\d)\)")
NEIGHBOUR = re.compile(r"(after|before) it is \((\d)\), the (\w+ \w+)")
NAMED = re.compile(r"The (\w+) one is \((\d)\)")
OWN = re.compile(r"\((\d)\) the (\w+) (?:square|circle)")
ARITH = re.compile(r"(?:it|them) ([\d\-]+)=(\d)")


def score(row: dict, response: str) -> dict:
    events, task = row["events"], row["task"]
    names = [f"{e['colour']} {e['shape']}" for e in events]
    listed = [f"{c} {s}" for c, s in NAME.findall(response.split("in total.")[0])]
    out = dict(caption=listed == names, short=len(listed) < len(names))
    found = [int(x) for x in FOUND.findall(response)]
    subjects = task.get("subjects", [task.get("subject")])
    out["found"] = found[:len(subjects)] == [i + 1 for i in subjects]
    named = NAMED.search(response)
    if named and not task["kind"].startswith("mover") and len(subjects) == 1:
        own = {c: int(k) for k, c in OWN.findall(response.split("in total.")[0])}  # colour -> its number
        out["colour"] = named[1] == events[subjects[0]]["colour"]
        out["own"] = own.get(named[1]) == int(named[2])
    if task["kind"] in ("next_shape", "next_place", "mover_colour"):
        m = NEIGHBOUR.search(response)
        out["step"] = bool(m and found and int(m[2]) - found[0] == (1 if task["side"] == "after" else -1))
        out["lookup"] = bool(m and 0 < int(m[2]) <= len(names) and names[int(m[2]) - 1] == m[3])
    else:
        m = ARITH.search(response)
        out["subtraction"] = bool(m and eval(m[1]) == int(m[2]))  # noqa: S307 (digits and minus signs only)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("predictions", nargs="+")
    args = parser.parse_args()
    rows = {r["id"]: r for r in map(json.loads, open(args.data))}
    for path in args.predictions:
        totals = collections.defaultdict(collections.Counter)
        for p in map(json.loads, open(path)):
            row = rows[p["id"]]
            for response, accuracy in zip(p["responses"], p["accuracy"], strict=True):
                t = totals[row["task"]["kind"]]
                t["n"] += 1
                t["answer"] += accuracy
                t.update({k: int(v) for k, v in score(row, response).items()})
        print(f"\n{path}\n| template | responses | caption exact | caption too short | colour from question "
              "| its number in own caption | shape found | step | lookup | subtraction | answer |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for kind, t in sorted(totals.items()):
            cells = [f"{100 * t[k] / t['n']:.0f}%" if k in t or k in ("answer",) else "—"
                     for k in ("caption", "short", "colour", "own", "found", "step", "lookup", "subtraction", "answer")]
            print(f"| {kind} | {t['n']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
