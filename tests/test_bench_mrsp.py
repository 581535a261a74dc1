"""bench.py mrsp's bookkeeping, without running it: the FLOPs accounting that sizes the bench model, and the
largest-frames-within-budget rule. (The timings themselves live in bench.py, never in a test.)"""

import pytest

from bench import MRSP_SIZE, _largest_within, qwen25_vl_7b_config, video_token_flops
from minirl.tiny import make_config, make_processor
from tests.conftest import CORPUS


def test_7b_flops_per_video_token_by_hand():
    """Qwen2.5-VL-7B, written out: 4 patches x (patch embedding + 32 blocks) + the merger; 28 decoder layers."""
    vision, decoder = video_token_flops(qwen25_vl_7b_config())
    block = 4 * 1280**2 + 3 * 1280 * 3420  # q, k, v, proj; gate, up, down
    assert vision == 2 * (4 * (3 * 2 * 14 * 14 * 1280 + 32 * block) + 5120 * (5120 + 3584))
    layer = 3584 * 3584 * 2 + 3584 * (4 * 128) * 2 + 3 * 3584 * 18944  # q, o; k, v (4 KV heads); MLP
    assert decoder == 2 * 28 * layer
    assert vision / decoder == pytest.approx(0.394, abs=1e-3)
    # attention's score/value products over a 100k-token video: the decoder's figure grows, per token
    _, long = video_token_flops(qwen25_vl_7b_config(), context=100_000)
    assert long - decoder == 2 * 28 * 100_000 * 3584


def test_bench_model_keeps_7b_vision_to_decoder_ratio():
    config = make_config(make_processor(CORPUS).tokenizer, MRSP_SIZE)
    vision, decoder = video_token_flops(config)
    vision_7b, decoder_7b = video_token_flops(qwen25_vl_7b_config())
    assert (vision / decoder) / (vision_7b / decoder_7b) == pytest.approx(1.0, abs=0.10)


def test_largest_frames_within_budget():
    rows = [dict(frames=16, peak_mb=100), dict(frames=32, peak_mb=150), dict(frames=64, peak_mb=260),
            dict(frames=128, error="killed")]
    assert _largest_within(rows, 200) == (32, 64)
    assert _largest_within(rows, 300) == (64, 128)  # a failed run counts as over the budget
    assert _largest_within(rows[:3], 300) == (64, None)  # fits every frame count measured
    assert _largest_within(rows, 50) == (None, 16)
