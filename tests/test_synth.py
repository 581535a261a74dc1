"""The synthetic benchmark: determinism, balance, real mp4 content, reasoning, the oracle, the CLI."""

import json
import re
from collections import Counter

import decord
import numpy as np
import pytest

from minirl import oracle, synth
from minirl.video import uniform_indices

SMALL = dict(train=12, test=8, frames=64, size=28, fps=8, per_video=4)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    synth.generate(out, seed=3, **SMALL)
    return out


@pytest.fixture(scope="module")
def rows():
    """A few hundred questions without writing videos: only the scripts and the jsonl rows."""
    return synth.make_split("test", 400, 256, 8, 4, seed=0)[1]


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_files_other_seed_other_files(small, tmp_path):
    """Also with the mp4s encoded in two processes: the bytes do not depend on the workers."""
    synth.generate(tmp_path / "again", seed=3, workers=2, **SMALL)
    synth.generate(tmp_path / "other", seed=4, **SMALL)

    def videos(root):
        return sorted(p.relative_to(root).as_posix() for p in root.glob("videos/*/*.mp4"))

    assert videos(small) == videos(tmp_path / "again") and len(videos(small)) == 5
    for name in ("train.jsonl", "test.jsonl", *videos(small)):
        assert (small / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
        if name in ("train.jsonl", "test.jsonl", "videos/train/00000.mp4", "videos/test/00001.mp4"):
            assert (small / name).read_bytes() != (tmp_path / "other" / name).read_bytes(), name


def test_train_and_test_share_no_video(small):
    train, test = read_rows(small / "train.jsonl"), read_rows(small / "test.jsonl")
    assert len(train) == SMALL["train"] and len(test) == SMALL["test"]
    train_videos = {r["videos"][0] for r in train}
    test_videos = {r["videos"][0] for r in test}
    assert len(train_videos) == 3 and len(test_videos) == 2 and not train_videos & test_videos
    train_bytes = {(small / v).read_bytes() for v in train_videos}
    assert not train_bytes & {(small / v).read_bytes() for v in test_videos}


def test_categories_and_letters_are_balanced(rows):
    assert Counter(r["category"] for r in rows) == {c: 100 for c in synth.CATEGORIES}
    for category in synth.CATEGORIES:
        letters = Counter(r["answer"] for r in rows if r["category"] == category)
        assert letters == {letter: 25 for letter in "ABCD"}, category
    kinds = Counter(r["task"]["kind"] for r in rows)
    assert set(kinds) >= {"after", "where", "which_at", "heading", "mover", "count", "order"}


def test_schema(small):
    for row in read_rows(small / "train.jsonl"):
        assert set(row) >= {"problem", "options", "answer", "videos", "reasoning", "category", "id", "events"}
        assert [o[:3] for o in row["options"]] == ["A. ", "B. ", "C. ", "D. "]
        assert len({o[3:] for o in row["options"]}) == 4  # four different options
        assert row["answer"] in "ABCD" and row["category"] in synth.CATEGORIES


def test_every_mp4_decodes_to_the_advertised_frames_and_shows_the_events(small):
    rows = read_rows(small / "train.jsonl") + read_rows(small / "test.jsonl")
    size = SMALL["size"]
    for path in sorted({r["videos"][0] for r in rows}):
        row = next(r for r in rows if r["videos"][0] == path)
        reader = decord.VideoReader(str(small / path), num_threads=1)
        assert len(reader) == row["num_frames"] == SMALL["frames"]
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()  # (T, H, W, 3)
        assert frames.shape == (SMALL["frames"], size, size, 3)
        lit = np.zeros(len(frames), bool)
        for event in row["events"]:
            for f in range(event["start"], event["start"] + event["frames"]):
                lit[f] = True
                x, y = synth.position(event, f)
                pixel = frames[f, int(y * size), int(x * size)].astype(int)
                assert np.abs(pixel - synth.COLOURS[event["colour"]]).max() < 40, (path, event, f)
        dark = frames[~lit].reshape(-1, 3).astype(int)
        assert np.abs(dark - synth.BACKGROUND).max() < 20  # nothing shows between events


def test_reasoning_cites_the_answer(rows):
    for row in rows:
        letter = row["answer"]
        text = row["options"]["ABCD".index(letter)][3:]
        reasoning = row["reasoning"]
        assert reasoning.endswith(f"So the answer is {letter}.")
        assert re.search(r"\b\d+\.\ds\b", reasoning), reasoning  # cites a timestamp such as 3.2s
        if row["task"]["kind"] == "order":
            positions = [reasoning.index(part) for part in text.split(", ")]
            assert positions == sorted(positions)
        elif row["task"]["kind"] == "count":
            assert f"{text} in total" in reasoning
        else:
            assert text in reasoning, (text, reasoning)
        assert len(reasoning.split()) < 60


def test_answers_follow_from_the_events(rows):
    """Recompute each answer from the event script, independently of the question templates."""
    for row in rows:
        events, task = row["events"], row["task"]
        answer = task["choices"]["ABCD".index(row["answer"])]
        kind = task["kind"]
        if kind == "after":
            assert answer == task["subject"] + 1
        elif kind in ("first", "last"):
            starts = [events[i]["start"] for i in task["choices"]]
            assert events[answer]["start"] == (min(starts) if kind == "first" else max(starts))
        elif kind == "where":
            assert answer == events[task["subject"]]["pos"] and events[task["subject"]]["to"] is None
        elif kind == "which_at":
            there = [i for i, e in enumerate(events) if task["quadrant"] in (e["pos"], e["to"])]
            assert there == [answer]
        elif kind == "heading":
            assert answer == events[task["subject"]]["to"]
        elif kind == "mover":
            assert [i for i, e in enumerate(events) if e["to"]] == [answer]
        elif kind == "count":
            assert answer == len(events)
        else:
            assert [events[i]["start"] for i in answer] == sorted(events[i]["start"] for i in answer)


def test_oracle_never_rules_out_the_truth_and_is_exact_with_all_frames(rows):
    for row in rows[:120]:
        truth = "ABCD".index(row["answer"])
        for k in (2, 8, 32, 128, 256):
            assert truth in oracle.oracle_candidates(row, uniform_indices(256, k)), (row["id"], k)
        assert oracle.oracle_candidates(row, np.arange(256)) == [truth]


def test_oracle_accuracy_rises_with_frames(rows):
    acc = {k: oracle.oracle_accuracy(rows, k) for k in (8, 32, 64, None)}
    overall = [acc[k]["overall"] for k in (8, 32, 64, None)]
    assert overall == sorted(overall) and overall[0] < 0.4 and overall[2] < 0.8
    assert acc[None] == {c: 1.0 for c in (*synth.CATEGORIES, "overall")}
    for c in synth.CATEGORIES:
        assert acc[8][c] < acc[64][c] < 1.0


def test_oracle_uses_only_the_sampled_frames():
    events = [
        dict(colour="red", shape="square", start=10, frames=2, pos="top-left", to=None),
        dict(colour="blue", shape="circle", start=30, frames=2, pos="top-right", to=None),
        dict(colour="green", shape="square", start=50, frames=2, pos="bottom-left", to=None),
        dict(colour="yellow", shape="circle", start=70, frames=6, pos="bottom-right", to="top-left"),
    ]
    row = dict(events=events, num_frames=100, task=dict(kind="count", choices=[2, 3, 4, 5]))
    assert oracle.oracle_candidates(row, np.arange(100)) == [2]  # saw all four, nothing missed
    assert oracle.oracle_candidates(row, [10, 30, 50]) == [1, 2, 3]  # saw three, could have missed more
    row["task"] = dict(kind="heading", subject=3, choices=list(synth.QUADRANTS))
    assert oracle.oracle_candidates(row, [72, 73]) == [0]  # two sightings give the direction
    assert oracle.oracle_candidates(row, [72]) == [0, 3]  # on the line between two quadrants
    assert oracle.oracle_candidates(row, [70]) == [0, 1, 2, 3]  # at a centre: its start or its goal?
    assert oracle.oracle_candidates(row, [75]) == [0, 1, 2, 3]
    assert oracle.oracle_candidates(row, [5]) == [0, 1, 2, 3]
    row["task"] = dict(kind="mover", subject=3, choices=[0, 1, 2, 3])
    assert oracle.oracle_candidates(row, [72]) == [3]  # off a centre: it is the one moving
    assert oracle.oracle_candidates(row, [10, 11, 75]) == [1, 2, 3]  # the red square stood still


def test_report_and_cli(small, tmp_path, capsys):
    oracle.main([str(small / "test.jsonl")])
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["8", "16", "32", "all"]
    assert lines[-1].split()[1:] == ["100.0%"] * 5
    synth.main(["--out", str(tmp_path / "cli"), "--train", "4", "--test", "4", "--frames", "64",
                "--size", "84"])
    assert "wrote 4 train / 4 test" in capsys.readouterr().out
    assert len(read_rows(tmp_path / "cli" / "test.jsonl")) == 4
    reader = decord.VideoReader(str(tmp_path / "cli/videos/test/00000.mp4"))
    assert reader.get_batch([0]).shape == (1, 84, 84, 3)


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--frames"):
        synth.generate(tmp_path, train=4, test=4, frames=32)
    for size in (0, 30, 32):
        with pytest.raises(ValueError, match="--size"):
            synth.generate(tmp_path, train=4, test=4, size=size)


def test_corpus_covers_questions_options_and_prompt():
    texts = synth.corpus(num_videos=8)
    assert texts == synth.corpus(num_videos=8)
    joined = "\n".join(texts)
    for word in ("<think>", "<answer>", "top-left", "How many shapes", "So the answer is", "yellow circle"):
        assert word in joined


def test_captions_name_exactly_the_events_the_sampled_frames_show():
    _, rows = synth.make_split("train", 40, 128, 8, 1, seed=0, captions=16)
    for row in rows:
        indices = uniform_indices(128, 16).tolist()
        shown = [e for e in row["events"] if any(synth.on_screen(e, f) for f in indices)]
        text = row["reasoning"]
        assert row["answer"] == str(len(shown)) and text.endswith(f"{len(shown)} in total.")
        at = [text.index(f"the {synth.name(e)} at the {e['pos']}") for e in shown]
        assert at == sorted(at)  # in time order
        hidden = [e for e in row["events"] if e not in shown]
        assert not any(synth.name(e) in text for e in hidden)
    assert any(len(r["events"]) > int(r["answer"]) for r in rows)  # 16 of 128 frames miss some events


def test_dense_videos_have_few_long_events():
    _, rows = synth.make_split("train", 50, 128, 8, 1, seed=0, captions=32, dense=True)
    for row in rows:
        events = row["events"]
        slot = 128 // len(events)
        assert 1 <= len(events) <= 3 and all(e["frames"] >= slot // 2 for e in events)
        assert row["answer"] == str(len(events))  # every long event is seen at 32 frames
