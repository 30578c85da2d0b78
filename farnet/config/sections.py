"""The sections of ``params.yaml`` as frozen dataclasses, one per top-level key, and :class:`Params` holding them.

Each field's default is the value ``params.yaml`` states for it (tests/config/test_config.py checks that the file lists
every field with this default), so a section built from a partial mapping, such as a stage's resolved values,
means what the file means. The choices of ``model.backbone``, ``model.architecture`` and ``data.dataset`` are the
registries' entries (:mod:`farnet.models.registry`, :mod:`farnet.data.registry`): one table each, read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from farnet.data.registry import DATASETS
from farnet.models.registry import ARCHITECTURE_NAMES, BACKBONE_NAMES

BackboneName = Literal[BACKBONE_NAMES]
ArchitectureName = Literal[ARCHITECTURE_NAMES]
DatasetName = Literal[tuple(DATASETS)]

__all__ = ["ArchitectureName", "BackboneName", "DatasetName", "DatasetParams", "DataParams", "HeatmapParams",
           "ModelParams", "LossParams", "TrainParams", "EvalParams", "Params"]


@dataclass(frozen=True)
class DatasetParams:
    """How one dataset is prepared (``datasets.<name>`` in params.yaml)."""

    input_hw: tuple[int, int] = (800, 640)  # the size the prepare stage caches at
    annotator: Literal["mean", "senior", "junior"] = "mean"  # ISBI ground truth (paper: mean)
    augment: Literal["none", "payer", "boostnet"] = "none"
    split_seed: int = 0  # spine: the seeded 431/50 split and its folds; custom: splits when none are given
    root: str | None = None  # custom: the dataset folder; None = data/raw/<name>
    csv: str = "landmarks.csv"  # custom: the landmarks file in that folder


@dataclass(frozen=True)
class DataParams:
    """What one run trains and evaluates on."""

    dataset: DatasetName = "isbi2015"  # set by the run's `dataset`
    input_hw: tuple[int, int] | None = None  # None: the dataset's prepared size; else resized from it
    train_limit: int | None = None  # keep the first N training images (reduced profiles only)
    fold: int = 1  # hand: 1..3, spine: 1..5 (cross-validation folds); ignored by ISBI


@dataclass(frozen=True)
class HeatmapParams:
    """The Gaussian targets (paper §3.2)."""

    sigma_px: float = 10.0  # paper §4.2, in each head's own pixels


@dataclass(frozen=True)
class ModelParams:
    """The network: FARNet's variants of Tables 1-2, or a baseline."""

    backbone: BackboneName = "densenet121"
    pretrained: str = "none"  # "imagenet" (needs internet), "none", or a path to a state dict
    fusion: Literal["concat", "add"] = "concat"  # MSFA vs MSFA(+) of Table 2
    refinement: Literal["guided", "naive", "none"] = "guided"  # FR, FR*, no FR
    fr_input_kernel: int = 3  # paper §3.1.2: 3x3; the authors' code: 1x1
    head: Literal["authors", "bn_relu"] = "authors"  # both heads as the authors' network | conv+BN+ReLU option
    architecture: ArchitectureName = "farnet"  # the U-Net and FPN baselines of Table 2


@dataclass(frozen=True)
class LossParams:
    """The training loss: EWC (paper eq. 3), L2, or Adaptive Wing (Table 2)."""

    name: Literal["ewc", "l2", "awing"] = "ewc"
    alpha: float = 40.0  # EWC base, paper eq. 3
    # Adaptive Wing (Wang et al. 2019), the "+AW" row of Table 2: ω, θ, ε, α of that paper
    awing_omega: float = 14.0
    awing_theta: float = 0.5
    awing_epsilon: float = 1.0
    awing_alpha: float = 2.1


@dataclass(frozen=True)
class TrainParams:
    """The optimiser, its schedule, and how a run trains and saves (paper §4.2)."""

    # deviation: Adam with lr 1e-4, x0.1 at epoch 200 (the authors' code) by default; the paper's text names
    # Adadelta at lr 1e-4, which scales Adadelta's unit step by 1e-4 and barely trains. `optimizer: adadelta`.
    optimizer: Literal["adam", "adadelta"] = "adam"
    lr: float = 1e-4
    lr_milestones: tuple[int, ...] = (200,)
    lr_gamma: float = 0.1
    epochs: int = 300
    batch_size: int = 1
    # deviation: "auto" trains with bf16 autocast (and channels_last) where the hardware runs bf16 natively
    # (farnet.core.fastpath; docs/design.md §7); the paper trains in fp32, which `precision: fp32` restores.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    num_workers: int = 0
    checkpoint_every: int = 10  # epochs between checkpoints (and after the last)
    save_dtype: Literal["fp32", "bf16"] = "fp32"  # the floating-point weights of model.pt (training is unchanged)
    # "step": lr x lr_gamma at each of lr_milestones (epochs; the authors' code); "cosine": a half cosine from
    # lr to 0 over all steps, per step (beyond the paper: the cpu profile)
    lr_schedule: Literal["step", "cosine"] = "step"
    warmup_steps: int = 0  # linear warm-up from ~0 to lr over the first steps (0: none)
    log_every_steps: int = 0  # the training loss (mean over the last N steps) logged every N steps; 0: per epoch
    monitor_every: int = 0  # epochs between Test1/Test2 MREs logged during training, for the curves only; 0: never


@dataclass(frozen=True)
class EvalParams:
    """How a trained model is chosen and scored."""

    # deviation: the last epoch is evaluated by default, so no test data choose the model; the paper validates
    # on Test1 (`select: best_test1` mimics it, and the tables say which was used).
    select: Literal["last", "best_test1"] = "last"
    sdr_radii_mm: tuple[float, ...] = (2.0, 2.5, 3.0, 4.0)
    batch_size: int = 4
    # beyond the paper: the "guided" decoder takes the fine head's argmax within this fraction of the input
    # height (Chebyshev; 30 px at 800x640, 12 px at 320x256) of the coarse head's peak; reported in its own
    # column, never in place of argmax
    guided_radius: float = 0.0375


@dataclass(frozen=True)
class Params:
    """Every parameter of one run (or of the base, with ``run`` None), resolved and validated."""

    profile: str = "paper"
    run: str | None = None  # the entry of `runs` these parameters were resolved for
    seed: int = 0
    datasets: dict[str, DatasetParams] = field(default_factory=lambda: {"isbi2015": DatasetParams()})
    data: DataParams = field(default_factory=DataParams)
    heatmap: HeatmapParams = field(default_factory=HeatmapParams)
    model: ModelParams = field(default_factory=ModelParams)
    loss: LossParams = field(default_factory=LossParams)
    train: TrainParams = field(default_factory=TrainParams)
    eval: EvalParams = field(default_factory=EvalParams)
    runs: dict[str, dict] = field(default_factory=dict)  # run name -> overrides (farnet.config.load)

    @property
    def dataset(self) -> DatasetParams:
        """The preparation parameters of this run's dataset."""
        return self.datasets[self.data.dataset]

    @property
    def input_hw(self) -> tuple[int, int]:
        """The network input (H, W) of this run: ``data.input_hw``, else the dataset's prepared size."""
        return self.data.input_hw if self.data.input_hw is not None else self.dataset.input_hw
