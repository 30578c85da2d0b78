"""Tests of farnet.core.provenance: git commit, params hash, hardware line and the replication verdict."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from farnet.core import provenance
from farnet.core.provenance import (
    git_commit, hardware_description, params_hash, provenance_header, replication_gaps, run_label,
)

QUICK_RUN = {
    "experiment": "farnet", "profile": "quick", "dataset": "isbi2015", "data_source": "mirror",
    "data_note": "half-resolution JPEGs", "full_set": True, "n_train_images": 150, "pretrained": "none",
    "backbone": "densenet121", "epochs": 2, "steps": 300, "input_hw": [800, 640], "loss": "ewc",
    "alpha": 40.0, "optimizer": "adam", "select": "last", "hardware": "AMD EPYC (2 cores)",
    "train_wall_s": 123.4, "git_commit": "abc1234", "params_hash": "0123456789ab",
    "date": "2026-11-25T10:00:00",
}
PAPER_RUN = {**QUICK_RUN, "profile": "paper", "pretrained": "imagenet", "epochs": 300, "steps": 45000}


def test_params_hash_is_stable_under_key_order():
    a = {"loss": {"alpha": 40.0, "name": "ewc"}, "train": {"epochs": 300, "lr": 1e-4}}
    b = {"train": {"lr": 1e-4, "epochs": 300}, "loss": {"name": "ewc", "alpha": 40.0}}
    assert params_hash(a) == params_hash(b)
    assert len(params_hash(a)) == 12 and int(params_hash(a), 16) >= 0
    assert params_hash(a) != params_hash({**a, "loss": {"alpha": 20.0, "name": "ewc"}})


def test_params_hash_is_sha256_of_canonical_json():
    # sha256(b'{"a":1,"b":[1,2]}'), first 12 hex digits, computed once by hand with hashlib
    import hashlib
    expected = hashlib.sha256(b'{"a":1,"b":[1,2]}').hexdigest()[:12]
    assert params_hash({"b": [1, 2], "a": 1}) == expected


def test_quick_run_header_says_not_a_replication():
    header = provenance_header(QUICK_RUN)
    assert "not a replication" in header
    assert "**REDUCED RUN" in header
    assert "random initialisation: ImageNet weights unavailable" in header
    for fact in ("quick", "mirror", "150 training images", "800 × 640", "abc1234", "0123456789ab",
                 "AMD EPYC", "123.4 s", "2026-11-25"):
        assert fact in header
    assert all(line.startswith(">") for line in header.strip().splitlines())


def test_paper_imagenet_full_run_is_not_flagged():
    header = provenance_header(PAPER_RUN)
    assert "not a replication" not in header.lower()
    assert "REDUCED" not in header
    assert "the paper's" in header
    assert replication_gaps(PAPER_RUN) == []
    assert run_label(PAPER_RUN) == "paper profile — paper protocol"


@pytest.mark.parametrize("change, reason", [
    ({"profile": "quick"}, "'quick' profile, 300 epochs instead of 300"),
    ({"pretrained": "none"}, "random initialisation"),
    ({"pretrained": "/weights/densenet.pth"}, "instead of ImageNet"),
    ({"full_set": False, "n_train_images": 9}, "data sample only (9 training images)"),
])
def test_each_gap_alone_blocks_the_replication_claim(change, reason):
    run = {**PAPER_RUN, **change}
    assert any(reason in gap for gap in replication_gaps(run))
    assert "not a replication" in provenance_header(run)
    assert run_label(run).endswith("not a replication")


BF16_GAP = "bf16 autocast instead of the paper's fp32 (train.precision: fp32 restores it)"


@pytest.mark.parametrize("numerics", [
    {"precision": "auto", "fast_path": "bf16+channels_last"},  # "auto" resolved to bf16 on this device
    {"precision": "bf16", "fast_path": "bf16"},
    {"precision": "bf16"},  # no fast_path recorded: the setting alone says bf16
])
def test_training_in_bf16_is_a_replication_gap(numerics):
    run = {**PAPER_RUN, **numerics}
    assert replication_gaps(run) == [BF16_GAP]
    assert BF16_GAP in provenance_header(run) and run_label(run).endswith("not a replication")


@pytest.mark.parametrize("numerics", [
    {"precision": "auto", "fast_path": "fp32+channels_last"},  # "auto" resolved to fp32 on this device
    {"precision": "fp32", "fast_path": "fp32"},
    {"precision": "fp32"},
    {"precision": "auto"},  # what it resolved to is not recorded: nothing to claim either way
])
def test_training_in_fp32_has_no_precision_gap(numerics):
    assert replication_gaps({**PAPER_RUN, **numerics}) == []


def test_missing_keys_never_claim_replication():
    header = provenance_header({})
    assert "not a replication" in header
    assert "unknown" in header


def test_git_commit_outside_git_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_marks_dirty_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    (tmp_path / "params.yaml").write_text("profile: paper\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.md").write_text("old\n")
    git("add", "a.txt", "params.yaml", "results/t.md")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    clean = git_commit(tmp_path)
    assert len(clean) >= 7 and not clean.endswith("-dirty")
    (tmp_path / "untracked.txt").write_text("ignored for dirtiness\n")
    assert git_commit(tmp_path) == clean
    (tmp_path / "params.yaml").write_text("profile: quick\n")  # what `dvc exp run -S` rewrites: not code
    (tmp_path / "results" / "t.md").write_text("new\n")  # what the stages write: not code
    assert git_commit(tmp_path) == clean
    (tmp_path / "a.txt").write_text("two\n")
    assert git_commit(tmp_path) == f"{clean}-dirty"


def test_hardware_description_names_cores_vector_unit_and_torch():
    text = hardware_description()
    assert "cores" in text and "torch" in text
    assert f"cores, {provenance.cpu_isa()})" in text


@pytest.mark.parametrize(("flags", "isa"), [
    ("fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16", "amx"),
    ("fpu sse2 avx2 fma avx512f avx512_bf16", "avx512-bf16"),
    ("fpu sse2 avx2 fma avx512f", "avx512"),
    ("fpu sse2 avx2 fma", "avx2"),
    ("fpu sse2", "sse"),
])
def test_cpu_isa_names_the_widest_vector_unit(monkeypatch, flags, isa):
    monkeypatch.setattr(provenance, "cpuinfo", lambda: {"model name": "Some CPU", "flags": flags})
    assert provenance.cpu_isa() == isa
    assert provenance.cpu_kind() == f"Some CPU {isa}"
    assert hardware_description().startswith(f"Some CPU ({provenance._cpu_count()} cores, {isa}), torch ")


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_a_run_records_the_commit_of_the_code_that_runs_not_of_the_working_directory(tmp_path, monkeypatch):
    def repo(path, text):
        path.mkdir()
        (path / "pyproject.toml").write_text(text)
        for args in (["init", "-q"], ["add", "pyproject.toml"],
                     ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", text]):
            subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True)
        return git_commit(path)
    code, other = repo(tmp_path / "code", "[project]\nname = 'a'\n"), repo(tmp_path / "other", "[project]\nname = 'b'\n")
    assert code != other
    monkeypatch.chdir(tmp_path / "other")  # `dvc repro` in one checkout, the environment installed from another
    monkeypatch.setattr(provenance, "CODE_ROOT", tmp_path / "code")
    assert provenance.code_commit() == code
    (tmp_path / "code" / "pyproject.toml").write_text("changed\n")
    assert provenance.code_commit() == f"{code}-dirty"
    monkeypatch.setattr(provenance, "CODE_ROOT", tmp_path / "other" / ".venv" / "site-packages")  # a wheel's copy
    assert provenance.code_commit() == "unknown"


def test_the_code_root_is_this_checkout():
    assert (provenance.CODE_ROOT / "farnet" / "core" / "provenance.py").is_file()
    assert provenance.code_commit() == git_commit(provenance.CODE_ROOT)
