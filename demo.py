"""`make demo`: the whole pipeline on the embedded default, on a laptop CPU.

1. write the synthetic long-video benchmark (real mp4s + jsonl)       minirl/synth.py
2. create the tiny Qwen2.5-VL (random weights, tokenizer trained here) minirl/tiny.py
3. evaluate the random init on the held-out questions                  eval.py
4. CoT-SFT with `torchrun --nproc_per_node 2` (sp = 2)                 train_sft.py
5. evaluate, then GRPO from the SFT export with torchrun (sp = 2)      train_rl.py
6. evaluate, the frame-scaling table of the final model, plots (PNG)

Every step is a command printed before it runs, so any of them can be re-run by hand.
`--quick` shrinks everything to a smoke test of the pipeline (it does not learn).
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# Sizes and steps of the demo, chosen to finish in about 20 minutes on a 2-core CPU. They do not make
# the tiny model read the video: see README, "What the demo shows", for what it learns and what not.
RECIPE = dict(
    synth=dict(train=2000, test=500, frames=128, size=56, per_video=4),
    frames=32,  # frames sampled per video for training and the main evaluation
    frame_scaling=[8, 16, 32, 64],
    sft=dict(steps=300, batch_size=16, micro_batch_size=8, lr=3e-3, warmup_steps=20),
    rl=dict(steps=20, batch_size=8, n=8, lr=1e-4, max_new_tokens=64, temperature=1.0),
    eval_max_new_tokens=80,
)
QUICK = dict(
    synth=dict(train=16, test=8, frames=64, size=56, per_video=2),
    frames=8,
    frame_scaling=[4, 8],
    sft=dict(steps=2, batch_size=4, micro_batch_size=2, lr=1e-3, warmup_steps=1),
    rl=dict(steps=2, batch_size=2, n=2, lr=1e-4, max_new_tokens=8, temperature=1.0),
    eval_max_new_tokens=8,
)


def run(cmd: list, log: Path):
    """Run one pipeline command, echoing it, with its output kept in `log`."""
    print(f"\n$ {shlex.join(str(c) for c in cmd)}", flush=True)
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"failed ({proc.returncode}): see {log}")
    print(f"  done in {time.time() - start:.0f}s (log: {log})", flush=True)


def evaluate(model: Path, data: Path, frames: int, out: Path, recipe: dict) -> dict:
    table_path = out / f"eval-{model.parent.name if model.name == 'hf' else model.name}-{frames}f.json"
    if not table_path.exists():
        preds = table_path.with_suffix(".predictions.jsonl")
        preds.unlink(missing_ok=True)
        run([sys.executable, "eval.py", "--model", model, "--data", data / "test.jsonl", "--frames", frames,
             "--max-new-tokens", recipe["eval_max_new_tokens"], "--batch-size", 16, "--out", preds,
             "--json", table_path], out / "logs" / f"{table_path.stem}.log")
    return json.loads(table_path.read_text())


def torchrun(script: str, args: dict, log: Path):
    flat = [x for k, v in args.items() for x in (f"--{k}", v)]
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", 2, script, *flat], log)


def plot(out: Path):
    """reward and accuracy per RL step, loss per SFT step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft = [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    rl = [json.loads(x) for x in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rl if "reward/overall" in r]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot([r["step"] for r in sft if "sft/loss" in r], [r["sft/loss"] for r in sft if "sft/loss" in r])
    ax[0].set(title="CoT-SFT", xlabel="step", ylabel="loss (assistant tokens)")
    for key in ("reward/overall", "reward/accuracy", "reward/format"):
        ax[1].plot([r["step"] for r in rl], [r[key] for r in rl], label=key)
    ax[1].set(title="GRPO (training rollouts)", xlabel="step")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    return out / "curves.png"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (pipeline smoke test)")
    args = parser.parse_args()
    recipe = QUICK if args.quick else RECIPE
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    start = time.time()
    data, model = out / "data", out / "model"
    py = sys.executable

    if not (data / "test.jsonl").exists():
        s = recipe["synth"]
        run([py, "-m", "minirl.synth", "--out", data, "--train", s["train"], "--test", s["test"],
             "--frames", s["frames"], "--size", s["size"], "--per-video", s["per_video"]], out / "logs/synth.log")
    if not (model / "config.json").exists():
        run([py, "-m", "minirl.tiny", "--out", model, "--corpus", data / "train.jsonl"], out / "logs/model.log")

    common = {"data.train": data / "train.jsonl", "data.frames": recipe["frames"], "parallel.sp": 2,
              "run.tensorboard": "false"}
    tables = {"random init": evaluate(model, data, recipe["frames"], out, recipe)}
    if not (out / "sft/hf/config.json").exists():
        s = recipe["sft"]
        torchrun("train_sft.py", {**common, "model.path": model, "optim.steps": s["steps"],
                                  "optim.batch_size": s["batch_size"], "optim.micro_batch_size": s["micro_batch_size"],
                                  "optim.lr": s["lr"], "optim.warmup_steps": s["warmup_steps"],
                                  "run.out": out / "sft"}, out / "logs/sft.log")
    tables["SFT"] = evaluate(out / "sft/hf", data, recipe["frames"], out, recipe)
    if not (out / "rl/hf/config.json").exists():
        r = recipe["rl"]
        torchrun("train_rl.py", {**common, "model.path": out / "sft/hf", "optim.steps": r["steps"],
                                 "optim.batch_size": r["batch_size"], "rollout.n": r["n"], "optim.lr": r["lr"],
                                 "rollout.max_new_tokens": r["max_new_tokens"],
                                 "rollout.temperature": r["temperature"], "run.out": out / "rl"},
                 out / "logs/rl.log")
    tables["SFT + RL"] = evaluate(out / "rl/hf", data, recipe["frames"], out, recipe)

    scaling = {f: evaluate(out / "rl/hf", data, f, out, recipe)["overall"]["accuracy"]
               for f in recipe["frame_scaling"]}
    curves = plot(out)
    summary = {"tables": tables, "frame_scaling": scaling, "minutes": (time.time() - start) / 60}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    categories = sorted(tables["SFT"]["categories"])
    print(f"\nHeld-out accuracy at {recipe['frames']} frames ({tables['SFT']['overall']['questions']} questions)")
    print(f"{'model':<14}" + "".join(f"{c:>18}" for c in [*categories, "overall", "format"]))
    for name, t in tables.items():
        cells = [t["categories"].get(c, {}).get("accuracy", 0.0) for c in categories]
        cells += [t["overall"]["accuracy"], t["overall"]["format_accuracy"]]
        print(f"{name:<14}" + "".join(f"{100 * v:>17.1f}%" for v in cells))
    print("\nFrame scaling (SFT + RL): " + "  ".join(f"{f} frames {100 * a:.1f}%" for f, a in scaling.items()))
    print(f"\nwritten: {out}/summary.json, plots {curves}, checkpoints {out}/sft and {out}/rl, logs {out}/logs "
          f"({summary['minutes']:.1f} min)")


if __name__ == "__main__":
    main()
