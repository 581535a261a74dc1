"""evaluate.py and evaluation.py end to end on synthetic questions: table structure, counts, predictions, scoring."""

import json

import pytest
from transformers import AutoProcessor

import evaluate as ev
import evaluation
from minirl import synth
from minirl.data import load_jsonl
from minirl.model import load_model
from minirl.reward import accuracy_reward, extract_answer, format_reward
from minirl.video import FrameSampling

ARGS = ["--frames", "8", "--max-new-tokens", "6", "--batch-size", "3", "--device", "cpu"]



@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """8 synthetic questions (2 per category) on 4 real 64-frame mp4s."""
    out = tmp_path_factory.mktemp("synth")
    synth.generate(out, train=0, test=8, frames=64, size=56, fps=8, per_video=2)
    return out / "test.jsonl"


@pytest.fixture(scope="module")
def cli_run(bench, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    pred, table_json = out / "pred.jsonl", out / "table.json"
    table = ev.main(["--model", str(tiny_dir), "--data", str(bench), "--out", str(pred),
                     "--json", str(table_json), *ARGS])
    return table, pred, table_json


def test_cli_table_and_predictions(bench, cli_run):
    table, pred, table_json = cli_run
    rows = [json.loads(line) for line in bench.read_text().splitlines()]
    records = [json.loads(line) for line in pred.read_text().splitlines()]
    assert [r["id"] for r in records] == [r["id"] for r in rows]  # one per question, dataset order
    assert json.loads(table_json.read_text()) == table

    categories = sorted({r["category"] for r in rows})
    assert list(table["categories"]) == categories and len(categories) == 4
    for name, row in table["categories"].items():
        mine = [r for r in records if r["category"] == name]
        assert row["questions"] == len(mine) == 2 and row["errors"] == 0
        assert row["accuracy"] == pytest.approx(sum(r["accuracy"][0] for r in mine) / 2)
        assert row["format_accuracy"] == pytest.approx(sum(r["format"][0] for r in mine) / 2)
    overall = table["overall"]
    assert overall["questions"] == 8 and overall["errors"] == 0
    assert overall["accuracy"] == pytest.approx(sum(r["accuracy"][0] for r in records) / 8)

    for record, row in zip(records, rows, strict=True):  # every stored score is the reward of the stored text
        assert record["error"] is None and record["answer"] == row["answer"]
        (text,) = record["responses"]
        assert record["accuracy"] == [accuracy_reward(text, row["answer"], row)]
        assert record["format"] == [format_reward(text)]
        assert record["answers"] == [extract_answer(text)]
        assert 1 <= record["response_tokens"][0] <= 6 and record["num_frames"] == 8


def test_evaluate_is_importable_and_matches_the_cli(bench, tiny_dir, cli_run):
    """The library's table (what the trainers log) is the CLI's, which adds lmms-eval's metrics of its predictions."""
    model, processor = load_model(tiny_dir), AutoProcessor.from_pretrained(tiny_dir)
    table = evaluation.evaluate(model, processor, load_jsonl(bench), FrameSampling(num_frames=8), max_new_tokens=6,
                                batch_size=8)
    cli_table = dict(cli_run[0])
    lmms = cli_table.pop("lmms_eval")
    assert table == cli_table
    assert lmms == ev.lmms_metrics([json.loads(x) for x in cli_run[1].read_text().splitlines()])
    assert "Overall" in evaluation.format_table(table) and "Temporal" in evaluation.format_table(table)


def test_predictions_never_overwritten(bench, tiny_dir, cli_run, tmp_path, monkeypatch):
    _, pred, _ = cli_run
    before = pred.read_text()
    with pytest.raises(SystemExit):
        ev.main(["--model", str(tiny_dir), "--data", str(bench), "--out", str(pred), *ARGS])
    assert pred.read_text() == before
    monkeypatch.chdir(tmp_path)  # without --out: a fresh name each run
    for _ in range(2):
        ev.main(["--model", str(tiny_dir), "--data", str(bench), "--limit", "1", *ARGS])
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["test.predictions.1.jsonl", "test.predictions.jsonl"]


def test_bad_videos_are_counted_errors(bench, tiny_dir, tmp_path):
    rows = [json.loads(line) for line in bench.read_text().splitlines()][:3]
    (tmp_path / "truncated.mp4").write_bytes((bench.parent / rows[1]["videos"][0]).read_bytes()[:300])
    rows[1]["videos"] = [str(tmp_path / "truncated.mp4")]
    rows[2]["videos"] = [str(tmp_path / "missing.mp4")]
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pred = tmp_path / "pred.jsonl"
    table = ev.main(["--model", str(tiny_dir), "--data", str(data), "--video-dir", str(bench.parent),
                     "--out", str(pred), *ARGS])
    records = [json.loads(line) for line in pred.read_text().splitlines()]
    assert [r["error"] is None for r in records] == [True, False, False]
    assert "truncated.mp4" in records[1]["error"] and "missing.mp4" in records[2]["error"]
    assert table["overall"]["questions"] == 3 and table["overall"]["errors"] == 2
    assert table["overall"]["accuracy"] == pytest.approx(records[0]["accuracy"][0] / 3)  # errors score 0


def test_sampled_responses_do_not_depend_on_the_batch(bench, tiny_dir):
    model, processor = load_model(tiny_dir), AutoProcessor.from_pretrained(tiny_dir)
    examples = load_jsonl(bench)[:3]
    params = evaluation.sampling_params(model, processor, max_new_tokens=6, n=2, temperature=1.0, seed=3)
    frames = FrameSampling(num_frames=8)
    runs = [list(evaluation.predict(model, processor, examples, frames, 4096, params, batch_size=b)) for b in (1, 3)]
    assert [r["responses"] for r in runs[0]] == [r["responses"] for r in runs[1]]
    assert all(len(r["responses"]) == 2 and len(r["accuracy"]) == 2 for r in runs[0])
    with pytest.raises(ValueError, match="temperature"):
        evaluation.sampling_params(model, processor, n=2, temperature=0.0)


def test_merge_shards():
    assert evaluation.merge_shards([[0, 2, 4], [1, 3]]) == [0, 1, 2, 3, 4]
    assert evaluation.merge_shards([[0, 3], [1], [2]]) == [0, 1, 2, 3]
    assert evaluation.merge_shards([[]]) == []


def test_video_ablation_gives_every_question_another_video(bench):
    examples = load_jsonl(bench)
    swapped = ev.swap_videos(examples)
    assert [e.problem for e in swapped] == [e.problem for e in examples]
    assert all(a.video != b.video for a, b in zip(examples, swapped, strict=True))
    assert sorted(map(str, (e.video for e in swapped))) == sorted(map(str, (e.video for e in examples)))


def test_curate_keeps_only_questions_with_diverse_answers(bench, tmp_path):
    examples = load_jsonl(bench)[:4]
    records = [dict(error=None, accuracy=a) for a in ([1, 1], [0, 1], [0, 0], [1, 0, 0, 0])]
    kept = ev.curate(examples, records, tmp_path / "kept.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert kept == 2 and [r["id"] for r in rows] == [examples[1].id, examples[3].id]
    assert [r["pass_rate"] for r in rows] == [0.5, 0.25]
    assert load_jsonl(tmp_path / "kept.jsonl")[0].video == examples[1].video  # absolute paths resolve anywhere
