"""Per category, over a GRPO run: the training reward and the category's share of the summed |advantage|.

    python studies/rl_categories.py METRICS.jsonl [--window 10]

Reads train_rl.py's metrics.jsonl (`reward/accuracy/<category>`, `advantage/share/<category>`) and
prints the means over consecutive windows of steps, so one can see which questions push the update
and whose reward moves (README, "Why GRPO does not add here").
"""

import argparse
import json
import statistics


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("metrics")
    parser.add_argument("--window", type=int, default=10)
    args = parser.parse_args()
    rows = [r for r in map(json.loads, open(args.metrics)) if "reward/accuracy" in r]
    cats = sorted({k.split("/")[-1] for r in rows for k in r if k.startswith("advantage/share/")})
    print(f"{'steps':>9}  " + "  ".join(f"{c[:13]:>13} acc/share" for c in cats))
    for start in range(0, len(rows), args.window):
        part = rows[start:start + args.window]
        cells = []
        for c in cats:
            acc = [r[f"reward/accuracy/{c}"] for r in part if f"reward/accuracy/{c}" in r]
            share = [r[f"advantage/share/{c}"] for r in part if f"advantage/share/{c}" in r]
            cells.append(f"{statistics.fmean(acc):>18.2f}/{statistics.fmean(share):.2f}" if acc else f"{'-':>23}")
        print(f"{part[0]['step']:>4}-{part[-1]['step']:<4}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
