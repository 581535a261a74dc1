"""Rewrite SFT rows so the answer is the correct option's text instead of its letter.

    python studies/text_answers.py IN.jsonl OUT.jsonl [--caption-cot FRAMES | --caption-first FRAMES]

"... So the answer is B." becomes "... So the answer is red circle." and `answer` "red circle":
the grader credits an option named by its text (minirl/reward.py), and writing it needs only a
copy from the reasoning, not the option-letter lookup a tiny decoder learns slowly
(studies/copy_probe.py). --caption-cot F: the reasoning is instead the perception base's own
caption of what F uniformly sampled frames show (synth.caption), then "So the answer is <text>.",
so that the answer is a copy out of a caption the base can already write. Only for training rows:
held-out rows keep their letters. --caption-first F: keep the letter and the reasoning, but start
the reasoning with that caption ("First the ... . The blue circle appears at ... So the answer is B.").
"""

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minirl import synth  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("src")
ap.add_argument("dst")
ap.add_argument("--caption-cot", type=int, default=0, metavar="FRAMES")
ap.add_argument("--caption-first", type=int, default=0, metavar="FRAMES")
args = ap.parse_args()
rows = [json.loads(line) for line in open(args.src) if line.strip()]
with open(args.dst, "w") as f:
    for row in rows:
        if args.caption_first:
            caption, _ = synth.caption(row["events"], args.caption_first, row["num_frames"])
            f.write(json.dumps({**row, "reasoning": f"{caption} {row['reasoning']}"}) + "\n")
            continue
        text = dict(o.split(". ", 1) for o in row["options"])[row["answer"]]
        if args.caption_cot:
            caption, count = synth.caption(row["events"], args.caption_cot, row["num_frames"])
            reasoning = f"{caption} {count} in total. So the answer is {text}."
        else:
            reasoning, n = re.subn(r"So the answer is [A-D]\.$", f"So the answer is {text}.", row["reasoning"])
            if n != 1:
                raise SystemExit(f"{row['id']}: reasoning does not end with 'So the answer is X.'")
        f.write(json.dumps({**row, "reasoning": reasoning, "answer": text}) + "\n")
