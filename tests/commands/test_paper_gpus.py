"""`farnet paper-gpus`: the paper's trainings side by side, committed to DVC, then `dvc repro` for the rest."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from farnet.cli import main
from farnet.commands import paper_gpus

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
Training = paper_gpus.Training


def test_share_parsing():
    assert paper_gpus.parse_share("2/3") == (2, 3)
    for bad, message in (("2", "is not K/N"), ("a/b", "is not K/N"), ("4/3", "K must be in 1..N"),
                         ("0/3", "K must be in 1..N")):
        with pytest.raises(Exception, match=message):
            paper_gpus.parse_share(bad)


def test_shares_split_every_training_once():
    trainings = [Training(f"train@r{i}", "true") for i in range(24)]
    shares = [paper_gpus.share_of(trainings, (k, 3)) for k in (1, 2, 3)]
    assert [len(s) for s in shares] == [8, 8, 8]
    assert sorted(t.stage for s in shares for t in s) == sorted(t.stage for t in trainings)
    assert [t.stage for t in shares[1][:2]] == ["train@r1", "train@r4"]


def test_only_changed_stages_train():
    trainings = [Training("train@a", "x"), Training("train@b", "y")]
    assert paper_gpus.changed(trainings, {"train@b": [{"changed deps": {}}]}) == [trainings[1]]
    assert paper_gpus.changed(trainings, {}) == []


def test_the_train_commands_are_the_stages_own():
    trainings = paper_gpus.train_stages(ROOT)
    runs = [t.run for t in trainings]
    assert len(runs) == 24 and runs[0] == "farnet" and "spine_fold5" in runs
    vgg = trainings[runs.index("vgg16")]
    assert vgg.stage == "train@vgg16"
    assert vgg.cmd == ("python pipelines/train.py vgg16 --resolved resolved/vgg16/train.json --prepared data/prepared "
                       "--models models --train-logs results/train")
    assert paper_gpus.dvc("commit", "train@vgg16")[1:] == ["--wait-for-lock", "commit", "train@vgg16"]


def test_failures_are_reported_and_left_uncommitted(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(paper_gpus, "_check", lambda args, root: calls.append(args[2:]) or "")
    trainings = [Training("train@ok", "echo trained ok"), Training("train@bad", "echo broken; exit 3"),
                 Training("train@late", "sleep 0.2; echo late")]
    failed = paper_gpus.train_side_by_side(trainings, 2, tmp_path)
    assert failed == ["train@bad"]
    assert sorted(calls) == [["commit", "--force", "--quiet", "train@late"],
                             ["commit", "--force", "--quiet", "train@ok"]]
    assert (tmp_path / "models" / "bad" / "train.log").read_text() == "broken\n"
    assert (tmp_path / "models" / "late" / "train.log").read_text() == "late\n"


TOY_DVC = """
stages:
  prepare:
    foreach: [d]
    do:
      cmd: echo data > prepared.txt
      outs: [prepared.txt]
  train:
    foreach: [r1, r2, r3]
    do:
      cmd: mkdir -p models/${item}/state && cat prepared.txt > models/${item}/model.txt && echo ${item} >> trained.log
      deps: [prepared.txt]
      outs:
        - models/${item}/model.txt
        - models/${item}/state:
            cache: false
            persist: true
  report:
    cmd: cat models/r1/model.txt models/r2/model.txt models/r3/model.txt > report.txt
    deps: [models/r1/model.txt, models/r2/model.txt, models/r3/model.txt]
    outs: [report.txt]
"""


@pytest.mark.slow
def test_committed_trainings_are_not_trained_again_by_dvc_repro(tmp_path):
    """A persist output keeps a stage out of DVC's run-cache; `dvc commit` still makes `dvc repro` skip it."""
    if shutil.which("git") is None or not (BIN / "dvc").exists():
        pytest.skip("git and dvc are needed")
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent(TOY_DVC))
    (tmp_path / ".gitignore").write_text("trained.log\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([BIN / "dvc", "init", "-q"], cwd=tmp_path, check=True)
    assert paper_gpus.paper_gpus(2, root=tmp_path) == 0
    assert sorted((tmp_path / "trained.log").read_text().split()) == ["r1", "r2", "r3"]  # each trained once
    assert (tmp_path / "report.txt").read_text() == "data\n" * 3
    assert (tmp_path / "models" / "r2" / "train.log").is_file()
    assert paper_gpus.paper_gpus(2, root=tmp_path) == 0  # all up to date: nothing trains again
    assert len((tmp_path / "trained.log").read_text().split()) == 3


def test_the_command_refuses_no_gpus():
    assert main(["paper-gpus", "--gpus", "0"]) == 2  # a clear error, not a traceback
