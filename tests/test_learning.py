"""Learning regressions: the perception-base recipe (demo.BASE_RECIPE) trains.

A short run of the recipe's first stage (dense captioning videos, a random tiny model with the
recipe's rope_theta, vision tower trained, through train_sft.py) must lower its loss.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from demo import BASE_RECIPE
from minirl import synth
from minirl.tiny import build_tiny_model, default_corpus

ROOT = Path(__file__).resolve().parent.parent


def test_base_recipe_lowers_its_loss(tmp_path):
    stage = BASE_RECIPE["stages"][0]
    synth.generate(tmp_path / "data", train=16, test=2, frames=64, size=56, captions=16, dense=True)
    model = build_tiny_model(tmp_path / "init", default_corpus(), rope_theta=BASE_RECIPE["rope_theta"])
    cmd = [sys.executable, str(ROOT / "train_sft.py"), "--model.path", str(model),
           "--data.train", str(tmp_path / "data/train.jsonl"), "--data.frames", "16", "--optim.steps", "12",
           "--optim.batch_size", "8", "--optim.micro_batch_size", "8", "--optim.lr", str(stage["lr"]),
           "--optim.warmup_steps", "2", "--model.train_vision", "true", "--run.out", str(tmp_path / "sft"),
           "--run.tensorboard", "false"]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    metrics = [json.loads(x) for x in (tmp_path / "sft/metrics.jsonl").read_text().splitlines()]
    losses = [m["sft/loss"] for m in metrics if "sft/loss" in m]
    assert len(losses) == 12 and sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
