"""`farnet export`: ONNX file with the checkpoint's metadata; ONNX Runtime gives PyTorch's heatmaps."""

import errno

import numpy as np
import pytest
import torch
from torch import nn

from farnet.models import trained as trained_module
from farnet import cli
from farnet.commands import export, predict
from farnet.core.checkpoint import save_atomic
from farnet.config import Params, effective_dict
from farnet.core.errors import DataError, WriteError
from farnet.models.interface import Heatmaps

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -r requirements.txt)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the ONNX parity check cannot run")

INPUT_HW = (64, 96)  # multiples of 32, as the metadata's DenseNet-121 needs




class SmallNet(nn.Module):
    """BN, ReLU, stride-2 conv, bilinear up-sampling and concatenation: the op kinds FARNet exports."""

    def __init__(self, k: int, fine: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.coarse_head = nn.Conv2d(8, k, 1)
        self.fine_head = nn.Conv2d(6 + 8, k, 3, padding=1) if fine else None

    def forward(self, x):
        c0 = self.stem(x)
        c1 = self.down(c0)
        coarse = self.coarse_head(c1)
        if self.fine_head is None:
            return Heatmaps(fine=None, coarse=coarse)
        up = nn.functional.interpolate(c1, scale_factor=2, mode="bilinear", align_corners=False)
        return Heatmaps(fine=self.fine_head(torch.cat([c0, up], dim=1)), coarse=coarse)


def make_checkpoint(path, k=3, fine=True):
    torch.manual_seed(0)
    net = SmallNet(k, fine)
    for module in net.modules():  # non-trivial BN statistics, so eval-mode BN is really exported
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    meta = {"dataset": "isbi2015", "num_landmarks": k, "landmark_names": [f"lm{i}" for i in range(k)],
            "input_hw": list(INPUT_HW), "normalization": {"scale": 1 / 255}, "backbone": "densenet121",
            "params": effective_dict(Params()), "git_commit": "abc123", "selected_epoch": 7}
    save_atomic({"model": net.state_dict(), "meta": meta}, path)
    return meta


@pytest.fixture
def small(monkeypatch):
    variant = {"fine": True}
    monkeypatch.setattr(trained_module, "build_model", lambda params, k: SmallNet(k, variant["fine"]))
    return variant


def test_export_stores_metadata_and_matches_pytorch(tmp_path, small):
    meta = make_checkpoint(tmp_path / "model.pt", k=3)
    result = export.export_onnx(tmp_path / "model.pt", tmp_path / "out" / "model.onnx")
    path = result["path"]
    assert path == tmp_path / "out" / "model.onnx" and path.is_file()
    assert result["parity"]["ok"] and result["parity"]["argmax_equal"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temporary left

    stored = export.read_onnx_metadata(path)
    for key in ("dataset", "num_landmarks", "landmark_names", "input_hw", "normalization", "backbone", "params",
                "git_commit", "selected_epoch"):
        assert stored[key] == meta[key], key
    assert stored["input"]["name"] == "image" and stored["output"]["shape"] == ["B", 3, *INPUT_HW]
    onnx.checker.check_model(onnx.load(path))

    # the batch axis is free; independent ONNX Runtime run against PyTorch on another batch size
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    image = torch.randint(0, 256, (3, 1, *INPUT_HW), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    got = session.run(["heatmaps"], {"image": image.numpy()})[0]
    trained = predict.load_trained_model(tmp_path / "model.pt")
    with torch.no_grad():
        expected = export.HeatmapNetwork(trained.model).eval()(image).numpy()
    assert got.shape == (3, 3, *INPUT_HW)
    np.testing.assert_allclose(got, expected, atol=1e-4 + 1e-3 * np.abs(expected).max(), rtol=0)


def test_export_msfa_only_variant_upsamples_the_coarse_heatmaps(tmp_path, small):
    small["fine"] = False
    make_checkpoint(tmp_path / "model.pt", k=2, fine=False)
    result = export.export_onnx(tmp_path / "model.pt", tmp_path / "m.onnx")
    assert result["parity"]["ok"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": np.zeros((1, 1, *INPUT_HW), np.uint8)})[0]
    assert out.shape == (1, 2, *INPUT_HW)  # full resolution, as final_heatmaps gives


def test_cli_export(tmp_path, small, capsys):
    make_checkpoint(tmp_path / "model.pt")
    assert cli.main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "x.onnx")]) == 0
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out
    assert (tmp_path / "x.onnx").is_file()


def test_parity_failure_writes_nothing(tmp_path, small, monkeypatch):
    make_checkpoint(tmp_path / "model.pt")
    monkeypatch.setattr(export, "onnx_parity",
                        lambda *a, **k: {"ok": False, "max_abs_diff": 0.5, "tolerance": 1e-4, "argmax_equal": False})
    with pytest.raises(export.ExportError, match=r"differ from PyTorch's by up to 0\.5"):
        export.export_onnx(tmp_path / "model.pt", tmp_path / "o" / "m.onnx")
    assert list((tmp_path / "o").iterdir()) == []


def test_disk_full_during_export_leaves_nothing(tmp_path, small, monkeypatch):
    make_checkpoint(tmp_path / "model.pt")
    (tmp_path / "o").mkdir()

    def full_disk(model, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full_disk)
    with pytest.raises(WriteError, match=r"m\.onnx: cannot write: .*No space left on device"):
        export.export_onnx(tmp_path / "model.pt", tmp_path / "o" / "m.onnx")
    assert list((tmp_path / "o").iterdir()) == []


def test_export_bad_checkpoint(tmp_path, small):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"model\.pt: not a readable checkpoint"):
        export.export_onnx(tmp_path / "model.pt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("opset", [9, 13])
def test_an_opset_the_exporter_cannot_write_is_refused(tmp_path, small, opset):
    """The exporter wrote opset 18 while the metadata claimed the one asked for."""
    make_checkpoint(tmp_path / "model.pt")
    with pytest.raises(export.ExportError, match=rf"opset {opset}: the exporter writes opset 18 and later"):
        export.export_onnx(tmp_path / "model.pt", tmp_path / "x.onnx", opset=opset)
    assert not (tmp_path / "x.onnx").exists()


def test_the_metadata_states_the_files_own_opset(tmp_path, small):
    import onnx

    make_checkpoint(tmp_path / "model.pt")
    path = export.export_onnx(tmp_path / "model.pt", tmp_path / "x.onnx", opset=19, check=False)["path"]
    default = [o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx")]
    assert default == [19] and export.read_onnx_metadata(path)["opset"] == 19


def test_export_never_replaces_its_model_or_a_foreign_file(tmp_path, small, capsys):
    make_checkpoint(tmp_path / "model.pt")
    model_bytes = (tmp_path / "model.pt").read_bytes()
    assert cli.main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "model.pt")]) == 2
    assert "is the model being exported" in capsys.readouterr().err
    assert (tmp_path / "model.pt").read_bytes() == model_bytes
    (tmp_path / "notes.onnx").write_text("my notes")
    assert cli.main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "notes.onnx")]) == 2
    assert "exists and is not a `farnet export` file; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "notes.onnx").read_text() == "my notes"
    assert cli.main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "notes.onnx"),
                     "--overwrite", "--no-check"]) == 0
    assert cli.main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "notes.onnx"),
                     "--no-check"]) == 0  # an earlier export is replaced without the flag
