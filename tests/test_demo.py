"""The demo's own plumbing: the SFT/RL split and the runner of GRPO beside its control."""

import json
import os
import sys

import pytest

import demo


def test_split_train_is_by_video_and_keeps_every_row(tmp_path):
    rows = [{"videos": [f"v{i // 3}.mp4"], "id": i} for i in range(30)]  # 10 videos, 3 questions each
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft, rl = demo.split_train(tmp_path)
    sft_rows, rl_rows = ([json.loads(x) for x in p.read_text().splitlines()] for p in (sft, rl))
    assert sorted(r["id"] for r in sft_rows + rl_rows) == list(range(30))
    assert not {r["videos"][0] for r in sft_rows} & {r["videos"][0] for r in rl_rows}
    assert len({r["videos"][0] for r in sft_rows}) == 3  # the first third of the videos


def test_side_by_side_runs_every_job(tmp_path):
    jobs = [([sys.executable, "-c", f"open(r'{tmp_path}/{name}', 'w').write('{name}')"], tmp_path / f"{name}.log")
            for name in ("a", "b")]
    demo.run_side_by_side(jobs)
    assert (tmp_path / "a").read_text() == "a" and (tmp_path / "b").read_text() == "b"


def test_side_by_side_stops_the_others_when_one_fails(tmp_path):
    """A failed GRPO run must not leave its control running for ten minutes: the error names the log."""
    slow = (f"import os, time; open(r'{tmp_path}/tmp', 'w').write(str(os.getpid())); "
            f"os.replace(r'{tmp_path}/tmp', r'{tmp_path}/pid'); time.sleep(120); open(r'{tmp_path}/finished', 'w')")
    fail = (f"import os, time\nwhile not os.path.exists(r'{tmp_path}/pid'): time.sleep(0.05)\n"
            "print('bad flag'); raise SystemExit(3)")
    jobs = [([sys.executable, "-c", code], tmp_path / f"{name}.log") for name, code in (("slow", slow), ("fail", fail))]
    with pytest.raises(SystemExit, match="fail.log"):
        demo.run_side_by_side(jobs)
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
    assert not (tmp_path / "finished").exists()
    assert "bad flag" in (tmp_path / "fail.log").read_text()
