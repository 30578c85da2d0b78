"""`farnet predict`: reading every format, mapping back to original pixels, spacing, output files, mirror images."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from torch import nn

from farnet.models import trained as trained_module
from farnet import cli
from farnet.commands import predict
from farnet.core.checkpoint import save_atomic
from farnet.config import Params, effective_dict
from farnet.data.imageio import read_image_with_spacing, resize_grayscale
from farnet.models.interface import IMAGENET_MEAN, IMAGENET_STD
from farnet.core.errors import DataError
from farnet.evaluation.heatmaps import encode_heatmaps
from farnet.models.interface import Heatmaps
from model_files import INPUT_HW, StructureNet, TinyNet, dicom_bytes, write_model

ORIGINAL_WH = (150, 110)  # (W, H): both axes scaled by a different, non-integer factor


# ---- helpers -------------------------------------------------------------------------------------------------


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


def test_an_own_data_models_spacing_is_checked_against_its_images_size():
    """The spacing of an own dataset was applied to an image of any size without a word."""
    own = {"dataset": "custom", "spacing_mm": 0.5, "spacing_original_wh": [400, 300]}
    assert predict.resolve_spacing(None, None, own, (400, 300)) == ((0.5, 0.5), "model default (custom)", None)
    spacing, _, warning = predict.resolve_spacing(None, None, own, (800, 600))
    assert spacing == (0.5, 0.5) and "this image is 800x600" in warning and "400x300" in warning
    _, _, warning = predict.resolve_spacing(None, None, {"dataset": "custom", "spacing_mm": 0.5}, (10, 10))
    assert "no image size to check this image against: pass --spacing-mm" in warning


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
    assert list(rows[0]) == ["number", "name", "x_px", "y_px", "confidence"]
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
    from farnet.models.factory import build_model

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
    ckpt = write_model(tmp_path / "model.pt", k=19, input_hw=(64, 64), dataset="isbi2015")
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


# ---- bit depths: 8-bit, 12-bit in a 16-bit container and 16-bit give the same landmarks -----------------------


@pytest.fixture
def structure(monkeypatch):
    monkeypatch.setattr(trained_module, "build_model", lambda params, k: StructureNet(k))


def make_xray(seed=0):
    """A (H, W) uint8 picture like a radiograph: a dark, graded background and one bright ellipse ("bone") with
    sharp edges in each quarter of the width; it holds 0 and 255."""
    w, h = ORIGINAL_WH
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = 20 + 40 * yy / h
    for k in range(4):
        cx, cy = (k + 0.5) * w / 4 + rng.uniform(-5, 5), rng.uniform(0.3 * h, 0.7 * h)
        rx, ry = rng.uniform(8, 15), rng.uniform(15, 30)
        image[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = rng.uniform(170, 230)
    image = np.rint(image).astype(np.uint8)
    image[0, 0], image[-1, -1] = 0, 255
    return image


def save_bits(image, path, bits, sbit=False):
    """Store an 8-bit image as ``bits``-bit values, unscaled, in the 16-bit container ``path``'s suffix names
    (PNG with an ``sBIT`` chunk when asked); 8 bits: an 8-bit file."""
    if bits == 8:
        Image.fromarray(image).save(path)
        return path
    values = np.rint(image.astype(np.float64) * (2**bits - 1) / 255).astype(np.uint16)
    info = None
    if sbit:
        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([bits]))
    Image.fromarray(values).save(path, pnginfo=info) if info else Image.fromarray(values).save(path)
    return path


BIT_CASES = {"png12": ("png", 12, False), "png12_sbit": ("png", 12, True), "tif12": ("tif", 12, False),
             "png10": ("png", 10, False), "tif14": ("tiff", 14, False), "png16": ("png", 16, False),
             "tif16": ("tif", 16, False), "png16_sbit": ("png", 16, True)}


@pytest.mark.parametrize("case", [*BIT_CASES, "dcm12"])
def test_bit_depths_predict_the_same_landmarks(case, tmp_path, structure):
    image = make_xray()
    reference = save_bits(image, tmp_path / "eight.png", 8)
    if case == "dcm12":  # BitsStored 12, no window: the image's own range is stretched
        other = tmp_path / "twelve.dcm"
        other.write_bytes(dicom_bytes(image))
    else:
        suffix, bits, sbit = BIT_CASES[case]
        other = save_bits(image, tmp_path / f"{case}.{suffix}", bits, sbit)
    trained = predict.load_trained_model(write_model(tmp_path / "m.pt", k=4, net=StructureNet(4)))

    eight, deep = predict.predict_images(trained, [reference, other], batch_size=1, progress=False)

    np.testing.assert_array_equal(deep.image, image)  # 12 bits are not a sixteenth of the brightness
    assert np.all(eight.confidence > 0.5), eight.confidence  # the stand-in network finds each "bone"
    assert np.abs(deep.landmarks_px - eight.landmarks_px).max() <= 1.0
    np.testing.assert_allclose(deep.confidence, eight.confidence, atol=1e-6)
    assert deep.warnings == ()


def test_data_bits_hand_computed():
    from farnet.data.imageio import data_bits

    assert [data_bits(m) for m in (0, 255, 256, 1023, 1024, 4095, 4096, 16383, 16384, 65535)] == \
        [8, 8, 10, 10, 12, 12, 14, 14, 16, 16]
    assert data_bits(900, 12) == 12  # sBIT 12, values stored unscaled: a dark 12-bit image stays dark
    assert data_bits(4096, 12) == 16  # values beyond 12 bits: scaled up to 16 bits, as the PNG standard says
    assert data_bits(200, 16) == 16


def test_png_sbit_decides_a_dark_image(tmp_path):
    grey = np.arange(0, 900, 4, dtype=np.uint16).reshape(15, 15)  # 12-bit data using a quarter of the range
    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([12]))
    Image.fromarray(grey).save(tmp_path / "sbit.png", pnginfo=info)
    Image.fromarray(grey).save(tmp_path / "plain.png")
    np.testing.assert_array_equal(read_image_with_spacing(tmp_path / "sbit.png")[0],
                                  np.rint(grey * 255.0 / 4095).astype(np.uint8))  # as the file says: 12 bits
    np.testing.assert_array_equal(read_image_with_spacing(tmp_path / "plain.png")[0],
                                  np.rint(grey * 255.0 / 1023).astype(np.uint8))  # the smallest depth holding 896
    bad = PngImagePlugin.PngInfo()
    bad.add(b"sBIT", bytes([17]))
    Image.fromarray(grey).save(tmp_path / "bad.png", pnginfo=bad)
    with pytest.raises(DataError, match=r"bad\.png: PNG sBIT chunk .* is not 1\.\.16 significant bits"):
        read_image_with_spacing(tmp_path / "bad.png")


# ---- confidence: the heatmap maximum, in the files, and a warning where it is low ----------------------------

def test_confidence_is_written_and_low_confidence_warned(tmp_path, structure, capsys):
    Image.fromarray(make_xray()).save(tmp_path / "xray.png")
    Image.fromarray(np.full((110, 150), 128, np.uint8)).save(tmp_path / "flat.png")
    ckpt = write_model(tmp_path / "m.pt", k=4, net=StructureNet(4))
    out = tmp_path / "out"
    assert cli.main(["predict", str(tmp_path / "xray.png"), str(tmp_path / "flat.png"), "--model", str(ckpt),
                     "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "flat.png: warning: low confidence: 4 of 4 landmarks have a heatmap maximum below 0.25" in err
    assert "xray.png" not in err
    rows, doc, _ = read_outputs(out, "xray")
    assert all(float(r["confidence"]) > 0.5 for r in rows) and doc["warnings"] == []
    assert [lm["confidence"] for lm in doc["landmarks"]] == [float(r["confidence"]) for r in rows]
    rows, doc, _ = read_outputs(out, "flat")
    assert [float(r["confidence"]) for r in rows] == [0.0] * 4
    assert len(doc["warnings"]) == 1 and doc["warnings"][0].startswith("low confidence")
    assert "warned below 0.25" in doc["confidence"]
    assert cli.main(["predict", str(tmp_path / "flat.png"), "--model", str(ckpt), "--out", str(out),
                     "--no-progress", "--min-confidence", "0"]) == 0  # the threshold is an option
    assert "warning" not in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "flat.png"), "--model", str(ckpt), "--min-confidence", "2"]) == 2
    assert "--min-confidence must be in [0, 1], got 2" in capsys.readouterr().err


@pytest.mark.mirror
def test_low_confidence_warned_for_a_flat_image_not_a_real_one(mirror_root, tmp_path, structure, capsys):
    real = mirror_root / "isbi2015/RawImage/Test1Data/151.jpg"
    Image.fromarray(np.full((1200, 968), 90, np.uint8)).save(tmp_path / "flat.png")
    ckpt = write_model(tmp_path / "m.pt", k=4, input_hw=(128, 96), net=StructureNet(4), dataset="isbi2015")
    trained = predict.load_trained_model(ckpt)
    real_pred, flat_pred = predict.predict_images(trained, [real, tmp_path / "flat.png"], progress=False)
    assert np.all(real_pred.confidence >= predict.MIN_CONFIDENCE), real_pred.confidence
    assert not any(w.startswith("low confidence") for w in real_pred.warnings)
    assert np.all(flat_pred.confidence < predict.MIN_CONFIDENCE)
    assert [w for w in flat_pred.warnings if w.startswith("low confidence")]
    assert "flat.png: warning: low confidence" in capsys.readouterr().err


def test_predict_never_replaces_a_file_it_did_not_write(tmp_path, tiny, capsys):
    """--out at the image folder replaced the annotation 151.json beside 151.png."""
    Image.fromarray(make_image()).save(tmp_path / "151.png")
    ckpt = write_model(tmp_path / "model.pt")
    (tmp_path / "151.json").write_text('{"annotation": [1, 2]}')
    args = ["predict", str(tmp_path / "151.png"), "--model", str(ckpt), "--out", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 2
    assert "151.json exists and was not written by `farnet predict`" in capsys.readouterr().err
    assert (tmp_path / "151.json").read_text() == '{"annotation": [1, 2]}'
    assert cli.main([*args, "--overwrite"]) == 0
    assert json.loads((tmp_path / "151.json").read_text())["landmarks"]
    assert cli.main(args) == 0  # its own earlier output is replaced without the flag


def test_an_exif_rotated_image_says_its_frame_in_the_outputs(tmp_path, tiny):
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(make_image()).save(tmp_path / "turned.jpg", exif=exif)
    ckpt = write_model(tmp_path / "model.pt")
    assert cli.main(["predict", str(tmp_path / "turned.jpg"), "--model", str(ckpt), "--out", str(tmp_path / "out"),
                     "--no-progress"]) == 0
    warnings = json.loads((tmp_path / "out" / "turned.json").read_text())["warnings"]
    assert any("EXIF Orientation 8" in w and "coordinates are in the stored frame" in w for w in warnings)


def test_predict_runs_the_devices_fast_path_and_compiled_predicts_the_same(tmp_path, tiny):
    """`farnet predict` predicts on the fast path "auto" picks for the device and says so in each JSON;
    `--compile` (torch.compile with freezing; a last batch of 1 padded to the batch of 2) writes the same
    landmarks."""
    from farnet.core.fastpath import resolve

    for i in range(3):
        Image.fromarray(np.roll(make_image(), 9 * i, axis=1)).save(tmp_path / f"{i}.png")
    ckpt = write_model(tmp_path / "model.pt", k=3)
    images = [str(tmp_path / f"{i}.png") for i in range(3)]
    landmarks = {}
    for way, extra in (("eager", []), ("compile", ["--compile"])):
        out = tmp_path / way
        assert cli.main(["predict", *images, "--model", str(ckpt), "--out", str(out), "--batch-size", "2",
                         "--no-progress", *extra]) == 0
        docs = [read_outputs(out, str(i))[1] for i in range(3)]
        fast = resolve("auto", "auto", "cpu")
        assert all(d["inference"] == {"precision": fast.precision, "channels_last": fast.channels_last,
                                      "path": way} for d in docs)
        landmarks[way] = [[(lm["x_px"], lm["y_px"]) for lm in d["landmarks"]] for d in docs]
    assert landmarks["compile"] == landmarks["eager"]
