"""The own-dataset path end to end: a small dataset in the documented format, built from mirror images, goes
through the real fetch, prepare, train and evaluate stages by params alone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, env):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _senior(mirror, image_id):
    lines = (mirror / "isbi2015/AnnotationsByMD/400_senior" / f"{image_id}.txt").read_text().splitlines()[:19]
    return np.array([[float(v) for v in line.split(",")] for line in lines])


@pytest.mark.mirror
@pytest.mark.slow
def test_own_dataset_runs_through_the_pipeline(mirror_root, tmp_path):
    folder = tmp_path / "mine"
    (folder / "scans").mkdir(parents=True)
    names = ["sella", "nasion", "menton"]
    rows = ["image," + ",".join(f"{n}_x,{n}_y" for n in names) + ",spacing_mm,split"]
    splits = ["train"] * 5 + ["val"] + ["test"] * 2
    for i, split in zip(range(1, 9), splits):
        image_id = f"{i:03d}"
        src = mirror_root / "isbi2015/RawImage/TrainingData" / f"{image_id}.jpg"
        (folder / "scans" / src.name).write_bytes(src.read_bytes())
        # the mirror's images are half size: stored pixel = (original + 0.5) * 0.5 - 0.5, 0.2 mm per stored pixel
        points = (_senior(mirror_root, image_id)[[0, 1, 7]] + 0.5) * 0.5 - 0.5
        rows.append(f"scans/{src.name}," + ",".join(f"{v:.2f}" for v in points.ravel()) + f",0.2,{split}")
    (folder / "landmarks.csv").write_text("\n".join(rows) + "\n")

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {"custom": {"root": str(folder), "input_hw": [64, 64]}}
    params["runs"] = {"mine": {"dataset": "custom"}}
    params["profile"] = "tiny"
    params["profiles"] = {"tiny": {"heatmap": {"sigma_px": 1.5}, "train": {"epochs": 1, "lr_milestones": []}}}
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(params))
    env = {**os.environ, "FARNET_DEVICE": "cpu"}
    raw, prepared, models, results = (tmp_path / d for d in ("raw", "prepared", "models", "results"))

    _run("pipelines/fetch.py", "--params", p, "--dataset", "custom", "--raw", raw, env=env)
    assert sorted(x.name for x in (raw / "custom" / "scans").iterdir()) == [f"{i:03d}.jpg" for i in range(1, 9)]
    out = _run("pipelines/prepare.py", "--params", p, "--dataset", "custom", "--raw", raw, "--prepared", prepared,
               env=env)
    assert "'train': 5" in out and "'val': 1" in out and "'test': 2" in out
    _run("pipelines/train.py", "mine", "--params", p, "--prepared", prepared, "--models", models,
         "--train-logs", results / "train", env=env)
    out = _run("pipelines/evaluate.py", "mine", "--params", p, "--prepared", prepared, "--models", models,
               "--results", results, env=env)
    assert "mine val: MRE" in out and "mine test: MRE" in out
    metrics = json.loads((results / "metrics" / "mine.json").read_text())
    assert metrics["val"]["n_images"] == 1 and metrics["test"]["n_images"] == 2
    assert 0 < metrics["test"]["mre_mm"] < 400  # mm through the CSV's 0.2 mm/px, within the image
    predictions = (results / "predictions" / "mine.csv").read_text().splitlines()
    # argmax, sub-pixel and guided decoding x 3 images (1 val, 2 test) x 3 landmarks
    assert predictions[0].startswith("split,decode,image_id,landmark,name") and len(predictions) == 1 + 3 * 3 * 3
    assert "sella" in predictions[1] or "nasion" in predictions[1] or "menton" in predictions[1]
