"""The one loader of trained models, used by evaluation, ``farnet predict`` and ``farnet export``.

A ``model.pt`` written by the train stage is self-contained: the network is rebuilt from its own metadata
(``meta.params["model"]``, ``num_landmarks``, ``input_hw``), never from ``params.yaml``, with ``pretrained``
forced to "none" (the weights come from the file; nothing is downloaded), and loaded with ``weights_only=True``.
Every problem is a :class:`~farnet.core.errors.DataError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from farnet.core.checkpoint import load_checkpoint
from farnet.config import ModelParams, params_from_dict
from farnet.core.errors import ConfigError, DataError
from farnet.models.factory import build_model
from farnet.models.registry import input_multiple


@dataclass(frozen=True)
class TrainedModel:
    """A network rebuilt from a trained model file, in eval mode, with that file's metadata."""

    model: nn.Module
    meta: dict
    path: Path

    @property
    def num_landmarks(self) -> int:
        return int(self.meta["num_landmarks"])

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.meta["input_hw"][0]), int(self.meta["input_hw"][1])

    @property
    def landmark_names(self) -> list[str]:
        return [str(n) for n in self.meta["landmark_names"]]


def load_trained_model(path: str | Path, *, device: str | torch.device = "cpu",
                       num_landmarks: int | None = None) -> TrainedModel:
    """Rebuild the network a ``model.pt`` describes and load its weights (``weights_only=True``).

    Args:
        path: a model file written by the train stage (``{"model": state_dict, "meta": {...}}``).
        device: where to put the network.
        num_landmarks: when given, the model must predict exactly this many landmarks.

    Raises:
        DataError: naming the file, when it is a folder or not a trained model file, its metadata is incomplete
            or its ``input_hw`` not a multiple of the network's coarsest stride, it is for another number of
            landmarks, or its weights do not fit the network its metadata describes or are not finite.
    """
    path = Path(path)
    if path.is_dir():
        hint = f"; did you mean {path / 'model.pt'}?" if (path / "model.pt").is_file() else ""
        raise DataError(path, f"is a folder, not a model file (models/<run>/model.pt){hint}")
    state = load_checkpoint(path, map_location="cpu")
    meta = state.get("meta")
    if not isinstance(meta, dict):
        raise DataError(path, "no 'meta' entry: not a trained model file (use models/<run>/model.pt; the "
                              "resumable state/checkpoint.pt cannot be used)")
    for key in ("num_landmarks", "input_hw", "params"):
        if key not in meta:
            raise DataError(path, f"model metadata lacks {key!r}")
    k = meta["num_landmarks"]
    hw = meta["input_hw"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(path, f"model metadata num_landmarks {k!r} is not a positive integer")
    if not (isinstance(hw, (list, tuple)) and len(hw) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hw)):
        raise DataError(path, f"model metadata input_hw {hw!r} is not two positive integers")
    meta = dict(meta)
    names = meta.get("landmark_names") or [f"L{i + 1}" for i in range(k)]
    if len(names) != k:
        raise DataError(path, f"model metadata has {len(names)} landmark names for {k} landmarks")
    meta["landmark_names"] = list(names)
    if num_landmarks is not None and k != num_landmarks:
        raise DataError(path, f"model predicts {k} landmarks (dataset {meta.get('dataset')!r}), but "
                              f"{num_landmarks} are expected here")
    params = model_params(meta, path)
    model = build_model(params, k)
    multiple = input_multiple(params.architecture, params.backbone)
    if any(v % multiple for v in hw):
        raise DataError(path, f"model metadata input_hw {hw!r} is not a multiple of {multiple}, the stride of "
                              "the network's coarsest level (the train stage never writes such a file)")
    _load_weights(model, state["model"], path, k)
    model.to(device).eval()
    return TrainedModel(model=model, meta=meta, path=path)


def model_params(meta: dict, path: str | Path = "<model>") -> ModelParams:
    """The :class:`~farnet.config.ModelParams` a model was trained with, from its metadata.

    ``pretrained`` is forced to "none": the weights come from the checkpoint, nothing is downloaded.
    """
    try:
        raw = dict(meta["params"]["model"])
        raw["pretrained"] = "none"
        return params_from_dict({"model": raw}).model
    except (KeyError, TypeError, ConfigError) as err:
        raise DataError(path, f"model metadata params.model is unusable: {type(err).__name__}: {err}") from err


def _load_weights(model: nn.Module, weights: dict, path: Path, k: int) -> None:
    """load_state_dict with a message that names the mismatching tensors (e.g. another landmark count)."""
    expected = model.state_dict()
    if not isinstance(weights, dict):
        raise DataError(path, "the 'model' entry is not a state dict")
    mismatched = [f"{name}: file {tuple(weights[name].shape)} vs network {tuple(t.shape)}"
                  for name, t in expected.items() if name in weights and hasattr(weights[name], "shape")
                  and tuple(weights[name].shape) != tuple(t.shape)]
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if mismatched or missing or unexpected:
        details = "; ".join(mismatched[:3] + [f"missing {missing[:3]}"] * bool(missing)
                            + [f"unexpected {unexpected[:3]}"] * bool(unexpected))
        raise DataError(path, f"weights do not fit the network its metadata describes ({k} landmarks): {details}")
    _check_finite(weights, path)
    model.load_state_dict(weights)


def _check_finite(weights: dict, path: Path) -> None:
    """Refuse NaN or infinite weights (a diverged or corrupt model predicts every landmark at one point)."""
    bad = [name for name, t in weights.items()
           if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise DataError(path, f"{len(bad)} weight tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}): the training diverged or the file is corrupt")
