"""The official LongVideo-Reason files: rows in the Hugging Face format, webm / mkv / mp4 videos,
and the lmms-eval `longvideo_reason` metrics beside our table."""

import json
from pathlib import Path

import av
import numpy as np
import pytest

import evaluate as ev
import evaluation
from minirl.data import _parse, build_prompt, load_jsonl
from minirl.reward import accuracy_reward, embedded_options
from minirl.video import FrameSampling, probe, read_video

# Hand-written in the exact format of the official test.jsonl (problem_id 0's shape): options inside
# `problem`, the answer wrapped in <answer> tags, `videos` a relative path string.
ROWS = [
    {"problem_id": 0, "problem": "What is the primary intention behind the sequence of animals (0:00:00-0:08:50)?"
     "\nA. To rank the animals by size.\nB. To contrast human athleticism with animal locomotion."
     "\nC. To show a zoo tour.\nD. To teach animal names.", "data_type": "video", "problem_type": "goal",
     "reasoning": "The sequence contrasts people running with animals moving.",
     "videos": "longvila_videos/clip0.webm", "answer": "<answer>B</answer>"},
    {"problem_id": 1, "problem": "Which event happens first?\nA. The door opens.\nB. The dog barks."
     "\nC. The light turns off.\nD. The car leaves.", "data_type": "video", "problem_type": "temporal",
     "reasoning": "The door opens at 0:00:02, before everything else.",
     "videos": "longvila_videos/clip1.mkv", "answer": "<answer>A</answer>"},
    {"problem_id": 2, "problem": "Where is the red box relative to the chair?\nA. Left of it.\nB. Behind it."
     "\nC. On top of it.\nD. Under it.", "data_type": "video", "problem_type": "spatial",
     "reasoning": "The box sits on the seat.", "videos": "longvila_videos/clip2.mp4",
     "answer": "<answer>C</answer>"},
    {"problem_id": 379, "problem": "Why does the story end in the kitchen?", "data_type": "video",
     "problem_type": "plot", "reasoning": "It starts there too.", "videos": "longvila_videos/clip0.webm",
     "answer": "<answer>D</answer>"},  # like the two official rows that ship without options
]


def write_video(path, codec: str, frames: np.ndarray, fps: int = 4):
    """A real video file through PyAV: libvpx (VP8) for webm, libx264 for mkv and mp4."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frames(t: int = 12) -> np.ndarray:
    """A bright block in channel t % 3 moving right over dark noise: every frame says which it is."""
    out = np.random.default_rng(0).integers(0, 60, size=(t, 56, 84, 3), dtype=np.uint8)
    for k in range(t):
        out[k, 8:28, 4 + 5 * k: 24 + 5 * k, k % 3] = 230
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvr")
    (root / "longvila_videos").mkdir()
    for name, codec in [("clip0.webm", "libvpx"), ("clip1.mkv", "libx264"), ("clip2.mp4", "libx264")]:
        write_video(root / "longvila_videos" / name, codec, frames())
    path = root / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_official_rows_load_unchanged(dataset):
    examples = load_jsonl(dataset)
    assert [e.id for e in examples] == ["0", "1", "2", "379"]
    assert [e.category for e in examples] == ["Goal & Purpose", "Temporal", "Spatial", "Plot & Narrative"]
    assert [e.answer for e in examples] == ["B", "A", "C", "D"]
    assert [e.row for e in examples] == ROWS  # the raw row is kept as it was
    first = examples[0]
    assert first.video == dataset.parent / "longvila_videos/clip0.webm"
    assert first.problem == "What is the primary intention behind the sequence of animals (0:00:00-0:08:50)?"
    assert first.options == ["A. To rank the animals by size.",
                             "B. To contrast human athleticism with animal locomotion.",
                             "C. To show a zoo tour.", "D. To teach animal names."]
    assert ROWS[0]["problem"] + "\n" in build_prompt(first.problem, first.options)  # the row's own text
    assert "letter of the correct option" in build_prompt(first.problem, first.options)
    no_options = examples[3]
    assert no_options.options is None and no_options.problem == ROWS[3]["problem"]


def test_list_videos_and_wrapped_answers_with_our_fields(tmp_path):
    row = {"problem": "Q?\nA. x\nB. y", "answer": " <answer> B </answer>\n", "videos": ["v.mkv"],
           "problem_type": "general", "options": ["A. x", "B. y"], "id": "k"}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    (ex,) = load_jsonl(tmp_path / "d.jsonl")
    # an explicit options field wins and the problem is left whole; an unknown problem_type is kept
    assert ex.answer == "B" and ex.problem == row["problem"] and ex.options == row["options"]
    assert ex.category == "general" and ex.id == "k" and ex.video == tmp_path / "v.mkv"


def test_embedded_options_and_reward_read_them():
    problem = ROWS[0]["problem"]
    found = embedded_options(problem)
    assert [text[0] for _, text in found] == list("ABCD") and problem[found[0][0]:].startswith("A. To rank")
    assert embedded_options("No options here. A. is not at a line start") == []
    # the reward reads the options from the problem text: named by text, or by letter
    assert accuracy_reward("<answer>To contrast human athleticism with animal locomotion.</answer>", "B",
                           ROWS[0]) == 1.0
    assert accuracy_reward("<answer>B</answer>", "B", ROWS[0]) == 1.0
    assert accuracy_reward("<answer>E</answer>", "E", ROWS[0]) == 0.0  # E is not offered


@pytest.mark.parametrize("name", ["clip0.webm", "clip1.mkv", "clip2.mp4"])
def test_webm_mkv_mp4_decode_the_same(dataset, name):
    path = dataset.parent / "longvila_videos" / name
    meta = probe(path)
    assert (meta.num_frames, meta.fps, meta.height, meta.width) == (12, 4.0, 56, 84)
    video = read_video(path, FrameSampling(num_frames=6))
    assert video.frames.shape == (6, 56, 84, 3) and video.indices.tolist() == [1, 3, 5, 7, 9, 11]
    truth = frames()[video.indices]
    assert np.abs(video.frames.astype(int) - truth).mean() < 20  # lossy codecs: close, not equal
    for k, i in enumerate(video.indices):  # the bright block is where and in the channel it was written
        block = video.frames[k, 10:26, 6 + 5 * i: 22 + 5 * i]
        assert block[..., i % 3].mean() > 180 and np.delete(block, i % 3, axis=-1).mean() < 90


def record(row, responses, error=None):
    """The prediction record evaluate.py writes for `row`, with these responses."""
    ex = _parse(row, "fixture.jsonl", 1, Path("."))
    return dict(responses=responses, error=error, answer=ex.answer, category=ex.category, options=ex.options)


@pytest.mark.parametrize("response, strict, lenient, fmt", [
    ("<think>the runners</think><answer>B</answer>", 100, 100, 100),
    ("<think>x</think> <answer>B.</answer>", 0, 100, 100),  # the official == rejects "B."; lenient reads B
    ("<think>x</think><answer>B. To contrast human athleticism</answer>", 0, 100, 100),
    ("<answer>Therefore the final answer is: B</answer>", 100, 100, 0),  # the official phrase branch
    ("The answer is \\boxed{B}", 0, 100, 0),
    ("<think>not A, not C</think><answer>A or B</answer>", 0, 0, 100),  # a list names nothing
    ("<answer>E</answer>", 0, 0, 0),  # not an offered letter
    ("<think>x</think><answer>C</answer> trailing", 0, 0, 100),  # format: unanchored at the end, as official
])
def test_lmms_metrics_hand_computed(response, strict, lenient, fmt):
    m = ev.lmms_metrics([record(ROWS[0], [response])])
    assert m["longvideo_reason_strict_accuracy"] == strict
    assert m["longvideo_reason_overall_accuracy"] == m["longvideo_reason_goal_accuracy"] == lenient
    assert m["longvideo_reason_format_accuracy"] == fmt
    assert m["longvideo_reason_temporal_accuracy"] == 0  # no temporal question: 0, as lmms-eval


def test_lmms_metrics_averages_and_wellformed():
    answers = [["<answer>B</answer>", "<answer>C</answer>"], ["<answer>A</answer>"], ["<answer>C</answer>"],
               ["<answer>D</answer>"]]
    records = [record(row, responses) for row, responses in zip(ROWS, answers, strict=True)]
    records.append(record(ROWS[1], [], error="cannot read video"))  # an error scores 0
    m = ev.lmms_metrics(records)
    assert m["longvideo_reason_strict_accuracy"] == pytest.approx(100 * (0.5 + 1 + 1 + 1 + 0) / 5)
    # problem 379 offers no options: strict still matches the span "D", lenient has no letter to read
    assert m["longvideo_reason_overall_accuracy"] == pytest.approx(100 * (0.5 + 1 + 1 + 0 + 0) / 5)
    assert m["longvideo_reason_wellformed_accuracy"] == pytest.approx(100 * (0.5 + 1 + 1 + 0) / 4)
    assert m["longvideo_reason_temporal_accuracy"] == 50 and m["longvideo_reason_plot_accuracy"] == 0
    assert m["longvideo_reason_spatial_accuracy"] == 100 and m["longvideo_reason_goal_accuracy"] == 50


def test_eval_cli_on_official_rows(dataset, tiny_dir, tmp_path):
    pred = tmp_path / "pred.jsonl"
    table = ev.main(["--model", str(tiny_dir), "--data", str(dataset), "--out", str(pred), "--frames", "8",
                     "--max-new-tokens", "6", "--device", "cpu"])
    records = [json.loads(line) for line in pred.read_text().splitlines()]
    assert [r["error"] for r in records] == [None] * 4  # webm, mkv and mp4 all decoded
    assert [r["num_frames"] for r in records] == [8] * 4
    assert sorted(table["categories"]) == ["Goal & Purpose", "Plot & Narrative", "Spatial", "Temporal"]
    assert table["lmms_eval"] == ev.lmms_metrics(records)
    assert "lmms-eval longvideo_reason: overall" in evaluation.format_table(table)
