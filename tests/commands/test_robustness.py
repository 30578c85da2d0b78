"""Bad input gets a clear error naming the file (and line), and no failure leaves a half-written file behind."""

import errno
import io
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from farnet.models import trained as trained_module
from farnet import cli
from farnet.commands import predict
from farnet.core.checkpoint import load_checkpoint, save_atomic
from farnet.core.fileio import write_json
from farnet.data.download import fetch_isbi2015
from farnet.data.imageio import read_grayscale, read_image_with_spacing
from farnet.data.isbi import read_annotation, read_isbi2015
from farnet.training.engine import RunSettings, TrainOptions, train
from farnet.core.errors import DataError, FarnetError, WriteError
from farnet.models.interface import Heatmaps
from farnet.training.losses import ExponentialWeightedCenterLoss
from model_files import TinyNet, dicom_bytes, write_model




def no_temporaries(folder):
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- images ------------------------------------------------------------------------------------------------------

def test_unreadable_images_name_the_file(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")
    png = buffer.getvalue()
    cases = {
        "empty.png": (b"", r"empty file \(0 bytes\)"),
        "truncated.png": (png[: len(png) // 2], "cannot decode image"),
        "random.jpg": (bytes(range(256)) * 4, "cannot decode image"),
        "text.dcm": (b"hello, not a DICOM file" * 10, "cannot decode DICOM"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"{name}: {message}"):
            read_grayscale(tmp_path / name)
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(DataError, match=r"folder\.png: not a regular file"):
        read_grayscale(tmp_path / "folder.png")


def test_images_of_the_wrong_mode_are_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "int32.tif")
    with pytest.raises(DataError, match=r"int32\.tif: 32-bit integer image with values in \[70000, 70000\]"):
        read_grayscale(tmp_path / "int32.tif")
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"pages\.tif: multi-frame image \(2 frames\)"):
        read_grayscale(tmp_path / "pages.tif")


def test_dicom_edge_cases(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20

    def variant(name, **changes):
        ds = pydicom.dcmread(io.BytesIO(dicom_bytes(grey)))
        for key, value in changes.items():
            setattr(ds, key, value)
        ds.save_as(tmp_path / name, enforce_file_format=True)
        return tmp_path / name

    with pytest.raises(DataError, match=r"bad_spacing\.dcm: DICOM PixelSpacing .* is not two positive numbers"):
        read_image_with_spacing(variant("bad_spacing.dcm", PixelSpacing=[0, 0.1]))
    with pytest.raises(DataError, match=r"palette\.dcm: DICOM photometric interpretation 'PALETTE COLOR'"):
        read_grayscale(variant("palette.dcm", PhotometricInterpretation="PALETTE COLOR"))
    with pytest.raises(DataError, match=r"frames\.dcm: multi-frame DICOM \(2 frames\)"):
        read_grayscale(variant("frames.dcm", NumberOfFrames=2))
    with pytest.raises(DataError, match=r"width\.dcm: DICOM window width 0\.0 < 1"):
        read_grayscale(variant("width.dcm", WindowCenter=10, WindowWidth=0))
    # a DICOM file without the .dcm suffix is recognised by its preamble; the window applies (LINEAR)
    image = read_grayscale(variant("noext", WindowCenter=100.5, WindowWidth=2))
    np.testing.assert_array_equal(image, np.where(grey.astype(int) * 16 > 100, 255, 0))
    image, spacing = read_image_with_spacing(variant("sigmoid.dcm", WindowCenter=1000, WindowWidth=1000,
                                                     VOILUTFunction="SIGMOID"))
    assert image[0, 0] == round(255 / (1 + np.exp(4))) and spacing == (0.15, 0.15)


def test_isbi_image_of_the_wrong_size(tmp_path):
    image = tmp_path / "RawImage" / "TrainingData" / "001.jpg"
    image.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((20, 25), np.uint8)).save(image)
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"files": [{
        "id": "001", "path": "RawImage/TrainingData/001.jpg", "original_width": 48, "original_height": 40,
        "stored_width": 24, "stored_height": 20, "scale_x": 0.5, "scale_y": 0.5}]}))
    with pytest.raises(DataError, match=r"001\.jpg: image is 25x20 but the manifest says 24x20"):
        read_isbi2015(tmp_path, "train", ids=["001"])


# ---- annotations -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, message", [
    ("1,2\n3,4\n", 3, r"expected 3 lines 'x,y', found 2 \(line 3 is missing\)"),
    ("1,2\n3,4,5\n6,7\n", 2, "expected 'x,y' \\(two numbers\\), got '3,4,5'"),
    ("1,2\nnan,4\n6,7\n", 2, "non-finite coordinate 'nan,4'"),
    ("1,2\n3,4\n6,1e999\n", 3, "non-finite coordinate"),
    ("1,2\n3,40\n6,7\n", 2, r"point \(3, 40\) outside the 10x20 image"),
    ("1,2\n1_0,4\n6,7\n", 2, "two numbers"),
    ("1,2\f3,4\n5,6\n", 1, "two numbers"),
])
def test_bad_annotation_lines(tmp_path, text, line, message):
    (tmp_path / "a.txt").write_text(text)
    with pytest.raises(DataError, match=rf"a\.txt:{line}: .*{message}"):
        read_annotation(tmp_path / "a.txt", 3, image_wh=(10, 20))


# ---- checkpoints and models --------------------------------------------------------------------------------------

def test_a_checkpoint_for_another_landmark_count(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trained_module, "build_model", lambda params, k: TinyNet(k))
    write_model(tmp_path / "hand.pt", k=37, dataset="hand_dha")
    with pytest.raises(DataError, match=r"hand\.pt: model predicts 37 landmarks \(dataset 'hand_dha'\), but 19"):
        predict.load_trained_model(tmp_path / "hand.pt", num_landmarks=19)
    # weights for 37 landmarks under metadata that says 19
    state = torch.load(tmp_path / "hand.pt", weights_only=True)
    state["meta"].update(num_landmarks=19, landmark_names=[f"n{i}" for i in range(19)])
    save_atomic(state, tmp_path / "mixed.pt")
    with pytest.raises(DataError, match=r"mixed\.pt: weights do not fit the network its metadata describes \(19 "
                                        r"landmarks\): fine\.weight: file \(37, 4, 1, 1\) vs network \(19, 4, 1, 1\)"):
        predict.load_trained_model(tmp_path / "mixed.pt")
    _predict_refuses(tmp_path, tmp_path / "mixed.pt", "weights do not fit", capsys)


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    save_atomic({"model": {"w": torch.ones(3)}}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"model": {}, "evil": FarnetError("pickled object")}, tmp_path / "pickle.pt")
    with pytest.raises(DataError, match=r"pickle\.pt: not a readable checkpoint"):  # weights_only=True refuses it
        load_checkpoint(tmp_path / "pickle.pt")


# ---- the data mirror -----------------------------------------------------------------------------------------

def test_a_mirror_pointing_nowhere(tmp_path, monkeypatch):
    monkeypatch.setenv("FARNET_DATA_MIRROR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"nowhere/isbi2015: mirror folder not found"):
        fetch_isbi2015(tmp_path / "raw", tmp_path / "nowhere" / "isbi2015", progress=False)
    from farnet.stages.fetch import mirror_root

    with pytest.raises(DataError, match="nowhere: FARNET_DATA_MIRROR names a folder that does not exist"):
        mirror_root()


# ---- full disks and interrupted writes ----------------------------------------------------------------------

def test_disk_full_while_saving_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    save_atomic({"model": {"w": torch.zeros(2)}}, tmp_path / "ckpt.pt")

    def partial_then_full(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 partial")
        enospc()

    monkeypatch.setattr(torch, "save", partial_then_full)
    with pytest.raises(WriteError, match=r"ckpt\.pt: cannot write: .*No space left on device") as info:
        save_atomic({"model": {"w": torch.ones(2)}}, tmp_path / "ckpt.pt")
    assert isinstance(info.value, OSError) and info.value.path == tmp_path / "ckpt.pt"
    monkeypatch.undo()
    torch.testing.assert_close(load_checkpoint(tmp_path / "ckpt.pt")["model"]["w"], torch.zeros(2))
    assert no_temporaries(tmp_path) == []


def test_interrupted_checkpoint_write_leaves_no_temporary(tmp_path, monkeypatch):
    def interrupted(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"model": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(KeyboardInterrupt):  # the JSON writer shares the same path
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
        write_json(tmp_path / "side.json", {"epoch": 1})
    assert list(tmp_path.iterdir()) == []


def test_disk_full_during_training_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from tiny_training import Data, Tiny

    options = TrainOptions(epochs=3, sigma_px=2.0, batch_size=7, seed=1)
    train(Tiny(), Data(), ExponentialWeightedCenterLoss(40), TrainOptions(**{**options.__dict__, "epochs": 1}),
          tmp_path, RunSettings(fingerprint="f", progress=False))
    good = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    import farnet.core.checkpoint

    real_save = torch.save
    monkeypatch.setattr(farnet.core.checkpoint.torch, "save", lambda obj, fh: (real_save(obj, io.BytesIO()), enospc()))
    with pytest.raises(WriteError, match=r"checkpoint\.pt: cannot write"):
        train(Tiny(), Data(), ExponentialWeightedCenterLoss(40), options, tmp_path,
              RunSettings(fingerprint="f", progress=False))
    monkeypatch.undo()
    kept = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert kept["epoch"] == good["epoch"] == 1
    assert no_temporaries(tmp_path) == []


@pytest.mark.parametrize("failing", ["csv", "json", "overlay"])
def test_disk_full_while_writing_predictions_leaves_no_partial_file(tmp_path, monkeypatch, failing):
    monkeypatch.setattr(trained_module, "build_model", lambda params, k: TinyNet(k))
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "img.png")
    ckpt = write_model(tmp_path / "model.pt", k=2)
    out = tmp_path / "out"
    real_write = predict._write_bytes
    paths = predict.output_paths(tmp_path / "img.png", out)

    magic = {"csv": b"number,", "json": b"{", "overlay": b"\x89PNG"}[failing]

    def full_on(fh, data):
        if data.startswith(magic):
            fh.write(data[: len(data) // 2])
            enospc()
        real_write(fh, data)

    monkeypatch.setattr(predict, "_write_bytes", full_on)
    args = ["predict", str(tmp_path / "img.png"), "--model", str(ckpt), "--out", str(out), "--no-progress"]
    with pytest.raises(WriteError, match=rf"{paths[failing].name}: cannot write: .*No space left"):
        predict.run(_parse(args))
    assert list(out.iterdir()) == []  # none of the three, and no temporary file
    assert cli.main(args) == 2  # the command reports it as an error, naming the file

    monkeypatch.setattr(predict, "_write_bytes", real_write)  # a good run, then a failing one: old files kept
    assert cli.main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(predict, "_write_bytes", full_on)
    assert cli.main(args) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_interrupted_prediction_write_leaves_no_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(trained_module, "build_model", lambda params, k: TinyNet(k))
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "img.png")
    ckpt = write_model(tmp_path / "model.pt", k=2)

    def interrupted(fh, data):
        fh.write(data[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "_write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict.run(_parse(["predict", str(tmp_path / "img.png"), "--model", str(ckpt), "--out",
                            str(tmp_path / "out"), "--no-progress"]))
    assert list((tmp_path / "out").iterdir()) == []


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    return parser.parse_args(argv[1:])


# ---- garbage models, degenerate images, devices -----------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_model_with_non_finite_weights_is_refused(tmp_path, monkeypatch, capsys, bad):
    monkeypatch.setattr(trained_module, "build_model", lambda params, k: TinyNet(k))
    net = TinyNet(2)
    with torch.no_grad():
        net.fine.weight[0, 0, 0, 0] = bad
        net.body[1].running_var[1] = bad  # a buffer counts too
    write_model(tmp_path / "diverged.pt", k=2, net=net)
    with pytest.raises(DataError, match=r"diverged\.pt: 2 weight tensor\(s\) hold NaN or infinite values "
                                        r"\(body\.1\.running_var, fine\.weight\): the training diverged"):
        predict.load_trained_model(tmp_path / "diverged.pt")
    _predict_refuses(tmp_path, tmp_path / "diverged.pt", "NaN or infinite", capsys)


def test_a_model_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(trained_module, "build_model", lambda params, k: TinyNet(k))
    (tmp_path / "runs").mkdir()
    with pytest.raises(DataError, match=r"runs: is a folder, not a model file \(models/<run>/model\.pt\)$"):
        predict.load_trained_model(tmp_path / "runs")
    write_model(tmp_path / "farnet" / "model.pt", k=2)
    with pytest.raises(DataError, match=r"farnet: is a folder, .*; did you mean .*farnet/model\.pt\?"):
        predict.load_trained_model(tmp_path / "farnet")


class StridedNet(torch.nn.Module):
    """Publishes its backbone's strides as FARNet does, and like MSFA adds its stride-32 level, up-sampled, to its
    stride-16 level: an input that is not a multiple of 32 fails inside the network with a tensor-size error."""

    def __init__(self, k):
        super().__init__()
        self.backbone = torch.nn.Module()
        self.backbone.strides = [2, 4, 8, 16, 32]
        self.head = torch.nn.Conv2d(3, k, 1)

    def forward(self, x):
        pool, up = torch.nn.functional.avg_pool2d, torch.nn.functional.interpolate
        fused = pool(x, 16) + up(pool(x, 32), scale_factor=2)  # (B, 3, H / 16, W / 16)
        return Heatmaps(fine=up(self.head(fused), size=x.shape[-2:]), coarse=None)


def test_input_hw_that_the_network_cannot_take(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(trained_module, "build_model", lambda params, k: StridedNet(k))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    write_model(tmp_path / "odd.pt", k=2, input_hw=(50, 64), net=StridedNet(2))
    with pytest.raises(DataError, match=r"odd\.pt: model metadata input_hw \[50, 64\] is not a multiple of 32, "
                                        r"the stride of the network's coarsest level"):
        predict.load_trained_model(tmp_path / "odd.pt")
    assert cli.main(["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "odd.pt"), "--out",
                     str(tmp_path / "out"), "--no-progress"]) == 2
    assert "is not a multiple of 32" in capsys.readouterr().err
    write_model(tmp_path / "even.pt", k=2, input_hw=(64, 96), net=StridedNet(2))
    assert cli.main(["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "even.pt"), "--out",
                     str(tmp_path / "out"), "--no-progress"]) == 0


def test_registered_input_multiple_is_the_real_networks_coarsest_stride():
    from dataclasses import replace

    from farnet.config import Params
    from farnet.models.factory import build_model
    from farnet.models.registry import input_multiple

    model = Params().model
    net = build_model(model, 2)
    assert input_multiple("farnet", "densenet121") == max(net.backbone.strides) == 32  # C5 at stride 32
    assert input_multiple("unet", "densenet121") == build_model(replace(model, architecture="unet"), 2).multiple == 16


def test_degenerate_images_get_a_word(tmp_path, monkeypatch, capsys):
    from model_files import StructureNet

    monkeypatch.setattr(trained_module, "build_model", lambda params, k: StructureNet(k))
    rng = np.random.default_rng(0)
    images = {"flat.png": np.full((40, 30), 200, np.uint8), "dot.png": np.full((1, 1), 255, np.uint8),
              "strip.png": rng.integers(0, 256, (1, 5000), dtype=np.uint8)}
    for name, image in images.items():
        Image.fromarray(image).save(tmp_path / name)
    ckpt = write_model(tmp_path / "model.pt", k=2, net=StructureNet(2))
    out = tmp_path / "out"
    assert cli.main(["predict", *(str(tmp_path / n) for n in images), "--model", str(ckpt), "--out", str(out),
                     "--no-progress"]) == 0  # files are still written: the warnings say what to check
    err = capsys.readouterr().err
    for name in ("flat.png", "dot.png"):
        assert f"{name}: warning: low confidence: 2 of 2 landmarks" in err
    assert "strip.png: warning: the image is 5000x1 but the model's input is 96x64" in err
    for stem, image in (("flat", images["flat.png"]), ("dot", images["dot.png"]), ("strip", images["strip.png"])):
        doc = json.loads((out / f"{stem}.json").read_text())
        assert doc["warnings"], stem
        xy = np.array([[lm["x_px"], lm["y_px"]] for lm in doc["landmarks"]])
        h, w = image.shape
        assert np.all((xy >= -0.5) & (xy <= [w - 0.5, h - 0.5])), (stem, xy)


@pytest.mark.parametrize("name, message", [
    ("tpu", r"--device: 'tpu' is not a device \(use cpu, cuda, cuda:N or mps\)"),
    ("cuda", r"--device: 'cuda' asked for, but (this PyTorch is built without CUDA|no CUDA GPU is visible); use cpu"),
    ("cuda:7", r"--device: 'cuda:7' asked for, but"),
    ("meta", r"--device: 'meta' is not a device this project runs on"),
])
def test_device_names_are_checked(tmp_path, monkeypatch, capsys, name, message):
    monkeypatch.setattr(trained_module, "build_model", lambda params, k: TinyNet(k))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    ckpt = write_model(tmp_path / "model.pt", k=2)
    assert cli.main(["predict", str(tmp_path / "x.png"), "--model", str(ckpt), "--out", str(tmp_path / "out"),
                     "--no-progress", "--device", name]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_device_checks(monkeypatch):
    from farnet.core.errors import ConfigError
    from farnet.core.fastpath import default_device, parse_device

    assert parse_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"--device: 'cuda:2' asked for, but this machine has 2 CUDA device\(s\) "
                                          r"\(cuda:0\.\.cuda:1\)"):
        parse_device("cuda:2")
    monkeypatch.setenv("FARNET_DEVICE", "tpu")
    with pytest.raises(ConfigError, match=r"FARNET_DEVICE: 'tpu' is not a device"):
        default_device()
    monkeypatch.setenv("FARNET_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")


def _predict_refuses(tmp_path, model, words: str, capsys) -> None:
    """`farnet predict` with ``model`` exits 2 with ``words`` in its message and writes no output folder."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    assert cli.main(["predict", str(tmp_path / "x.png"), "--model", str(model), "--out", str(tmp_path / "out"),
                     "--no-progress"]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "out").exists()
