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

from farnet.dataset import normalize
from farnet.engine import autocast
from farnet.heatmaps import DECODERS
from farnet.metrics import per_landmark, radial_error_mm, summarize
from farnet.model import final_heatmaps


@torch.no_grad()
def predict_landmarks(model: nn.Module, images: np.ndarray, *, batch_size: int = 4, device: str | torch.device = "cpu",
                      precision: str = "fp32", channels_last: bool = False,
                      decoders: Sequence[str] = ("argmax", "subpixel"), progress: bool = True,
                      desc: str = "predict") -> dict[str, np.ndarray]:
    """Landmarks of (N, H, W) uint8 images at input resolution, one (N, K, 2) array per decoder."""
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format).eval()
    out: dict[str, list[np.ndarray]] = {name: [] for name in decoders}
    n = images.shape[0]
    hw = tuple(images.shape[1:3])
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress, dynamic_ncols=True):
        batch = torch.from_numpy(np.array(images[start:start + batch_size])).unsqueeze(1)  # copy out of the mmap
        x = normalize(batch.to(device)).contiguous(memory_format=memory_format)
        with autocast(device, precision):
            heads = model(x)
        heatmaps = final_heatmaps(heads, hw).float()  # (B, K, H, W)
        for name in decoders:
            out[name].append(DECODERS[name](heatmaps).cpu().numpy())
    return {name: np.concatenate(parts).astype(np.float64) for name, parts in out.items()}


def evaluate_split(pred_input: dict[str, np.ndarray], cache, split: str, names: Sequence[str],
                   radii_mm: Sequence[float]) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Metrics of one split from input-pixel predictions.

    Args:
        pred_input: decoder name -> (N, K, 2) predictions in input pixels.
        cache: a loaded prepared cache (``to_original``, ``landmarks_original``, ``spacing_mm``, ``ids``).

    Returns:
        ``{decoder: summary}``, the per-landmark table and the predictions table (original pixels).
    """
    true = np.asarray(cache.landmarks_original, dtype=np.float64)  # (N, K, 2)
    spacing = np.asarray(cache.spacing_mm, dtype=np.float64)
    summaries, per_lm, rows = {}, [], []
    for decoder, pred in pred_input.items():
        pred_orig = np.stack([cache.to_original(pred[i], i) for i in range(pred.shape[0])])
        errors = radial_error_mm(pred_orig, true[: pred.shape[0]], spacing[: pred.shape[0]])  # (N, K)
        summaries[decoder] = summarize(errors, radii_mm)
        table = per_landmark(errors, names, radii_mm)
        table.insert(0, "decode", decoder)
        table.insert(0, "split", split)
        per_lm.append(table)
        n, k = errors.shape
        rows.append(pd.DataFrame({
            "split": split, "decode": decoder,
            "image_id": np.repeat(np.asarray(cache.ids[:n]), k),
            "landmark": np.tile(np.arange(k), n), "name": np.tile(np.asarray(names), n),
            "x_pred": pred_orig[..., 0].ravel(), "y_pred": pred_orig[..., 1].ravel(),
            "x_true": true[:n, :, 0].ravel(), "y_true": true[:n, :, 1].ravel(),
            "error_mm": errors.ravel(),
        }))
    return summaries, pd.concat(per_lm, ignore_index=True), pd.concat(rows, ignore_index=True)
