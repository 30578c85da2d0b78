"""Typed configuration: ``params.yaml`` mapped onto frozen dataclasses.

``params.yaml`` holds the paper's protocol as the base and named *profiles* (``profiles.quick``) whose keys are
merged over the base when ``profile`` names one. This package is the one place that reads the file: unknown keys,
wrong types and bad choices raise :class:`~farnet.core.errors.ConfigError` naming the dotted key. Modules never
see these objects; only the ``build_*`` factories and the pipeline stages do.

One idea per module: :mod:`~farnet.config.sections` (the dataclasses), :mod:`~farnet.config.yaml_file` (reading
the file strictly), :mod:`~farnet.config.profiles` (profiles and their run defaults),
:mod:`~farnet.config.typed` (a mapping onto a dataclass), :mod:`~farnet.config.checks` (ranges),
:mod:`~farnet.config.load` (a run's parameters, every run checked) and :mod:`~farnet.config.per_stage` (each
stage's own values). The names below are the ones the project imports; this is the one package ``__init__`` that
imports anything besides the command packages' (tests/test_layout.py).
"""

from farnet.config.load import check_every_run, load_params, params_from_dict
from farnet.config.per_stage import STAGES, effective_dict, params_from_stage, stage_params
from farnet.config.profiles import profile_chain
from farnet.config.sections import (ArchitectureName, BackboneName, DatasetName, DataParams, DatasetParams,
                                    EvalParams, HeatmapParams, LossParams, ModelParams, Params, TrainParams)
from farnet.config.yaml_file import read_params_file

__all__ = [
    "ArchitectureName", "BackboneName", "DatasetName", "DataParams", "DatasetParams", "EvalParams",
    "HeatmapParams", "LossParams", "ModelParams", "Params", "TrainParams",
    "STAGES", "check_every_run", "effective_dict", "load_params", "params_from_dict", "params_from_stage",
    "profile_chain", "read_params_file", "stage_params",
]
