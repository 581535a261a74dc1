"""Our decoder equals transformers' Qwen2.5-VL; checkpoints load strictly in every layout."""

import json

import decord
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.video_utils import VideoMetadata

from minirl.model import generate, load_model, prepare_inputs, rope_index, save_pretrained


def video_inputs(model_dir, mp4_path, question="What colour came first?", suffix="<think>red"):
    """Processor outputs for a chat prompt with one real decoded mp4 (decord, 8 frames at 2 fps)."""
    processor = AutoProcessor.from_pretrained(model_dir)
    reader = decord.VideoReader(str(mp4_path))
    frames = torch.from_numpy(reader.get_batch(list(range(0, 12, 1))[:8]).asnumpy())
    meta = VideoMetadata(total_num_frames=8, fps=2.0, frames_indices=list(range(8)))
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + suffix
    return processor(text=[text], videos=[frames], video_metadata=[meta], do_sample_frames=False,
                      return_tensors="pt", cap_pixels_per_frame=True)


def our_logits(model, batch):
    embeds, positions = prepare_inputs(model, batch["input_ids"][0], batch.get("pixel_values_videos"),
                                       batch.get("video_grid_thw"), batch.get("second_per_grid_ts"))
    with torch.no_grad():
        return model.logits(model(embeds, positions))


@pytest.mark.parametrize("which", ["tiny_dir", "odd_dir", "merge4_dir"])
def test_video_logits_equal_transformers(which, request, mp4_path):
    model_dir = request.getfixturevalue(which)
    batch = video_inputs(model_dir, mp4_path)
    assert batch["second_per_grid_ts"].item() == pytest.approx(1.0)  # 2 frames per grid at 2 fps
    reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = reference(**batch).logits
    ours = our_logits(load_model(model_dir), batch)
    merge = reference.config.vision_config.spatial_merge_size
    video_tokens = int((batch["input_ids"] == reference.config.video_token_id).sum())
    assert video_tokens == int(batch["video_grid_thw"].prod()) // merge**2 >= 8
    assert torch.equal(ours, expected)  # bitwise, as the README says


def test_positions_equal_transformers(tiny_dir, mp4_path):
    batch = video_inputs(tiny_dir, mp4_path)
    reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir)
    expected, _ = reference.model.get_rope_index(
        batch["input_ids"], batch["mm_token_type_ids"], video_grid_thw=batch["video_grid_thw"],
        second_per_grid_ts=batch["second_per_grid_ts"])
    ours = rope_index(batch["input_ids"][0], batch["video_grid_thw"], batch["second_per_grid_ts"],
                      load_model(tiny_dir).config)
    assert torch.equal(ours, expected[:, 0])
    video = batch["input_ids"][0] == reference.config.video_token_id
    t, h = ours[0, video], ours[1, video]
    assert t.max() - t.min() == 6 and h.max() - h.min() == 1  # 4 grids, 2 tok/s x 1 s apart; 2 rows


def test_rope_index_rejects_mismatched_video(tiny_dir, mp4_path):
    batch = video_inputs(tiny_dir, mp4_path)
    with pytest.raises(ValueError, match="video_pad"):
        rope_index(batch["input_ids"][0], batch["video_grid_thw"] * 2, None, load_model(tiny_dir).config)


@pytest.mark.parametrize("which", ["tiny_dir", "odd_dir"])
def test_text_only_logits_equal_transformers(which, request):
    model_dir = request.getfixturevalue(which)
    processor = AutoProcessor.from_pretrained(model_dir)
    batch = processor(text=["<|im_start|>user\nWhat is the answer?<|im_end|>"], return_tensors="pt")
    reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = reference(input_ids=batch["input_ids"]).logits
    assert torch.equal(our_logits(load_model(model_dir), batch), expected)  # bitwise


def test_text_only_qwen2_checkpoint_loads(tmp_path):
    config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    reference = Qwen2ForCausalLM(config).eval()
    reference.save_pretrained(tmp_path)
    ids = torch.randint(0, 300, (1, 17))
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    model = load_model(tmp_path)
    assert model.visual is None
    assert (our_logits(model, {"input_ids": ids}) - expected).abs().max() <= 1e-4


def test_both_key_layouts_load(tiny_dir, mp4_path, tmp_path):
    """transformers 5.23 writes the legacy layout (`model.layers.*`, `visual.*`); the in-memory
    v5 layout is `model.language_model.*` / `model.visual.*`. Both must load to the same model."""
    legacy = load_file(tiny_dir / "model.safetensors")
    assert any(k.startswith("visual.") for k in legacy) and any(k.startswith("model.layers.") for k in legacy)

    def to_v5(key):
        if key.startswith("visual."):
            return "model." + key
        if key.startswith("model."):
            return "model.language_model." + key[len("model."):]
        return key

    def convert(state):
        converted = {to_v5(k): v for k, v in state.items()}
        state.clear()
        state.update(converted)

    v5_dir = _copy_with_state(tiny_dir, tmp_path, convert)
    assert any(k.startswith("model.language_model.layers.") for k in load_file(v5_dir / "model.safetensors"))
    batch = video_inputs(tiny_dir, mp4_path)
    assert torch.equal(our_logits(load_model(v5_dir), batch), our_logits(load_model(tiny_dir), batch))


@pytest.mark.parametrize("shard_bytes", [5 * 2**30, 200_000])
def test_save_pretrained_loads_in_transformers(tiny_dir, mp4_path, tmp_path, shard_bytes):
    model = load_model(tiny_dir)
    with torch.no_grad():
        for p in model.parameters():  # move away from the init so a dropped tensor would show
            p.add_(0.01 * torch.randn_like(p))
    save_pretrained(model, tmp_path, max_shard_bytes=shard_bytes)
    if shard_bytes < 2**20:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
    batch = video_inputs(tiny_dir, mp4_path)
    reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = reference(**batch).logits
    ours = our_logits(model, batch)
    assert torch.equal(ours, expected)  # bitwise, as the README says
    assert torch.equal(our_logits(load_model(tmp_path), batch), ours)


def _copy_with_state(src, dst, edit):
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    state = load_file(src / "model.safetensors")
    edit(state)
    save_file(state, dst / "model.safetensors")
    return dst


def test_strict_loading_names_the_tensor(tiny_dir, tmp_path):
    key = "model.layers.1.mlp.up_proj.weight"

    def drop(s):
        del s[key]

    def extra(s):
        s["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2)

    def reshape(s):
        s[key] = s[key][:-1]

    for name, edit, pattern in [("missing", drop, "missing tensors.*layers.1.mlp.up_proj"),
                                ("unexpected", extra, "unexpected tensors.*layers.9.mlp.up_proj"),
                                ("shape", reshape, "layers.1.mlp.up_proj.weight has shape")]:
        (tmp_path / name).mkdir()
        with pytest.raises(ValueError, match=pattern):
            load_model(_copy_with_state(tiny_dir, tmp_path / name, edit))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "nowhere")


def _with_config(src, dst, edit):
    """A copy of checkpoint `src` in `dst` whose config.json has been changed by `edit(config)`."""
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    config = json.loads((src / "config.json").read_text())
    edit(config)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _sliding(c):  # what a user who turns sliding windows on writes; transformers recomputes layer_types
    c["text_config"].update(use_sliding_window=True, sliding_window=4, max_window_layers=0)
    del c["text_config"]["layer_types"]


ROPE_LINEAR = dict(rope_type="linear", factor=2.0, rope_theta=10000.0, mrope_section=[4, 6, 6])


@pytest.mark.parametrize("edit, field", [
    (_sliding, "use_sliding_window"),
    (lambda c: c["text_config"].update(layer_types=["full_attention"] * 3 + ["sliding_attention"]), "layer_types"),
    (lambda c: c["text_config"].update(hidden_act="gelu"), "hidden_act"),
    (lambda c: c["text_config"].update(attention_dropout=0.1), "attention_dropout"),
    (lambda c: c["text_config"].update(head_dim=16), "head_dim"),
    (lambda c: c["text_config"].update(rope_parameters=ROPE_LINEAR), "rope_type"),
    (lambda c: c["vision_config"].update(out_hidden_size=64), "out_hidden_size"),
    (lambda c: c.update(model_type="qwen2_vl"), "model_type"),
], ids=["sliding_window", "layer_types", "hidden_act", "attention_dropout", "head_dim", "rope_type",
        "out_hidden_size", "model_type"])
def test_config_that_changes_the_math_is_refused(tiny_dir, tmp_path, edit, field):
    """transformers computes something else for each of these (or cannot run them): loading must
    fail with the field named, never succeed and then give different logits."""
    with pytest.raises(ValueError, match=field):
        load_model(_with_config(tiny_dir, tmp_path / "edited", edit))


def test_config_fields_that_do_not_change_the_math_load(tiny_dir, tmp_path):
    def edit(c):  # a window size is harmless while use_sliding_window is false (transformers ignores it)
        c["text_config"].update(sliding_window=8, max_window_layers=0, max_position_embeddings=64,
                                initializer_range=0.5)

    load_model(_with_config(tiny_dir, tmp_path / "edited", edit))


def test_bf16_load(tiny_dir):
    model = load_model(tiny_dir, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.visual.dtype == torch.bfloat16


def test_naive_generate_equals_transformers_greedy(tiny_dir, mp4_path):
    batch = video_inputs(tiny_dir, mp4_path, suffix="")
    reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_dir).eval()
    expected = reference.generate(**batch, do_sample=False, max_new_tokens=12, eos_token_id=None)
    expected = expected[0, batch["input_ids"].shape[1]:].tolist()
    model = load_model(tiny_dir)
    embeds, positions = prepare_inputs(model, batch["input_ids"][0], batch["pixel_values_videos"],
                                       batch["video_grid_thw"], batch["second_per_grid_ts"])
    tokens, logprobs = generate(model, embeds, positions, max_new_tokens=12, greedy=True)
    assert tokens == expected
    assert all(lp <= 0 for lp in logprobs)


def test_encode_video_in_runs_of_temporal_groups(tiny_dir):
    """Without grad a long video goes through the vision tower in runs of whole temporal groups: the
    tower's attention never crosses a group, so the embeddings equal one call's."""
    model = load_model(tiny_dir)
    v = model.visual.config
    grid = torch.tensor([[6, 4, 6], [3, 2, 4]])  # two videos: 144 + 24 patches
    pixels = torch.randn(int(grid.prod(1).sum()), v.in_channels * v.temporal_patch_size * v.patch_size**2)
    with torch.no_grad():
        whole = model.encode_video(pixels, grid, max_patches=10**9)
        for max_patches in (1, 24, 50, 100):  # one group per run (a group alone is larger), 1, 2, 4 groups
            assert (model.encode_video(pixels, grid, max_patches=max_patches) - whole).abs().max() <= 1e-6
