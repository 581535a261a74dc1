"""Rewrite SFT rows so the answer is the correct option's text instead of its letter.

    python studies/text_answers.py IN.jsonl OUT.jsonl

"... So the answer is B." becomes "... So the answer is red circle." and `answer` "red circle":
the grader credits an option named by its text (minirl/reward.py), and writing it needs only a
copy from the reasoning, not the option-letter lookup a tiny decoder learns slowly
(studies/copy_probe.py). Only for training rows: held-out rows keep their letters.
"""

import json
import re
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
with open(sys.argv[2], "w") as f:
    for row in rows:
        text = dict(o.split(". ", 1) for o in row["options"])[row["answer"]]
        reasoning, n = re.subn(r"So the answer is [A-D]\.$", f"So the answer is {text}.", row["reasoning"])
        if n != 1:
            raise SystemExit(f"{row['id']}: reasoning does not end with 'So the answer is X.'")
        f.write(json.dumps({**row, "reasoning": reasoning, "answer": text}) + "\n")
