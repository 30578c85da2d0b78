"""Unit tests of what the stages are made of: the dataset registry, a split of a prepared cache, the metrics of
one split, a training run's fingerprint and a result's run info (each also runs end to end in test_pipeline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from farnet.config import load_params, params_from_stage, stage_params
from farnet.data.cache import build_cache
from farnet.data.registry import DATASETS, get_dataset
from farnet.data.sample import Sample
from farnet.data.views import DATASET_INFO, load_split
from farnet.core.errors import ConfigError, DataError
from farnet.evaluation.loop import evaluate_split
from farnet.stages.evaluate import run_info
from farnet.stages.train import fingerprint
from helpers import write_committed_params


# ---- the registry ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, folds, train, evaluated", [
    ("isbi2015", 1, "train", ("test1", "test2")),
    ("hand_dha", 3, "fold2_train", ("fold2_test",)),
    ("spine_boostnet", 5, "fold2_train", ("fold2_val", "test", "aasce_test")),
    ("custom", 1, "train", ("val", "test")),
])
def test_registry_splits_and_folds(name, folds, train, evaluated):
    spec = get_dataset(name)
    fold = min(2, folds)
    assert spec.folds == folds and spec.train_split(fold) == train and spec.eval_splits(fold) == evaluated
    spec.check_fold(folds)
    with pytest.raises(ConfigError, match=rf"data\.fold: {folds + 1} is not a fold of {name}"):
        spec.check_fold(folds + 1)


def test_registry_holds_the_dataset_facts():
    isbi = get_dataset("isbi2015")
    assert isbi.unit == "mm" and isbi.spacing == (0.1, (1935, 2400)) and isbi.full_train_images == 150
    assert "half-size" in isbi.data_note and "9" not in get_dataset("hand_dha").data_note
    assert get_dataset("spine_boostnet").unit == "fraction" and get_dataset("spine_boostnet").spacing is None
    assert set(DATASETS) == {"isbi2015", "hand_dha", "spine_boostnet", "custom"}
    with pytest.raises(ValueError, match="dataset 'mnist' is not one of"):
        get_dataset("mnist")


# ---- a prepared split and its metrics -------------------------------------------------------------------------

@pytest.fixture
def prepared(tmp_path):
    """Three 30x40 (W x H) images with two landmarks each, cached at 64x32 (H x W), 0.1 mm per pixel."""
    samples = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 30), 60 * i, np.uint8)).save(path)
        samples.append(Sample(image_id=f"{i:03d}", image_path=path,
                              landmarks_px=np.array([[5.0 + i, 6.0], [20.0, 30.0 - i]]), original_wh=(30, 40),
                              stored_wh=(30, 40), spacing_mm=0.1))
    out = build_cache(samples, tmp_path / "cache", (64, 32), progress=False)
    (out / DATASET_INFO).write_text(json.dumps({"splits": {"train": ["000", "001"], "test": ["002"]},
                                                "landmark_names": ["a", "b"]}))
    return out


def test_load_split_maps_landmarks_exactly_at_another_size(prepared):
    view = load_split(prepared, "train", (32, 16))  # half the cached size
    assert view.ids == ["000", "001"] and view.images.shape == (2, 32, 16) and view.landmark_names == ("a", "b")
    np.testing.assert_allclose(view.input_to_original, [[30 / 16, 40 / 32]] * 2)
    expected = (np.array([[5.0, 6.0], [20.0, 30.0]]) + 0.5) / [30 / 16, 40 / 32] - 0.5  # hand-computed, image 0
    np.testing.assert_allclose(view.landmarks[0], expected, atol=1e-5)
    np.testing.assert_allclose(view.to_original(view.landmarks), view.landmarks_original, atol=1e-4)
    assert len(load_split(prepared, "train", limit=1)) == 1
    with pytest.raises(DataError, match="no split 'val'"):
        load_split(prepared, "val")


def test_evaluate_split_measures_in_original_pixels(prepared):
    view = load_split(prepared, "train")  # 64 x 32: x_orig = (x_in + 0.5) * 30/32 - 0.5
    shifted = view.landmarks.astype(np.float64) + [4.0, 0.0]  # 4 input px right = 3.75 original px = 0.375 mm
    summaries, per_lm, rows = evaluate_split({"argmax": shifted}, view, [0.3, 0.5])
    s = summaries["argmax"]
    assert s["mre_mm"] == pytest.approx(0.375, abs=1e-5) and s["sdr"] == {"0.3": 0.0, "0.5": 100.0}
    assert list(per_lm["name"]) == ["a", "b"] and per_lm["mre_mm"].tolist() == pytest.approx([0.375, 0.375], abs=1e-5)
    assert len(rows) == 4 and rows["error_px"].tolist() == pytest.approx([3.75] * 4, abs=1e-4)
    px = evaluate_split({"argmax": shifted}, view, [4.0], unit="px")[0]["argmax"]
    assert px["unit"] == "px" and px["mre_px"] == pytest.approx(3.75, abs=1e-4)
    with pytest.raises(ValueError, match="unit 'cm' is not one of"):
        evaluate_split({"argmax": shifted}, view, [1.0], unit="cm")


def test_errors_are_in_px_where_a_spacing_is_missing(prepared):
    from farnet.stages.evaluate import error_unit

    view = load_split(prepared, "train")
    assert error_unit("mm", view) == "mm" and error_unit("fraction", view) == "fraction"
    view.spacing_mm[1] = np.nan  # one image without a spacing
    assert error_unit("mm", view) == "px"


# ---- fingerprint and run info ---------------------------------------------------------------------------------

def _stage(tmp_path, run, edit=None):
    path = write_committed_params(tmp_path)
    if edit is not None:
        import yaml

        raw = yaml.safe_load(path.read_text())
        edit(raw)
        path.write_text(yaml.safe_dump(raw))
    return params_from_stage(stage_params(load_params(path, run=run), "train"))


def test_fingerprint_follows_what_the_run_reads(tmp_path, prepared):
    view = load_split(prepared, "train")
    base = fingerprint(_stage(tmp_path, "msfa_fr"), view)
    assert fingerprint(_stage(tmp_path, "msfa_fr"), view) == base
    alpha = lambda raw: raw["loss"].update(alpha=20.0)  # noqa: E731 - an L2 run does not read it
    assert fingerprint(_stage(tmp_path, "msfa_fr", alpha), view) == base
    assert fingerprint(_stage(tmp_path, "farnet", alpha), view) != fingerprint(_stage(tmp_path, "farnet"), view)
    assert fingerprint(_stage(tmp_path, "msfa_fr", lambda raw: raw.update(seed=1)), view) != base
    assert fingerprint(_stage(tmp_path, "msfa_fr"), load_split(prepared, "test")) != base  # other images


@pytest.mark.parametrize("key, value", [("log_every_steps", 7), ("monitor_every", 3), ("checkpoint_every", 2),
                                        ("num_workers", 2), ("save_dtype", "bf16")])
def test_settings_that_do_not_change_the_weights_keep_the_fingerprint(tmp_path, prepared, key, value):
    """An interrupted run resumes after a change of its logging, checkpoints, workers or saved dtype."""
    view = load_split(prepared, "train")
    edited = _stage(tmp_path, "farnet", lambda raw: raw["train"].update({key: value}))
    assert getattr(edited.train, key) == value
    assert fingerprint(edited, view) == fingerprint(_stage(tmp_path, "farnet"), view)
    assert fingerprint(_stage(tmp_path, "farnet", lambda raw: raw["train"].update(lr=5e-4)), view) != \
        fingerprint(_stage(tmp_path, "farnet"), view)  # the learning rate does


def test_run_info_takes_the_full_set_rule_and_note_from_the_registry(tmp_path):
    from farnet.config import effective_dict

    trained = effective_dict(load_params(write_committed_params(tmp_path), run="farnet"))
    info = {"run": "farnet", "n_train_images": 150, "epochs": 300, "steps": 45000, "select": "last",
            "selected_epoch": 300, "hardware": "cpu", "device": "cpu", "train_wall_s": 1.0}
    made = run_info(trained, info, {"fetched": {"source": "mirror"}})
    assert made["full_set"] is True and made["data_note"] == get_dataset("isbi2015").data_note
    assert made["run"] == "farnet" and made["loss"] == "ewc" and made["input_hw"] == [800, 640]
    assert run_info(trained, {**info, "n_train_images": 40}, {})["full_set"] is False
    hand = effective_dict(load_params(write_committed_params(tmp_path), run="hand_fold1"))
    partial = run_info(hand, {**info, "run": "hand_fold1", "n_train_images": 5},
                       {"extras": {"images_listed": 895, "images_present": 9}})
    assert partial["full_set"] is False and partial["images_present"] == 9


@pytest.mark.parametrize("content, message", [
    (None, r"train_info\.json: not found: the train stage writes it beside model\.pt"),
    ("{", r"train_info\.json:1: invalid JSON"),
    ('{"run": "farnet"}', r"train_info\.json: missing keys \['device', 'epochs'"),
])
def test_the_evaluate_stage_checks_train_info_before_evaluating(tmp_path, monkeypatch, content, message):
    """A missing or corrupt train_info.json was a traceback after the metrics were written."""
    from farnet.core.errors import DataError
    from farnet.stages import evaluate as evaluate_stage

    monkeypatch.setattr(evaluate_stage, "load_trained_model", lambda path: object())
    monkeypatch.setattr(evaluate_stage, "evaluate_splits", lambda *a, **k: pytest.fail("evaluated before the check"))
    model_dir = tmp_path / "models" / "farnet"
    model_dir.mkdir(parents=True)
    if content is not None:
        (model_dir / "train_info.json").write_text(content)
    with pytest.raises(DataError, match=message):
        evaluate_stage.evaluate_run(_stage(tmp_path, "farnet"), tmp_path / "prepared", model_dir, tmp_path / "results")
    assert not (tmp_path / "results").exists()
