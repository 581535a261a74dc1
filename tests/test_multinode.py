"""Multi-node, as users launch it: two torchrun agents joined by a c10d rendezvous, one process each.

On one machine the two "nodes" are two agents on localhost; everything else is the README's
two-node command: `--nnodes 2 --node_rank i --rdzv_backend c10d --rdzv_endpoint host:port`. The
run is dp x sp = 1 x 2, so the SP group (the all-to-alls, the parallel encoding) spans the nodes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from minirl import synth
from minirl.tiny import build_tiny_model, default_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    synth.generate(root / "data", train=4, test=0, frames=64, per_video=2, seed=5)
    build_tiny_model(root / "model", default_corpus(root / "data" / "train.jsonl"), seed=0)
    return root


def two_nodes(script: str, args: list[str], timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Run `script` under two torchrun agents (node ranks 0 and 1) sharing one c10d rendezvous."""
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
                                "1", "--node_rank", str(node), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
                                "--rdzv_id", "minirl-test", "--max_restarts", "0", script, *args],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for node in (0, 1)]
    done = []
    try:
        for agent in agents:
            out, err = agent.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(agent.args, agent.returncode, out, err))
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    return done


def test_two_nodes_sft_then_rl(setup, tmp_path):
    common = ["--data.train", str(setup / "data/train.jsonl"), "--data.frames", "8", "--parallel.sp", "2",
              "--optim.steps", "1", "--optim.batch_size", "2", "--run.tensorboard", "false"]
    sft = two_nodes("train_sft.py", ["--model.path", str(setup / "model"), *common, "--run.out", str(tmp_path / "sft")])
    for node, run in enumerate(sft):
        assert run.returncode == 0, f"node {node}: {run.stderr[-3000:]}"
    rl = two_nodes("train_rl.py", ["--model.path", str(tmp_path / "sft/hf"), *common, "--rollout.n", "2",
                                   "--rollout.max_new_tokens", "6", "--optim.micro_batch_size", "2",
                                   "--run.out", str(tmp_path / "rl")])
    for node, run in enumerate(rl):
        assert run.returncode == 0, f"node {node}: {run.stderr[-3000:]}"
    for stage, key in (("sft", "sft/loss"), ("rl", "timing_s/rollout")):
        rows = [json.loads(line) for line in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1] and key in rows[0], rows
    assert (tmp_path / "rl/hf/config.json").is_file()
