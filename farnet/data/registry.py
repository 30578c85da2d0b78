"""The datasets the pipeline knows, each as one :class:`DatasetSpec`: how to fetch it, read it, split it and
measure errors on it.

A reader returns every image of the dataset once (as :class:`~farnet.data.sample.Sample`) with a mapping of split
name to image ids; the prepare stage caches all of them at one size and stores the splits beside the cache. A
run trains on ``train_split(fold)`` and is evaluated on ``eval_splits(fold)``:

| dataset | splits | unit |
|---|---|---|
| isbi2015 | train / test1 / test2 (official) | mm (0.1 mm per original pixel) |
| hand_dha | fold{k}_train / fold{k}_test, k = 1..3 (Payer et al.) | mm (wrist width = 50 mm) |
| spine_boostnet | fold{k}_train / fold{k}_val (k = 1..5), test (50 of the 481), aasce_test (128) | fraction of the image |
| custom | train / val / test (own CSV) | mm when a spacing is given, else px |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from dataclasses import dataclass
from pathlib import Path

from farnet.data.sample import Sample
from farnet.core.errors import ConfigError

# ``params`` below is the dataset's ``DatasetParams`` section (farnet.config, which validates against this table)
DatasetParams = Any
Reader = Callable[[Path, DatasetParams], tuple[list[Sample], dict[str, list[str]], tuple[str, ...]]]


@dataclass(frozen=True)
class DatasetSpec:
    """How the pipeline handles one dataset, and the facts about it that the stages and reports need.

    Attributes:
        name: the key under ``datasets`` in params.yaml.
        unit: "mm", "fraction" (errors as fractions of the original image size) or "px".
        fetch: (dest, mirror folder or None, params) -> summary dict; writes ``dest/FETCHED.json``.
        read: (fetched folder, params) -> (samples, {split: ids}, landmark names).
        train_split: fold -> the split a run trains on.
        eval_splits: fold -> the splits a run is evaluated on.
        folds: the cross-validation folds a run may name in ``data.fold`` (1 for none).
        extras: (fetched folder, image ids) -> facts evaluation needs beyond landmarks (spine: Cobb angles;
            hand: how many of the listed images are present), stored in the prepared ``dataset.json``.
        data_note: how the data differs from the original release, for the tables' provenance.
        full_train_images: the size of the full training split, where the paper's protocol fixes it.
        spacing: (mm per original pixel, original (W, H)) shared by every image, for models used on new images.
    """

    name: str
    unit: str
    fetch: Callable[[Path, Path | None, DatasetParams], dict]
    read: Reader
    train_split: Callable[[int], str]
    eval_splits: Callable[[int], tuple[str, ...]]
    folds: int = 1
    extras: Callable[[Path, list[str]], dict] = lambda root, ids: {}
    data_note: str = ""
    full_train_images: int | None = None
    spacing: tuple[float, tuple[int, int]] | None = None

    def check_fold(self, fold: int, where: str = "data.fold") -> None:
        """ConfigError naming ``where`` unless ``fold`` is one of this dataset's folds."""
        if not 1 <= fold <= self.folds:
            allowed = "1" if self.folds == 1 else f"1..{self.folds}"
            raise ConfigError(f"{where}: {fold!r} is not a fold of {self.name} (folds: {allowed})")


# --- ISBI 2015 ------------------------------------------------------------------------------------------------

def _fetch_isbi(dest: Path, mirror: Path | None, params: DatasetParams) -> dict:
    from farnet.data.download import fetch_isbi2015

    return fetch_isbi2015(dest, mirror)


def _read_isbi(root: Path, params: DatasetParams):
    from farnet.data import isbi

    samples, splits = [], {}
    for split in isbi.ISBI_SPLITS:
        part = isbi.read_isbi2015(root, split, annotator=params.annotator)
        samples.extend(part)
        splits[split] = [s.image_id for s in part]
    return samples, splits, tuple(isbi.LANDMARK_NAMES)


ISBI_NOTE = ("offline mirror: half-size (968x1200) JPEG re-encodes of the 1935x2400 images; annotations "
             "reconstructed from Payer et al.'s CSVs (see the mirror's README)")


# --- Digital Hand Atlas ---------------------------------------------------------------------------------------

def _fetch_hand(dest: Path, mirror: Path | None, params: DatasetParams) -> dict:
    from farnet.data.hand import fetch_hand

    return fetch_hand(dest, mirror)


def _read_hand(root: Path, params: DatasetParams):
    from farnet.data import hand

    by_id, splits = {}, {}
    for fold in (1, 2, 3):
        for split in ("train", "test"):
            part = hand.read_hand(root, fold, split)
            splits[f"fold{fold}_{split}"] = [s.image_id for s in part]
            by_id.update({s.image_id: s for s in part})
    return list(by_id.values()), splits, tuple(hand.LANDMARK_NAMES)


def _hand_extras(root: Path, ids: list[str]) -> dict:
    from farnet.data.hand import hand_counts

    counts = hand_counts(root)  # the mirror holds only some of the listed images
    return {"images_listed": counts["listed"], "images_present": counts["present"]}


# --- Spine (BoostNet / AASCE) ---------------------------------------------------------------------------------

def _fetch_spine(dest: Path, mirror: Path | None, params: DatasetParams) -> dict:
    from farnet.data.spine import fetch_spine

    return fetch_spine(dest, mirror)


def _read_spine(root: Path, params: DatasetParams):
    from farnet.data import spine

    training = spine.read_spine(root, "training")
    extra = spine.read_spine(root, "test")
    splits = spine.spine_splits([s.image_id for s in training], params.split_seed)
    splits["aasce_test"] = [s.image_id for s in extra]
    return training + extra, splits, tuple(spine.LANDMARK_NAMES)


def _spine_extras(root: Path, ids: list[str]) -> dict:
    from farnet.data.spine import read_angles

    angles = {}
    for split_dir in ("training", "test"):
        angles.update({k: [float(a) for a in v] for k, v in read_angles(root, split_dir).items()})
    return {"cobb_angles_deg": {i: angles[i] for i in ids if i in angles}}


# --- own data -------------------------------------------------------------------------------------------------

def _fetch_custom(dest: Path, mirror: Path | None, params: DatasetParams) -> dict:
    from farnet.data.custom import fetch_custom

    return fetch_custom(dest, params)


def _read_custom(root: Path, params: DatasetParams):
    from farnet.data.custom import read_custom

    samples, splits, names = read_custom(root, params.csv, split_seed=params.split_seed)
    return samples, splits, tuple(names)


DATASETS: dict[str, DatasetSpec] = {
    "isbi2015": DatasetSpec("isbi2015", "mm", _fetch_isbi, _read_isbi, lambda fold: "train",
                            lambda fold: ("test1", "test2"), data_note=ISBI_NOTE, full_train_images=150,
                            spacing=(0.1, (1935, 2400))),
    "hand_dha": DatasetSpec("hand_dha", "mm", _fetch_hand, _read_hand, lambda fold: f"fold{fold}_train",
                            lambda fold: (f"fold{fold}_test",), folds=3, extras=_hand_extras,
                            data_note="Payer et al.'s annotations and 3-fold split; only the images present were used"),
    "spine_boostnet": DatasetSpec("spine_boostnet", "fraction", _fetch_spine, _read_spine,
                                  lambda fold: f"fold{fold}_train",
                                  lambda fold: (f"fold{fold}_val", "test", "aasce_test"), folds=5,
                                  extras=_spine_extras,
                                  data_note="BoostNet/AASCE images and labels as redistributed (see the mirror's "
                                            "README)"),
    # unit: mm where the CSV gives every image a spacing, else px (decided from the data: farnet.stages.evaluate)
    "custom": DatasetSpec("custom", "mm", _fetch_custom, _read_custom, lambda fold: "train",
                          lambda fold: ("val", "test")),
}


def get_dataset(name: str) -> DatasetSpec:
    """The spec of a dataset by name; ValueError naming it when unknown."""
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r} is not one of {', '.join(DATASETS)}")
    return DATASETS[name]
