"""Rewrite a reasoning-tier jsonl's chains of thought in the "scan" style: each caption item ends with a
check of the colour(s) the question names (", red? no" / ", red? yes"), so that matching the question's colour
to the caption is one local comparison per item. Chains about the moving shape are left as they are.

python -m research.scan_chain IN.jsonl OUT.jsonl [--share 1.0] [--seed 0]
--share: the fraction of rows rewritten (the rest keep the lookup chain)."""

import argparse
import json
import random
import re

ITEM = re.compile(r"\((\d)\) the (\w+) (\w+) at the ([\w-]+)((?: moves to the [\w-]+)?)")


def scan(row: dict) -> str:
    task, events = row["task"], row["events"]
    if task["kind"].startswith("mover"):
        return row["reasoning"]
    subjects = task.get("subjects", [task.get("subject")])
    asked = [events[i]["colour"] for i in subjects]
    head, tail = row["reasoning"].split(" in total. ", 1)
    caption, total = head.rsplit(". ", 1)
    items = []
    for m in ITEM.finditer(caption):
        k = int(m[1]) - 1
        check = f"{m[2]} is {' or '.join(asked)}? {'yes' if k in subjects else 'no'}"
        items.append(f"{m[0]}, {check}")
    assert len(items) == len(events), row["reasoning"]
    if task["kind"] == "between_count":  # the two shapes in time order, whichever the question names first
        a, b = sorted(subjects)
        tail = f"They are ({a + 1}) and ({b + 1}); between them {b + 1}-{a + 1}-1={b - a - 1}." + tail.split(".", 1)[1]
    return "; ".join(items) + f". {total} in total. {tail}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--share", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    with open(a.dst, "w") as f:
        for row in map(json.loads, open(a.src)):
            if rng.random() < a.share:
                row["reasoning"] = scan(row)
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()


TAG = re.compile(r"\((\d)\) the \w+ \w+ at the [\w-]+(?: moves to the [\w-]+)?, [\w ]+\? (yes|no)")


def checks(data: str, predictions: str):
    """Per template: the share of answers in the scan style, of those the share whose every check is right,
    the answer accuracy in each style."""
    import collections
    rows = {r["id"]: r for r in map(json.loads, open(data))}
    t = collections.defaultdict(collections.Counter)
    for p in map(json.loads, open(predictions)):
        row = rows[p["id"]]
        subjects = row["task"].get("subjects", [row["task"].get("subject")])
        for response, accuracy in zip(p["responses"], p["accuracy"], strict=True):
            c = t[row["task"]["kind"]]
            tags = TAG.findall(response.split("in total.")[0])
            c["n"] += 1
            if tags:
                c["scan"] += 1
                c["scan_right"] += accuracy
                c["checks_right"] += all((tag == "yes") == (int(k) - 1 in subjects) for k, tag in tags) and \
                    len(tags) == len(row["events"])
            else:
                c["lookup_right"] += accuracy
    for kind, c in t.items():
        s, n = c["scan"], c["n"]
        print(f"{kind:14s} n={n:4d} scan={s / n:.2f} checks_right={c['checks_right'] / max(s, 1):.2f} "
              f"acc_scan={c['scan_right'] / max(s, 1):.2f} acc_lookup={c['lookup_right'] / max(n - s, 1):.2f}")
