"""Where a caption-first chain of thought fails: in the caption, or in the lookup from it.

    python studies/caption_lookup.py PREDICTIONS.jsonl TEST.jsonl [--frames 32]

For eval.py predictions of a model trained on `text_answers.py --caption-first` targets ("First the
blue circle at the top-left, then ... . The blue circle appears at the top-left. So the answer is A."):
how often its caption is right (against synth.caption of the same frames), and how often the
sentence after it copies what the caption says (the question's shape, its place, the first shape,
the moving shape's goal).
"""

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minirl import synth  # noqa: E402

EVENT = r"the (\w+ \w+) at the ([a-z-]+)"

ap = argparse.ArgumentParser()
ap.add_argument("predictions")
ap.add_argument("test")
ap.add_argument("--frames", type=int, default=32)
args = ap.parse_args()
rows = {r["id"]: r for r in map(json.loads, open(args.test))}
n = Counter()
for pred in map(json.loads, open(args.predictions)):
    row, category = rows[pred["id"]], pred["category"]
    truth, _ = synth.caption(row["events"], args.frames, row["num_frames"])
    parts = re.match(r"<think>(First .*?\.) (.*)</think>", pred["responses"][0])
    n["questions"] += 1
    if not parts:
        continue
    caption, evidence = parts.groups()
    said, true = re.findall(EVENT, caption), re.findall(EVENT, truth)
    places = dict(true)
    n["caption exact"] += caption == truth
    n["caption's first shape right"] += bool(said) and bool(true) and said[0][0] == true[0][0]
    n["named events"] += sum(name in places for name, _ in said)
    n["... at the right place"] += sum(places.get(name) == place for name, place in said)
    if category == "Spatial":
        asked = re.search(r"the (\w+ \w+) appear", pred["problem"]).group(1)
        copied = re.search(r"The (\w+ \w+) appears at the ([a-z-]+)", evidence)
        n["Spatial"] += 1
        n["Spatial: asked shape copied"] += bool(copied) and copied.group(1) == asked
        written = dict(said)
        if asked in written:
            n["Spatial: asked shape in own caption"] += 1
            n["... its place copied"] += bool(copied) and copied.group(2) == written[asked]
    if category == "Temporal":
        copied = re.search(r"The first shape is the (\w+ \w+)", evidence)
        n["Temporal"] += 1
        n["Temporal: caption's first shape copied"] += bool(copied) and bool(said) and copied.group(1) == said[0][0]
for key, value in n.items():
    print(f"{key:40s} {value}")
