"""Fuzzing prediction: model files with garbage weights or metadata, and degenerate images to predict on.

A garbage model must be refused with an error naming the file and the fault; any image, however flat, tiny or
elongated, must get K finite landmarks inside it and the warnings its confidence and aspect ratio call for.
"""

import numpy as np
import pytest
from PIL import Image

from fuzzing import SEED, Failures

# Pillow and pydicom warn about the corrupt files they are fed; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


def garbage_model_cases(rng):
    """(case, network, meta changes, what must happen: "ok" or words the error must contain)."""
    import torch

    from model_files import TinyNet

    for i in range(30):
        torch.manual_seed(i)
        net = TinyNet(2)
        state = net.state_dict()
        names = [n for n, t in state.items() if t.is_floating_point()]
        name = names[int(rng.integers(0, len(names)))]
        bad = [float("nan"), float("inf"), -float("inf"), 1e38][i % 4]
        with torch.no_grad():
            if i % 5 == 4:  # as the quick profile stores weights
                state[name].copy_(state[name].to(torch.bfloat16).float())
            state[name].view(-1)[int(rng.integers(0, state[name].numel()))] = bad
        yield f"weights#{i}({name}={bad})", net, {}, "ok" if bad == 1e38 else "NaN or infinite"
    for i, (key, value, words) in enumerate([
            ("input_hw", [0, 32], "input_hw"), ("input_hw", [32.0, 32], "input_hw"), ("input_hw", "32", "input_hw"),
            ("num_landmarks", 0, "num_landmarks"), ("num_landmarks", True, "num_landmarks"),
            ("num_landmarks", 3, "landmark names"), ("landmark_names", ["a"], "landmark names"),
            ("params", {"model": {"backbone": 5}}, "params.model"), ("input_hw", [64, 32], "ok")]):
        yield f"meta#{i}({key}={value!r})", TinyNet(2), {key: value}, words


def test_fuzz_garbage_models(tmp_path, monkeypatch):
    from model_files import TinyNet, write_model

    from farnet.commands import predict
    from farnet.models import trained as trained_module

    monkeypatch.setattr(trained_module, "build_model", lambda params, k: TinyNet(k))
    failures = Failures()
    rng = np.random.default_rng(SEED + 5)
    cases = list(garbage_model_cases(rng))
    for i, (case, net, meta, must) in enumerate(cases):
        path = write_model(tmp_path / f"model{i:02d}.pt", k=2, net=net, **{"input_hw": (32, 32), **meta})
        outcome, value = failures.run(case, predict.load_trained_model, path)
        if must == "ok":
            failures.check(case, outcome == "ok", f"good model refused: {value}")
        elif outcome != "crash":
            failures.check(case, outcome == "error", "garbage model loaded")
            failures.check(case, outcome != "error" or (str(path) in str(value) and must in str(value)),
                           f"error does not name the file and say {must!r}: {value}")
    failures.report()
    assert len(cases) >= 35


def degenerate_images(rng):
    """(case, uint8 image, flat?): flat, tiny, one-pixel and extremely elongated images, and random ones."""
    for h, w in [(1, 1), (1, 2), (2, 1), (1, 5000), (5000, 1), (3, 700), (64, 64), (17, 5)]:
        value = int(rng.integers(0, 256))
        yield f"flat {w}x{h} of {value}", np.full((h, w), value, np.uint8), True
        yield f"random {w}x{h}", rng.integers(0, 256, (h, w)).astype(np.uint8), False


def test_fuzz_degenerate_images_get_landmarks_and_a_word(tmp_path, monkeypatch):
    from model_files import StructureNet, write_model

    from farnet.commands import predict
    from farnet.models import trained as trained_module

    monkeypatch.setattr(trained_module, "build_model", lambda params, k: StructureNet(k))
    trained = predict.load_trained_model(write_model(tmp_path / "m.pt", k=3, input_hw=(32, 64), net=StructureNet(3)))
    failures = Failures()
    rng = np.random.default_rng(SEED + 6)
    cases = list(degenerate_images(rng))
    for i, (case, image, flat) in enumerate(cases):
        path = tmp_path / f"{i:02d}.png"
        Image.fromarray(image).save(path)
        outcome, value = failures.run(case, lambda p: list(predict.predict_images(trained, [p], progress=False)),
                                      path)
        if outcome != "ok":
            failures.check(case, outcome == "crash", f"refused: {value}")
            continue
        [pred] = value
        h, w = image.shape
        xy = pred.landmarks_px
        failures.check(case, xy.shape == (3, 2) and np.all(np.isfinite(xy)) and np.all(xy >= -0.5)
                       and np.all(xy <= [w - 0.5, h - 0.5]), f"landmarks {xy.tolist()} outside {w}x{h}")
        failures.check(case, pred.confidence.shape == (3,), f"confidence {pred.confidence}")
        low = any(text.startswith("low confidence") for text in pred.warnings)
        failures.check(case, low == bool(np.any(pred.confidence < predict.MIN_CONFIDENCE)),
                       f"warnings {pred.warnings} disagree with confidence {pred.confidence}")
        failures.check(case, not flat or low, "a flat image without a low-confidence warning")
        stretched = not 0.5 <= (w / h) / (64 / 32) <= 2
        failures.check(case, stretched == any(text.startswith("the image is") for text in pred.warnings),
                       f"aspect-ratio warning wrong for {w}x{h}: {pred.warnings}")
    failures.report()
    assert len(cases) >= 16
