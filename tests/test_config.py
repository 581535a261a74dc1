"""Config parsing: section.key and bare-key overrides, files, booleans, and named errors."""

import json

import pytest

from minirl import config
from train_rl import RLConfig
from train_sft import SFTConfig


def test_overrides_by_section_and_bare_key():
    cfg = config.parse(RLConfig, ["--rollout.n", "4", "--temperature", "0.7", "--run.out=/tmp/x", "--kl_coef", "0.1"])
    assert cfg.rollout.n == 4 and cfg.rollout.temperature == 0.7 and cfg.run.out == "/tmp/x"
    assert cfg.algo.kl_coef == 0.1
    assert config.parse(RLConfig, []).rollout.n == 8  # defaults untouched by another parse


def test_booleans():
    argv = ["--algo.dynamic_sampling", "--parallel.parallel_encode", "false", "--run.resume", "yes"]
    cfg = config.parse(RLConfig, argv)
    assert cfg.algo.dynamic_sampling is True and cfg.parallel.parallel_encode is False and cfg.run.resume is True
    with pytest.raises(ValueError, match="cannot parse 'maybe' as bool"):
        config.parse(RLConfig, ["--run.resume", "maybe"])


def test_unknown_and_ambiguous_keys_are_errors():
    with pytest.raises(ValueError, match="rollout.nn is not a config key.*rollout.n"):
        config.parse(RLConfig, ["--rollout.nn", "4"])
    with pytest.raises(ValueError, match="max_new_tokens is ambiguous between rollout.max_new_tokens, eval"):
        config.parse(RLConfig, ["--max_new_tokens", "3"])
    assert config.parse(SFTConfig, ["--lr", "1e-3"]).optim.lr == 1e-3  # unambiguous in SFT
    with pytest.raises(ValueError, match="cannot parse 'x' as int"):
        config.parse(RLConfig, ["--rollout.n", "x"])
    with pytest.raises(ValueError, match="unexpected argument"):
        config.parse(RLConfig, ["rollout.n"])


def test_yaml_and_json_files_then_command_line(tmp_path):
    (tmp_path / "run.yaml").write_text("rollout:\n  n: 2\n  top_k: 5\nalgo:\n  loss_agg: seq-mean-token-mean\n")
    cfg = config.parse(RLConfig, ["--config", str(tmp_path / "run.yaml"), "--rollout.n", "6"])
    assert (cfg.rollout.n, cfg.rollout.top_k, cfg.algo.loss_agg) == (6, 5, "seq-mean-token-mean")
    (tmp_path / "run.json").write_text(json.dumps({"optim.lr": 0.5, "parallel": {"sp": 4}}))
    cfg = config.parse(SFTConfig, ["--config", str(tmp_path / "run.json")])
    assert cfg.optim.lr == 0.5 and cfg.parallel.sp == 4
    (tmp_path / "bad.yaml").write_text("rollout:\n  temprature: 1.0\n")
    with pytest.raises(ValueError, match="temprature"):
        config.parse(RLConfig, ["--config", str(tmp_path / "bad.yaml")])
    assert "[rollout] n=8" in config.describe(config.parse(RLConfig, []))
