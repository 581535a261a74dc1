"""The training pipeline: layout-independent RL steps, sampler/trainer agreement, learning,
exact resume, atomic checkpoints, bad videos, non-finite steps skipped on every rank, strict weight
sync, the compute dtype, and a torchrun end-to-end smoke (SFT then RL).

Workers run the real Trainer in spawned processes (gloo, torchrun's environment variables);
they only write results to files, the assertions live here.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import START_METHOD, free_port
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from minirl import synth
from minirl.data import load_dataset
from minirl.distributed import sync_weights
from minirl.model import QwenVL, load_model
from minirl.run import compute_dtype, latest_checkpoint, load_checkpoint, save_checkpoint
from minirl.tiny import build_tiny_model, default_corpus
from minirl.video import VideoError

ROOT = Path(__file__).resolve().parents[1]
REWARD = '''
def vowels(response, answer, example):
    """A dense toy reward with variance from step 1: the fraction of vowels in the response."""
    return sum(c in "aeiou" for c in response) / max(1, len(response))
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    synth.generate(root / "data", train=8, test=4, frames=64, per_video=2, seed=3)
    build_tiny_model(root / "model", default_corpus(root / "data" / "train.jsonl"), seed=0)
    (root / "reward.py").write_text(REWARD)
    return root


def rl_args(root, out, **overrides):
    args = {
        "model.path": root / "model", "data.train": root / "data/train.jsonl", "data.frames": 8,
        "rollout.n": 4, "rollout.max_new_tokens": 10, "optim.batch_size": 4, "optim.lr": 1e-3,
        "optim.micro_batch_size": 2, "algo.mini_batches": 2, "algo.kl_coef": 0.05,
        "algo.reward": f"{root / 'reward.py'}:vowels", "run.out": out, "run.tensorboard": "false",
    }
    args.update(overrides)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def _env(rank, world, port):
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    else:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(key, None)


def full_state(model) -> dict:
    """The full, unsharded state dict on every rank."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))


def _rl_worker(rank, world, port, argv, steps, out_file, task, nan_steps):
    _env(rank, world, port)
    from minirl import config
    from train_rl import RLConfig, Trainer

    result = {}
    try:
        trainer = Trainer(config.parse(RLConfig, argv))
        if task == "logprobs":
            sync_weights(trainer.rollout_model, trainer.model)
            groups, items, cache, _ = trainer.collect({})
            seqs = [None] * trainer.cfg.parallel.sp
            dist.all_gather_object(seqs, trainer.advantages(groups), group=trainer.sp_group)
            seqs = [s for part in seqs for s in part]
            recomputed = trainer.logprobs(trainer.model, seqs, items, cache)
            result["diff"] = max(float((torch.tensor(s.sampler_logprobs) - r).abs().max())
                                 for s, r in zip(seqs, recomputed, strict=True))
            result["tokens"] = sum(len(s.response) for s in seqs)
        elif task == "nan":
            result["dtypes"] = dict(rollout=trainer.rollout_model.dtype, ref=trainer.ref_model.dtype,
                                    master=full_state(trainer.model)["embed_tokens.weight"].dtype)
            _poison_update(trainer, nan_steps)
            result.update(metrics=[], states=[full_state(trainer.model)])
            try:
                for _ in range(steps):
                    result["metrics"].append(trainer.step())
                    result["states"].append(full_state(trainer.model))
            except Exception as err:  # the NonFiniteError the test expects, raised on every rank
                result["stopped"] = f"{type(err).__name__}: {err}"
            skipped = [m.get("actor/skipped_steps") for m in result["metrics"]]
            result["skipped"] = [None] * world
            dist.all_gather_object(result["skipped"], skipped)
        else:
            result["metrics"] = [trainer.step() for _ in range(steps)]
            if task == "save":
                trainer.save()
            result["state"] = full_state(trainer.model)
    except Exception as err:  # report to the parent, which asserts on it
        result["error"] = f"{type(err).__name__}: {err}"
    if rank == 0:
        torch.save(result, out_file)
    if dist.is_initialized():
        dist.destroy_process_group()


def _poison_update(trainer, nan_steps: dict[int, int]):
    """At RL step k, rank nan_steps[k]'s first update micro-batch gets a NaN log-prob on one response token."""
    from minirl.data import IGNORE_INDEX

    real = trainer.sp_logprobs

    def sp_logprobs(model, batch, with_entropy=False):
        out = real(model, batch, with_entropy)
        step = trainer.step_num + 1
        if with_entropy and nan_steps.get(step) == trainer.rank and step not in poisoned:
            poisoned.add(step)
            logp, entropy = out
            nan = torch.zeros_like(logp)  # (B, L)
            nan[tuple((batch["targets"] != IGNORE_INDEX).nonzero()[0])] = float("nan")
            return logp + nan, entropy
        return out

    poisoned = set()
    trainer.sp_logprobs = sp_logprobs


def run_rl(world, argv, tmp_path, steps=1, task="steps", nan_steps=None):
    out_file = tmp_path / f"result-{world}-{task}-{free_port()}.pt"
    mp.start_processes(_rl_worker, args=(world, free_port(), argv, steps, str(out_file), task, nan_steps),
                       nprocs=world, start_method=START_METHOD)
    result = torch.load(out_file, weights_only=False)
    assert "error" not in result, result["error"]
    return result


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_random_reward_control_shuffles_the_step_under_every_layout(setup, tmp_path):
    """--algo.shuffle_rewards: the real run's samples and logged rewards, other advantages (so other weights),
    and the same weights on 1 and 2 ranks: one seeded permutation of the whole step's rewards."""
    lr, shuffle = {"optim.lr": 1e-4}, {"algo.shuffle_rewards": "true"}
    real = run_rl(1, rl_args(setup, tmp_path / "real", **lr), tmp_path)
    control = run_rl(1, rl_args(setup, tmp_path / "c1", **lr, **shuffle), tmp_path)
    dp2 = run_rl(2, rl_args(setup, tmp_path / "c2", **lr, **shuffle), tmp_path)
    for key in ("reward/overall", "reward/std", "reward/accuracy", "response_length/mean"):
        assert control["metrics"][0][key] == real["metrics"][0][key]
    assert control["metrics"][0]["advantage/abs_mean"] != real["metrics"][0]["advantage/abs_mean"]
    assert max_diff(control["state"], real["state"]) > 1e-6
    assert max_diff(dp2["state"], control["state"]) <= 1e-5


def test_rl_step_is_independent_of_the_layout(setup, tmp_path):
    """One step (2 mini-batches, KL on) under dp1xsp1, dp1xsp2 and dp2xsp2: the same weights.

    lr 1e-4 (an RL-sized rate): Adam's first steps move every weight by about lr whatever the
    gradient's size, so rounding-level gradient differences on near-zero gradients show up at
    the scale of lr; at 1e-4 that stays well inside the 1e-5 tolerance.
    """
    lr = {"optim.lr": 1e-4}
    before = load_model(setup / "model").state_dict()
    one = run_rl(1, rl_args(setup, tmp_path / "r1", **lr), tmp_path)
    sp2 = run_rl(2, rl_args(setup, tmp_path / "r2", **lr, **{"parallel.sp": 2}), tmp_path)
    dp2sp2 = run_rl(4, rl_args(setup, tmp_path / "r4", **lr, **{"parallel.sp": 2}), tmp_path)
    assert max_diff(one["state"], before) > 1e-4  # the step really changed the weights (2 Adam steps)
    assert one["metrics"][0]["reward/std"] > 0
    assert max_diff(sp2["state"], one["state"]) <= 1e-5
    assert max_diff(dp2sp2["state"], one["state"]) <= 1e-5
    print("weights max |diff|: sp2", max_diff(sp2["state"], one["state"]), "dp2sp2",
          max_diff(dp2sp2["state"], one["state"]), "changed by", max_diff(one["state"], before))
    for key in ("reward/overall", "actor/pg_loss", "actor/kl_loss", "response_length/mean"):
        assert sp2["metrics"][0][key] == pytest.approx(one["metrics"][0][key], abs=1e-5)
        print(key, one["metrics"][0][key], sp2["metrics"][0][key], dp2sp2["metrics"][0][key])
        assert dp2sp2["metrics"][0][key] == pytest.approx(one["metrics"][0][key], abs=1e-5)


def test_sampler_logprobs_equal_trainer_recompute(setup, tmp_path):
    """Same embeddings, same positions: sampler and sequence-parallel trainer agree (fp32)."""
    result = run_rl(2, rl_args(setup, tmp_path / "lp", **{"parallel.sp": 2, "rollout.max_new_tokens": 16}),
                    tmp_path, task="logprobs")
    assert result["tokens"] > 50
    assert result["diff"] <= 1e-4


@pytest.fixture(scope="module")
def nan_runs(setup, tmp_path_factory):
    """Two processes, one optimizer step per RL step, a NaN in one rank's update micro-batch at steps 1, 3
    and 4, stop after 2 skipped in a row: dp2xsp1 computing in bf16 (--model.dtype), sp2 in fp32."""
    tmp = tmp_path_factory.mktemp("nan")
    runs = {}
    for name, sp, dtype in [("dp2xsp1", 1, "bfloat16"), ("sp2", 2, "float32")]:
        argv = rl_args(setup, tmp / name, **{"parallel.sp": sp, "model.dtype": dtype, "algo.mini_batches": 1,
                                             "optim.batch_size": 2, "rollout.n": 2, "rollout.max_new_tokens": 6,
                                             "optim.max_skipped_steps": 2})
        runs[name] = run_rl(2, argv, tmp, steps=5, task="nan", nan_steps={1: 1, 3: 1, 4: 0})
    return runs


@pytest.mark.parametrize("layout", ["dp2xsp1", "sp2"])
def test_non_finite_step_never_reaches_the_weights(nan_runs, layout):
    """Every rank skips the NaN steps, the weights and the optimizer never see them, and the second skip
    in a row stops the run with a named error."""
    result = nan_runs[layout]
    states = result["states"]  # before step 1, after steps 1, 2, 3
    assert all(torch.isfinite(t).all() for state in states for t in state.values())
    assert result.get("stopped", "").startswith("NonFiniteError: 2 optimizer steps in a row skipped"), result
    assert len(result["metrics"]) == 3 and result["skipped"] == [[1, 0, 1]] * 2  # both ranks agree
    assert all(torch.equal(states[1][k], states[0][k]) for k in states[0])  # step 1 skipped: untouched
    assert max_diff(states[2], states[1]) > 1e-5  # step 2 trained
    assert all(torch.equal(states[3][k], states[2][k]) for k in states[0])  # step 3 skipped


def test_weight_sync_is_strict(tiny_dir):
    """The rollout copy receives every weight, or the sync names what is missing or unexpected."""
    model = load_model(tiny_dir)
    copy = QwenVL(model.hf_config).to(torch.bfloat16)
    sync_weights(copy, model)
    assert all(torch.equal(copy.state_dict()[k], v.to(torch.bfloat16)) for k, v in model.state_dict().items())
    copy.register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "extra"'):
        sync_weights(copy, model)
    model.register_buffer("stray", torch.zeros(1))
    del copy.extra
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "stray"'):
        sync_weights(copy, model)


def test_compute_dtype(nan_runs):
    """--model.dtype: auto is bf16 on CUDA and fp32 on CPU; bfloat16 runs the forwards and the rollout and
    reference copies in bf16 (here under FSDP2 on two gloo ranks) while the master weights stay fp32."""
    assert compute_dtype("auto", torch.device("cpu")) == torch.float32
    assert compute_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert compute_dtype("float32", torch.device("cuda")) == torch.float32
    with pytest.raises(ValueError, match="model.dtype='fp16'"):
        compute_dtype("fp16", torch.device("cpu"))
    bf16, fp32 = torch.bfloat16, torch.float32
    assert nan_runs["dp2xsp1"]["dtypes"] == dict(rollout=bf16, ref=bf16, master=fp32)
    assert nan_runs["sp2"]["dtypes"] == dict(rollout=fp32, ref=fp32, master=fp32)


def test_rl_raises_an_easy_reward(setup, tmp_path):
    argv = rl_args(setup, tmp_path / "easy", **{"optim.batch_size": 2, "rollout.n": 8, "algo.kl_coef": 0,
                                                  "algo.mini_batches": 1, "optim.lr": 1e-2})
    metrics = run_rl(1, argv, tmp_path, steps=15)["metrics"]
    rewards = [m["reward/overall"] for m in metrics]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.05, rewards
    shares = [{k: v for k, v in m.items() if k.startswith("advantage/share/")} for m in metrics]
    assert all(abs(sum(step.values()) - 1) < 1e-6 for step in shares), shares
    assert len({k for step in shares for k in step}) >= 2, shares  # synth's categories, over the run


def test_category_metrics():
    from train_rl import category_metrics

    got = category_metrics(["Goal & Purpose", "Goal & Purpose", "Spatial", "Spatial", None],
                           [1.0, 0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.5, 1.5, 4.0])
    assert got == {"reward/accuracy/goal_purpose": 0.5, "advantage/share/goal_purpose": 0.25,
                   "reward/accuracy/spatial": 1.0, "advantage/share/spatial": 0.25}
    assert category_metrics([None, None], [1.0, 0.0], [1.0, 1.0]) == {}


def test_resume_is_exact(setup, tmp_path):
    """4 steps straight == 2 steps, checkpoint, resume, 2 more (CPU fp32)."""
    straight = run_rl(1, rl_args(setup, tmp_path / "a", **{"optim.steps": 4}), tmp_path, steps=4)
    run_rl(1, rl_args(setup, tmp_path / "b", **{"optim.steps": 4}), tmp_path, steps=2, task="save")
    assert latest_checkpoint(tmp_path / "b").name == "step-000002"
    resumed = run_rl(1, rl_args(setup, tmp_path / "b", **{"optim.steps": 4, "run.resume": "true"}), tmp_path,
                     steps=2)
    assert all(torch.equal(straight["state"][k], resumed["state"][k]) for k in straight["state"])
    assert resumed["metrics"][-1]["reward/overall"] == straight["metrics"][-1]["reward/overall"]


def test_checkpoint_is_atomic_under_a_crash(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    good = save_checkpoint(tmp_path, 1, model, optimizer, extra={"cursor": 8})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    real_save = torch.save

    def crash_on_optimizer(obj, path, *args, **kwargs):
        if Path(path).name == "optimizer.pt":
            raise KeyboardInterrupt("killed mid-save")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_on_optimizer)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model, optimizer)
    monkeypatch.undo()
    assert (tmp_path / ".tmp-step-000002").exists() and not (tmp_path / "step-000002").exists()
    assert latest_checkpoint(tmp_path) == good
    state = load_checkpoint(good, model, optimizer)
    assert state == {"step": 1, "extra": {"cursor": 8}}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_bad_videos_are_reported_never_substituted(setup, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(setup / "data", data)
    victim = data / "videos/train/00001.mp4"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # truncated
    with pytest.raises(VideoError, match="00001.mp4"):
        load_dataset(data / "train.jsonl", None, "error")
    kept = load_dataset(data / "train.jsonl", None, "drop")
    assert len(kept) == 6 and all(ex.video != victim for ex in kept)

    # videos that break after start-up: the step names the example, the file and the step, and stops
    argv = rl_args(setup, tmp_path / "bad", **{"data.train": data / "train.jsonl", "data.bad_videos": "drop"})
    out_file = tmp_path / "bad.pt"
    mp.start_processes(_break_then_step, args=(argv, str(out_file), str(data / "videos/train")), nprocs=1,
                       start_method=START_METHOD)
    error = torch.load(out_file, weights_only=False)["error"]
    assert error and "step 1" in error and "cannot use example" in error and ".mp4" in error, error


def _break_then_step(rank, argv, out_file, video_dir):
    _env(0, 1, 0)
    from minirl import config
    from train_rl import RLConfig, Trainer

    trainer = Trainer(config.parse(RLConfig, argv))
    for video in Path(video_dir).glob("*.mp4"):  # corrupted while the run is going
        video.write_bytes(video.read_bytes()[:200])
    try:
        trainer.step()
        result = {"error": None}
    except RuntimeError as err:
        result = {"error": str(err)}
    torch.save(result, out_file)
    dist.destroy_process_group()


def _sft_main(rank, argv):
    _env(0, 1, 0)
    import train_sft

    train_sft.main(argv)


def test_sft_lowers_the_loss(setup, tmp_path):
    """train_sft.main in one worker process (its command line runs under torchrun below)."""
    out = tmp_path / "sft"
    argv = ["--model.path", str(setup / "model"), "--data.train", str(setup / "data/train.jsonl"), "--data.frames",
            "8", "--optim.steps", "10", "--optim.batch_size", "4", "--optim.lr", "3e-3", "--optim.warmup_steps", "1",
            "--run.out", str(out), "--run.tensorboard", "false"]
    mp.start_processes(_sft_main, args=(argv,), nprocs=1, start_method=START_METHOD)
    losses = [json.loads(line)["sft/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 10 and sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_torchrun_sft_then_rl_end_to_end(setup, tmp_path):
    """The product path: torchrun (2 processes, sp=2) SFT, then RL from SFT's export, then load it."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(free_port())]
    common = ["--data.train", str(setup / "data/train.jsonl"), "--data.test", str(setup / "data/test.jsonl"),
              "--data.frames", "8", "--parallel.sp", "2", "--eval.max_new_tokens", "8", "--run.tensorboard", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sft = subprocess.run([*torchrun, "train_sft.py", "--model.path", str(setup / "model"), *common,
                          "--optim.steps", "2", "--optim.batch_size", "2", "--run.out", str(tmp_path / "sft")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert sft.returncode == 0, sft.stderr[-3000:]
    torchrun[-1] = str(free_port())
    rl = subprocess.run([*torchrun, "train_rl.py", "--model.path", str(tmp_path / "sft/hf"), *common,
                         "--optim.steps", "2", "--optim.batch_size", "2", "--rollout.n", "2",
                         "--rollout.max_new_tokens", "8", "--run.out", str(tmp_path / "rl")],
                        cwd=ROOT, env=env, capture_output=True, text=True)
    assert rl.returncode == 0, rl.stderr[-3000:]
    assert "Overall" in rl.stdout
    rows = [json.loads(line) for line in (tmp_path / "rl/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows[:2]] == [1, 2] and "timing_s/rollout" in rows[0]
    Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "rl/hf")  # the export loads


def test_trainable_vision_tower_matches_one_process(setup, tmp_path):
    """With --model.train_vision the update re-encodes with gradients across the SP group."""
    args = {"optim.lr": 1e-4, "model.train_vision": "true", "algo.mini_batches": 1}
    one = run_rl(1, rl_args(setup, tmp_path / "v1", **args), tmp_path)
    sp2 = run_rl(2, rl_args(setup, tmp_path / "v2", **args, **{"parallel.sp": 2}), tmp_path)
    before = load_model(setup / "model").state_dict()
    vision = [k for k in before if k.startswith("visual.")]
    assert max(float((one["state"][k] - before[k]).abs().max()) for k in vision) > 1e-5  # it trained
    assert max_diff(sp2["state"], one["state"]) <= 1e-5


def test_rollout_waves_change_nothing_but_memory(setup, tmp_path):
    """--rollout.kv_budget_gib small enough for one prompt per wave: the same step as one wave."""
    args = {"optim.lr": 1e-4, "optim.batch_size": 2}
    one = run_rl(1, rl_args(setup, tmp_path / "w1", **args), tmp_path)
    waves = run_rl(1, rl_args(setup, tmp_path / "w2", **args, **{"rollout.kv_budget_gib": 1e-9}), tmp_path)
    assert max_diff(waves["state"], one["state"]) <= 1e-6


@pytest.mark.parametrize("key,value", [("optim.micro_batch_size", 0), ("algo.logprob_micro_batch_size", -1)])
def test_micro_batch_sizes_are_checked_up_front(setup, tmp_path, key, value):
    """A micro-batch size that would silently drop samples is refused before any process group starts."""
    from minirl import config
    from train_rl import RLConfig, Trainer

    with pytest.raises(ValueError, match=f"{key}={value}"):
        Trainer(config.parse(RLConfig, rl_args(setup, tmp_path, **{key: value})))
