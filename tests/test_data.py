"""The jsonl schema, the prompt template, SFT / RL examples, the token budget."""

import dataclasses
import json

import pytest
import torch
from transformers import AutoProcessor

from minirl import synth
from minirl.config import DataConfig
from minirl.data import (
    IGNORE_INDEX,
    VIDEO_PAD,
    DataError,
    PromptTooLong,
    build_prompt,
    encode_prompt,
    frame_mix,
    load_jsonl,
    rl_example,
    sft_example,
)
from minirl.video import FrameCache, FrameSampling, VideoError, read_video

SAMPLING = FrameSampling(num_frames=16)


@pytest.fixture(scope="module")
def processor(tiny_dir):
    return AutoProcessor.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    synth.generate(out, train=8, test=4, frames=64, size=56, fps=8, per_video=4, seed=0)
    return out


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_synth_jsonl(bench):
    examples = load_jsonl(bench / "train.jsonl")
    assert len(examples) == 8
    ex = examples[0]
    assert ex.video == bench / "videos/train/00000.mp4" and ex.video.is_file()
    assert ex.answer in "ABCD" and len(ex.options) == 4 and ex.reasoning and ex.category
    assert ex.row["events"] and ex.id == "train-00000-0"


def test_video_str_video_dir_and_default_id(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['{"problem": "Q?", "answer": 3, "video": "a.mp4"}', ""])
    (ex,) = load_jsonl(path, video_dir=tmp_path / "vids")
    assert ex.video == tmp_path / "vids/a.mp4" and ex.answer == "3" and ex.id == "d-1"
    assert ex.options is None and ex.reasoning is None


GOOD = '{"problem": "Q?", "answer": "A", "videos": ["v.mp4"]}'


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"problem": "Q?", "answer": "A", "videos": ["v.mp4"]', "not valid JSON"),
        ('["problem"]', "expected a JSON object"),
        ('{"answer": "A", "videos": ["v.mp4"]}', "missing field 'problem'"),
        ('{"problem": "Q?", "videos": ["v.mp4"]}', "missing field 'answer'"),
        ('{"problem": "Q?", "answer": "A"}', "missing field 'videos'"),
        ('{"problem": "Q?", "answer": "A", "videos": {"v": 1}}', "'videos' must be a path string or a list"),
        ('{"problem": "Q?", "answer": "A", "video": "v", "problem_id": 1.5}', "'problem_id' must be a string"),
        ('{"problem": "Q?", "answer": "A", "videos": ["a.mp4", "b.mp4"]}', "exactly one"),
        ('{"problem": 5, "answer": "A", "videos": ["v.mp4"]}', "'problem' must be a non-empty string"),
        ('{"problem": "Q?", "answer": null, "videos": ["v.mp4"]}', "'answer' must be a string"),
        ('{"problem": "Q?", "answer": "A", "video": 7}', "'video' must be a path string"),
        ('{"problem": "Q?", "answer": "A", "video": "v.mp4", "options": "A. x"}', "'options' must be a list"),
        ('{"problem": "Q?", "answer": "A", "video": "v", "reasoning": 1}', "'reasoning' must be a string"),
    ],
)
def test_malformed_lines_name_file_line_and_fix(tmp_path, bad, message):
    path = write_lines(tmp_path / "data.jsonl", [GOOD, "", bad, GOOD])
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    text = str(err.value)
    assert f"{path}, line 3:" in text and message in text and "Fix:" in text


def test_prompt_template():
    prompt = build_prompt("What came first?", ["A. red square", "B. blue circle"])
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What came first?\n"
        "A. red square\nB. blue circle\n"
        "Think step by step inside <think> </think> tags, then give the letter of the correct option "
        "inside <answer> </answer> tags.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "final answer" in build_prompt("How many?") and "letter" not in build_prompt("How many?")


def test_expansion_matches_the_transformers_processor(bench, processor):
    ex = load_jsonl(bench / "test.jsonl")[0]
    frames = read_video(ex.video, SAMPLING).frames
    prompt = build_prompt(ex.problem, ex.options)
    ref = processor(text=[prompt], videos=[frames], do_sample_frames=False, cap_pixels_per_frame=False,
                    return_tensors="pt")
    n = int(ref["video_grid_thw"].prod()) // 4
    assert n == 8 * 4  # 16 frames -> 8 temporal patches of 2x2 merged tokens (56x56 frames)
    assert encode_prompt(processor, prompt, n) == ref["input_ids"][0].tolist()


def test_sft_example(bench, processor):
    ex = load_jsonl(bench / "train.jsonl")[1]
    item = sft_example(ex, processor, SAMPLING, max_prompt_tokens=4096)
    ids, labels = item["input_ids"], item["labels"]
    assert ids.dtype == torch.long and ids.dim() == 1 and labels.shape == ids.shape
    pad = processor.tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    assert int((ids == pad).sum()) == int(item["video_grid_thw"].prod()) // 4
    trained = labels != IGNORE_INDEX
    start = int(trained.nonzero()[0])
    assert trained[start:].all() and not trained[:start].any()
    assert labels[trained].equal(ids[trained])
    target = processor.tokenizer.decode(ids[start:])
    assert target == f"<think>{ex.reasoning}</think><answer>{ex.answer}</answer><|im_end|>"
    assert processor.tokenizer.decode(ids[:start]).endswith("<|im_start|>assistant\n")
    assert item["num_frames"] == 16 and not item["frames_reduced"]
    assert item["second_per_grid_ts"].tolist() == pytest.approx([2 / (16 / 8)])  # 16 frames of an 8 s video


def test_frame_mix_reads_each_count_in_turn(bench, processor):
    """data.frames_mix gives one sampling per count, and an example read with each has that many frames."""
    assert frame_mix(DataConfig(frames=16)) == [FrameSampling(num_frames=16)]
    mix = frame_mix(DataConfig(frames=16, frames_mix="8,32"))
    assert [s.num_frames for s in mix] == [8, 32]
    ex = load_jsonl(bench / "train.jsonl")[1]
    assert [sft_example(ex, processor, s, 4096)["num_frames"] for s in mix] == [8, 32]
    for bad in ("32,", "x", "0,8"):
        with pytest.raises(ValueError, match="frames_mix"):
            frame_mix(DataConfig(frames_mix=bad))


def test_cached_sft_example_equals_a_fresh_one_and_never_reopens_the_file(tmp_path, bench, processor):
    """With a FrameCache, the second epoch neither decodes nor probes the video (it may be gone)."""
    ex = load_jsonl(bench / "train.jsonl")[1]
    video = tmp_path / "copy.mp4"
    video.write_bytes(ex.video.read_bytes())
    ex = dataclasses.replace(ex, video=video)
    cache = FrameCache(max_mb=64)
    first = sft_example(ex, processor, SAMPLING, 4096, cache)
    video.unlink()
    again = sft_example(ex, processor, SAMPLING, 4096, cache)
    fresh = sft_example(load_jsonl(bench / "train.jsonl")[1], processor, SAMPLING, 4096)
    for key in ("input_ids", "labels", "pixel_values_videos", "video_grid_thw"):
        assert again[key].equal(first[key]) and again[key].equal(fresh[key])


def test_rl_example_is_the_sft_prompt(bench, processor):
    ex = load_jsonl(bench / "train.jsonl")[2]
    sft = sft_example(ex, processor, SAMPLING, max_prompt_tokens=4096)
    rl = rl_example(ex, processor, SAMPLING, max_prompt_tokens=4096)
    prompt_len = int((sft["labels"] == IGNORE_INDEX).sum())
    assert rl["input_ids"].equal(sft["input_ids"][:prompt_len])
    assert rl["pixel_values_videos"].equal(sft["pixel_values_videos"])
    assert (rl["answer"], rl["category"], rl["id"]) == (ex.answer, ex.category, ex.id)
    assert rl["row"]["task"] == ex.row["task"]


def test_sft_needs_reasoning(tmp_path, bench, processor):
    line = json.dumps({"problem": "Q?", "answer": "A", "videos": ["videos/test/00000.mp4"]})
    path = write_lines(tmp_path / "r.jsonl", [line])
    (ex,) = load_jsonl(path, video_dir=bench)
    with pytest.raises(ValueError, match="reasoning"):
        sft_example(ex, processor, SAMPLING, 4096)
    assert len(rl_example(ex, processor, SAMPLING, 4096)["input_ids"]) > 0


def test_budget_reduces_frames_and_keeps_the_question(bench, processor):
    ex = load_jsonl(bench / "test.jsonl")[3]
    full = rl_example(ex, processor, FrameSampling(num_frames=64), max_prompt_tokens=100_000)
    assert full["num_frames"] == 64 and not full["frames_reduced"]
    text_tokens = len(full["input_ids"]) - 32 * 4
    budget = text_tokens + 4 * 10 + 3  # room for 10 temporal patches, not 11
    fitted = rl_example(ex, processor, FrameSampling(num_frames=64), max_prompt_tokens=budget)
    assert fitted["frames_reduced"] and fitted["num_frames"] == 20
    assert len(fitted["input_ids"]) == text_tokens + 40 <= budget
    assert ex.problem in processor.tokenizer.decode(fitted["input_ids"])
    with pytest.raises(PromptTooLong, match="max_prompt_tokens"):
        rl_example(ex, processor, FrameSampling(num_frames=64), max_prompt_tokens=text_tokens + 3)


def test_missing_video_is_an_error_not_a_substitute(tmp_path, bench, processor):
    line = json.dumps({"problem": "Q?", "answer": "A", "videos": ["videos/test/99999.mp4"], "reasoning": "r"})
    (ex,) = load_jsonl(write_lines(tmp_path / "m.jsonl", [line]), video_dir=bench)
    with pytest.raises(VideoError, match="99999.mp4"):
        sft_example(ex, processor, SAMPLING, 4096)
