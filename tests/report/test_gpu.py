"""``farnet replicate-import`` and Table 3's GPU row: a folder in the shapes ``farnet replicate`` writes (its run
info from the evaluate stage's own :func:`run_info`, its metrics from :func:`summarize` on hand-made errors) is
imported into a results folder, and Table 3 gains one row with the right numbers and provenance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fake_results import per_landmark, predictions, write_run
from farnet.cli import main
from farnet.config import effective_dict, params_from_dict
from farnet.core.errors import DataError
from farnet.evaluation.metrics import OUTLIER_MM, summarize
from farnet.commands import replicate_import as gpu_module
from farnet.commands.replicate_import import import_gpu_run
from farnet.core.fileio import device_slug
from farnet.report.gpu import file_manifest, find_gpu_run, method_label, read_gpu_run
from farnet.core.provenance import code_digest, commit_of_digest, git_commit, replication_gaps
from farnet.report.tables import make_tables
from farnet.stages.evaluate import run_info
from helpers import ROOT, committed_params

RADII_MM = [2.0, 2.5, 3.0, 4.0]
# (N, K) radial errors in mm: Test1 MRE 2.05, SDR@2/2.5/3/4 mm 50/75/75/100 %; Test2 MRE 4.05, 50/50/75/75 %,
# one landmark of four beyond 10 mm (25 %)
TEST1_MM = [[1.0, 3.5], [1.5, 2.2]]
TEST2_MM = [[0.5, 12.0], [1.0, 2.7]]
GPU_NAME = "NVIDIA H200"
HARDWARE = "Intel Xeon Platinum 8480C (16 cores), torch 2.9.0+cu128, CUDA 12.8: NVIDIA H200"
SCHEDULE = {"full": False, "planned_epochs": 300, "planned_lr_milestones": [200], "epochs": 30,
            "lr_milestones": [20], "steps": 4500, "reduced_by": "time budget", "stopped": None, "probe_step_s": 0.21}
CARRY = {"format": "farnet-carry", "format_version": 1, "dataset": "isbi2015", "input_hw": [800, 640],
         "n_images": 400, "form": "lossy", "codec": "jpeg", "quality": 90, "mean_abs_diff": 0.612,
         "max_abs_diff": 9, "decoded_sha256": "d" * 64, "images_sha256": "e" * 64, "image_bytes": 49_000_000,
         "source": {}, "built": "2026-12-03T08:00:00+00:00"}


def _summary(errors_mm, shift_mm: float = 0.0) -> dict:
    return summarize(np.asarray(errors_mm) + shift_mm, RADII_MM, outlier_mm=OUTLIER_MM)


def write_replicate_folder(out: Path, *, benchmark: bool = True, **run_changes) -> Path:
    """What ``farnet replicate --out out`` leaves after a run that ended (status done) on an H200."""
    out.mkdir(parents=True)
    raw = committed_params()
    raw["profile"] = "paper"  # as farnet.commands.replicate.replication_params
    trained = effective_dict(params_from_dict(raw, "farnet"))
    train_info = {
        "run": "farnet", "dataset": "isbi2015", "fold": 1, "epochs": 30, "steps": 4500, "train_wall_s": 3600.0,
        "session_wall_s": 3650.2, "resumed_from_epoch": 0, "resumed_from_step": 0, "select": "last",
        "selected_epoch": 30, "n_train_images": 150, "device": "cuda", "world_size": 1, "hardware": HARDWARE,
        "final_loss": 0.0123, "data_ids_sha": "0123456789ab", "fast_path": "bf16+channels_last",
        "malloc": "glibc defaults", "lr_schedule": "step", "warmup_steps": 0, "schedule": SCHEDULE, "monitor": [],
    }
    dataset_info = {"dataset": "isbi2015", "counts": {"train": 150, "test1": 150, "test2": 100}, "extras": {},
                    "fetched": {"source": "mirror", "note": "half-size JPEGs"},
                    "carry": {**CARRY, "file": "isbi2015.carry.zip", "decoded_identical": True}}
    made = {**run_info(trained, train_info, dataset_info), "git_commit": "1a2b3c4", "params_hash": "fedcba987654",
            "date": "2026-12-03T10:00:00+00:00", "torch": "2.9.0+cu128"}
    gaps = replication_gaps(made)
    run = {"status": "done", "command": "farnet replicate --carry isbi2015.carry.zip --out out --budget-min 60",
           "run": "farnet", "device": "cuda", "hardware": HARDWARE, "torch": "2.9.0+cu128", "git_commit": "1a2b3c4",
           "carry": CARRY, "budget": {"seconds": 3600.0, "max_steps": None, "probe_steps": 300},
           "started": "2026-12-03T09:00:00+00:00", "step_path": "graph", **made, "protocol": "REDUCED: " + "; ".join(gaps),
           "replication_gaps": gaps, "wall_s": 3890.4, **run_changes}
    metrics = {"protocol": run["protocol"], "schedule": SCHEDULE}
    for split, errors in (("test1", TEST1_MM), ("test2", TEST2_MM)):
        metrics.update({split: _summary(errors), f"{split}_subpixel": _summary(errors, -0.1),
                        f"{split}_guided": _summary(errors, -0.2)})
    step = {"median_s": 0.123, "times_s": [0.123] * 20, "images_per_s": 1 / 0.123, "peak_memory_bytes": 9 * 2**30,
            "memory_at_start_bytes": 2**30}
    inference = {**step, "median_s": 0.045, "images_per_s": 1 / 0.045}
    files = {"run.json": run, "train_info.json": train_info, "metrics.json": metrics,
             "progress.json": {"steps_done": 4500, "elapsed_s": 3700.1, "loss": 0.0123, "lr": 1e-5}}
    if benchmark:
        files["benchmark.json"] = {
            "device": "cuda", "device_name": GPU_NAME, "torch": "2.9.0+cu128", "fast_path": "bf16+channels_last",
            "input_hw": [800, 640], "batch_size": 1, "train_step": step, "inference": inference,
            "in_run": {"steps": 4500, "train_wall_s": 3600.0, "mean_step_s": 0.8, "probe_step_s": 0.21,
                       "method": "the training itself"},
            "method": "farnet.commands.bench.measure.timed: median of 20 runs after 5 warm-up",
            "summary": {"train_step": "0.123 s", "inference": "0.045 s"}}
    for name, data in files.items():
        (out / name).write_text(json.dumps(data, indent=2) + "\n")
    predictions({"test1": TEST1_MM, "test2": TEST2_MM}).to_csv(out / "predictions.csv", index=False)
    per_landmark({"test1": [1.25, 2.85], "test2": [0.75, 7.35]}).to_csv(out / "per_landmark.csv", index=False)
    (out / "log.txt").write_text("replicate: trained 4500 steps\n")
    run["files"] = file_manifest(out)  # the last write of a finished run
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    return out


@pytest.fixture
def returned(tmp_path) -> Path:
    return write_replicate_folder(tmp_path / "returned")


@pytest.fixture
def results(tmp_path) -> Path:
    """A results folder with the CPU run of Table 3 (quick profile) and the committed ``gpu/README.md``."""
    root = tmp_path / "results"
    write_run(root, "farnet", {"test1": _summary([[1.0, 1.0]]), "test2": _summary([[2.0, 2.0]])},
              per_lm=per_landmark({"test1": [1.0, 1.0], "test2": [2.0, 2.0]}))
    (root / "gpu").mkdir()
    shutil.copyfile(ROOT / "results" / "gpu" / "README.md", root / "gpu" / "README.md")
    return root


# ---------------------------------------------------------------------------------------------- the import


def test_import_copies_the_run_and_writes_the_benchmark(returned, results):
    (returned / "stray.bin").write_bytes(b"not a result")
    written = import_gpu_run(returned, results)
    names = ["run.json", "train_info.json", "metrics.json", "per_landmark.csv", "predictions.csv", "benchmark.json",
             "progress.json", "log.txt"]
    bench_path = results / "benchmarks" / "cuda-nvidia-h200.json"
    assert written == [results / "gpu" / name for name in names] + [bench_path]
    for name in names:
        assert (results / "gpu" / name).read_bytes() == (returned / name).read_bytes()
    assert sorted(p.name for p in (results / "gpu").iterdir()) == sorted([*names, "README.md"])

    bench = json.loads(bench_path.read_text())
    assert bench["device_name"] == GPU_NAME and bench["fast_path"] == "bf16+channels_last"
    assert bench["train_step"]["median_s"] == 0.123 and bench["inference"]["median_s"] == 0.045
    assert bench["in_run"]["steps"] == 4500
    assert bench["origin"] == {
        "made_by": "farnet replicate", "imported_by": "farnet replicate-import", "results": "results/gpu",
        "run": "farnet", "git_commit": "1a2b3c4", "hardware": HARDWARE, "date": "2026-12-03T10:00:00+00:00",
        "protocol": "REDUCED: random initialisation: ImageNet weights unavailable; reduced schedule (time budget): "
                    "30 of 300 epochs, lr drop at [20]; inputs re-encoded (carry: jpeg q90, lossy, mean |Δ grey| "
                    "0.612 of 255); bf16 autocast instead of the paper's fp32 (train.precision: fp32 restores it)"}


def test_a_second_import_removes_the_files_of_the_first(returned, results, tmp_path):
    import_gpu_run(returned, results)
    second = write_replicate_folder(tmp_path / "second", benchmark=False)
    (second / "log.txt").unlink()
    written = import_gpu_run(second, results)
    assert not (results / "gpu" / "benchmark.json").exists() and not (results / "gpu" / "log.txt").exists()
    assert results / "benchmarks" / "cuda-nvidia-h200.json" not in written
    assert (results / "gpu" / "README.md").is_file()
    gpu = find_gpu_run(results)
    assert gpu.benchmark is None and gpu.device_name == "cuda"
    assert method_label(gpu) == "FARNet (ours, GPU: cuda, 4500 steps, REDUCED)"


@pytest.mark.parametrize("name, content, message", [
    ("run.json", "{not json", r"returned/run.json:1: invalid JSON"),
    ("run.json", None, r"returned/run.json: file not found"),
    ("run.json", "[1, 2]", r"returned/run.json: expected a JSON object, got list"),
    ("train_info.json", None, r"returned/train_info.json: file not found"),
    ("metrics.json", "", r"returned/metrics.json:1: invalid JSON"),
    ("benchmark.json", "{}", r"returned/benchmark.json: missing keys \['device_name', 'torch', 'fast_path'\]"),
])
def test_a_bad_or_missing_file_is_named_and_nothing_is_copied(returned, results, name, content, message):
    if content is None:
        (returned / name).unlink()
    else:
        (returned / name).write_text(content)
        if name == "benchmark.json":
            _relist(returned)  # as the run wrote it: the content is what is wrong
    with pytest.raises(DataError, match=message):
        import_gpu_run(returned, results)
    assert [p.name for p in (results / "gpu").iterdir()] == ["README.md"]
    assert not (results / "benchmarks").exists()


def _edit(path: Path, **changes) -> None:
    """Change a file as the run itself would have written it (so run.json lists the edited file)."""
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**{k: v for k, v in data.items() if k not in changes},
                                **{k: v for k, v in changes.items() if v is not None}}))
    _relist(path.parent)


def _relist(folder: Path) -> None:
    run = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**run, "files": file_manifest(folder)}))


@pytest.mark.parametrize("name, changes, message", [
    ("run.json", {"protocol": None}, r"run.json: missing keys \['protocol'\]"),
    ("run.json", {"refinement": "none"}, r"run.json: run 'farnet' is not Table 3's run .*\{'refinement': 'none'\}"),
    ("metrics.json", {"test2": None}, r"metrics.json: no test2 summary with mre_mm and sdr"),
    ("train_info.json", {"steps": 300}, r"train_info.json: 300 steps, but run.json says 4500"),
])
def test_a_run_that_cannot_be_shown_is_refused(returned, results, name, changes, message):
    _edit(returned / name, **changes)
    with pytest.raises(DataError, match=message):
        import_gpu_run(returned, results)
    assert [p.name for p in (results / "gpu").iterdir()] == ["README.md"]


def test_the_command(returned, results, capsys):
    assert main(["replicate-import", str(returned), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {results / 'gpu' / 'run.json'}" in out and "cuda-nvidia-h200.json" in out
    (returned / "run.json").write_text("{")
    assert main(["replicate-import", str(returned), "--results", str(results)]) == 2
    assert capsys.readouterr().err.startswith(f"farnet replicate-import: error: {returned / 'run.json'}:1: invalid")
    assert main(["replicate-import", str(results / "gpu"), "--results", str(results)]) == 2
    assert "is the folder it would be imported into" in capsys.readouterr().err


@pytest.mark.parametrize("name, slug", [("NVIDIA H200", "nvidia-h200"),
                                        ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
                                        ("Tesla(R) V100-SXM2-16GB", "tesla-v100-sxm2-16gb")])
def test_device_slug_is_farnet_bench_s(monkeypatch, name, slug):
    import torch

    from farnet.commands.bench import summary

    monkeypatch.setattr(summary, "device_name", lambda device: name)
    assert device_slug(name) == summary.device_slug(torch.device("cuda")) == slug


def test_a_partial_gpu_folder_is_an_error_not_an_absent_run(results):
    assert find_gpu_run(results) is None  # README.md alone
    (results / "gpu" / "run.json").write_text("{}")
    with pytest.raises(DataError, match=r"gpu/train_info.json: file not found"):
        find_gpu_run(results)


# ---------------------------------------------------------------------------------------------- Table 3


def test_table3_gains_the_gpu_row_with_its_numbers(returned, results):
    import_gpu_run(returned, results)
    make_tables(results, results / "raw")
    table = pd.read_csv(results / "tables" / "table3.csv")
    gpu = table.iloc[-1]
    assert gpu["Method"] == "FARNet (ours, GPU: NVIDIA H200, 4500 steps, REDUCED)"
    assert gpu["source"] == "ours, GPU" and gpu["Input size"] == "800 × 640"
    assert gpu["Test1 MRE"] == pytest.approx(2.05) and gpu["Test2 MRE"] == pytest.approx(4.05)
    assert [gpu[f"Test1 {r}"] for r in ("2mm", "2.5mm", "3mm", "4mm")] == [50.0, 75.0, 75.0, 100.0]
    assert [gpu[f"Test2 {r}"] for r in ("2mm", "2.5mm", "3mm", "4mm")] == [50.0, 50.0, 75.0, 75.0]
    assert gpu["Test1 >10mm %"] == 0.0 and gpu["Test2 >10mm %"] == 25.0
    assert table["Method"].tolist()[-3:-1] == ["FARNet (paper)", "FARNet (ours, quick)"]
    assert (table["source"] == "ours, GPU").sum() == 1

    comparison = pd.read_csv(results / "tables" / "table3_ours_vs_paper.csv").set_index("Metric")
    assert comparison.loc["Test1 MRE", "Ours (GPU)"] == pytest.approx(2.05)
    assert comparison.loc["Test1 MRE", "Difference (GPU)"] == pytest.approx(2.05 - 1.12)  # paper FARNet 1.12
    assert comparison.loc["Test2 2mm", "Difference (GPU)"] == pytest.approx(50.0 - 77.00)
    assert comparison.loc["Test1 MRE", "Ours"] == pytest.approx(1.0)  # the CPU run's column is unchanged


def test_table3_states_the_gpu_row_s_provenance(returned, results):
    import_gpu_run(returned, results)
    make_tables(results, results / "raw")
    text = (results / "tables" / "table3.md").read_text()
    runs_table = text.index("| farnet | quick | 160×128 |")
    gpu_block = text.index("The GPU row: `farnet replicate` on a GPU node, imported by `farnet replicate-import`")
    assert runs_table < gpu_block < text.index("## Table 3 —")
    block = text[gpu_block:text.index("## Table 3 —")]
    for line in [
        "> - Profile: paper",
        "> - Data: mirror (full set, 150 training images) — half-size JPEGs",
        "> - Pretrained weights: none (random initialisation)",
        "> - Training: 30 epochs, 4500 steps; optimiser adam; loss ewc (α = 40.0); model selection: last",
        "> - Input size: 800 × 640 (H × W)",
        "> - Data form: carry: jpeg q90, lossy, mean |Δ grey| 0.612 of 255",
        f"> - Hardware: {HARDWARE}; numerics bf16+channels_last",
        "> - Train wall time: 3600.0 s (60.0 min)",
        "> - Git commit: 1a2b3c4 (the code that ran, as committed; params.yaml as the params hash says)",
        "> - GPU: NVIDIA H200; torch 2.9.0+cu128; fast path bf16+channels_last; step path graph (`farnet.training.steps`)",
        "> - Benchmark: training step 0.123 s, inference 0.045 s at 800×640, batch 1 "
        "(`results/benchmarks/cuda-nvidia-h200.json`)",
        "> - Run: status done, 3890.4 s from unpacking the carry to the end",
        "> **REDUCED RUN — not a replication of the paper's protocol:** random initialisation: ImageNet weights "
        "unavailable; reduced schedule (time budget): 30 of 300 epochs, lr drop at [20]; inputs re-encoded (carry: "
        "jpeg q90, lossy, mean |Δ grey| 0.612 of 255); bf16 autocast instead of the paper's fp32 "
        "(train.precision: fp32 restores it).",
        "**The GPU row was not trained like run farnet (profile, input_hw, epochs, full_set, lr, sigma_px differ): "
        "a difference between them is not the effect of the hardware alone.**",
    ]:
        assert line + "\n" in block, line


def test_the_protocol_the_run_states_is_the_verdict(returned, results):
    """An input size other than the paper's is a gap ``farnet replicate`` states and run info alone cannot."""
    gaps = ["input 320x256 instead of the paper's 800x640"]
    _edit(returned / "run.json", replication_gaps=gaps, protocol="REDUCED: " + gaps[0])
    import_gpu_run(returned, results)
    make_tables(results, results / "raw")
    text = (results / "tables" / "table3.md").read_text()
    assert ("> **REDUCED RUN — not a replication of the paper's protocol:** input 320x256 instead of the paper's "
            "800x640.\n") in text
    _edit(results / "gpu" / "run.json", replication_gaps=[], protocol="the paper's protocol")
    make_tables(results, results / "raw")
    assert pd.read_csv(results / "tables" / "table3.csv")["Method"].iloc[-1] == \
        "FARNet (ours, GPU: NVIDIA H200, 4500 steps)"
    assert "> **Protocol: the paper's (paper profile, full data set, ImageNet-pretrained backbone).**" in \
        (results / "tables" / "table3.md").read_text()


def test_without_a_gpu_run_the_committed_table3_is_rendered_byte_for_byte(tmp_path):
    """Table 3 from the committed results of its run (and whatever ``results/gpu`` holds) is the committed
    Table 3: without a GPU run, exactly what it was before the GPU row existed."""
    root = tmp_path / "results"
    for name in ("metrics/farnet.json", "runs/farnet.json", "per_landmark/farnet.csv"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "results" / name, root / name)
    shutil.copytree(ROOT / "results" / "gpu", root / "gpu")
    make_tables(root, tmp_path / "raw")
    for name in ("table3.md", "table3.csv", "table3_ours_vs_paper.csv"):
        assert (root / "tables" / name).read_bytes() == (ROOT / "results" / "tables" / name).read_bytes(), name
    shutil.rmtree(root / "gpu")  # a results folder from before results/gpu existed
    if find_gpu_run(ROOT / "results") is None:
        make_tables(root, tmp_path / "raw")
        assert (root / "tables" / "table3.md").read_bytes() == (ROOT / "results" / "tables" / "table3.md").read_bytes()


def test_the_tables_stage_depends_on_the_gpu_folder_which_always_exists():
    tables = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["tables"]
    assert "results/gpu" in tables["deps"] and "farnet/report" in tables["deps"]  # gpu.py lies in farnet/report
    assert (ROOT / "results" / "gpu" / "README.md").is_file()  # DVC stops on a dependency that does not exist


def test_read_gpu_run_reads_what_replicate_writes(returned):
    gpu = read_gpu_run(returned)
    assert gpu.device_name == GPU_NAME and gpu.reduced and gpu.run["steps"] == gpu.train_info["steps"] == 4500
    assert gpu.metrics["test1"]["mre_mm"] == pytest.approx(2.05) and gpu.metrics["test2"]["outliers_pct"] == 25.0


def test_a_run_made_without_git_is_named_by_the_commit_whose_code_it_ran(tmp_path, results, monkeypatch):
    digests = []

    def matched(digest, repo_dir):
        digests.append(digest)
        return "abc1234"

    monkeypatch.setattr(gpu_module, "commit_of_digest", matched)
    returned = write_replicate_folder(tmp_path / "nogit", git_commit="unknown", code_digest="d" * 64)
    import_gpu_run(returned, results)
    run = json.loads((results / "gpu" / "run.json").read_text())
    assert digests == ["d" * 64] and run["git_commit"] == "abc1234"
    assert run["git_commit_source"] == "code digest of the run matched this commit at import"
    bench = json.loads((results / "benchmarks" / "cuda-nvidia-h200.json").read_text())
    assert bench["origin"]["git_commit"] == "abc1234"
    monkeypatch.setattr(gpu_module, "commit_of_digest", lambda digest, repo_dir: None)
    import_gpu_run(returned, results)
    run = json.loads((results / "gpu" / "run.json").read_text())
    assert run["git_commit"] == "unknown" and run["git_commit_source"].startswith("unknown: the run's code digest")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_code_digest_names_the_clean_commit_that_has_it(tmp_path):
    repo = tmp_path / "repo"
    (repo / "farnet").mkdir(parents=True)
    (repo / "farnet" / "a.py").write_text("x = 1\n")
    (repo / "params.yaml").write_text("seed: 0\n")
    (repo / "notes.txt").write_text("not code\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": os.environ["PATH"]}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    digest = code_digest(repo)
    head = git_commit(repo)
    assert commit_of_digest(digest, repo) == head and len(head) >= 7
    (repo / "notes.txt").write_text("changed, but not code\n")
    assert code_digest(repo) == digest
    assert commit_of_digest("0" * 64, repo) is None  # another code
    (repo / "farnet" / "a.py").write_text("x = 2\n")
    assert code_digest(repo) != digest and commit_of_digest(code_digest(repo), repo) is None  # dirty


def test_files_of_two_runs_in_one_folder_are_refused(returned, results):
    """A second `farnet replicate` into the same --out, killed while evaluating: its run.json beside the first
    run's metrics was imported as one run."""
    run = json.loads((returned / "run.json").read_text())
    second = {**run, "status": "evaluating", "started": "2026-12-03T12:00:00+00:00"}
    del second["files"]
    (returned / "run.json").write_text(json.dumps(second))
    with pytest.raises(DataError, match=r"run\.json: status 'evaluating': the run did not finish"):
        import_gpu_run(returned, results)
    assert not (results / "gpu" / "metrics.json").exists()
    (returned / "run.json").write_text(json.dumps(run))  # finished, but a file rewritten since
    metrics = json.loads((returned / "metrics.json").read_text())
    (returned / "metrics.json").write_text(json.dumps({**metrics, "note": "another run"}))
    with pytest.raises(DataError, match=r"metrics\.json: changed: not the file the finished run in run\.json wrote"):
        import_gpu_run(returned, results)
    (returned / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(DataError, match=r"metrics\.json: changed"):  # not byte-identical: still refused
        import_gpu_run(returned, results)
