"""Where a reasoning-tier answer goes wrong: the first step of its chain that differs from the worked answer.

python -m research.chain_errors TEST.jsonl PRED.jsonl [PRED.jsonl ...]

Steps, in chain order (a wrong answer is counted at the first one that fails):
- caption: the numbered items' colours and shapes differ from the worked answer's (where and how the
  mover moves is not compared: the counting templates do not use it);
- check: an item's "red is yellow? yes/no" (or "red is yellow or blue?") disagrees with its own colours;
- lookup: the number(s) it then names for the question's shape(s) are not the worked answer's;
- neighbour: "after it is (k), the ..." names the wrong number, or copies the wrong item;
- derive: everything above right, the answer still wrong (arithmetic, a slip).
"""

import collections
import json
import re
import sys

ITEM = re.compile(r"\((\d)\) the (\w+) (\w+) at the [\w-]+(?: moves to the [\w-]+)?"
                  r"(?:, (\w+) is ([\w ]+?)\? (yes|no))?")
LOOKUP = re.compile(r"(?:The \w+ one is|They are) \((\d)\)(?:[^.;]*?\((\d)\))?")
NEIGHBOUR = re.compile(r"is \((\d)\), the ([\w -]+?)\.")


def step_failed(response: str, worked: str) -> str:
    head, _, tail = response.partition(" in total")
    truth_head, _, truth_tail = worked.partition(" in total")
    got = ITEM.findall(head)
    if [g[:3] for g in got] != [g[:3] for g in ITEM.findall(truth_head)]:
        return "caption"
    for _, colour, _, said, target, answer in got:
        if said and (said != colour or (colour in target.split(" or ")) != (answer == "yes")):
            return "check"
    truth_lookup, lookup = LOOKUP.search(truth_tail), LOOKUP.search(tail)
    if truth_lookup and (not lookup or lookup.groups() != truth_lookup.groups()):
        return "lookup"
    truth_next, nxt = NEIGHBOUR.search(truth_tail.split(";", 1)[-1]), NEIGHBOUR.search(tail.split(";", 1)[-1])
    if truth_next and (not nxt or nxt.groups() != truth_next.groups()):
        return "neighbour"
    return "derive"


def main():
    test = {row["id"]: row for row in map(json.loads, open(sys.argv[1]))}
    for path in sys.argv[2:]:
        counts = collections.defaultdict(collections.Counter)
        for pred in map(json.loads, open(path)):
            row = test[pred["id"]]
            step = "right" if pred["accuracy"][0] == 1 else step_failed(pred["responses"][0], row["reasoning"])
            for key in (row["task"]["kind"], "all"):
                counts[key][step] += 1
        print(path)
        steps = ["right", "caption", "check", "lookup", "neighbour", "derive"]
        print(f"  {'template':14s}" + "".join(f"{s:>10s}" for s in steps))
        for kind, c in sorted(counts.items()):
            n = sum(c.values())
            print(f"  {kind:14s}" + "".join(f"{100 * c[s] / n:10.1f}" for s in steps))


if __name__ == "__main__":
    main()
