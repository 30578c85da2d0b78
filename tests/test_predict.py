"""`farnet predict`: reading every format, mapping back to original pixels, spacing, output files, mirror images."""

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from farnet import trained as trained_module
from farnet import cli, predict
from farnet.checkpoint import save_atomic
from farnet.config import Params, effective_dict
from farnet.data.imageio import read_image_with_spacing, resize_grayscale
from farnet.inference import IMAGENET_MEAN, IMAGENET_STD
from farnet.errors import DataError
from farnet.heatmaps import encode_heatmaps
from farnet.inference import Heatmaps

INPUT_HW = (48, 64)  # (H_in, W_in)
ORIGINAL_WH = (150, 110)  # (W, H): both axes scaled by a different, non-integer factor




# ---- helpers -------------------------------------------------------------------------------------------------

class TinyNet(nn.Module):
    """A two-head landmark network small enough for tests (random weights)."""

    def __init__(self, k: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fine = nn.Conv2d(4, k, 1)
        self.coarse = nn.Conv2d(4, k, 1)

    def forward(self, x):
        f = self.body(x)
        return Heatmaps(fine=self.fine(f), coarse=self.coarse(nn.functional.avg_pool2d(f, 2)))


class OracleNet(nn.Module):
    """A "model" whose heatmaps ARE the ground truth: Gaussians at the next queued input-pixel positions."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.scale = nn.Parameter(torch.ones(1))  # something to save and load
        self.targets: list[np.ndarray] = []  # (K, 2) input pixels, one per image, in the order predicted
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        b, _, h, w = x.shape
        self.inputs.extend(x.detach())
        points = torch.as_tensor(np.stack([self.targets.pop(0) for _ in range(b)]), dtype=torch.float32)
        return Heatmaps(fine=encode_heatmaps(points, (h, w), 2.0) * self.scale, coarse=None)


def write_model(path, k=3, input_hw=INPUT_HW, dataset="custom", net=None, names=None, **meta_extra):
    net = net if net is not None else TinyNet(k)
    meta = {"dataset": dataset, "num_landmarks": k, "landmark_names": names or [f"p{i}" for i in range(k)],
            "input_hw": list(input_hw), "normalization": {}, "backbone": "densenet121",
            "params": effective_dict(Params()), "git_commit": "test", "selected_epoch": 1, **meta_extra}
    save_atomic({"model": net.state_dict(), "meta": meta}, path)
    return path


@pytest.fixture
def oracle(monkeypatch):
    """Patch the model builder so checkpoints rebuild as one shared OracleNet."""
    holder = {}

    def build(params, k):
        holder["net"] = OracleNet(k)
        return holder["net"]

    monkeypatch.setattr(trained_module, "build_model", build)
    return holder


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(trained_module, "build_model", lambda params, k: TinyNet(k))


def make_image():
    """A (H, W) uint8 test image with structure, containing both 0 and 255."""
    w, h = ORIGINAL_WH
    yy, xx = np.mgrid[0:h, 0:w]
    image = (127 + 100 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.uint8)
    image[0, 0], image[0, 1] = 0, 255
    return image


def dicom_bytes(image_u8, *, monochrome1=False, spacing=(0.15, 0.15), imager_spacing=None):
    """A DICOM file (pydicom) whose 8-bit rendering by our reader is exactly ``image_u8``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = image_u8.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    if monochrome1:
        # stored s = 8·(255 − v) + 50; modality = 2·s − 100 = 16·(255 − v);
        # window 2040.5/4081 -> 255 − v; MONOCHROME1 inverted -> v
        ds.PhotometricInterpretation = "MONOCHROME1"
        stored = 8 * (255 - image_u8.astype(np.uint16)) + 50
        ds.RescaleSlope, ds.RescaleIntercept = 2, -100
        ds.WindowCenter, ds.WindowWidth = 2040.5, 4081
    else:  # no window: min..max (0..4080) stretched to 0..255 -> v
        ds.PhotometricInterpretation = "MONOCHROME2"
        stored = 16 * image_u8.astype(np.uint16)
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_spacing)
    ds.PixelData = stored.astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def save_format(image, path, fmt):
    """Write ``image`` (uint8) as ``fmt``; returns the 8-bit image our reader must recover (None: lossy)."""
    if fmt in ("bmp", "png", "tif8"):
        Image.fromarray(image).save(path, {"tif8": "TIFF"}.get(fmt, fmt.upper()))
    elif fmt == "jpg":
        Image.fromarray(image).save(path, "JPEG", quality=95)
        return None
    elif fmt in ("png16", "tif16"):
        Image.fromarray(image.astype(np.uint16) * 257).save(path, "PNG" if fmt == "png16" else "TIFF")
    elif fmt == "dcm":
        path.write_bytes(dicom_bytes(image))
    elif fmt == "dcm_mono1":
        path.write_bytes(dicom_bytes(image, monochrome1=True, spacing=None, imager_spacing=(0.2, 0.25)))
    return image


FORMATS = {"bmp": "bmp", "png": "png", "jpg": "jpg", "png16": "png", "tif8": "tif", "tif16": "tiff", "dcm": "dcm",
           "dcm_mono1": "dicom"}


# ---- the ground-truth "model": every format maps back to the original pixels ----------------------------------

@pytest.mark.parametrize("fmt", list(FORMATS))
def test_oracle_model_recovers_ground_truth_in_original_pixels(fmt, tmp_path, oracle):
    image = make_image()
    path = tmp_path / f"img_{fmt}.{FORMATS[fmt]}"
    exact = save_format(image, path, fmt)
    w, h = ORIGINAL_WH
    h_in, w_in = INPUT_HW
    rng = np.random.default_rng(3)
    truth = np.stack([rng.uniform(5, w - 6, 4), rng.uniform(5, h - 6, 4)], axis=-1)  # (K, 2) original px
    ckpt = write_model(tmp_path / "model.pt", k=4, net=OracleNet(4))
    trained = predict.load_trained_model(ckpt)
    net = oracle["net"]
    net.targets.append((truth + 0.5) * np.array([w_in / w, h_in / h]) - 0.5)  # x_in = (x + 0.5)·W_in/W − 0.5

    [pred] = list(predict.predict_images(trained, [path], progress=False))

    assert pred.image.shape == (h, w)
    tolerance = 0.5 * np.array([w / w_in, h / h_in]) + 1e-9  # argmax quantises to input pixels
    assert np.all(np.abs(pred.landmarks_px - truth) <= tolerance), (pred.landmarks_px - truth)
    # the network saw this image, decoded correctly and resized to the input size
    seen = net.inputs[0].numpy()
    grey = (seen[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255  # undo the normalisation
    reference = resize_grayscale(exact if exact is not None else image, INPUT_HW).astype(float)
    if exact is not None:
        np.testing.assert_allclose(grey, reference, atol=1e-3)
        np.testing.assert_array_equal(pred.image, image)
    else:
        assert np.abs(grey - reference).mean() < 2.0
    if fmt == "dcm":
        assert (pred.spacing_mm, pred.spacing_source) == ((0.15, 0.15), "dicom header")
    elif fmt == "dcm_mono1":  # Imager Pixel Spacing is (row, column) = (y, x)
        assert pred.spacing_mm == (0.25, 0.2)
        np.testing.assert_allclose(pred.landmarks_mm, pred.landmarks_px * [0.25, 0.2])
    else:
        assert pred.spacing_mm is None and pred.landmarks_mm is None


def test_batches_keep_images_in_order(tmp_path, oracle):
    w, h = ORIGINAL_WH
    h_in, w_in = INPUT_HW
    paths, truths = [], []
    rng = np.random.default_rng(0)
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(make_image()).save(path)
        paths.append(path)
        truths.append(np.stack([rng.uniform(0, w - 1, 2), rng.uniform(0, h - 1, 2)], axis=-1))
    trained = predict.load_trained_model(write_model(tmp_path / "m.pt", k=2, net=OracleNet(2)))
    oracle["net"].targets.extend((t + 0.5) * np.array([w_in / w, h_in / h]) - 0.5 for t in truths)
    preds = list(predict.predict_images(trained, paths, batch_size=2, progress=False))
    assert [p.image_path for p in preds] == paths
    for pred, truth in zip(preds, truths):
        assert np.all(np.abs(pred.landmarks_px - truth) <= 0.5 * np.array([w / w_in, h / h_in]) + 1e-9)


# ---- spacing ---------------------------------------------------------------------------------------------------

def test_spacing_precedence():
    meta = {"dataset": "isbi2015"}
    assert predict.resolve_spacing((0.1, 0.2), 0.3, meta, (1935, 2400))[:2] == ((0.1, 0.2), "dicom header")
    assert predict.resolve_spacing(None, 0.3, meta, (1935, 2400))[:2] == ((0.3, 0.3), "--spacing-mm")
    spacing, source, warning = predict.resolve_spacing(None, None, meta, (1935, 2400))
    assert (spacing, source, warning) == ((0.1, 0.1), "model default (isbi2015)", None)
    _, _, warning = predict.resolve_spacing(None, None, meta, (968, 1200))
    assert "968x1200" in warning and "--spacing-mm" in warning
    assert predict.resolve_spacing(None, None, {"dataset": "custom"}, (10, 10)) == (None, None, None)
    assert predict.resolve_spacing(None, None, {"dataset": "custom", "spacing_mm": 0.5}, (10, 10))[0] == (0.5, 0.5)


# ---- the command ----------------------------------------------------------------------------------------------

def read_outputs(out, stem):
    rows = list(csv.DictReader((out / f"{stem}.csv").open()))
    doc = json.loads((out / f"{stem}.json").read_text())
    overlay = Image.open(out / f"{stem}_overlay.png")
    return rows, doc, overlay


def test_cli_writes_csv_json_overlay_with_mm(tmp_path, tiny, capsys):
    image = make_image()
    Image.fromarray(image).save(tmp_path / "a.png")
    (tmp_path / "b.dcm").write_bytes(dicom_bytes(image))
    ckpt = write_model(tmp_path / "model.pt", k=3, names=["sella", "nasion, soft", "menton"])
    out = tmp_path / "out"
    code = cli.main(["predict", str(tmp_path / "a.png"), str(tmp_path / "b.dcm"), "--model", str(ckpt),
                     "--out", str(out), "--spacing-mm", "0.5", "--batch-size", "2", "--no-progress"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "a.json", "a_overlay.png", "b.csv", "b.json",
                                                     "b_overlay.png"]
    rows, doc, overlay = read_outputs(out, "a")
    assert [r["name"] for r in rows] == ["sella", "nasion, soft", "menton"]  # a comma in a name is quoted
    assert [r["number"] for r in rows] == ["1", "2", "3"]
    for row, lm in zip(rows, doc["landmarks"]):
        assert float(row["x_mm"]) == pytest.approx(0.5 * float(row["x_px"]), abs=1e-4)
        assert float(row["x_px"]) == pytest.approx(lm["x_px"])
        assert -0.5 <= lm["x_px"] <= ORIGINAL_WH[0] - 0.5 and -0.5 <= lm["y_px"] <= ORIGINAL_WH[1] - 0.5
    assert doc["spacing_source"] == "--spacing-mm" and doc["width"] == 150 and doc["height"] == 110
    assert overlay.size == ORIGINAL_WH and overlay.mode == "RGB"
    _, doc_b, _ = read_outputs(out, "b")
    assert doc_b["spacing_mm"] == [0.15, 0.15] and doc_b["spacing_source"] == "dicom header"
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_cli_without_spacing_writes_pixels_only(tmp_path, tiny):
    Image.fromarray(make_image()).save(tmp_path / "a.jpg")
    ckpt = write_model(tmp_path / "model.pt", k=2)
    assert cli.main(["predict", str(tmp_path / "a.jpg"), "--model", str(ckpt), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 0
    rows, doc, _ = read_outputs(tmp_path / "o", "a")
    assert list(rows[0]) == ["number", "name", "x_px", "y_px"]
    assert doc["spacing_mm"] is None and "x_mm" not in doc["landmarks"][0]


def test_cli_bad_image_names_the_file_and_writes_nothing_for_it(tmp_path, tiny, capsys):
    Image.fromarray(make_image()).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    ckpt = write_model(tmp_path / "model.pt", k=2)
    out = tmp_path / "o"
    args = ["predict", str(tmp_path / "good.png"), str(tmp_path / "bad.png"), "--model", str(ckpt), "--out",
            str(out), "--no-progress", "--batch-size", "1"]
    assert cli.main(args) == 2
    assert "bad.png: cannot decode image" in capsys.readouterr().err
    assert not (out / "bad.csv").exists()
    assert cli.main(args + ["--keep-going"]) == 1
    assert "skipped" in capsys.readouterr().err and (out / "good.json").is_file() and not (out / "bad.json").exists()


def test_cli_refuses_colliding_outputs(tmp_path, tiny, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(make_image()).save(tmp_path / sub / "x.png")
    ckpt = write_model(tmp_path / "model.pt", k=2)
    code = cli.main(["predict", str(tmp_path / "a/x.png"), str(tmp_path / "b/x.png"), "--model", str(ckpt),
                     "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2 and "would write the same x.csv" in capsys.readouterr().err


def test_cli_refuses_bad_options(tmp_path, tiny, capsys):
    Image.fromarray(make_image()).save(tmp_path / "a.png")
    ckpt = write_model(tmp_path / "model.pt", k=2)
    for extra, message in ((["--spacing-mm", "-1"], "--spacing-mm must be a positive"),
                           (["--batch-size", "0"], "--batch-size must be >= 1")):
        assert cli.main(["predict", str(tmp_path / "a.png"), "--model", str(ckpt), *extra]) == 2
        assert message in capsys.readouterr().err


def test_model_is_built_from_checkpoint_meta_not_params_yaml(tmp_path, monkeypatch):
    seen = {}

    def build(params, k):
        seen["params"], seen["k"] = params, k
        return TinyNet(k)

    monkeypatch.setattr(trained_module, "build_model", build)
    raw = effective_dict(Params())
    raw["model"].update(backbone="vgg16", fusion="add", pretrained="imagenet")
    net = TinyNet(5)
    save_atomic({"model": net.state_dict(), "meta": {"num_landmarks": 5, "input_hw": [32, 32], "params": raw}},
                tmp_path / "m.pt")
    trained = predict.load_trained_model(tmp_path / "m.pt")
    assert (seen["params"].backbone, seen["params"].fusion, seen["k"]) == ("vgg16", "add", 5)
    assert seen["params"].pretrained == "none"  # the weights come from the file: nothing is downloaded
    assert trained.landmark_names == ["L1", "L2", "L3", "L4", "L5"] and trained.input_hw == (32, 32)
    assert not trained.model.training  # eval mode


def test_real_farnet_checkpoint_round_trip(tmp_path):
    """No patching: the real FARNet rebuilt from a model.pt's metadata gives the saved network's heatmaps."""
    torch.manual_seed(0)
    params = Params()
    from farnet.model import build_model

    net = build_model(params.model, 2).eval()
    write_model(tmp_path / "model.pt", k=2, input_hw=(64, 64), net=net)
    trained = predict.load_trained_model(tmp_path / "model.pt")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trained.model(x).fine, net(x).fine)


# ---- real images from the mirror ------------------------------------------------------------------------------

@pytest.mark.mirror
def test_cli_on_mirror_images(mirror_root, tmp_path, tiny):
    images = [mirror_root / "isbi2015/RawImage/Test1Data/151.jpg",
              sorted((mirror_root / "hand_dha/images").glob("*.png"))[0],
              sorted((mirror_root / "spine_boostnet/data/training").glob("*.jpg"))[0]]
    ckpt = write_model(tmp_path / "model.pt", k=19, input_hw=(64, 48), dataset="isbi2015")
    out = tmp_path / "out"
    assert cli.main(["predict", *map(str, images), "--model", str(ckpt), "--out", str(out), "--no-progress",
                     "--batch-size", "2"]) == 0
    for image in images:
        original, _ = read_image_with_spacing(image)
        h, w = original.shape
        rows, doc, overlay = read_outputs(out, image.stem)
        assert len(rows) == 19 and [int(r["number"]) for r in rows] == list(range(1, 20))
        xs = np.array([float(r["x_px"]) for r in rows])
        ys = np.array([float(r["y_px"]) for r in rows])
        assert np.all((-0.5 <= xs) & (xs <= w - 0.5) & (-0.5 <= ys) & (ys <= h - 0.5))
        assert (doc["width"], doc["height"]) == (w, h) and doc["image"] == str(image)
        assert doc["spacing_source"] == "model default (isbi2015)"  # ISBI: 0.1 mm, with a size warning
        np.testing.assert_allclose([r["x_mm"] for r in doc["landmarks"]], xs * 0.1, atol=1e-4)
        assert overlay.size == (w, h)


def test_wrong_meta_is_a_clear_error(tmp_path, tiny):
    save_atomic({"model": TinyNet(2).state_dict()}, tmp_path / "state.pt")
    with pytest.raises(DataError, match=r"state\.pt: no 'meta' entry: not a trained model file"):
        predict.load_trained_model(tmp_path / "state.pt")
    write_model(tmp_path / "m.pt", k=2, input_hw=(0, 32))
    with pytest.raises(DataError, match=r"m\.pt: model metadata input_hw \[0, 32\]"):
        predict.load_trained_model(tmp_path / "m.pt")
