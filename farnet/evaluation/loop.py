"""Evaluation: run a trained network in eval mode over a prepared split and measure it in mm.

Predictions are decoded at the input resolution (argmax, the paper; and sub-pixel, beyond it), mapped back to
the original image's pixels through the cache's per-image transform, and compared with the ground truth kept in
original pixels, so no resizing error enters the metric. The network is put in eval mode (BN running
statistics): the authors' code evaluates in train mode, a known bug this project does not copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from farnet.evaluation.heatmaps import DECODERS, decode_guided
from farnet.models.interface import HeatmapNetwork, Heatmaps, check_on_device, eval_mode, final_heatmaps
from farnet.evaluation.metrics import OUTLIER_MM, per_landmark, radial_error_mm, summarize


@torch.no_grad()
def predict_landmarks(model: nn.Module, images: np.ndarray, *, batch_size: int = 4, device: str | torch.device = "cpu",
                      precision: str = "fp32", channels_last: bool = False,
                      decoders: Sequence[str] = ("argmax", "subpixel"), progress: bool = True,
                      desc: str = "predict", guided_radius_px: int = 30) -> dict[str, np.ndarray]:
    """Landmarks of (N, H, W) uint8 images at input resolution, one (N, K, 2) array per decoder, eager.

    The model is run as the caller keeps it: already on ``device`` and in its own memory format (``channels_last``
    sets the input's); it runs in eval mode during the call and gets its own modes back after it. Nothing of it
    is moved or converted: the training loop's monitor predicts with the live model, whose optimiser state must
    go on matching its parameters. (A loaded model is made ready once by
    :func:`farnet.models.interface.inference_network` and run by :func:`predict_network`.)

    Raises:
        ValueError: the model is not on ``device``.
    """
    check_on_device(model, device)
    with eval_mode(model):
        return predict_network(HeatmapNetwork(model, precision, channels_last), images, batch_size=batch_size,
                               device=device, decoders=decoders, progress=progress, desc=desc,
                               guided_radius_px=guided_radius_px)


@torch.no_grad()
def predict_network(network: HeatmapNetwork, images: np.ndarray, *, batch_size: int = 4,
                    device: str | torch.device = "cpu", decoders: Sequence[str] = ("argmax", "subpixel"),
                    progress: bool = True, desc: str = "predict", guided_radius_px: int = 30) -> dict[str, np.ndarray]:
    """Landmarks of (N, H, W) uint8 images through a network ready on ``device`` (eager or compiled), one
    (N, K, 2) array per decoder (:func:`locate_batch`), ``batch_size`` images per forward pass; a compiled
    network's last batch is padded to ``batch_size``, so it compiles once."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in decoders}
    for start in tqdm(range(0, images.shape[0], batch_size), desc=desc, unit="batch", disable=not progress,
                      dynamic_ncols=True):
        points, _ = locate_batch(network, images[start:start + batch_size], device, decoders,
                                 guided_radius_px=guided_radius_px, pad_to=batch_size)
        for name in decoders:
            out[name].append(points[name])
    return {name: np.concatenate(parts) for name, parts in out.items()}


@torch.no_grad()
def locate_batch(network: HeatmapNetwork, images: np.ndarray, device: str | torch.device,
                 decoders: Sequence[str] = ("argmax",), *, guided_radius_px: int = 30,
                 peaks: bool = False, pad_to: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """One batch through the network: upload, forward, decode, download.

    The one place a batch is decoded, for the evaluation (:func:`predict_landmarks`) and ``farnet predict``.
    Decoders: those of :data:`farnet.evaluation.heatmaps.DECODERS` on the final heatmaps, and "guided" (the fine
    head's argmax within ``guided_radius_px`` of the coarse head's peak,
    :func:`farnet.evaluation.heatmaps.decode_guided`; plain argmax for a network with one head).

    Args:
        network: the model with its input normalisation, already on ``device`` and in eval mode.
        images: (B, H, W) uint8 at the network's input size (a memory-mapped slice is copied out first).
        peaks: also return each landmark's heatmap maximum.
        pad_to: for a compiled network (:meth:`~farnet.models.interface.HeatmapNetwork.compile_frozen`), a
            shorter batch is padded with blank images to this many (their results dropped), so it compiles once.

    Returns:
        Decoder name -> (B, K, 2) float64 (x, y) in input pixels, and the (B, K) float64 heatmap maxima (None
        unless ``peaks``).
    """
    n = len(images)
    short = max(0, pad_to - n) if pad_to and network.compiled else 0
    batch = torch.from_numpy(np.array(images)).unsqueeze(1)  # (B, 1, H, W), copied out of the mmap
    if short:
        batch = torch.cat([batch, batch.new_zeros((short, *batch.shape[1:]))])
    heads = network.heads(batch.to(device))
    heatmaps = final_heatmaps(heads, tuple(batch.shape[-2:]))  # (B, K, H, W) fp32
    points = {name: _decode(name, heads, heatmaps, guided_radius_px)[:n].cpu().numpy().astype(np.float64)
              for name in decoders}
    maxima = heatmaps[:n].flatten(2).amax(dim=-1).cpu().numpy().astype(np.float64) if peaks else None  # (B, K)
    return points, maxima


def _decode(name: str, heads: Heatmaps, heatmaps: torch.Tensor, guided_radius_px: int) -> torch.Tensor:
    """(B, K, 2) landmarks by one decoder, as :func:`locate_batch` lists them."""
    if name != "guided":
        return DECODERS[name](heatmaps)
    if heads.fine is not None and heads.coarse is not None:
        return decode_guided(heads.fine, heads.coarse, guided_radius_px)
    return DECODERS["argmax"](heatmaps)


def evaluate_split(pred_input: dict[str, np.ndarray], view, radii_mm: Sequence[float], unit: str = "mm",
                   angles: dict[str, list[float]] | None = None) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Metrics of one split from input-pixel predictions.

    Args:
        pred_input: decoder name -> (N, K, 2) predictions in input pixels.
        view: the split (:class:`~farnet.data.views.SplitView`): exact ground truth, spacing, map to original.
        unit: "mm" (radial errors through each image's spacing: MRE ± SD, SDR at ``radii_mm``), "px" (the same
            in original pixels) or "fraction" (spine: MSE of fractional coordinates and Pearson's ρ, docs/design.md §2.2).
        angles: image id -> Cobb angles (degrees); with "fraction", adds the SMAPE of the Cobb angles computed
            from the predicted landmarks (AASCE metric, beyond the paper) when every image has them.

    Returns:
        ``{decoder: summary}``, the per-landmark table and the predictions table (original pixels).
    """
    true = np.asarray(view.landmarks_original, dtype=np.float64)  # (N, K, 2)
    names = list(view.landmark_names)
    summaries, per_lm, rows = {}, [], []
    for decoder, pred in pred_input.items():
        pred_orig = view.to_original(pred)  # (N, K, 2)
        errors_px = radial_error_mm(pred_orig, true, 1.0)  # (N, K) in original pixels
        if unit == "mm":
            errors = radial_error_mm(pred_orig, true, view.spacing_mm)
            summaries[decoder] = summarize(errors, radii_mm, outlier_mm=OUTLIER_MM)
            table = per_landmark(errors, names, radii_mm)
        elif unit == "px":
            summaries[decoder] = _rename(summarize(errors_px, radii_mm), "mm", "px")
            table = per_landmark(errors_px, names, radii_mm).rename(columns={"mre_mm": "mre_px", "sd_mm": "sd_px"})
        elif unit == "fraction":
            summaries[decoder] = _fraction_summary(pred_orig, true, view, angles)
            table = per_landmark(errors_px, names, []).rename(columns={"mre_mm": "mre_px", "sd_mm": "sd_px"})
        else:
            raise ValueError(f"unit {unit!r} is not one of 'mm', 'px', 'fraction'")
        table.insert(0, "decode", decoder)
        table.insert(0, "split", view.split)
        per_lm.append(table)
        n, k = errors_px.shape
        error_mm = radial_error_mm(pred_orig, true, view.spacing_mm) if unit == "mm" else np.full((n, k), np.nan)
        rows.append(pd.DataFrame({
            "split": view.split, "decode": decoder,
            "image_id": np.repeat(np.asarray(view.ids), k),
            "landmark": np.tile(np.arange(k), n), "name": np.tile(np.asarray(names), n),
            "x_pred": pred_orig[..., 0].ravel(), "y_pred": pred_orig[..., 1].ravel(),
            "x_true": true[..., 0].ravel(), "y_true": true[..., 1].ravel(),
            "error_px": errors_px.ravel(), "error_mm": error_mm.ravel(),
            # each image's original size: the spine's fractional coordinates (and their intervals) need it
            "width": np.repeat(np.asarray(view.original_wh)[:, 0], k),
            "height": np.repeat(np.asarray(view.original_wh)[:, 1], k),
        }))
    return summaries, pd.concat(per_lm, ignore_index=True), pd.concat(rows, ignore_index=True)


def _rename(summary: dict, old: str, new: str) -> dict:
    return {k.replace(f"_{old}", f"_{new}"): v for k, v in summary.items()} | {"unit": new}


def _fraction_summary(pred_orig: np.ndarray, true: np.ndarray, view, angles: dict | None) -> dict:
    from farnet.evaluation.spine_metrics import cobb_angles, fractional_mse, pearson_rho, smape

    wh = np.asarray(view.original_wh, dtype=np.float64)  # (N, 2)
    summary = {
        "n_images": int(true.shape[0]),
        "mse": float(fractional_mse(pred_orig, true, wh)),
        "rho": float(pearson_rho(pred_orig, true, wh)),
        "mre_px": float(np.linalg.norm(pred_orig - true, axis=-1).mean()),
    }
    if angles and all(i in angles for i in view.ids):
        predicted, reference = [], []
        for points, height, image_id in zip(pred_orig, wh[:, 1], view.ids):
            try:  # predicted corners may coincide (an untrained model): the angle is then undefined
                predicted.append(cobb_angles(points, height))
            except ValueError:
                continue
            reference.append(angles[image_id])
        summary["cobb_undefined"] = len(view.ids) - len(predicted)
        if predicted:
            summary["cobb_smape"] = float(smape(np.stack(predicted), np.asarray(reference, dtype=np.float64)))
    return summary
