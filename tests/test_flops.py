"""The benchmarks' FLOP count (bench/flops.py): the decoder's projections, the logits and the vision tower
equal torch's FlopCounterMode on real forwards of a tiny Qwen2.5-VL (CPU SDPA attention is not counted by
FlopCounterMode, so what it counts is exactly the matmuls the formulas hold); the attention pairs and a
step's phases by hand."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import flops as F
from minirl import memplan
from minirl.model import load_model, prepare_inputs
from tests.test_model import video_inputs


def counted(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        fn()
    return mode.get_total_flops()


@pytest.mark.parametrize("which", ["tiny_dir", "odd_dir", "merge4_dir"])
def test_matmul_flops_equal_flop_counter(which, request, mp4_path):
    model_dir = request.getfixturevalue(which)
    model, shape = load_model(model_dir), memplan.load_shape(str(model_dir))
    batch = video_inputs(model_dir, mp4_path)
    pixels, grid = batch["pixel_values_videos"], batch["video_grid_thw"]
    video_tokens = int(grid.prod()) // shape.merge**2
    assert counted(lambda: model.encode_video(pixels, grid)) == F.vision_flops(shape, video_tokens)
    embeds, positions = prepare_inputs(model, batch["input_ids"][0], pixels, grid, batch["second_per_grid_ts"])
    tokens = embeds.shape[1]
    assert counted(lambda: model(embeds, positions)) == F.token_flops(shape) * tokens
    hidden = torch.randn(5, shape.hidden)
    assert counted(lambda: model.logits(hidden)) == F.logits_flops(shape, 5)


def test_attention_pairs_and_phases_by_hand():
    s = memplan.Shape(hidden=4, ffn=6, layers=1, heads=2, kv_heads=1, vocab=10, tied=False, v_hidden=2, v_ffn=3,
                      v_depth=1, v_out=4, patch=1, temporal=1, merge=1, channels=1)
    token, pair, row = F.token_flops(s), F.attention_flops(s, 1), F.logits_flops(s, 1)
    # prompt 3 (6 causal pairs), responses of 2 tokens (one input row: 3 prompt keys + itself) and 1 (no input)
    assert F.forward_flops(s, 3, [2, 1]) == 4 * token + 10 * pair + 3 * row
    phases = F.step_flops(s, [(3, 2, [2, 1])], mini_batches=2, kl=True, on_policy=False)
    assert phases["prefill"] == 3 * token + 6 * pair + row
    assert phases["decode"] == token + 4 * pair + row  # one token fed back, over 4 keys
    assert phases["old"] == phases["ref"] == F.forward_flops(s, 3, [2, 1])
    assert phases["update"] == 3 * (F.forward_flops(s, 3, [2]) + F.forward_flops(s, 3, [1]))
    assert phases["encode"] == F.vision_flops(s, 2)
    on_policy = F.step_flops(s, [(3, 2, [2, 1])])
    assert on_policy["old"] == on_policy["ref"] == 0


def test_phase_table_divides_by_the_phase_seconds():
    flops = dict(encode=2e9, prefill=1e9, decode=3e9, old=0, ref=0, update=6e9)
    rows = {r["phase"]: r for r in F.phase_table(flops, dict(encode=1.0, rollout=2.0, update=3.0, step=8.0), 10.0)}
    assert rows["rollout"]["gflops"] == pytest.approx(2.0) and rows["update"]["of_peak"] == pytest.approx(0.2)
    assert rows["step"]["gflop"] == pytest.approx(12.0) and rows["step"]["gflops"] == pytest.approx(1.5)
    assert rows["old"]["gflops"] == 0.0  # no seconds: nothing ran
    assert F.matmul_peak_gflops(threads=1, size=128, repeats=3) > 0
