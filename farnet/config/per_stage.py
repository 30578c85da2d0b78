"""Each DVC stage's own parameters: what one stage of one run (or dataset) reads, and nothing else.

The resolve stage writes these per run (``resolved/<run>/train.json``, ``evaluate.json``) and per dataset
(``resolved/datasets/<name>.json``); the train, evaluate and prepare stages depend on those files and build their
parameters from them (:func:`params_from_stage`), so ``dvc exp run -S loss.alpha=20`` re-runs only the runs whose
own values changed: an L2 run carries no ``loss.alpha``, a U-Net no backbone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from farnet.config.checks import check_values
from farnet.config.sections import Params
from farnet.config.typed import build, plain
from farnet.core.errors import ConfigError

__all__ = ["STAGES", "effective_dict", "stage_params", "params_from_stage"]

STAGES = ("prepare", "train", "evaluate")
# the keys of each loss that the train stage reads
_LOSS_KEYS = {"ewc": ("alpha",), "l2": (), "awing": ("awing_omega", "awing_theta", "awing_epsilon", "awing_alpha")}


def effective_dict(params: Params) -> dict[str, Any]:
    """The resolved parameters as plain data (for provenance and checkpoints)."""
    return plain(dataclasses.asdict(params))


def stage_params(params: Params, stage: str, dataset: str | None = None) -> dict[str, Any]:
    """The resolved parameters one stage of one run (or dataset) reads (see the module's docstring).

    Args:
        params: resolved for a run (``load_params(..., run=...)``) for "train" and "evaluate"; any for "prepare".
        stage: "prepare", "train" or "evaluate".
        dataset: the dataset "prepare" is for; the run's own for the others.

    Raises:
        ValueError: ``stage`` is not one of :data:`STAGES`.
    """
    p = effective_dict(params)
    if stage == "prepare":
        return {"profile": params.profile, "datasets": {dataset: p["datasets"][dataset]}}
    dataset = params.data.dataset
    if stage == "evaluate":
        return {"run": params.run, "datasets": {dataset: p["datasets"][dataset]},
                "data": {"dataset": dataset, "fold": params.data.fold},
                "eval": {k: p["eval"][k] for k in ("sdr_radii_mm", "batch_size", "guided_radius")},
                "train": {k: p["train"][k] for k in ("precision", "channels_last")}}
    if stage != "train":
        raise ValueError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    loss = {"name": p["loss"]["name"], **{k: p["loss"][k] for k in _LOSS_KEYS[p["loss"]["name"]]}}
    evaluation = {"select": p["eval"]["select"]}
    if params.eval.select == "best_test1" or params.train.monitor_every:  # Test1 during training reads these
        evaluation.update({k: p["eval"][k] for k in ("sdr_radii_mm", "batch_size")})
    return {"profile": params.profile, "run": params.run, "seed": params.seed,
            "datasets": {dataset: p["datasets"][dataset]}, "data": p["data"], "heatmap": p["heatmap"],
            "model": _model_keys(p["model"]), "loss": loss, "train": p["train"], "eval": evaluation}


def _model_keys(model: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``model`` the network a run builds reads."""
    if model["architecture"] == "unet":  # trained from scratch, no backbone
        return {"architecture": "unet"}
    if model["architecture"] == "fpn":
        return {k: model[k] for k in ("architecture", "backbone", "pretrained")}
    if model["refinement"] == "none" or model["backbone"].startswith("vgg"):  # no FR input conv to size
        return {k: v for k, v in model.items() if k != "fr_input_kernel"}
    return model


def params_from_stage(raw: dict[str, Any], where: str | Path = "resolved parameters") -> Params:
    """:class:`Params` from a :func:`stage_params` mapping; keys it leaves out take their defaults, which the
    stage does not read.

    Raises:
        ConfigError: naming ``where`` and the key, as :func:`farnet.config.load.params_from_dict` would.
    """
    try:
        params = build(Params, raw, "")
        check_values(params)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return params
