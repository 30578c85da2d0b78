"""Tests of farnet.report.figures and training_curves: each figure is written as a PNG of the expected size from small
fake inputs; and of farnet.report.plots: make_plots draws the figures of the runs the tables show."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from fake_results import isbi_metrics, per_landmark, predictions, write_run
from PIL import Image

from farnet.core.errors import DataError
from farnet.report import plots
from farnet.report.columns import ours_vs_paper
from farnet.report.figures import (
    DPI, plot_ewc_weight, plot_overlays, plot_ours_vs_paper, plot_per_landmark_mre, plot_sdr_curve, sdr_curve,
)
from farnet.report.plots import make_plots
from farnet.report.training_curves import plot_training_curves, read_dvclive_metrics

LABEL = "quick profile — not a replication"


def png_size(path):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size  # (width, height)


@pytest.fixture(autouse=True)
def no_figure_left_open():
    yield
    open_figures = plt.get_fignums()
    plt.close("all")
    assert open_figures == [], "a plot function left a figure open"


def test_sdr_curve_hand_computed():
    np.testing.assert_allclose(sdr_curve(np.array([1.0, 2.0, 3.0, 5.0]), np.array([0.5, 2.0, 2.5, 10.0])),
                               [0.0, 50.0, 50.0, 100.0])


def test_plot_sdr_curve(tmp_path):
    rng = np.random.default_rng(0)
    out = plot_sdr_curve({"Test1": rng.gamma(2.0, 0.6, 300), "Test2": rng.gamma(2.0, 0.8, 200)},
                         tmp_path / "plots" / "sdr.png", label=LABEL)
    assert out == tmp_path / "plots" / "sdr.png"
    assert png_size(out) == (7 * DPI, int(4.5 * DPI))
    assert not list(out.parent.glob("*.tmp"))


def test_plot_sdr_curve_rejects_bad_errors(tmp_path):
    with pytest.raises(ValueError, match="'Test1'"):
        plot_sdr_curve({"Test1": np.array([1.0, np.nan])}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one split"):
        plot_sdr_curve({}, tmp_path / "x.png")


def _per_landmark():
    names = ["sella", "nasion", "orbitale"]
    return pd.DataFrame([{"split": split, "landmark": k, "name": name, "mre_mm": 1.0 + k + i,
                          "sd_mm": 0.5} for i, split in enumerate(["test1", "test2"])
                         for k, name in enumerate(names)])


def test_plot_per_landmark_mre(tmp_path):
    width, height = png_size(plot_per_landmark_mre(_per_landmark(), tmp_path / "lm.png", label=LABEL))
    assert width == 7 * DPI and height == int(4.8 * DPI)


def test_plot_per_landmark_mre_rejects_a_table_without_errors(tmp_path):
    with pytest.raises(ValueError, match="lacks columns"):
        plot_per_landmark_mre(pd.DataFrame({"split": ["a"]}), tmp_path / "bad.png")


def test_plot_overlays(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (80, 64), dtype=np.uint8) for _ in range(3)]
    trues = [rng.uniform(5, 60, (19, 2)) for _ in range(3)]
    preds = [t + rng.normal(0, 2, t.shape) for t in trues]
    out = plot_overlays(images, preds, trues, ["151", "152", "301"], tmp_path / "overlay.png", label=LABEL)
    width, height = png_size(out)
    assert width == 3 * 4 * DPI and height == pytest.approx((4 * 80 / 64 + 0.6) * DPI, abs=2)
    with Image.open(out) as image:  # red predictions and blue ground truth are drawn
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    assert ((pixels[:, 0] > 200) & (pixels[:, 1] < 60) & (pixels[:, 2] < 60)).any()
    assert ((pixels[:, 2] > 200) & (pixels[:, 0] < 60) & (pixels[:, 1] < 60)).any()


def test_plot_overlays_rejects_mismatch(tmp_path):
    image = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="equal non-zero counts"):
        plot_overlays([image], [], [], ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"two \(K, 2\) arrays"):
        plot_overlays([image], [np.zeros((3, 2))], [np.zeros((4, 2))], ["a"], tmp_path / "x.png")


def test_plot_ewc_weight(tmp_path):
    assert png_size(plot_ewc_weight(40.0, tmp_path / "ewc.png")) == (10 * DPI, int(4.2 * DPI))
    with pytest.raises(ValueError, match="alpha must be positive"):
        plot_ewc_weight(0.0, tmp_path / "bad.png")


def _fake_dvclive(root, steps=np.arange(5), monitor_steps=()):
    metrics = root / "plots" / "metrics"
    (metrics / "train").mkdir(parents=True)
    steps = np.asarray(steps)
    pd.DataFrame({"timestamp": 1700000000 + steps, "step": steps, "loss": 1.0 / (steps + 1)}).to_csv(
        metrics / "train" / "loss.tsv", sep="\t", index=False)
    pd.DataFrame({"timestamp": 1700000000 + steps, "step": steps, "lr": [1e-4] * len(steps)}).to_csv(
        metrics / "lr.tsv", sep="\t", index=False)
    if len(monitor_steps):
        for split in ("test1", "test2"):
            (metrics / split).mkdir()
            at = np.asarray(monitor_steps)
            pd.DataFrame({"timestamp": 1700000000 + at, "step": at, "mre_mm": 10.0 / (at + 1)}).to_csv(
                metrics / split / "mre_mm.tsv", sep="\t", index=False)
    return root


def test_read_dvclive_metrics(tmp_path):
    curves = read_dvclive_metrics(_fake_dvclive(tmp_path / "dvclive"))
    assert list(curves) == ["lr", "train/loss"]
    assert curves["train/loss"]["value"].iloc[1] == 0.5
    assert list(read_dvclive_metrics(tmp_path / "dvclive" / "plots" / "metrics")) == ["lr", "train/loss"]


def test_plot_training_curves(tmp_path):
    out = plot_training_curves({"farnet": _fake_dvclive(tmp_path / "dvclive")}, tmp_path / "train.png", label=LABEL)
    assert png_size(out) == (2 * int(5.5 * DPI), int((3.6 + 0.6) * DPI))  # loss and lr: one row of two panels


def test_training_curves_show_loss_and_test_mre_against_steps(tmp_path):
    logs = {"farnet": _fake_dvclive(tmp_path / "a", steps=np.arange(0, 1000, 50), monitor_steps=[300, 600, 900]),
            "vgg16": _fake_dvclive(tmp_path / "b", steps=[40])}  # one point: no curve of its own
    out = plot_training_curves(logs, tmp_path / "train.png", label=LABEL)
    assert png_size(out) == (2 * int(5.5 * DPI), int((2 * 3.6 + 0.6) * DPI))  # loss, MRE, lr: two rows


def test_training_curves_of_one_point_runs_draw_nothing(tmp_path):
    assert plot_training_curves({"quick": _fake_dvclive(tmp_path / "a", steps=[150])}, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_training_curves_errors(tmp_path):
    with pytest.raises(DataError, match="no dvclive metric files"):
        plot_training_curves({"run": tmp_path}, tmp_path / "x.png")
    (tmp_path / "bad.tsv").write_text("a\tb\tc\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"bad.tsv:1: expected columns"):
        read_dvclive_metrics(tmp_path)


def test_plot_ours_vs_paper(tmp_path):
    df = ours_vs_paper({"Test1 MRE": 1.5, "Test1 2mm": 80.0, "Test2 2mm": 70.0},
                       {"Test1 MRE": 1.12, "Test1 2mm": 88.03, "Test2 2mm": 77.0},
                       units={"Test1 MRE": "mm", "Test1 2mm": "%", "Test2 2mm": "%"})
    df["Ours (sub-pixel, beyond the paper)"] = df["Ours"] + 1
    width, height = png_size(plot_ours_vs_paper(df, tmp_path / "ovp.png", label=LABEL))
    assert (width, height) == (6 * DPI, int(4.5 * DPI))
    with pytest.raises(ValueError, match="lacks columns"):
        plot_ours_vs_paper(df.drop(columns="Ours"), tmp_path / "bad.png")


# ---------------------------------------------------------------------------------------------- make_plots


def _spy_on_ewc(monkeypatch):
    alphas = []

    def spy(alpha, out):
        alphas.append(alpha)
        return plot_ewc_weight(alpha, out)
    monkeypatch.setattr(plots, "plot_ewc_weight", spy)
    return alphas


def test_make_plots_draws_fig4_with_the_alpha_of_table3s_run(tmp_path, monkeypatch):
    alphas = _spy_on_ewc(monkeypatch)
    preds = predictions({"test1": [[1.0, 3.0], [2.0, 2.0]], "test2": [[4.0, 4.0]]})
    write_run(tmp_path, "ours", isbi_metrics(1.5, 1.62), preds=preds,
              per_lm=per_landmark({"test1": [1.0, 2.0], "test2": [3.0, 4.0]}), alpha=20.0)
    write_run(tmp_path, "farnet_alpha40", isbi_metrics(1.5, 1.62), loss="l2", alpha=40.0)  # not Table 3's run
    _fake_dvclive(tmp_path / "train" / "ours")
    written = make_plots(tmp_path, tmp_path / "no_prepared_data")
    assert alphas == [20.0]
    assert sorted(p.name for p in written) == [
        "ewc_weight.png", "isbi2015_per_landmark_mre.png", "isbi2015_sdr_curve.png", "table1_ours_vs_paper.png",
        "table2_forest.png", "table3_ours_vs_paper.png", "training_curves.png"]
    assert all(p.parent == tmp_path / "plots" and png_size(p)[0] > 0 for p in written)


def test_make_plots_without_table3s_run_draws_no_fig4(tmp_path, monkeypatch):
    alphas = _spy_on_ewc(monkeypatch)
    write_run(tmp_path, "vgg", isbi_metrics(1.5, 1.62), backbone="vgg16")
    written = make_plots(tmp_path, tmp_path / "no_prepared_data")
    assert alphas == [] and [p.name for p in written] == ["table1_ours_vs_paper.png"]


def test_table2_forest_plot_draws_each_rows_difference_with_its_interval(tmp_path):
    from farnet.report.figures import plot_forest
    from farnet.report.isbi_tables import methods_table
    from farnet.report.paper import load_paper_tables, table2_runs
    from farnet.report.results import Results

    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 0.75, (30, 4))
    for run, shift, info in (("ewc", 0.0, {}), ("aw", 0.5, {"loss": "awing"}), ("msfa", -0.3, {"loss": "l2",
                                                                                            "refinement": "none"})):
        errors = (base + shift + rng.normal(0, 0.05, base.shape)).clip(0).tolist()
        write_run(tmp_path, run, isbi_metrics(float(np.mean(errors)), 2.0), preds=predictions({"test1": errors}),
                  **info)
    paper = load_paper_tables()
    results = Results(tmp_path)
    df = methods_table(results, paper["table2"], table2_runs(results, paper["table2"]))
    out = plot_forest(df, tmp_path / "forest.png", label="test runs")
    assert png_size(out)[0] > 0
    verdicts = df[df["Source"] == "ours"].set_index("Method")["verdict"]
    assert verdicts.to_dict() == {"MSFA": "better", "MSFA+FR+AW": "worse", "MSFA+FR+EWC": "not resolved"}
    with pytest.raises(ValueError, match="no row of ours"):
        plot_forest(df[df["Source"] == "paper"], tmp_path / "none.png")
