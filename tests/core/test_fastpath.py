"""Tests of farnet.core.fastpath: where "auto" resolves to, the config fields that take it, and that every fast path
predicts the same landmarks as fp32 on a real radiograph (bf16 autocast and channels_last on the CPU;
torch.compile and CUDA graphs on CUDA only, since compiling FARNet on a 2-core CPU takes minutes)."""

import contextlib
import copy

import numpy as np
import pytest
import torch
from torch import nn

from farnet.core import fastpath
from farnet.config import load_params, params_from_dict
from farnet.training.engine import RunSettings, TrainOptions, train
from farnet.training.steps import build_optimizer, train_step
from farnet.core.errors import ConfigError
from farnet.core.fastpath import FastPath, autocast, resolve, resolve_channels_last, resolve_precision
from farnet.training.losses import ExponentialWeightedCenterLoss
from helpers import RandomLandmarks, TinyNet, write_committed_params


@pytest.fixture(params=[True, False], ids=["bf16-hardware", "no-bf16"])
def native(request, monkeypatch):
    monkeypatch.setattr(fastpath, "bf16_native", lambda device: request.param)
    return request.param


def test_auto_picks_bf16_and_channels_last_only_where_bf16_is_native(native):
    on_cpu = resolve("auto", "auto", "cpu")
    assert on_cpu == (FastPath("bf16", True) if native else FastPath("fp32", False))
    on_cuda = resolve("auto", "auto", "cuda")
    assert on_cuda == FastPath("bf16" if native else "fp32", True)  # channels_last is cuDNN's layout either way
    assert on_cpu.memory_format == (torch.channels_last if native else torch.contiguous_format)


def test_explicit_settings_are_kept(native):
    assert resolve("fp32", False, "cpu") == FastPath("fp32", False)
    assert resolve("bf16", True, "cpu") == FastPath("bf16", True)  # honoured even where bf16 is emulated
    assert resolve("fp32", "auto", "cpu") == FastPath("fp32", False)
    assert resolve("bf16", "auto", "cpu") == FastPath("bf16", True)
    assert resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_channels_last(True, "cpu", "fp32") is True
    assert FastPath("bf16", True).describe() == "bf16+channels_last" and FastPath("fp32", False).describe() == "fp32"


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match=r"precision 'fp16' is not one of 'auto', 'fp32', 'bf16'"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match=r"channels_last 'yes' is not one of True, False, 'auto'"):
        resolve_channels_last("yes", "cpu", "fp32")


def test_bf16_native_on_this_cpu_matches_torch():
    expected = (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
                and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))
    assert fastpath.bf16_native("cpu") is bool(expected)
    assert fastpath.bf16_native("meta") is False


def test_engine_autocast_resolves_auto(native):
    ctx = autocast(torch.device("cpu"), "auto")
    if native:
        assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    else:
        assert isinstance(ctx, contextlib.nullcontext)
    assert isinstance(autocast(torch.device("cpu"), "fp32"), contextlib.nullcontext)
    with pytest.raises(ValueError, match="precision 'half'"):
        autocast(torch.device("cpu"), "half")


@pytest.mark.parametrize("value", ["auto", "fp32", "bf16"])
def test_config_precision_accepts_auto(value):
    assert params_from_dict({"train": {"precision": value}}).train.precision == value


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_config_channels_last_accepts_auto(value):
    assert params_from_dict({"train": {"channels_last": value}}).train.channels_last == value


@pytest.mark.parametrize("data, match", [
    ({"train": {"precision": "fp16"}}, r"train\.precision: 'fp16' is not one of 'auto', 'fp32', 'bf16'"),
    ({"train": {"channels_last": "yes"}},
     r"train\.channels_last: expected true or false, got 'yes', or 'yes' is not one of 'auto'"),
    ({"train": {"channels_last": 1}}, r"train\.channels_last: expected true or false, got 1"),
])
def test_config_rejects_other_values(data, match):
    with pytest.raises(ConfigError, match=match):
        params_from_dict(data)


def test_project_params_use_the_fast_paths_by_default(tmp_path):
    train_params = load_params(write_committed_params(tmp_path)).train
    assert (train_params.precision, train_params.channels_last) == ("auto", "auto")
    assert params_from_dict({}).train.precision == "auto"  # the dataclass default agrees with params.yaml


def Tiny():
    return TinyNet(batch_norm=False)


def Data():
    return RandomLandmarks(n=4)


def test_train_reports_the_resolved_fast_path(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    opts = TrainOptions(epochs=1, sigma_px=2.0, batch_size=2, precision="auto", channels_last="auto")
    result = train(model, Data(), ExponentialWeightedCenterLoss(40), opts, tmp_path,
                   RunSettings(fingerprint="a", progress=False))
    expected = resolve("auto", "auto", "cpu")
    assert result.fast_path == expected.describe()
    assert model.body[0].weight.is_contiguous(memory_format=expected.memory_format)


def test_train_step_leaves_the_weights_alone_when_the_loss_is_not_finite():
    torch.manual_seed(0)
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer("adam", model.parameters(), 1e-2)
    images, points, _ = Data()[0]
    points = torch.full_like(points, float("nan"))  # NaN targets: a NaN loss
    loss, _ = train_step(model, images[None], points[None], optimizer, ExponentialWeightedCenterLoss(40), 2.0,
                         FastPath("fp32", False))
    assert np.isnan(loss)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)


# ---- the fast paths against fp32 on a real radiograph ----------------------------------------------------------

INPUT_HW = (128, 96)  # tiny, so training a DenseNet-121 FARNet for a few steps takes seconds
FAST_PATHS = [FastPath("bf16", False), FastPath("fp32", True), FastPath("bf16", True)]


@pytest.fixture(scope="module")
def trained_on_001(mirror_root, tmp_path_factory):
    """FARNet (DenseNet-121, random init) fitted for 20 Adam steps to ISBI image 001 at 128×96, with its batch
    norm statistics then set to that image's, so its heatmaps have real peaks in eval mode."""
    from farnet.config import LossParams, ModelParams
    from farnet.data.cache import build_cache, load_cache
    from farnet.data.isbi import read_isbi2015
    from farnet.models.interface import normalize
    from farnet.training.losses import build_loss
    from farnet.models.factory import build_model

    root = mirror_root / "isbi2015"
    if not (root / "MANIFEST.json").is_file():
        pytest.skip(f"no isbi2015 under the mirror {mirror_root}")
    cache = load_cache(build_cache(read_isbi2015(root, "train", ids=["001"]), tmp_path_factory.mktemp("cache"),
                                   INPUT_HW, progress=False))
    images = torch.from_numpy(np.array(cache.images)).unsqueeze(1)  # (1, 1, H, W) uint8
    points = torch.from_numpy(np.array(cache.landmarks))  # (1, 19, 2)
    torch.manual_seed(0)
    model = build_model(ModelParams(), num_landmarks=points.shape[1])
    fast = resolve("auto", "auto", "cpu")  # the quickest way to train here; the comparison below is in eval mode
    model.to(memory_format=fast.memory_format).train()
    optimizer = build_optimizer("adam", model.parameters(), 1e-3)
    loss_fn = build_loss(LossParams())
    for _ in range(20):
        train_step(model, images, points, optimizer, loss_fn, 2.0, fast)
    for module in model.modules():  # running statistics := this image's (a few steps leave them half-updated)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
    with torch.no_grad():
        model(normalize(images).contiguous(memory_format=fast.memory_format))
    return model.eval(), cache


def _heatmaps(model, images_u8, fast: FastPath) -> torch.Tensor:
    from farnet.models.interface import normalize
    from farnet.models.interface import final_heatmaps

    model = copy.deepcopy(model).to(memory_format=fast.memory_format)
    x = normalize(torch.from_numpy(np.array(images_u8)).unsqueeze(1)).contiguous(memory_format=fast.memory_format)
    with torch.no_grad(), autocast(torch.device("cpu"), fast.precision):
        return final_heatmaps(model(x), INPUT_HW).float()  # (1, K, H, W)


@pytest.mark.mirror
@pytest.mark.parametrize("fast", FAST_PATHS, ids=lambda f: f.describe())
def test_fast_path_predicts_the_same_landmarks_as_fp32(trained_on_001, fast):
    """Tolerance: every landmark within 1 px of fp32's in x and in y (Chebyshev distance ≤ 1 px at the input
    resolution, 128×96), and the heatmaps within 5 % of the fp32 heatmaps' maximum (max-abs difference) for
    bf16 autocast, 1e-4 of it for fp32 channels_last (a different summation order only). At least 95 % of
    landmarks must meet the 1 px bound; a trained model has 19 clear peaks, so in practice all do.
    """
    from farnet.evaluation.loop import predict_landmarks

    model, cache = trained_on_001
    reference = predict_landmarks(model, cache.images, device="cpu", precision="fp32", channels_last=False,
                                  decoders=("argmax",), progress=False)["argmax"]  # (1, K, 2)
    error_px = np.linalg.norm(reference - cache.landmarks, axis=-1)
    assert np.mean(error_px <= 5) >= 0.8, f"the fixture did not learn the landmarks: errors {error_px.round(1)}"

    net = copy.deepcopy(model).to(memory_format=fast.memory_format)  # predict_landmarks runs a model as it is
    predicted = predict_landmarks(net, cache.images, device="cpu", precision=fast.precision,
                                  channels_last=fast.channels_last, decoders=("argmax",), progress=False)["argmax"]
    offset_px = np.abs(predicted - reference).max(axis=-1)  # (1, K) Chebyshev distance
    assert np.mean(offset_px <= 1) >= 0.95, f"{fast.describe()}: landmark offsets from fp32 {offset_px}"

    ref_maps = _heatmaps(model, cache.images, FastPath("fp32", False))
    maps = _heatmaps(model, cache.images, fast)
    scale = float(ref_maps.abs().max())
    tolerance = 0.05 if fast.precision == "bf16" else 1e-4
    assert float((maps - ref_maps).abs().max()) <= tolerance * scale


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.mirror
@needs_cuda
@pytest.mark.parametrize("way", ["compile", "cuda_graphs"])
def test_compiled_and_graphed_inference_predict_the_same_landmarks_as_fp32(trained_on_001, way):
    """torch.compile and CUDA graphs (on what "auto" picks on this GPU) against fp32 on the CPU: every landmark
    within 1 px of fp32's in x and in y at the input resolution (cuDNN's TF32/bf16 arithmetic included)."""
    from farnet.commands.bench.compiled import graphed_inference
    from farnet.evaluation.loop import predict_landmarks

    model, cache = trained_on_001
    reference = predict_landmarks(model, cache.images, device="cpu", decoders=("argmax",), progress=False)["argmax"]
    fast = resolve("auto", "auto", "cuda")
    gpu_model = copy.deepcopy(model).to("cuda", memory_format=fast.memory_format).eval()
    if way == "compile":
        predicted = predict_landmarks(torch.compile(gpu_model), cache.images, device="cuda", precision=fast.precision,
                                      channels_last=fast.channels_last, decoders=("argmax",), progress=False)["argmax"]
    else:
        spec = {"device": "cuda", "size_hw": list(INPUT_HW), "num_landmarks": cache.landmarks.shape[1]}
        images = torch.from_numpy(np.array(cache.images)).unsqueeze(1)
        predicted = graphed_inference(gpu_model, fast, spec, 1, images=images)().numpy()
    offset_px = np.abs(predicted - reference).max(axis=-1)
    assert np.mean(offset_px <= 1) >= 0.95, f"{way}: landmark offsets from fp32 {offset_px}"


# ---- the default paths against plain fp32 eager on a small network -------------------------------------------


def _fit(fast: FastPath, steps: int = 30, lr: float = 1e-2) -> tuple[nn.Module, nn.Module]:
    """TinyNet (with batch norm) trained ``steps`` Adam steps on seeded batches on ``fast``: (initial, trained)."""
    torch.manual_seed(0)
    model = TinyNet(k=3, batch_norm=True)
    initial = copy.deepcopy(model)
    model.to(memory_format=fast.memory_format).train()
    data = RandomLandmarks(n=4, hw=(32, 32), k=3)
    optimizer = build_optimizer("adam", model.parameters(), lr)
    loss_fn = ExponentialWeightedCenterLoss(40)
    for step in range(steps):
        i = [step % 4, (step + 1) % 4]
        train_step(model, data.images[i], data.points[i], optimizer, loss_fn, 2.0, fast)
    return initial, model


def _maps(model: nn.Module) -> torch.Tensor:
    """The model's fp32 heatmaps of the four training images, eval mode, on a copy."""
    from farnet.models.interface import final_heatmaps, normalize

    net = copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        return final_heatmaps(net(normalize(RandomLandmarks(n=4, hw=(32, 32), k=3).images)), (32, 32))


def test_the_default_training_path_trains_to_the_model_of_fp32_eager():
    """What "auto" trains on here (bf16 autocast + channels_last on a CPU with native bf16, else fp32) against
    plain fp32 eager from the same start on the same batches: the trained heatmaps differ by at most 5 % of what
    training changed in them (measured: bf16 ~2 %, as much as one step fewer of fp32; channels_last alone 0.5 %).
    Adam's per-weight steps amplify rounding in weights that barely move, so the trained models are compared,
    not the weights. A run at 1.5 times the learning rate differs by ~16 %: the bound tells them apart."""
    initial, reference = _fit(FastPath("fp32", False))
    start, target = _maps(initial), _maps(reference)

    def distance(model) -> float:
        return float((_maps(model) - target).norm() / (target - start).norm())

    for fast, tolerance in ((resolve("auto", "auto", "cpu"), 0.05), (FastPath("bf16", True), 0.05),
                            (FastPath("fp32", True), 0.02)):
        assert distance(_fit(fast)[1]) <= tolerance, fast.describe()
    assert distance(_fit(FastPath("fp32", False), lr=1.5e-2)[1]) > 0.05  # another training is told apart


def test_compiled_inference_predicts_the_same_landmarks_as_eager():
    """The compiled path (torch.compile with freezing: batch norm folded into the convs, weights as constants)
    on a trained network with batch norm: the same argmax landmarks as eager, heatmaps within 1e-4 of their
    maximum; a batch that does not fill ``batch_size`` is padded and still gives one prediction per image."""
    from farnet.evaluation.loop import predict_network
    from farnet.models.interface import describe_inference, inference_network

    _, model = _fit(FastPath("fp32", False))
    images = RandomLandmarks(n=5, hw=(32, 32), k=3).images[:, 0].numpy()  # (5, 32, 32): batches of 2, 2, 1
    eager = inference_network(copy.deepcopy(model), "cpu", FastPath("fp32", False))
    compiled = inference_network(copy.deepcopy(model), "cpu", FastPath("fp32", False), path="compile")
    assert describe_inference(compiled)["path"] == "compile" and describe_inference(eager)["path"] == "eager"
    expected = predict_network(eager, images, batch_size=2, decoders=("argmax",), progress=False)["argmax"]
    got = predict_network(compiled, images, batch_size=2, decoders=("argmax",), progress=False)["argmax"]
    assert got.shape == expected.shape == (5, 3, 2)
    np.testing.assert_array_equal(got, expected)
    x = torch.from_numpy(images[:2]).unsqueeze(1)
    with torch.no_grad():
        reference_maps = eager(x)
        assert float((compiled(x) - reference_maps).abs().max()) <= 1e-4 * float(reference_maps.abs().max())


@pytest.mark.parametrize("variable, read, paths", [
    ("FARNET_STEP_PATH", "farnet.training.steps.default_step_path", ("eager", "deferred", "graph", "compile")),
    ("FARNET_INFERENCE_PATH", "farnet.models.interface.default_inference_path", ("eager", "compile"))])
def test_the_step_and_inference_paths_come_from_the_environment(monkeypatch, variable, read, paths):
    import importlib

    module, name = read.rsplit(".", 1)
    default_path = getattr(importlib.import_module(module), name)
    monkeypatch.delenv(variable, raising=False)
    assert default_path() == "eager"
    monkeypatch.setenv(variable, paths[-1])
    assert default_path() == paths[-1]
    monkeypatch.setenv(variable, "fastest")
    with pytest.raises(ConfigError, match=f"{variable}: 'fastest' is not one of {', '.join(paths)}"):
        default_path()


def test_an_inference_path_is_checked():
    from farnet.models.interface import inference_network

    with pytest.raises(ValueError, match="inference path 'jit'"):
        inference_network(TinyNet(), "cpu", FastPath("fp32", False), path="jit")
