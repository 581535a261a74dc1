"""The memory plan's formulas on hand-computed cases, its parameter counts against real models, and the
rollout's KV-cache waves (rollout.kv_waves) that the plan's `kv_cache` term bounds."""

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoConfig

from minirl import memplan as M
from minirl.model import Block, QwenVL, load_model, sdpa_attention
from rollout import kv_waves

# A shape small enough to count by hand: head_dim 2, one KV head of 2, patches of 2 values.
TOY = M.Shape(hidden=4, ffn=6, layers=2, heads=2, kv_heads=1, vocab=10, tied=False, v_hidden=2, v_ffn=3,
              v_depth=1, v_out=4, patch=1, temporal=2, merge=1, channels=1)
SETUP = M.Setup(gpus=2, sp=2, frames=4, tokens_per_frame=1, text_tokens=2, n=2, response=3, prompts_per_gpu=1,
                micro_batch=1, grad_ckpt=False, kl=True, compute_bytes=2, sharded_ref=False, streamed_sync=False)


def test_toy_counts_by_hand():
    # block: q 4*4+4, k and v 2*(4*2+2), o 4*4, SwiGLU 3*4*6, two norms 2*4
    assert TOY.block_params() == 20 + 20 + 16 + 72 + 8 == 136
    assert TOY.llm_params() == 2 * 136 + 2 * 40 + 4 == 356  # blocks, embed + untied head, final norm
    # vision: patch embed 2*2; block: qkv 3*4+6, proj 4+2, gate/up 2*(6+3), down 6+2, norms 4; final
    # merger: ln 2, 2x2 linear + 2, 2x4 linear + 4
    assert TOY.vision_params() == 4 + 54 + 2 + 6 + 12 == 78
    assert TOY.kv_bytes_per_token(2) == 2 * 2 * 1 * 2 * 2 == 16  # k and v, 2 layers, 1 head of 2, bf16
    # per token and layer: 2 norms of (4h fp32 + 2h bf16 + 2h bf16 + 4) = 2 * 36, q k v (4+2+2)*2, attention
    # output 4*2 (+ o_proj input 4*2 under SP), log-sum-exp 2 heads * 4, SwiGLU 4 * 6 * 2
    assert TOY.layer_activation_bytes(2, sp=1) == 72 + 16 + 8 + 8 + 48 == 152
    assert TOY.layer_activation_bytes(2, sp=2) == 160


def test_toy_plan_by_hand():
    p = M.plan(TOY, SETUP)
    t = p["terms"]
    assert (t["fsdp_params"], t["fsdp_grads"], t["fsdp_adam"]) == (712, 712, 1424)  # 356 * 4 / 2 GPUs
    assert t["vision_replica"] == 78 * 4 and t["rollout_weights"] == t["reference_weights"] == 434 * 2
    assert t["sync_gather"] == 434 * 4
    # 4 video tokens = 4 patches (merge 1): a GPU encodes half of each of its SP group's 2 videos, fp32
    assert t["video_pixels"] == 4 * 2 * 4 and t["vision_activations"] == 4 * (6 * 2 + 3 * 3) * 4
    assert t["embedding_cache"] == 2 * 4 * 4 * 2  # both videos of the SP group, 4 tokens of 4, bf16
    assert t["kv_cache"] == (6 + 2 * 3) * 16  # one prompt cache (4 video + 2 text) + 2 responses of 3
    # update: (6 + 3) tokens over sp 2 -> 5 per GPU; no checkpointing: 2 layers * 160 + widest grad 2 * 6 * 2
    assert t["update_activations"] == 5 * (2 * 160 + 24) == 1720
    assert t["attention_scores"] == 0  # flash
    assert t["logits"] == 2 * 10 * 14  # ceil(3 / 2) response rows, vocab 10, 2 + 12 bytes
    assert t["fsdp_workspace"] == 136 * (2 * 2 + 4)
    assert p["phases"] == dict(sync=1736, encode=32 + 336 + 64, rollout=64 + 192, update=64 + 1720 + 280 + 1088)
    assert p["peak"] == 712 + 712 + 1424 + 312 + 868 + 868 + 3152 == 8048 and p["bottleneck"] == "update"
    assert p["step_added"] == 3152 + 712  # the update and the gradients it allocates


def test_toy_variants_by_hand():
    naive = M.plan(TOY, replace(SETUP, parallel_encode=False, ulysses=False))["terms"]
    assert naive["video_pixels"] == 4 * 2 * 4  # its own whole video: the same bytes as half of two
    assert naive["embedding_cache"] == 4 * 4 * 2  # its own video only
    assert naive["kv_cache"] == (2 * 6 + 2 * 3) * 16  # n prompt copies
    assert naive["update_activations"] == 9 * (2 * 152 + 24)  # the whole sequence
    shared = M.plan(TOY, replace(SETUP, shared_prefix=True, micro_batch=2))["terms"]
    assert shared["update_activations"] == 6 * (2 * 160 + 24)  # [prompt | r1 | r2] = 12 tokens over 2
    unshared = M.plan(TOY, replace(SETUP, micro_batch=2))["terms"]
    assert unshared["update_activations"] == 2 * 5 * (2 * 160 + 24)  # 2 rows of 9 tokens over 2
    ckpt = M.plan(TOY, replace(SETUP, grad_ckpt=True))["terms"]
    assert ckpt["update_activations"] == 5 * (2 * 4 * 2 + 160 + 24)  # 2 block inputs + one block recomputed
    math = M.plan(TOY, replace(SETUP, attention="math"))["terms"]
    assert math["attention_scores"] == (2 + 1) * (1 * 9 * 9 * 4)  # 1 head per GPU, 9 x 9, 2 layers saved + live
    fixed = M.plan(TOY, replace(SETUP, sharded_ref=True, streamed_sync=True))["terms"]
    assert fixed["reference_weights"] == 356 * 2 // 2 + 78 * 2  # the decoder sharded over 2, the vision replica
    assert fixed["sync_gather"] == 40 * 4  # the largest tensor, the embedding, in fp32
    assert M.plan(TOY, replace(SETUP, kl=False))["terms"]["reference_weights"] == 0
    assert M.plan(TOY, replace(SETUP, cache_bytes=4))["terms"]["embedding_cache"] == 2 * 4 * 4 * 4
    cpu = M.plan(TOY, replace(SETUP, host_is_device=True))  # decoded pixels encoded in place, freed after
    assert cpu["terms"]["host_pixels"] == 4 * 2 * 4 and cpu["phases"] == M.plan(TOY, SETUP)["phases"]
    naive = replace(SETUP, parallel_encode=False, ulysses=False)  # keeps them to encode again
    kept = M.plan(TOY, replace(naive, host_is_device=True))["phases"]["update"]
    assert kept == M.plan(TOY, naive)["phases"]["update"] + 32
    holder = M.plan(TOY, replace(SETUP, host_is_device=True, prompts_per_gpu=0.5))  # decodes all, encodes half
    assert holder["phases"]["encode"] == M.plan(TOY, replace(SETUP, prompts_per_gpu=0.5))["phases"]["encode"] + 16
    paper = M.plan(TOY, replace(SETUP, prompts_per_gpu=0.5))["terms"]  # one video per SP group of 2
    assert paper["embedding_cache"] == 4 * 4 * 2 and paper["video_pixels"] == 2 * 2 * 4
    assert paper["kv_cache"] == (6 + 0.5 * 2 * 3) * 16  # the prompt's cache, half of its samples


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_activations_equal_what_autograd_saves(tiny_dir, dtype):
    """`layer_activation_bytes` against the storages autograd keeps for one Block under SDPA (sp = 1),
    counted with saved_tensors_hooks (`saved_bytes`); RoPE's cos/sin are shared by all layers and left out."""
    config = load_model(tiny_dir).config
    block, L = Block(config, 0).to(dtype), 64
    x = torch.randn(1, L, config.hidden_size, dtype=dtype, requires_grad=True)
    cos, sin = (torch.randn(1, L, config.head_dim, dtype=dtype) for _ in range(2))
    _, saved = M.saved_bytes(lambda: block(x, cos, sin, sdpa_attention), [cos, sin, *block.parameters()])
    assert saved == L * M.load_shape(str(tiny_dir)).layer_activation_bytes(dtype.itemsize, sp=1)


def count(model):
    vision = sum(p.numel() for p in model.visual.parameters())
    return sum(p.numel() for p in model.parameters()) - vision, vision


def test_parameter_counts_equal_real_models(tiny_dir):
    shape = M.load_shape(str(tiny_dir))  # a folder with a config.json written by save_pretrained
    with torch.device("meta"):
        tiny = QwenVL(AutoConfig.from_pretrained(tiny_dir))
    assert count(tiny) == (shape.llm_params(), shape.vision_params())
    for name, shape in M.BUILTIN.items():  # the built-in values, through the real module tree
        config = json.loads(json.dumps(dict(model_type="qwen2_5_vl", text_config=dict(
            hidden_size=shape.hidden, intermediate_size=shape.ffn, num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
            tie_word_embeddings=shape.tied), tie_word_embeddings=shape.tied, vision_config=dict(
            depth=shape.v_depth, hidden_size=shape.v_hidden, intermediate_size=shape.v_ffn,
            out_hidden_size=shape.v_out))))
        assert M.from_config(config) == shape
        with torch.device("meta"):
            model = QwenVL(AutoConfig.for_model(**config))
        assert count(model) == (shape.llm_params(), shape.vision_params()), name
    assert round(M.BUILTIN["qwen2.5-vl-7b"].params() / 1e9, 2) == 8.29  # the published sizes
    assert round(M.BUILTIN["qwen2.5-vl-3b"].params() / 1e9, 2) == 3.75


def test_largest_fitting_and_cli(capsys):
    shape, base = M.BUILTIN["qwen2.5-vl-7b"], M.Setup()
    best = M.largest_fitting(shape, base)
    assert M.plan(shape, replace(base, frames=best))["fits"]
    assert not M.plan(shape, replace(base, frames=best + 2))["fits"]
    assert best >= 3600  # the hour-long setting fits with sp = 8
    assert M.largest_fitting(shape, replace(base, prompts_per_gpu=1 / 8)) > best  # one video per SP group
    before = replace(base, frames=3600, vision_chunk=1 << 60, cache_bytes=4)  # all patches at once, fp32 cache
    assert not M.plan(shape, before)["fits"] and M.plan(shape, before)["bottleneck"] == "encode"
    with pytest.raises(ValueError, match="divide"):
        M.Setup(gpus=8, sp=3)
    M.main(["--frames", "1024", "--sp", "8"])
    out = capsys.readouterr().out
    assert "8.29B parameters" in out and "kv_cache" in out and "peak" in out
    M.main(["--table", "--frames", "64", "3600"])
    assert "max frames" in capsys.readouterr().out


def test_vision_chunk_is_the_models():
    from minirl.model import VISION_CHUNK

    assert M.Setup().vision_chunk == VISION_CHUNK
    big = M.plan(TOY, replace(SETUP, frames=100, vision_chunk=10))["terms"]
    assert big["vision_activations"] == 10 * (6 * 2 + 3 * 3) * 4 and big["video_pixels"] == 100 * 2 * 4


def test_kv_waves_by_hand():
    # each prompt needs (tokens + n * response) * bytes: (10 + 2 * 5) * 1 = 20
    assert kv_waves([10, 10, 10], n=2, response=5, bytes_per_token=1, budget=0) == [[0, 1, 2]]  # no bound
    assert kv_waves([10, 10, 10], 2, 5, 1, budget=40) == [[0, 1], [2]]
    assert kv_waves([10, 30, 10], 2, 5, 1, budget=25) == [[0], [1], [2]]  # 40 > 25: alone, never dropped
    assert kv_waves([], 2, 5, 1, budget=25) == []


def test_the_validator_plans_every_variant_as_it_runs():
    """`python -m bench plan validate` plans each `bench mrsp` variant with the setup its trainer and flags
    run (sp, the cache, the shared prefix, checkpointing), and refuses a variant it has no setup for. With
    checkpointing the update keeps no prompt activations: (e)'s plan is far below (d)'s (it was planned as
    (b), sp 1 without either, at 9x the measured peak)."""
    from bench import mrsp, plan

    expected = {"naive": (1, False, False, False), "stage1": (1, True, False, False),
                "stage1+2": (2, True, False, False), "shared": (2, True, True, False),
                "shared+ckpt": (2, True, True, True)}
    assert set(expected) == set(mrsp.MRSP_VARIANTS)  # every variant the validator accepts
    for variant, want in expected.items():
        setup = plan.variant_setup(variant)
        assert (setup["sp"], setup["parallel_encode"], setup["shared_prefix"], setup["grad_ckpt"]) == want
        assert setup["ulysses"] == (setup["sp"] > 1)
    with pytest.raises(ValueError, match="unknown variant 'shared\\+flash'.*shared\\+ckpt"):
        plan.validate([("shared+flash", 64)])  # refused before any run
    shape = M.load_shape("qwen2.5-vl-7b")
    run = dict(video_tokens=1024 * 36, prompt_tokens=1024 * 36 + 100)  # 1,024 frames of 36 tokens
    shared, checkpointed = (plan.planned_mb(shape, v, 1024, run) for v in ("shared", "shared+ckpt"))
    assert checkpointed < shared / 2
