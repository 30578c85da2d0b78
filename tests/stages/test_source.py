"""The source stage (farnet/stages/source.py): an own dataset's folder recorded so that DVC re-fetches it when its
CSV or images change (an edited CSV left `dvc status` "up to date" and the old landmarks in use)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from farnet.core.errors import DataError
from farnet.stages.source import source_record
from helpers import ROOT


def _params(root, csv="landmarks.csv"):
    return SimpleNamespace(datasets={"custom": SimpleNamespace(root=str(root) if root else None, csv=csv),
                                     "isbi2015": SimpleNamespace(root=None, csv="landmarks.csv")})


def test_an_edit_of_the_csv_or_an_image_changes_the_record(tmp_path):
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.png").write_bytes(b"image a")
    (tmp_path / "landmarks.csv").write_text("image,p_x,p_y\nscans/a.png,1,2\n")
    first = source_record(_params(tmp_path), "custom")
    assert first == source_record(_params(tmp_path), "custom")  # nothing changed: the same record
    (tmp_path / "landmarks.csv").write_text("image,p_x,p_y\nscans/a.png,1,3\n")
    edited = source_record(_params(tmp_path), "custom")
    assert edited["csv_sha256"] != first["csv_sha256"] and edited["files_sha256"] != first["files_sha256"]
    os.utime(tmp_path / "scans" / "a.png", ns=(1, 1))  # an image replaced in place
    assert source_record(_params(tmp_path), "custom")["files_sha256"] != edited["files_sha256"]
    assert source_record(_params(tmp_path), "isbi2015") == {"dataset": "isbi2015", "root": None}


def test_a_missing_root_or_csv_is_named(tmp_path):
    with pytest.raises(DataError, match=r"gone: datasets\.custom\.root is not a folder"):
        source_record(_params(tmp_path / "gone"), "custom")
    with pytest.raises(DataError, match=r"landmarks\.csv: the landmarks file datasets\.custom\.csv names is not"):
        source_record(_params(tmp_path), "custom")


def test_fetch_depends_on_the_record_that_runs_at_every_repro():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    source, fetch = pipeline["source"]["do"], pipeline["fetch"]["do"]
    assert source["always_changed"] is True and "data/sources/${key}.json" in source["outs"][0]
    assert "data/sources/${key}.json" in fetch["deps"]


def test_the_stage_script_writes_the_record(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "landmarks.csv").write_text("image,p_x,p_y\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["custom"] = {"root": str(folder)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "pipelines/source.py", "--params", str(tmp_path / "params.yaml"),
                           "--dataset", "custom", "--out", str(tmp_path / "sources")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "sources" / "custom.json").read_text())
    assert record["root"] == str(folder.resolve()) and len(record["csv_sha256"]) == 64
