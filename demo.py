"""`make demo`: the paper's pipeline on the embedded perception base, on a laptop CPU.

1. write the synthetic long-video benchmark (real mp4s + jsonl; `--benchmark reasoning` by default:
   open answers derived from several seen facts), its training questions split 1/3 for SFT and 2/3
   for RL as in the paper                                               minirl/synth.py
2. start from the perception base models/base when there is one (a tiny Qwen2.5-VL pretrained to
   caption synthetic videos; `make base` rebuilds it with pretrain_base.py), else from a random tiny
   model; evaluate it
3. CoT-SFT with `torchrun --nproc_per_node 2` (sp = 2)                 train_sft.py
4. evaluate (with the video-ablation control), then curate the RL questions: keep those the SFT
   model answers right sometimes but not always, and more often with their video than with
   another's; measure the headroom GRPO can sharpen toward                evaluate.py --curate
5. GRPO on the curated questions, and the same run with shuffled rewards (the random-reward
   control), side by side, one process each                            train_rl.py
6. evaluate both, with the video ablation, the frame-scaling table, plots (PNG)

Every step is a command printed before it runs, so any of them can be re-run by hand.
`--quick` shrinks everything to a smoke test of the pipeline (it does not learn).
What it runs and shows, with its results: docs/demo.md.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from minirl import reasoning

ROOT = Path(__file__).resolve().parent
BASE = ROOT / "models" / "base"

# Sizes and steps of each tier's demo, chosen to finish in 20 minutes on a 2-core CPU.
# reasoning: half an SFT, so the SFT model still slips in its derivations and GRPO has headroom; rollouts at
# temperature 0.7, where a sample is right about as often as greedy decoding (at 1.0 a 110-token chain
# gathers sampling slips that greedy decoding never makes); KL 0.2 to the SFT model, which holds the caption
# while the reward fixes the derivation (+5.7 over two RL seeds, against +2.3 over three with KL 0.05;
# docs/research-log.md, 2026-12-05).
TIER = dict(  # what both tiers share
    synth=dict(train=9000, test=500, frames=128, size=56, per_video=4),
    frames=32,  # frames sampled per video for training and the main evaluation
    frame_scaling=[8, 32, 64],
    base_eval_examples=100,
)
RECIPES = {
    "reasoning": dict(
        **TIER,
        sft=dict(steps=500, batch_size=16, micro_batch_size=16, lr=1e-3, warmup_steps=10, frames_mix="32,64"),
        curate=dict(n=8, temperature=0.7, limit=600, ablation=True),
        rl=dict(steps=150, batch_size=8, n=8, lr=1e-4, kl_coef=0.2, micro_batch_size=64,
                max_new_tokens=reasoning.NEW_TOKENS, temperature=0.7, eval_every=50, eval_examples=100),
        eval_max_new_tokens=reasoning.NEW_TOKENS,
    ),
    "easy": dict(
        **TIER,
        sft=dict(steps=1000, batch_size=16, micro_batch_size=16, lr=1e-3, warmup_steps=10),
        curate=dict(n=8, temperature=1.0, limit=800, ablation=False),  # RL draws 960 of the ~500 it keeps
        rl=dict(steps=120, batch_size=8, n=8, lr=1e-4, kl_coef=0.0, micro_batch_size=64, max_new_tokens=64,
                temperature=1.0, eval_every=20, eval_examples=100),
        eval_max_new_tokens=64,
    ),
}
RECIPES["full"] = RECIPES["easy"]  # two templates per category, options shuffled: not learned yet (docs/demo.md)
QUICK = dict(
    synth=dict(train=24, test=8, frames=64, size=56, per_video=4),
    frames=8,
    frame_scaling=[4, 8],
    sft=dict(steps=2, batch_size=4, micro_batch_size=2, lr=1e-3, warmup_steps=1),
    curate=dict(n=2, temperature=1.0, limit=8, ablation=True),
    rl=dict(steps=2, batch_size=2, n=2, lr=1e-4, kl_coef=0.05, micro_batch_size=2, max_new_tokens=8, temperature=1.0,
            eval_every=1, eval_examples=4),
    eval_max_new_tokens=8,
    base_eval_examples=4,
)


def run(cmd: list, log: Path, threads: int = 1):
    """Run one pipeline command, echoing it, with its output kept in `log`. threads: 1 per torchrun rank,
    2 for a single-process command (the two cores)."""
    run_side_by_side([(cmd, log)], threads)


def run_side_by_side(jobs: list[tuple[list, Path]], threads: int = 1):
    """Run (command, log) jobs at once, each with `threads` threads; if one fails, stop the others.

    GRPO and its control run this way, one process and one core each: two single-process runs keep both
    cores busy through the sampler's sequential decode, where sp = 2 ranks wait on each other: the pair
    takes 3.2 s a step, 1.6 s a run, against 2.0 s for one sp = 2 run after the other.
    """
    start, pending = time.time(), {}
    for cmd, log in jobs:
        print(f"\n$ {shlex.join(str(c) for c in cmd)}", flush=True)
        with open(log, "w") as f:  # the child keeps its own copy of the file
            proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        pending[proc] = log
    try:
        while pending:
            for proc, log in list(pending.items()):
                if proc.poll() is None:
                    continue
                del pending[proc]
                if proc.returncode:
                    print(log.read_text()[-4000:], file=sys.stderr)
                    raise SystemExit(f"failed ({proc.returncode}): see {log}")
                print(f"  done in {time.time() - start:.0f}s (log: {log})", flush=True)
            time.sleep(0.2)
    finally:  # a failed job or an interrupt stops the rest
        for proc in pending:
            proc.kill()
            proc.wait()


def evaluate(out: Path, data: Path, recipe: dict, *runs: tuple) -> list[dict]:
    """The held-out tables of `runs`, each (model, frames, ablation, limit), cached in out/: ablation gives
    every question another question's video, limit > 0 keeps the first `limit` questions.

    The missing ones run side by side, one core each (one alone gets both): greedy decoding gives the same
    answers at any thread count, and two single-thread evaluations take 37 s where one after the other
    at two threads take 63.
    """
    jobs, paths = [], []
    for model, frames, ablation, limit in runs:
        tag = model.parent.name if model.name == "hf" else model.name
        table_path = out / f"eval-{tag}-{frames}f{'-ablated' if ablation else ''}.json"
        paths.append(table_path)
        if not table_path.exists():
            preds = table_path.with_suffix(".predictions.jsonl")
            preds.unlink(missing_ok=True)
            jobs.append(([sys.executable, "evaluate.py", "--model", model, "--data", data / "test.jsonl",
                          "--frames", frames, "--max-new-tokens", recipe["eval_max_new_tokens"], "--batch-size", 32,
                          "--out", preds, "--json", table_path, *(["--video-ablation"] if ablation else []),
                          *(["--limit", limit] if limit else [])], out / "logs" / f"{table_path.stem}.log"))
    if jobs:
        run_side_by_side(jobs, threads=2 if len(jobs) == 1 else 1)
    return [json.loads(path.read_text()) for path in paths]


def flags(args: dict) -> list:
    return [x for k, v in args.items() for x in (f"--{k}", v)]


def torchrun(script: str, args: dict, log: Path):
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", 2, script, *flags(args)], log)


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


def sft_args(sft: dict, model: Path, train: Path, frames: int, out: Path, **extra) -> dict:
    """train_sft.py's arguments for a recipe's `sft` (frames_mix optional: one frame count without it)."""
    mix = {"data.frames_mix": sft["frames_mix"]} if sft.get("frames_mix") else {}
    return {"model.path": model, "data.train": train, "data.frames": frames, **mix, "parallel.sp": 2,
            "run.tensorboard": "false", "optim.steps": sft["steps"], "optim.batch_size": sft["batch_size"],
            "optim.micro_batch_size": sft["micro_batch_size"], "optim.lr": sft["lr"],
            "optim.warmup_steps": sft["warmup_steps"], "data.frame_cache_mb": 512, "run.out": out, **extra}


def rl_args(rl: dict, model: Path, train: Path, data: Path, frames: int, eval_tokens: int, out: Path,
            **extra) -> dict:
    return {"model.path": model, "data.train": train, "data.frames": frames, "data.test": data / "test.jsonl",
            "eval.every": rl["eval_every"], "eval.max_examples": rl["eval_examples"],
            "eval.max_new_tokens": eval_tokens, "eval.batch_size": 32, "parallel.sp": 1, "run.tensorboard": "false",
            "optim.steps": rl["steps"], "optim.batch_size": rl["batch_size"],
            "optim.micro_batch_size": rl["micro_batch_size"], "rollout.n": rl["n"], "optim.lr": rl["lr"],
            "algo.kl_coef": rl["kl_coef"], "rollout.max_new_tokens": rl["max_new_tokens"],
            "rollout.temperature": rl["temperature"], "run.out": out, **extra}


def plot(out: Path, frames: int, rl_eval_examples: int):
    """Loss per SFT step; for GRPO and its random-reward control, the training reward (10-step mean)
    and held-out accuracy during RL, from the SFT model's accuracy on the same first questions (step 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def metrics(run):
        return [json.loads(x) for x in (out / run / "metrics.jsonl").read_text().splitlines()]

    sft = metrics("sft")
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot([r["step"] for r in sft if "sft/loss" in r], [r["sft/loss"] for r in sft if "sft/loss" in r])
    ax[0].set(title="CoT-SFT", xlabel="step", ylabel="loss (assistant tokens)", yscale="log")
    first = [json.loads(x) for x in (out / f"eval-sft-{frames}f.predictions.jsonl").read_text().splitlines()]
    first = first[:rl_eval_examples]
    start = (0, sum(r["accuracy"][0] for r in first) / len(first))
    for run, name, color in (("rl", "GRPO", "C0"), ("control", "random-reward control", "C3")):
        rl = metrics(run)
        steps, reward = zip(*[(r["step"], r["reward/accuracy"]) for r in rl if "reward/accuracy" in r], strict=True)
        mean = [sum(reward[max(0, i - 9):i + 1]) / len(reward[max(0, i - 9):i + 1]) for i in range(len(reward))]
        ax[1].plot(steps, mean, color=color, alpha=0.5, label=f"{name}: training reward, 10-step mean")
        held_out = [start] + [(r["step"], r["eval/accuracy"]) for r in rl if "eval/accuracy" in r]
        ax[1].plot(*zip(*held_out, strict=True), marker="o", color=color,
                   label=f"{name}: held-out accuracy (first {len(first)} questions)")
    ax[1].set(title="GRPO", xlabel="step", ylim=(0, 1))
    ax[1].legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    return out / "curves.png"


def print_tables(tables: dict, frames: int):
    categories = sorted(tables["SFT"]["categories"])
    print(f"\nHeld-out accuracy at {frames} frames ({tables['SFT']['overall']['questions']} questions)")
    print(f"{'model':<34}" + "".join(f"{c:>18}" for c in [*categories, "overall", "format"]))
    for name, t in tables.items():
        cells = [t["categories"].get(c, {}).get("accuracy", 0.0) for c in categories]
        cells += [t["overall"]["accuracy"], t["overall"]["format_accuracy"]]
        print(f"{name:<34}" + "".join(f"{100 * v:>17.1f}%" for v in cells))


def print_headroom(path: Path):
    """The SFT model's samples on the RL questions: what GRPO can sharpen toward, and how much of it is reading."""
    h = json.loads(path.read_text())
    print(f"\nHeadroom of the SFT model on the RL questions ({h['n']} samples each; signal = pass@n real - ablated)")
    print(f"{'category':<20}{'sample acc.':>12}{'pass@n':>9}{'maj@n':>9}{'pass@n abl.':>12}{'signal':>9}")
    for name, e in [*sorted(h["categories"].items()), ("overall", h["overall"])]:
        real, ablated = e["real"], e.get("ablated", {})
        cells = [real["accuracy"], real["pass_at_n"], real["majority_at_n"], ablated.get("pass_at_n", float("nan")),
                 e.get("pass_at_n_real_minus_ablated", float("nan"))]
        print(f"{name:<20}" + "".join(f"{100 * v:>{w}.1f}" for v, w in zip(cells, (12, 9, 9, 12, 9), strict=True)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (pipeline smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="seed of SFT and RL (the benchmark is fixed)")
    parser.add_argument("--benchmark", choices=("reasoning", "easy", "full"), default="reasoning",
                        help="reasoning: open answers derived from several seen facts (synth --reasoning); easy: "
                             "one seen fact per question, four fixed options (synth --easy); full: two templates "
                             "per category, options shuffled")
    parser.add_argument("--base", default=str(BASE), help="the perception base checkpoint to start from")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    start = time.time()
    recipe = QUICK if args.quick else RECIPES[args.benchmark]
    data, base, py = out / "data", Path(args.base).resolve(), sys.executable

    if not (data / "test.jsonl").exists():
        s = recipe["synth"]
        run([py, "-m", "minirl.synth", "--out", data, "--train", s["train"], "--test", s["test"],
             "--frames", s["frames"], "--size", s["size"], "--per-video", s["per_video"], "--no-timestamps",
             *{"easy": ["--easy"], "full": [],
               "reasoning": ["--reasoning", "--seen-at", recipe["frames"]]}[args.benchmark]],
            out / "logs/synth.log", threads=2)
    base_name = "perception base"
    if not (base / "config.json").exists():
        # No perception base in this checkout (docs/demo.md; `make base` rebuilds it): start from a
        # random tiny Qwen2.5-VL, as a user without a pretrained checkpoint would.
        print(f"no perception base at {base}: starting from a random tiny model (see docs/demo.md)")
        base, base_name = out / "model", "random init"
        if not (base / "config.json").exists():
            run([py, "-m", "minirl.tiny", "--out", base, "--corpus", data / "train.jsonl"], out / "logs/model.log",
                threads=2)
    sft_train, rl_train = split_train(data)
    frames, seed = recipe["frames"], {"run.seed": args.seed}

    # The starting point needs fewer questions: the base never answers (it captions until the token limit)
    n = recipe["base_eval_examples"]
    tables = {f"{base_name} ({n} questions)": evaluate(out, data, recipe, (base, frames, False, n))[0]}
    if not (out / "sft/hf/config.json").exists():
        torchrun("train_sft.py", sft_args(recipe["sft"], base, sft_train, frames, out / "sft", **seed),
                 out / "logs/sft.log")
    tables["SFT"], tables["SFT, video ablated"] = evaluate(out, data, recipe, (out / "sft/hf", frames, False, 0),
                                                           (out / "sft/hf", frames, True, 0))

    curated, headroom = data / "train_rl_curated.jsonl", out / "headroom.json"
    c = recipe["curate"]
    if not curated.exists():
        run([py, "evaluate.py", "--model", out / "sft/hf", "--data", rl_train, "--frames", frames,
             "--n", c["n"], "--temperature", c["temperature"], "--max-new-tokens", recipe["eval_max_new_tokens"],
             "--batch-size", 32, "--limit", c["limit"], "--out", out / "curate.predictions.jsonl",
             "--curate", curated, "--headroom", headroom, *(["--curate-ablation"] if c["ablation"] else [])],
            out / "logs/curate.log", threads=2)
    kept = sum(1 for x in curated.read_text().splitlines() if x.strip())
    r = recipe["rl"]
    rl_data = curated
    if kept < r["batch_size"]:  # said, never hidden: too few questions with diverse answers to filter by
        print(f"curation kept {kept} questions, fewer than one RL batch: RL uses the whole RL split")
        rl_data = rl_train
    # GRPO, and the same run with each step's rewards shuffled: what GRPO gains over the control is what
    # the reward taught (the update alone, its format and its sampling can look like learning).
    jobs = [([py, "train_rl.py", *flags(rl_args(r, out / "sft/hf", rl_data, data, frames, recipe["eval_max_new_tokens"],
                                                 out / name, **seed, **extra))], out / f"logs/{name}.log")
            for name, extra in (("rl", {}), ("control", {"algo.shuffle_rewards": "true"}))
            if not (out / name / "hf/config.json").exists()]
    run_side_by_side(jobs)
    rl_frames = sorted({frames, *recipe["frame_scaling"]})
    control_table, *rl_tables = evaluate(out, data, recipe, (out / "control/hf", frames, False, 0),
                                         *[(out / "rl/hf", f, False, 0) for f in rl_frames])
    rl_by_frames = dict(zip(rl_frames, rl_tables, strict=True))
    tables["SFT + GRPO"], tables["SFT + random-reward control"] = rl_by_frames[frames], control_table
    scaling = {f: rl_by_frames[f]["overall"]["accuracy"] for f in recipe["frame_scaling"]}
    curves = plot(out, frames, r["eval_examples"])
    minutes = (time.time() - start) / 60
    summary = {"tables": tables, "frame_scaling": scaling, "curated_rl_questions": kept,
               "rl_questions": sum(1 for x in rl_train.read_text().splitlines() if x.strip()), "minutes": minutes}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print_tables(tables, frames)
    sft, grpo = tables["SFT"]["overall"]["accuracy"], tables["SFT + GRPO"]["overall"]["accuracy"]
    control = tables["SFT + random-reward control"]["overall"]["accuracy"]
    print(f"\nGRPO over SFT: {100 * (grpo - sft):+.1f} points; the random-reward control: {100 * (control - sft):+.1f}")
    if headroom.exists():
        print_headroom(headroom)
    rule = "0 < SFT pass rate < 1" + (", and above the ablated video's" if c["ablation"] else "")
    print(f"RL data: kept {kept} of the first {c['limit']} of {summary['rl_questions']} RL questions ({rule}, "
          f"{c['n']} samples at temperature {c['temperature']})")
    print("Frame scaling (SFT + GRPO): " + "  ".join(f"{f} frames {100 * a:.1f}%" for f, a in scaling.items()))
    print(f"\nwritten: {out}/summary.json, plots {curves}, checkpoints {out}/sft, {out}/rl and {out}/control, "
          f"logs {out}/logs ({minutes:.1f} min)")


if __name__ == "__main__":
    main()
