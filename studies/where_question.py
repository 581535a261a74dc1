"""Study: can CoT-SFT teach a checkpoint *where* a shape is? (the issue's minimal task)

One static shape on screen for the whole 64-frame 56-px video; "Where is the shape?" with the four
quadrants as fixed options. train_sft.py for --steps steps (sp 1, batch 16, 8 frames), then eval.py
on 100 unseen videos, real and with every video swapped for another's:

    python studies/where_question.py --model M --steps 150 --out runs/exp/where_M [--train-vision]
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from minirl import synth  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def accuracy(model: Path, data: Path, out: Path, *extra) -> float:
    subprocess.run([sys.executable, str(ROOT / "eval.py"), "--model", str(model), "--data", str(data),
                    "--frames", "8", "--max-new-tokens", "64", "--batch-size", "20", "--out", str(out) + ".pred.jsonl",
                    "--json", str(out) + ".json", *extra], check=True, cwd=ROOT, env=ENV, capture_output=True)
    return json.loads(Path(str(out) + ".json").read_text())["overall"]["accuracy"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--train-vision", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    train = synth.one_shape_questions(out / "train", 400, seed=0, asked="pos")
    test = synth.one_shape_questions(out / "test", 100, seed=1, asked="pos")
    subprocess.run([sys.executable, str(ROOT / "train_sft.py"), "--model.path", args.model, "--data.train", str(train),
                    "--data.frames", "8", "--optim.steps", str(args.steps), "--optim.batch_size", "16",
                    "--optim.micro_batch_size", "16", "--optim.lr", str(args.lr), "--optim.warmup_steps", "10",
                    "--model.train_vision", str(args.train_vision).lower(), "--run.out", str(out / "sft"),
                    "--run.tensorboard", "false"], check=True, cwd=ROOT, env=ENV)
    real = accuracy(out / "sft/hf", test, out / "real")
    ablated = accuracy(out / "sft/hf", test, out / "ablated", "--video-ablation")
    print(json.dumps(dict(model=args.model, steps=args.steps, lr=args.lr, train_vision=args.train_vision,
                          real=real, ablated=ablated)))


if __name__ == "__main__":
    main()
