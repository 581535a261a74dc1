"""Study data: the one-shape colour probe for a short GRPO learning test (run from the repository root).

python -m research.probe_data runs/r7/probe
Writes DIR/{train,rl,test}.jsonl (four options, letters: synth.one_shape_questions, seeds 0 / 2 / 1), their
open-answer copies DIR/*_open.jsonl (the answer is the colour word, the chain "The shape is red."), and
DIR/train_noisy.jsonl: the open SFT rows with every second one naming the swapped colour (red<->yellow,
green<->blue), an imperfect demonstration a verifiable reward could correct."""

import json
import sys
from pathlib import Path

from minirl import synth

SWAP = {"red": "yellow", "yellow": "red", "green": "blue", "blue": "green"}


def main(out: Path):
    for split, videos, seed in (("train", 64, 0), ("rl", 64, 2), ("test", 40, 1)):
        if not (out / f"{split}.jsonl").exists():
            synth.one_shape_questions(out / split, videos, seed=seed, asked="colour")
        rows = [json.loads(line) for line in open(out / f"{split}.jsonl")]
        for row in rows:
            row["answer"] = next(o.split(". ", 1)[1] for o in row.pop("options") if o.startswith(row["answer"] + "."))
            row["reasoning"] = f"The shape is {row['answer']}."
        (out / f"{split}_open.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if split == "train":
            for i, row in enumerate(rows):
                if i % 2:
                    row["answer"] = SWAP[row["answer"]]
                    row["reasoning"] = f"The shape is {row['answer']}."
            (out / "train_noisy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
