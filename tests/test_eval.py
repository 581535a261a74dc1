"""evaluate.py and evaluation.py end to end on synthetic questions: table structure, counts, predictions, scoring."""

import json
from collections import Counter

import pytest
from transformers import AutoProcessor

import evaluate as ev
import evaluation
import rollout
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


def test_cli_compile_reaches_the_sampler(bench, tiny_dir, cli_run, tmp_path, monkeypatch):
    """--compile decodes with the sampler's static step: the CLI's table. The step runs uncompiled here (its compiled
    equality is tests/test_static_decode.py's), so this checks the flag's path, not torch.compile."""
    flags = []

    def static_sample(*args, compile=False, **kwargs):
        flags.append(compile)
        return rollout.sample(*args, static=compile, **kwargs)

    monkeypatch.setattr(evaluation, "sample", static_sample)
    table = ev.main(["--model", str(tiny_dir), "--data", str(bench), "--out", str(tmp_path / "pred.jsonl"), "--compile",
                     *ARGS])
    assert flags == [True] * 3 and table == cli_run[0]  # 8 questions in batches of 3


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
    counts = ev.curate(examples, records, tmp_path / "kept.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert counts == Counter(diverse=2, kept=2) and "real_above_ablated" not in counts
    assert [r["id"] for r in rows] == [examples[1].id, examples[3].id]
    assert [r["pass_rate"] for r in rows] == [0.5, 0.25]
    assert load_jsonl(tmp_path / "kept.jsonl")[0].video == examples[1].video  # absolute paths resolve anywhere


def scored(category, answers, accuracy, error=None):
    """A prediction record as `evaluation.predict` writes it, with only what the table reads."""
    return dict(category=category, error=error, answers=answers, accuracy=accuracy, format=[0.0] * len(accuracy))


def test_pass_and_majority_at_n_by_hand():
    records = [
        scored("Temporal", ["B", "C", "B", "A"], [1, 0, 1, 0]),  # B has most votes: right
        scored("Temporal", ["C", "B", "C", "B"], [0, 1, 0, 1]),  # tie: C answered first, wrong
        scored("Spatial", ["C", "b.", "(B)", "C", "B"], [0, 1, 1, 0, 1]),  # "b." and "(B)" are "B": 3 votes
        scored("Spatial", ["", "B", "A", "B", "A"], [0, 1, 0, 1, 0]),  # "A" (an article) never pools with ""
        scored("Spatial", [], [], error="missing.mp4"),  # an error scores 0 in both
    ]
    assert [evaluation.majority_correct(r) for r in records] == [1, 0, 1, 1, 0]
    # "A B" names no option and "B" does, though both normalise to "b": B (2 votes) ties C, and comes first
    assert evaluation.majority_correct(scored("x", ["A B", "B", "C", "C", "B"], [0, 1, 0, 0, 1])) == 1

    table = evaluation.make_table(records)
    temporal, spatial, overall = table["categories"]["Temporal"], table["categories"]["Spatial"], table["overall"]
    assert (temporal["accuracy"], temporal["pass_at_n"], temporal["majority_at_n"]) == (0.5, 1.0, 0.5)
    assert spatial["pass_at_n"] == spatial["majority_at_n"] == pytest.approx(2 / 3)
    assert (overall["pass_at_n"], overall["majority_at_n"]) == (0.8, 0.6)
    assert spatial["accuracy"] == pytest.approx((0.6 + 0.4 + 0) / 3)

    lines = evaluation.format_table(table).splitlines()
    assert lines[0].split() == ["category", "questions", "errors", "accuracy", "format", "pass@n", "majority@n"]
    assert lines[-1].split()[-2:] == ["80.0%", "60.0%"] and len(lines[-1]) == len(lines[0])


def test_one_response_table_is_unchanged():
    """n = 1 tables keep their keys and their printed text (the demo's summary.json reads them)."""
    records = [scored("Temporal", ["B"], [1.0]), scored("Temporal", ["C"], [0.0]), scored("Spatial", ["A"], [1.0]),
               scored(None, [], [], error="missing.mp4")]
    records[0]["format"] = records[1]["format"] = [1.0]
    table = evaluation.make_table(records)
    assert all(set(row) == {"questions", "errors", "accuracy", "format_accuracy"}
               for row in [*table["categories"].values(), table["overall"]])
    assert evaluation.format_table(table) == (
        "category             questions errors  accuracy  format\n"
        "(none)                       1      1      0.0%    0.0%\n"
        "Spatial                      1      0    100.0%    0.0%\n"
        "Temporal                     2      0     50.0%  100.0%\n"
        "-------------------------------------------------------\n"
        "Overall                      4      1     50.0%   50.0%")


def test_curate_with_ablation_keeps_questions_read_from_the_video(bench, tmp_path):
    examples = load_jsonl(bench)[:4]
    records = [dict(error=None, accuracy=a) for a in ([0, 1], [0, 1], [1, 1], [1, 0, 0, 0])]
    ablated = [dict(error=None, accuracy=a) for a in ([0, 0], [1, 1], [0, 0])] + [dict(error="bad.mp4", accuracy=[])]
    counts = ev.curate(examples, records, tmp_path / "kept.jsonl", ablated)
    rows = [json.loads(x) for x in (tmp_path / "kept.jsonl").read_text().splitlines()]
    # diverse: 0, 1, 3; real above ablated: 0, 2 (3's ablated decode failed: no evidence); both: 0
    assert counts == Counter(diverse=3, real_above_ablated=2, kept=1)
    assert [(r["id"], r["pass_rate"], r["ablated_pass_rate"]) for r in rows] == [(examples[0].id, 0.5, 0.0)]


def test_cli_curation_with_ablation_and_headroom(bench, tiny_dir, tmp_path, capsys):
    pred, kept, headroom_json = tmp_path / "pred.jsonl", tmp_path / "kept.jsonl", tmp_path / "headroom.json"
    sampled = ["--n", "4", "--temperature", "1.0", "--limit", "4", *ARGS]
    table = ev.main(["--model", str(tiny_dir), "--data", str(bench), "--out", str(pred), "--curate", str(kept),
                     "--curate-ablation", "--headroom", str(headroom_json), *sampled])
    records = [json.loads(x) for x in pred.read_text().splitlines()]
    ablated = [json.loads(x) for x in (tmp_path / "pred.ablated.jsonl").read_text().splitlines()]
    examples = load_jsonl(bench)[:4]

    # the ablated decode is the real one's with the videos swapped: the same questions, the same seeds
    model, processor = load_model(tiny_dir), AutoProcessor.from_pretrained(tiny_dir)
    params = evaluation.sampling_params(model, processor, max_new_tokens=6, n=4, temperature=1.0)
    again = evaluation.predict(model, processor, ev.swap_videos(examples), FrameSampling(num_frames=8), 16384, params)
    assert [r["responses"] for r in again] == [r["responses"] for r in ablated]
    assert [r["id"] for r in ablated] == [r["id"] for r in records]
    assert all(a["video"] != r["video"] for a, r in zip(ablated, records, strict=True))

    real_rates = [sum(r["accuracy"]) / 4 for r in records]
    ablated_rates = [sum(r["accuracy"]) / 4 for r in ablated]
    diverse = [0 < p < 1 for p in real_rates]
    reads = [p > q for p, q in zip(real_rates, ablated_rates, strict=True)]
    rows = [json.loads(x) for x in kept.read_text().splitlines()]
    expected = [(e.id, p, q) for e, p, q, d, r in zip(examples, real_rates, ablated_rates, diverse, reads, strict=True)
                if d and r]
    assert [(r["id"], r["pass_rate"], r["ablated_pass_rate"]) for r in rows] == expected
    assert (f"0 < pass rate < 1 keeps {sum(diverse)}, a pass rate above the ablated video's keeps {sum(reads)}, "
            f"both keep {len(expected)}") in capsys.readouterr().err

    headroom = json.loads(headroom_json.read_text())
    ablated_table = evaluation.make_table(ablated)
    assert headroom["n"] == 4 and list(headroom["categories"]) == list(table["categories"])
    for entry, real, control in [(headroom["overall"], table["overall"], ablated_table["overall"]),
                                 *((headroom["categories"][c], table["categories"][c], ablated_table["categories"][c])
                                   for c in table["categories"])]:
        assert entry["real"] == {k: real[k] for k in ("accuracy", "pass_at_n", "majority_at_n")}
        assert entry["ablated"] == {k: control[k] for k in ("accuracy", "pass_at_n", "majority_at_n")}
        assert entry["pass_at_n_real_minus_ablated"] == real["pass_at_n"] - control["pass_at_n"]
    assert table["overall"]["pass_at_n"] == sum(max(r["accuracy"]) for r in records) / 4

    # the ablated predictions are never overwritten either; the new flags refuse what they cannot do
    (tmp_path / "other.ablated.jsonl").write_text("")
    with pytest.raises(SystemExit):
        ev.main(["--model", str(tiny_dir), "--data", str(bench), "--out", str(tmp_path / "other.jsonl"),
                 "--curate", str(kept), "--curate-ablation", *sampled])
    assert "other.ablated.jsonl (the ablated predictions) exists" in capsys.readouterr().err
    assert not (tmp_path / "other.jsonl").exists()
    for flags in (["--curate-ablation"], ["--headroom", "h.json", "--n", "1"],
                  ["--curate", "k.jsonl", "--curate-ablation", "--video-ablation"]):
        with pytest.raises(SystemExit):
            ev.main(["--model", str(tiny_dir), "--data", str(bench), *flags])
