"""`make demo`: the paper's pipeline on the embedded perception base, on a laptop CPU.

1. write the synthetic long-video benchmark (real mp4s + jsonl), its training questions split
   1/3 for SFT and 2/3 for RL as in the paper                           minirl/synth.py
2. start from the shipped perception base (models/base: a tiny Qwen2.5-VL pretrained to caption
   the benchmark's videos, see `--pretrain-base`) and evaluate it      eval.py
3. CoT-SFT with `torchrun --nproc_per_node 2` (sp = 2)                 train_sft.py
4. evaluate (with the video-ablation control), then curate the RL questions: keep those the SFT
   model answers right sometimes but not always                        eval.py --curate
5. GRPO on the curated questions with torchrun (sp = 2)                train_rl.py
6. evaluate with the control, the frame-scaling table, plots (PNG)

Every step is a command printed before it runs, so any of them can be re-run by hand.
`--quick` shrinks everything to a smoke test of the pipeline (it does not learn).
`--pretrain-base DIR` runs the recipe that made models/base instead (see BASE_RECIPE).
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BASE = ROOT / "models" / "base"

# Sizes and steps of the demo, chosen to finish in about 20 minutes on a 2-core CPU.
RECIPE = dict(
    synth=dict(train=1500, test=500, frames=128, size=56, per_video=4),
    frames=32,  # frames sampled per video for training and the main evaluation
    frame_scaling=[8, 16, 32, 64],
    sft=dict(steps=150, batch_size=16, micro_batch_size=8, lr=1e-3, warmup_steps=10),
    curate=dict(n=8, temperature=1.0),
    rl=dict(steps=30, batch_size=8, n=8, lr=2e-5, max_new_tokens=64, temperature=1.0, eval_every=10,
            eval_examples=100),
    eval_max_new_tokens=64,
)
QUICK = dict(
    synth=dict(train=24, test=8, frames=64, size=56, per_video=2),
    frames=8,
    frame_scaling=[4, 8],
    sft=dict(steps=2, batch_size=4, micro_batch_size=2, lr=1e-3, warmup_steps=1),
    curate=dict(n=2, temperature=1.0),
    rl=dict(steps=2, batch_size=2, n=2, lr=1e-4, max_new_tokens=8, temperature=1.0, eval_every=1, eval_examples=4),
    eval_max_new_tokens=8,
)
# How models/base was made (`python demo.py --pretrain-base models/base`): a tiny Qwen2.5-VL with
# a small M-RoPE theta (so height and width get usable rotary frequencies), its vision tower
# trained, taught by train_sft.py to caption freshly generated benchmark videos: every event the
# sampled frames show, in time order, with its place. No benchmark question is in this data.
BASE_RECIPE = dict(
    synth=dict(train=4000, test=100, frames=128, size=56, captions=32),
    rope_theta=3.0,
    sft=dict(steps=1500, batch_size=16, micro_batch_size=16, lr=3e-3, warmup_steps=20),
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


def evaluate(model: Path, data: Path, frames: int, out: Path, recipe: dict, ablation: bool = False) -> dict:
    """The held-out table of `model` at `frames` frames (cached in out/); ablation: wrong videos."""
    tag = model.parent.name if model.name == "hf" else model.name
    table_path = out / f"eval-{tag}-{frames}f{'-ablated' if ablation else ''}.json"
    if not table_path.exists():
        preds = table_path.with_suffix(".predictions.jsonl")
        preds.unlink(missing_ok=True)
        run([sys.executable, "eval.py", "--model", model, "--data", data / "test.jsonl", "--frames", frames,
             "--max-new-tokens", recipe["eval_max_new_tokens"], "--batch-size", 16, "--out", preds,
             "--json", table_path, *(["--video-ablation"] if ablation else [])],
            out / "logs" / f"{table_path.stem}.log")
    return json.loads(table_path.read_text())


def torchrun(script: str, args: dict, log: Path):
    flat = [x for k, v in args.items() for x in (f"--{k}", v)]
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", 2, script, *flat], log)


def split_train(data: Path) -> tuple[Path, Path]:
    """The paper's split: the first third of the training videos for SFT, the rest for RL.

    Split by video, not by question, so no RL question's video was seen in SFT.
    """
    rows = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines() if x.strip()]
    videos = sorted({r["videos"][0] for r in rows})
    sft_videos = set(videos[: len(videos) // 3])
    paths = data / "train_sft.jsonl", data / "train_rl.jsonl"
    for path, keep in zip(paths, (True, False), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows if (r["videos"][0] in sft_videos) == keep))
    return paths


def sft_args(recipe: dict, model: Path, train: Path, frames: int, out: Path, **extra) -> dict:
    s = recipe["sft"]
    return {"model.path": model, "data.train": train, "data.frames": frames, "parallel.sp": 2,
            "run.tensorboard": "false", "optim.steps": s["steps"], "optim.batch_size": s["batch_size"],
            "optim.micro_batch_size": s["micro_batch_size"], "optim.lr": s["lr"],
            "optim.warmup_steps": s["warmup_steps"], "run.out": out, **extra}


def pretrain_base(dest: Path, work: Path):
    """Rebuild models/base: captioning data (dense and sparse videos, mixed), a random tiny model
    with BASE_RECIPE's rope_theta, then train_sft.py on the captions with the vision tower trained."""
    b = BASE_RECIPE
    (work / "logs").mkdir(parents=True, exist_ok=True)
    data, init = work / "data", work / "init"
    s = b["synth"]
    for kind, seed in (("dense", 1000), ("sparse", 1001)):  # the curriculum's two ends, one dataset
        if not (data / kind / "test.jsonl").exists():
            run([sys.executable, "-m", "minirl.synth", "--out", data / kind, "--train", s["train"] // 2,
                 "--test", s["test"], "--frames", s["frames"], "--size", s["size"], "--captions", s["captions"],
                 "--seed", seed, *(["--dense"] if kind == "dense" else [])], work / f"logs/synth-{kind}.log")
    for split, kinds in (("train", ("dense", "sparse")), ("test", ("sparse",))):
        with open(data / f"{split}.jsonl", "w") as f:
            for kind in kinds:
                for line in (data / kind / f"{split}.jsonl").read_text().splitlines():
                    row = json.loads(line)
                    row["videos"] = [f"{kind}/{v}" for v in row["videos"]]
                    f.write(json.dumps(row) + "\n")
    if not (init / "config.json").exists():
        run([sys.executable, "-m", "minirl.tiny", "--out", init, "--rope-theta", b["rope_theta"]],
            work / "logs/model.log")
    torchrun("train_sft.py", sft_args(b, init, data / "train.jsonl", s["captions"], work / "sft",
                                      **{"model.train_vision": "true", "data.test": data / "test.jsonl",
                                         "eval.max_new_tokens": 96, "run.save_every": 250}),
             work / "logs/sft.log")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(work / "sft" / "hf", dest)
    print(f"wrote the perception base to {dest}")


def plot(out: Path):
    """Loss per SFT step; reward per RL step and held-out accuracy during RL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft = [json.loads(x) for x in (out / "sft" / "metrics.jsonl").read_text().splitlines()]
    rl = [json.loads(x) for x in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot([r["step"] for r in sft if "sft/loss" in r], [r["sft/loss"] for r in sft if "sft/loss" in r])
    ax[0].set(title="CoT-SFT", xlabel="step", ylabel="loss (assistant tokens)")
    for key in ("reward/overall", "reward/accuracy", "eval/accuracy"):
        points = [(r["step"], r[key]) for r in rl if key in r]
        if points:
            ax[1].plot(*zip(*points, strict=True), marker="o" if key.startswith("eval") else None,
                       label="held-out accuracy" if key.startswith("eval") else key)
    ax[1].set(title="GRPO", xlabel="step")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    return out / "curves.png"


def print_tables(tables: dict, frames: int):
    categories = sorted(next(iter(tables.values()))["categories"])
    print(f"\nHeld-out accuracy at {frames} frames "
          f"({next(iter(tables.values()))['overall']['questions']} questions)")
    print(f"{'model':<26}" + "".join(f"{c:>18}" for c in [*categories, "overall", "format"]))
    for name, t in tables.items():
        cells = [t["categories"].get(c, {}).get("accuracy", 0.0) for c in categories]
        cells += [t["overall"]["accuracy"], t["overall"]["format_accuracy"]]
        print(f"{name:<26}" + "".join(f"{100 * v:>17.1f}%" for v in cells))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (pipeline smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="seed of SFT and RL (the benchmark is fixed)")
    parser.add_argument("--base", default=str(BASE), help="the perception base checkpoint to start from")
    parser.add_argument("--pretrain-base", default=None, metavar="DIR",
                        help="instead of the demo, rebuild the perception base into DIR (BASE_RECIPE)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    start = time.time()
    if args.pretrain_base:
        pretrain_base(Path(args.pretrain_base).resolve(), out)
        print(f"({(time.time() - start) / 60:.1f} min)")
        return
    recipe = QUICK if args.quick else RECIPE
    data, base, py = out / "data", Path(args.base).resolve(), sys.executable
    if not (base / "config.json").exists():
        raise SystemExit(f"no perception base at {base}: rebuild it with `python demo.py --pretrain-base {base}`")

    if not (data / "test.jsonl").exists():
        s = recipe["synth"]
        run([py, "-m", "minirl.synth", "--out", data, "--train", s["train"], "--test", s["test"],
             "--frames", s["frames"], "--size", s["size"], "--per-video", s["per_video"], "--no-timestamps"],
            out / "logs/synth.log")
    sft_train, rl_train = split_train(data)
    frames, seed = recipe["frames"], {"run.seed": args.seed}

    tables = {"base (captioning only)": evaluate(base, data, frames, out, recipe)}
    if not (out / "sft/hf/config.json").exists():
        torchrun("train_sft.py", sft_args(recipe, base, sft_train, frames, out / "sft", **seed), out / "logs/sft.log")
    tables["SFT"] = evaluate(out / "sft/hf", data, frames, out, recipe)
    tables["SFT, video ablated"] = evaluate(out / "sft/hf", data, frames, out, recipe, ablation=True)

    curated = data / "train_rl_curated.jsonl"
    if not curated.exists():
        c = recipe["curate"]
        run([py, "eval.py", "--model", out / "sft/hf", "--data", rl_train, "--frames", frames,
             "--n", c["n"], "--temperature", c["temperature"], "--max-new-tokens", recipe["eval_max_new_tokens"],
             "--batch-size", 16, "--out", out / "curate.predictions.jsonl", "--curate", curated],
            out / "logs/curate.log")
    kept = sum(1 for x in curated.read_text().splitlines() if x.strip())
    if not (out / "rl/hf/config.json").exists():
        r = recipe["rl"]
        torchrun("train_rl.py", {"model.path": out / "sft/hf", "data.train": curated, "data.frames": frames,
                                 "data.test": data / "test.jsonl", "eval.every": r["eval_every"],
                                 "eval.max_examples": r["eval_examples"],
                                 "eval.max_new_tokens": recipe["eval_max_new_tokens"], "parallel.sp": 2,
                                 "run.tensorboard": "false", "optim.steps": r["steps"],
                                 "optim.batch_size": r["batch_size"], "rollout.n": r["n"], "optim.lr": r["lr"],
                                 "rollout.max_new_tokens": r["max_new_tokens"],
                                 "rollout.temperature": r["temperature"], "run.out": out / "rl", **seed},
                 out / "logs/rl.log")
    tables["SFT + RL"] = evaluate(out / "rl/hf", data, frames, out, recipe)
    tables["SFT + RL, video ablated"] = evaluate(out / "rl/hf", data, frames, out, recipe, ablation=True)

    scaling = {f: evaluate(out / "rl/hf", data, f, out, recipe)["overall"]["accuracy"]
               for f in recipe["frame_scaling"]}
    curves = plot(out)
    minutes = (time.time() - start) / 60
    summary = {"tables": tables, "frame_scaling": scaling, "curated_rl_questions": kept,
               "rl_questions": sum(1 for x in rl_train.read_text().splitlines() if x.strip()), "minutes": minutes}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print_tables(tables, frames)
    print(f"\nRL data: kept {kept} of {summary['rl_questions']} questions (0 < SFT pass rate < 1, "
          f"{recipe['curate']['n']} samples each)")
    print("Frame scaling (SFT + RL): " + "  ".join(f"{f} frames {100 * a:.1f}%" for f, a in scaling.items()))
    print(f"\nwritten: {out}/summary.json, plots {curves}, checkpoints {out}/sft and {out}/rl, logs {out}/logs "
          f"({minutes:.1f} min)")


if __name__ == "__main__":
    main()
